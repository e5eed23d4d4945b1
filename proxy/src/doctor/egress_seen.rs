//! What source address the outside world sees: the echo service is
//! fetched once per egress route — the default one and every fixed source
//! address (`[[egress.fixed]]` and the policy's egress pools) — through the
//! gateway's own egress (DNS, destination guard, source binding), so a NAT
//! or egress gateway in between shows up as it will for C4th / 百問繚乱.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::http::{self, Url};
use super::report::{Check, Report, Status};
use crate::config::Config;
use crate::egress::Egress;

/// One way out: a name, the source address bound (None = the default
/// route, or a pool the network translates) and the address(es) the
/// destination must see (empty = only report).
pub struct Route {
    pub name: String,
    pub source: Option<IpAddr>,
    pub expected: Vec<IpAddr>,
}

/// The default route plus every distinct fixed route: `[[egress.fixed]]`
/// and the policy's `[[egress]]` pools (a pool's `seen_as` is what it must
/// be seen as; otherwise `[doctor] expected_egress`).
pub fn routes(config: &Config, policy: Option<&komugate_policy::Policy>) -> Vec<Route> {
    let mut out = vec![Route {
        name: "既定 / default".into(),
        source: None,
        expected: Vec::new(),
    }];
    let expected = &config.doctor.expected_egress;
    let fixed = config
        .egress
        .fixed
        .iter()
        .map(|f| (f.name.clone(), Some(f.source), expected.clone()))
        .chain(policy.into_iter().flat_map(|p| p.egress_pools()).map(|p| {
            let want = p
                .seen_as
                .map(|a| vec![a])
                .unwrap_or_else(|| expected.clone());
            (p.name.clone(), p.source, want)
        }));
    for (name, source, expected) in fixed {
        match out
            .iter_mut()
            .find(|r| r.source == source && r.expected == expected)
        {
            Some(r) => r.name.push_str(&format!(", {name}")),
            None => out.push(Route {
                name,
                source,
                expected,
            }),
        }
    }
    out
}

pub async fn check(
    config: &Config,
    routes: &[Route],
    egress: &Egress,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    report: &mut Report,
) {
    let doctor = &config.doctor;
    if doctor.echo_url.is_empty() {
        let status = if routes.len() > 1 {
            Status::Warn
        } else {
            Status::Skip
        };
        report.push(
            Check::new("egress", "送信元アドレス / egress address", status)
                .detail("[doctor] echo_url がないため、外から見える送信元アドレスは確認していません / no [doctor] echo_url: the address seen from outside is not checked")
                .fix("接続元アドレスを返す URL を [doctor] echo_url に設定 / set [doctor] echo_url to a service that answers with the client address"),
        );
        return;
    }
    let url = match Url::parse(&doctor.echo_url) {
        Ok(u) => u,
        Err(e) => {
            report.push(
                Check::new("egress", "送信元アドレス / egress address", Status::Fail)
                    .detail(format!("[doctor] echo_url: {e}")),
            );
            return;
        }
    };
    for route in routes {
        let subject = format!(
            "送信元アドレス / egress address: {} ({})",
            route.name,
            route
                .source
                .map(|s| format!("bound to {s}"))
                .unwrap_or_else(|| "unbound".into())
        );
        let seen = tokio::time::timeout(timeout, fetch(&url, route.source, egress, tls.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{} 秒以内に応答なし / no answer within {} s",
                    timeout.as_secs(),
                    timeout.as_secs()
                ))
            });
        let check = match seen {
            Err(e) => Check::new("egress", subject, Status::Fail)
                .detail(format!("{}: {e}", doctor.echo_url))
                .fix("送信元アドレスがこのホスト / Pod にあるか ([[egress.fixed]] source)、経路と NAT を確認 / check that the source address exists on this host or pod, and the routes and NAT"),
            Ok(seen) => judge(route, seen, subject),
        };
        report.push(check);
    }
}

/// A fixed route must be seen from an expected address (when the
/// deployment says which); the default route is only reported.
fn judge(route: &Route, seen: IpAddr, subject: String) -> Check {
    let detail = format!("外から見えるアドレス / seen as {seen}");
    let expected = &route.expected;
    if expected.is_empty() {
        return Check::new("egress", subject, Status::Ok).detail(detail);
    }
    if expected.contains(&seen) {
        Check::new("egress", subject, Status::Ok)
            .detail(format!("{detail} (期待どおり / as expected)"))
    } else {
        let want = expected
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Check::new("egress", subject, Status::Fail)
            .detail(format!("{detail}; 期待 / expected {want}"))
            .fix("固定 IP の NAT / egress gateway が Pod を対象にしているか確認 (k8s/README.md「固定 egress」) / check that the NAT or egress gateway covers the pods (k8s/README.md, Fixed egress)")
    }
}

async fn fetch(
    url: &Url,
    source: Option<IpAddr>,
    egress: &Egress,
    tls: Arc<rustls::ClientConfig>,
) -> Result<IpAddr, String> {
    let tcp = egress
        .connect(&url.host, url.port, source)
        .await
        .map_err(|e| e.to_string())?;
    let (status, body) = if url.https {
        let stream = http::tls(tcp, &url.host, tls).await?;
        http::get(stream, &url.authority(), &url.path_and_query, &[]).await?
    } else {
        http::get(tcp, &url.authority(), &url.path_and_query, &[]).await?
    };
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    address_in(&String::from_utf8_lossy(&body))
        .ok_or_else(|| "応答にアドレスがありません / the answer holds no IP address".to_string())
}

/// The address in an echo answer: plain text ("198.51.100.7\n") or JSON
/// with an "ip" field ({"ip":"198.51.100.7"}).
fn address_in(body: &str) -> Option<IpAddr> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(ip) = v.get("ip").and_then(|i| i.as_str()) {
            return ip.parse().ok();
        }
    }
    body.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_in_text_and_json() {
        assert_eq!(address_in("198.51.100.7\n"), "198.51.100.7".parse().ok());
        assert_eq!(
            address_in(r#"{"ip": "2001:db8::7", "port": 5}"#),
            "2001:db8::7".parse().ok()
        );
        assert_eq!(address_in("no address here"), None);
    }

    #[test]
    fn a_fixed_route_seen_elsewhere_fails() {
        let want: IpAddr = "198.51.100.7".parse().unwrap();
        let fixed = Route {
            name: "city".into(),
            source: Some("10.0.0.5".parse().unwrap()),
            expected: vec![want],
        };
        let ok = judge(&fixed, want, "s".into());
        assert_eq!(ok.status, Status::Ok);
        let bad = judge(&fixed, "203.0.113.9".parse().unwrap(), "s".into());
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.detail.contains("198.51.100.7"));
        // A route with no expectation (the default one) is only reported.
        let default = Route {
            name: "default".into(),
            source: None,
            expected: Vec::new(),
        };
        let d = judge(&default, "203.0.113.9".parse().unwrap(), "s".into());
        assert_eq!(d.status, Status::Ok);
    }

    #[test]
    fn pools_translated_by_the_network_expect_their_seen_as_address() {
        let text = r#"
version = 1
[[egress]]
name = "city-fixed-ip"
seen_as = "198.51.100.7"
hosts = ["*.c4th.example"]
[[egress]]
name = "on-prem"
source = "10.0.0.5"
hosts = ["hyakumon.example"]
"#;
        let policy =
            komugate_policy::Policy::from_str(text, std::path::Path::new("p.toml")).unwrap();
        let mut config = Config::embedded_default();
        config.egress.fixed.clear();
        config.doctor.expected_egress = vec!["203.0.113.1".parse().unwrap()];
        let r = routes(&config, Some(&policy));
        let summary: Vec<_> = r
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.source.map(|s| s.to_string()),
                    r.expected.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("既定 / default", None, 0),
                ("city-fixed-ip", None, 1),
                ("on-prem", Some("10.0.0.5".into()), 1),
            ]
        );
        assert_eq!(r[1].expected, ["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(r[2].expected, ["203.0.113.1".parse::<IpAddr>().unwrap()]);
    }
}
