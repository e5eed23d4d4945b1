//! The policy engine at the gateway's decision point: UT1 categories and
//! allow lists through the proxy, site vs off-site rules, device groups
//! from the registry, the block page, explain agreeing with the proxy, and
//! hot reload under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use komugate_tests::gw::TestGateway;
use komugate_tests::raw::{RawConn, RawResponse};
use komugate_tests::upstream::HttpUpstream;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};

const TOKEN: &str = "test-admin-token";

/// The repo's UT1 excerpt (examples/lists/ut1), absolute.
fn ut1_excerpt() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/lists/ut1")
        .canonicalize()
        .expect("examples/lists/ut1")
}

fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string()
}

/// A board-like policy: one school at 127.0.0.1, the UT1 excerpt, an allow
/// list, C4th blocked off-site, 百問繚乱 off-site only for telework.
fn policy_text(ut1: &Path, extra_rule: &str) -> String {
    format!(
        r#"
version = 1
timezone = "+09:00"

[contact]
name = "教育委員会 ICT 担当"
phone = "0263-00-0000"

[defaults]
action = "allow"

[registry]
path = "registry.csv"

[[group]]
name = "教職員"

[[group]]
name = "テレワーク"
aliases = ["telework"]

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]

[categories]
allow = ["allowed.casino.test"]

[[categories.source]]
format = "squidguard"
path = "{ut1}"
only = ["adult", "gambling", "malware", "phishing"]

[[categories.source]]
format = "plain"
path = "extra-gambling.txt"
category = "gambling"

[[app]]
name = "c4th"
hosts = [".c4th.test"]

[[app]]
name = "hyakumon"
hosts = ["localhost.rebind.test"]

{extra_rule}

[[rule]]
name = "UT1 有害カテゴリ"
categories = ["adult", "gambling", "malware", "phishing"]
action = "block"
message = "有害サイトのためブロックしました。"

[[rule]]
name = "百問繚乱 テレワーク"
app = "hyakumon"
location = "offsite"
groups = ["テレワーク"]
action = "allow"

[[rule]]
name = "百問繚乱 校外禁止"
app = "hyakumon"
location = "offsite"
action = "block"
message = "百問繚乱は校外からは利用できません。"

[[rule]]
name = "C4th 校外禁止"
app = "c4th"
location = "offsite"
action = "block"
message = "C4th は学校からのみ利用できます。"
"#,
        ut1 = ut1.display()
    )
}

struct PolicyDir {
    _dir: tempfile::TempDir,
    policy: PathBuf,
}

fn write_policy(extra_rule: &str) -> PolicyDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("registry.csv"),
        "device_id,user,groups\nT-1,tanaka,教職員;テレワーク\nT-2,suzuki,教職員\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("extra-gambling.txt"), "casino.test\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&ut1_excerpt(), extra_rule)).unwrap();
    PolicyDir { _dir: dir, policy }
}

async fn gateway_with(policy: &Path, watch: bool) -> TestGateway {
    let policy = policy.display().to_string();
    TestGateway::start(move |c, _| {
        c.policy.file = policy;
        c.policy.watch = watch;
        c.policy.watch_interval_ms = 200;
        c.admin.token = TOKEN.into();
    })
    .await
}

/// GET through the plain listener from `source` (an address on loopback).
async fn get_from(gw: &TestGateway, source: &str, url: &str) -> RawResponse {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = socket.connect(gw.plain()).await.unwrap();
    let mut conn = RawConn::new(stream);
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    conn.send(
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    conn.read_response(false).await.unwrap()
}

/// GET through the mTLS listener as `device`, connecting from `source`.
async fn device_get(gw: &TestGateway, device: &str, source: &str, url: &str) -> RawResponse {
    let cert = gw.tls().device(device, &[]);
    cert_get(gw, &cert, source, url).await
}

/// GET through the mTLS listener with the device certificate `cert`.
async fn cert_get(
    gw: &TestGateway,
    cert: &komugate::pki::IssuedCert,
    source: &str,
    url: &str,
) -> RawResponse {
    let config = gw.tls().client_config(Some(cert), &[b"http/1.1"]);
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let tcp: TcpStream = socket.connect(gw.mtls()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut conn = RawConn::new(tls);
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    conn.send(
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    conn.read_response(false).await.unwrap()
}

async fn admin(gw: &TestGateway, method: &str, path_and_query: &str) -> RawResponse {
    komugate_tests::raw::request(
        gw.admin(),
        format!("{method} {path_and_query} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ut1_domains_and_subdomains_blocked_allow_list_wins() {
    let dir = write_policy("");
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway_with(&dir.policy, false).await;
    let listed = first_line(&ut1_excerpt().join("gambling/domains"));

    for url in [
        format!("http://{listed}/"),
        format!("http://www.{listed}/path"),
        "http://casino.test/".into(),
        "http://a.b.casino.test/".into(),
    ] {
        let resp = get_from(&gw, "127.0.0.1", &url).await;
        assert_eq!(resp.status, 403, "{url} must be blocked");
        // Non-ASCII rule names travel percent-encoded in the header.
        assert_eq!(
            resp.header("komugate-rule").as_deref(),
            Some("UT1 %E6%9C%89%E5%AE%B3%E3%82%AB%E3%83%86%E3%82%B4%E3%83%AA")
        );
        let page = resp.text();
        assert!(
            page.contains("ブロックされました") && page.contains("Access to this page was blocked"),
            "{page}"
        );
        assert!(
            page.contains("ギャンブル (gambling)"),
            "category on the block page, Japanese label beside the id: {page}"
        );
        assert!(page.contains(" JST"), "time in Japan time: {page}");
        assert!(
            page.contains("0263-00-0000"),
            "contact from the policy: {page}"
        );
        assert!(page.contains("有害サイトのためブロックしました。"));
    }
    // Not a string-suffix match: "xcasino.test" is not "casino.test".
    let port = upstream.addr.port();
    // plain.test resolves (local DNS) to the upstream; not listed → allowed.
    let ok = get_from(&gw, "127.0.0.1", &format!("http://plain.test:{port}/fine")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The allow list wins over the category.
    let rec = {
        let resp = get_from(&gw, "127.0.0.1", "http://allowed.casino.test/").await;
        assert_ne!(
            resp.status,
            403,
            "allow-listed host must not be blocked: {}",
            resp.text()
        );
        gw.access_record(|r| r["target"] == "http://allowed.casino.test/")
            .await
    };
    assert_eq!(rec["rule"], "allow-list");
    let blocked = gw
        .access_record(|r| r["target"] == "http://casino.test/")
        .await;
    assert_eq!(blocked["categories"][0], "gambling");
    assert_eq!(blocked["site"], "豊科南小学校");
    assert_eq!(blocked["generation"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn offsite_rules_apply_only_offsite_and_registry_groups_count() {
    let dir = write_policy("");
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway_with(&dir.policy, false).await;
    let port = upstream.addr.port();
    let c4th = format!("http://www.c4th.test:{port}/login");
    // In school (127.0.0.1 is the school's CIDR): allowed.
    assert_eq!(get_from(&gw, "127.0.0.1", &c4th).await.status, 200);
    // Off-site (127.0.0.2 is in no site): blocked by the off-site rule.
    let off = get_from(&gw, "127.0.0.2", &c4th).await;
    assert_eq!(off.status, 403);
    assert!(off.text().contains("C4th は学校からのみ利用できます。"));
    // 百問繚乱 off-site: the telework group (from the registry, not the cert) is excepted.
    let hyakumon = format!("http://localhost.rebind.test:{port}/");
    assert_eq!(
        device_get(&gw, "T-1", "127.0.0.2", &hyakumon).await.status,
        200,
        "telework device off-site"
    );
    let t2 = device_get(&gw, "T-2", "127.0.0.2", &hyakumon).await;
    assert_eq!(t2.status, 403, "non-telework device off-site");
    assert!(t2.text().contains("T-2"), "device id on the block page");
    assert_eq!(
        device_get(&gw, "T-2", "127.0.0.1", &hyakumon).await.status,
        200,
        "in school"
    );
    let rec = gw
        .access_record(|r| r["device"] == "T-1" && r["status"] == 200)
        .await;
    assert_eq!(rec["user"], "tanaka");
    assert_eq!(rec["site"], "offsite");
    assert_eq!(rec["app"], "hyakumon");
    gw.shutdown().await;
}

/// The registry is authoritative for groups: a certificate issued with
/// `--group telework` (テレワーク's alias) gives nothing the registry does not,
/// and removing テレワーク from a device's row takes the telework rule away at
/// the next reload, with the same certificate still in use.
#[tokio::test]
async fn registry_groups_win_over_certificate_groups() {
    let dir = write_policy("");
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway_with(&dir.policy, false).await;
    let hyakumon = format!("http://localhost.rebind.test:{}/", upstream.addr.port());
    let t1 = gw.tls().device("T-1", &["telework"]);
    let t2 = gw.tls().device("T-2", &["telework"]);
    // T-2's row has no テレワーク: its certificate's group does not count.
    let r = cert_get(&gw, &t2, "127.0.0.2", &hyakumon).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // T-1's row has テレワーク: allowed off-site.
    assert_eq!(cert_get(&gw, &t1, "127.0.0.2", &hyakumon).await.status, 200);
    // The personnel move: テレワーク removed from T-1's row, then a reload.
    let registry = dir.policy.parent().unwrap().join("registry.csv");
    std::fs::write(
        &registry,
        "device_id,user,groups\nT-1,tanaka,教職員\nT-2,suzuki,教職員\n",
    )
    .unwrap();
    let reload = admin(&gw, "POST", "/admin/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let r = cert_get(&gw, &t1, "127.0.0.2", &hyakumon).await;
    assert_eq!(
        r.status,
        403,
        "the same certificate, no telework: {}",
        r.text()
    );
    let rec = gw
        .access_record(|r| r["device"] == "T-1" && r["status"] == 403)
        .await;
    assert_eq!(rec["rule"], "百問繚乱 校外禁止");
    assert_eq!(rec["groups"], serde_json::json!(["教職員"]));
    gw.shutdown().await;
}

#[tokio::test]
async fn explain_agrees_with_the_proxy() {
    let dir = write_policy("");
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = gateway_with(&dir.policy, false).await;
    let port = upstream.addr.port();
    let listed = first_line(&ut1_excerpt().join("gambling/domains"));
    let cases: Vec<(Option<&str>, &str, String)> = vec![
        (None, "127.0.0.1", format!("http://www.c4th.test:{port}/")),
        (None, "127.0.0.2", format!("http://www.c4th.test:{port}/")),
        (None, "127.0.0.1", format!("http://{listed}/")),
        (None, "127.0.0.1", "http://allowed.casino.test/".to_string()),
        (None, "127.0.0.1", format!("http://plain.test:{port}/x")),
        (
            Some("T-1"),
            "127.0.0.2",
            format!("http://localhost.rebind.test:{port}/"),
        ),
        (
            Some("T-2"),
            "127.0.0.2",
            format!("http://localhost.rebind.test:{port}/"),
        ),
        (
            Some("T-2"),
            "127.0.0.1",
            format!("http://localhost.rebind.test:{port}/"),
        ),
    ];
    for (device, from, url) in cases {
        let q = format!(
            "/admin/explain?from={from}&url={}{}",
            url.replace(':', "%3A").replace('/', "%2F"),
            device.map(|d| format!("&device={d}")).unwrap_or_default()
        );
        let explained = admin(&gw, "GET", &q).await;
        assert_eq!(explained.status, 200, "{}", explained.text());
        let v: serde_json::Value = serde_json::from_slice(&explained.body).unwrap();
        let (action, rule) = (
            v["decision"]["action"].as_str().unwrap().to_string(),
            v["decision"]["rule"].as_str().unwrap().to_string(),
        );
        let resp = match device {
            Some(d) => device_get(&gw, d, from, &url).await,
            None => get_from(&gw, from, &url).await,
        };
        let proxy_blocked = resp.status == 403;
        assert_eq!(
            proxy_blocked,
            action == "Block",
            "{device:?} {from} {url}: explain says {action} ({rule}), proxy answered {}",
            resp.status
        );
        let logged = gw
            .access_record(|r| {
                r["target"] == url.as_str()
                    && r["client"].as_str().unwrap_or("").starts_with(from)
                    && r["device"].as_str() == device
            })
            .await;
        assert_eq!(logged["rule"], rule.as_str(), "{device:?} {from} {url}");
    }
    // The CLI gives the same answer (same function).
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/komugate");
    if exe.exists() {
        let out = std::process::Command::new(&exe)
            .args(["policy", "explain"])
            .arg(&dir.policy)
            .args([
                "--from",
                "127.0.0.2",
                "--url",
                &format!("http://www.c4th.test:{port}/"),
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            v["rule"],
            "C4th 校外禁止",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_policy_is_refused_with_positions_and_old_one_stays() {
    let dir = write_policy("");
    let gw = gateway_with(&dir.policy, false).await;
    std::fs::write(
        &dir.policy,
        policy_text(
            &ut1_excerpt(),
            "[[rule]]\nname = \"typo\"\ncategories = [\"gamblin\"]\naction = \"block\"\n",
        ),
    )
    .unwrap();
    let resp = admin(&gw, "POST", "/admin/reload").await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    let body = resp.text();
    assert!(
        body.contains("policy.toml:") && body.contains("gamblin") && body.contains("gambling"),
        "{body}"
    );
    assert_eq!(
        gw.metric("komugate_policy_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(gw.metric("komugate_policy_generation", &[]), 1.0);
    // Still deciding with generation 1.
    assert_eq!(
        get_from(&gw, "127.0.0.1", "http://casino.test/")
            .await
            .header("komugate-policy-generation")
            .as_deref(),
        Some("1")
    );
    // Without a token the API refuses.
    let anon = komugate_tests::raw::request(
        gw.admin(),
        b"POST /admin/reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(anon.status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn included_list_change_reloads() {
    let dir = write_policy("");
    let gw = gateway_with(&dir.policy, true).await;
    assert_eq!(
        get_from(&gw, "127.0.0.1", "http://newly.test/")
            .await
            .status,
        502,
        "not blocked yet (and no such host)"
    );
    // Editing an included list file is picked up by the watcher.
    std::fs::write(
        dir.policy.parent().unwrap().join("extra-gambling.txt"),
        "casino.test\nnewly.test\n",
    )
    .unwrap();
    komugate_tests::eventually(Duration::from_secs(5), || {
        let g = gw.metric("komugate_policy_generation", &[]);
        async move { (g >= 2.0).then_some(()) }
    })
    .await
    .expect("file change reloaded the policy");
    assert_eq!(
        get_from(&gw, "127.0.0.1", "http://newly.test/")
            .await
            .status,
        403
    );
    gw.shutdown().await;
}

/// 200 requests/s for 20 s while the policy is reloaded 20 times,
/// alternating valid and invalid files. Valid files alternate between
/// allowing and blocking one host. No request may fail, every answer must
/// come from a generation in force while it was in flight, and invalid
/// files must never take effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let dir = write_policy("");
    let upstream = HttpUpstream::start("127.0.0.1").await;
    let gw = Arc::new(gateway_with(&dir.policy, false).await);
    let port = upstream.addr.port();
    let started = Instant::now();
    let run_for = Duration::from_secs(20);

    // Policy generations: odd = allow plain.test, even = block it.
    let block_rule =
        "[[rule]]\nname = \"reload-test-block\"\nhosts = [\"plain.test\"]\naction = \"block\"\n";
    let reloads = {
        let (gw, policy) = (gw.clone(), dir.policy.clone());
        tokio::spawn(async move {
            let mut swaps: Vec<(u64, Instant, Instant)> = vec![(1, started, started)];
            let mut valid = 0;
            for i in 0..20 {
                tokio::time::sleep(run_for / 21).await;
                let text = if i % 2 == 1 {
                    "this is [not valid toml".to_string()
                } else {
                    valid += 1;
                    policy_text(&ut1_excerpt(), if valid % 2 == 1 { block_rule } else { "" })
                };
                let tmp = policy.with_extension("tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &policy).unwrap();
                let before = Instant::now();
                let resp = admin(&gw, "POST", "/admin/reload").await;
                let after = Instant::now();
                if i % 2 == 1 {
                    assert_eq!(
                        resp.status,
                        422,
                        "invalid file must be refused: {}",
                        resp.text()
                    );
                } else {
                    assert_eq!(resp.status, 200, "{}", resp.text());
                    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                    swaps.push((v["generation"].as_u64().unwrap(), before, after));
                }
            }
            swaps
        })
    };

    // Two clients at 100 requests/s each, on keep-alive connections.
    let mut clients = Vec::new();
    for c in 0..2 {
        let gw = gw.clone();
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut conn = RawConn::connect(gw.plain()).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u32;
            while started.elapsed() < run_for {
                tick.tick().await;
                n += 1;
                let path = format!("/c{c}/r{n}");
                let sent = Instant::now();
                let req = format!("GET http://plain.test:{port}{path} HTTP/1.1\r\nHost: plain.test:{port}\r\n\r\n");
                let resp = match conn.send(req.as_bytes()).await {
                    Ok(()) => conn.read_response(false).await,
                    Err(e) => Err(e),
                };
                let resp = resp.unwrap_or_else(|e| panic!("request {path} failed: {e}"));
                results.push((path, sent, Instant::now(), resp.status, resp.header("komugate-policy-generation"), resp.header("komugate-rule")));
                if resp.header("connection").as_deref() == Some("close") {
                    conn = RawConn::connect(gw.plain()).await;
                }
            }
            results
        }));
    }
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.unwrap());
    }
    let swaps = reloads.await.unwrap();
    assert_eq!(swaps.len(), 11, "10 valid reloads");
    assert!(results.len() >= 3000, "load was {} requests", results.len());
    assert_eq!(
        gw.metric("komugate_policy_reloads_total", &[("result", "ok")]),
        10.0
    );
    assert_eq!(
        gw.metric("komugate_policy_reloads_total", &[("result", "error")]),
        10.0
    );

    // Generation of each answer: from the block page header, or from the access log.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = std::fs::read_to_string(&gw.access_log).unwrap();
    let mut logged = std::collections::HashMap::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["target"].as_str() {
            logged.insert(t.to_string(), v["generation"].as_u64().unwrap_or(0));
        }
    }
    let in_force = |g: u64, sent: Instant, received: Instant| {
        let start = swaps
            .iter()
            .find(|s| s.0 == g)
            .map(|s| s.1)
            .expect("a generation from a valid reload");
        let end = swaps.iter().find(|s| s.0 == g + 1).map(|s| s.2);
        start <= received && end.map(|e| e >= sent).unwrap_or(true)
    };
    for (path, sent, received, status, gen_header, rule) in &results {
        let g = match status {
            200 => *logged
                .get(&format!("http://plain.test:{port}{path}"))
                .unwrap_or_else(|| panic!("{path} not in the access log")),
            403 => {
                assert_eq!(rule.as_deref(), Some("reload-test-block"));
                gen_header.as_ref().unwrap().parse().unwrap()
            }
            other => panic!("{path}: unexpected status {other}"),
        };
        // Even generations (2, 4, …) carry the block rule.
        assert_eq!(
            *status == 403,
            g % 2 == 0,
            "{path}: status {status} from generation {g}"
        );
        assert!(
            in_force(g, *sent, *received),
            "{path} answered by generation {g} outside its time in force"
        );
    }
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.shutdown().await;
    }
}
