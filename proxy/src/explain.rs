//! Explain: the decision the proxy would make for (device, signed-in user
//! and their groups, client address, URL, method), computed by the same
//! conversion and the same `Policy::evaluate_as` the data path uses. Shared
//! by `komugate policy explain`, `GET /admin/explain` and the console's
//! "why was this blocked?" form.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::device_auth::DeviceIdentity;
use crate::stages::decide::{policy_request, ListenerKind, RequestInfo, RequestKind};

/// A user signed in on the device (OpenID Connect), as explain takes it:
/// the name the gateway logs and the groups from the token's group claim.
#[derive(Debug, Clone, Default)]
pub struct SignedIn {
    pub user: String,
    pub groups: Vec<String>,
}

impl SignedIn {
    /// From the forms' text: a user name (empty = nobody signed in) and
    /// groups separated by commas or newlines. Control characters are
    /// dropped, sizes bounded as the gateway bounds a token's claims.
    pub fn from_text(user: &str, groups: &str) -> Option<SignedIn> {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect::<String>()
                .trim()
                .to_string()
        };
        let user = clean(user);
        if user.is_empty() {
            return None;
        }
        let groups = groups
            .split([',', '\n'])
            .map(clean)
            .filter(|g| !g.is_empty())
            .take(500)
            .collect();
        Some(SignedIn { user, groups })
    }
}

/// Evaluates `url` (`http://…`, `https://…`, or `host:port` for a CONNECT)
/// as sent by `device` from `from`, with no user signed in on it.
pub fn explain(
    policy: &komugate_policy::Policy,
    device: Option<&str>,
    from: &str,
    url: &str,
    method: &str,
) -> anyhow::Result<komugate_policy::Decision> {
    explain_as(policy, device, None, from, url, method)
}

/// [`explain`] with `user` signed in on the device (`None`: the device-only
/// rules, as for a device where nobody is signed in).
pub fn explain_as(
    policy: &komugate_policy::Policy,
    device: Option<&str>,
    user: Option<&SignedIn>,
    from: &str,
    url: &str,
    method: &str,
) -> anyhow::Result<komugate_policy::Decision> {
    if user.is_some() && device.is_none() {
        anyhow::bail!(
            "a user signs in on a device: name the device too (--device, or the device field)"
        );
    }
    let ip: IpAddr = from
        .parse()
        .map_err(|_| anyhow::anyhow!("--from {from:?} is not an IP address"))?;
    let method = method.to_ascii_uppercase();
    let target = parse_target(url, &method)?;
    let (kind, scheme, host, port, path) = (
        target.kind,
        target.scheme,
        target.host.as_str(),
        target.port,
        target.path.as_str(),
    );
    let identity = device.map(|d| DeviceIdentity {
        device_id: d.to_string(),
        cert_groups: Vec::new(),
        serial_hex: String::new(),
    });
    let req = RequestInfo {
        listener: if identity.is_some() {
            ListenerKind::Mtls
        } else {
            ListenerKind::Plain
        },
        device: identity.as_ref(),
        client: SocketAddr::new(ip, 0),
        kind,
        method: &method,
        host,
        port,
        path,
        scheme,
        location: None,
        subject: Default::default(),
    };
    let subject = komugate_policy::Subject {
        user: user.map(|u| u.user.as_str()),
        user_groups: user.map(|u| u.groups.as_slice()).unwrap_or_default(),
        // Posture is what the device reports at the time; explain decides
        // without one (a posture rule says what it lacks).
        posture: None,
        now: crate::oidc::unix_now(),
    };
    Ok(policy.evaluate_as(&policy_request(&req, SystemTime::now()), &subject))
}

/// What explain evaluates, parsed the way the proxy parses a request line
/// (`http::Uri`, as hyper does): scheme in any case, userinfo, port,
/// trailing dot, IPv6 literal, no path; a fragment is dropped (browsers
/// never send one).
struct Target {
    kind: RequestKind,
    scheme: &'static str,
    host: String,
    port: u16,
    path: String,
}

fn parse_target(url: &str, method: &str) -> anyhow::Result<Target> {
    let url = url.trim();
    let url = url.split('#').next().unwrap_or(url);
    if method == "CONNECT" && !url.contains("://") {
        let authority: http::uri::Authority = url
            .parse()
            .map_err(|_| anyhow::anyhow!("--url {url:?}: CONNECT needs host:port"))?;
        return Ok(Target {
            kind: RequestKind::Connect,
            scheme: "",
            host: clean_host(authority.host()),
            port: authority.port_u16().unwrap_or(443),
            path: String::new(),
        });
    }
    let uri: http::Uri = url.parse().map_err(|e| {
        anyhow::anyhow!("--url {url:?} is not a URL the proxy would accept ({e}); use http://host/path or https://host/path (or --method CONNECT with host:port)")
    })?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => "http",
        Some("https") => "https",
        _ => anyhow::bail!(
            "--url {url:?} must start with http:// or https:// (or use --method CONNECT with host:port)"
        ),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--url {url:?}: no host"))?;
    let host = clean_host(authority.host());
    if host.is_empty() {
        anyhow::bail!("--url {url:?}: empty host");
    }
    let path = match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    Ok(Target {
        kind: RequestKind::Http,
        scheme,
        host,
        port: authority
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 }),
        path,
    })
}

fn clean_host(h: &str) -> String {
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_the_proxy_accepts() {
        let t = parse_target("HTTP://User@VK.com.:8080//a/%76?q=1#f", "GET").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            ("http", "vk.com", 8080, "//a/%76?q=1")
        );
        let t = parse_target("Https://[2001:DB8::1]", "GET").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            ("https", "2001:db8::1", 443, "/")
        );
        let t = parse_target("example.com:443", "CONNECT").unwrap();
        assert_eq!(
            (t.kind, t.host.as_str(), t.port),
            (RequestKind::Connect, "example.com", 443)
        );
        assert!(parse_target("ftp://example.com/", "GET").is_err());
        assert!(parse_target("example.com/", "GET").is_err());
    }

    #[test]
    fn a_signed_in_user_gets_the_users_rules() {
        let policy = komugate_policy::Policy::from_str(
            r#"
version = 1
[[rule]]
name = "records for teachers"
hosts = ["records.example"]
user_groups = ["teachers"]
action = "allow"

[[rule]]
name = "sign in first"
hosts = ["records.example"]
signed_in = false
action = "block"
"#,
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let url = "https://records.example/";
        let teacher = SignedIn::from_text(" hanako@board.test ", "staff,\n teachers ,").unwrap();
        assert_eq!(teacher.groups, ["staff", "teachers"]);
        let d = explain_as(
            &policy,
            Some("PC-1"),
            Some(&teacher),
            "10.0.0.1",
            url,
            "GET",
        )
        .unwrap();
        assert_eq!(d.rule, "records for teachers");
        assert!(d.signed_in);
        assert_eq!(d.user.as_deref(), Some("hanako@board.test"));
        assert_eq!(d.user_groups, ["staff", "teachers"]);
        let d = explain(&policy, Some("PC-1"), "10.0.0.1", url, "GET").unwrap();
        assert_eq!((d.rule.as_str(), d.signed_in), ("sign in first", false));
        // An empty user field is nobody signed in.
        assert!(SignedIn::from_text(" ", "teachers").is_none());
        let e = explain_as(&policy, None, Some(&teacher), "10.0.0.1", url, "GET").unwrap_err();
        assert!(e.to_string().contains("name the device too"), "{e}");
    }
}
