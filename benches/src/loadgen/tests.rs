//! Loadgen against the real gateway (in process, plain listener) and the
//! local origin: an injected origin error is counted, blocked requests are
//! not errors, tunnels work.

use std::time::Duration;

use crate::client::{parse_mix, ProxySpec, RunConfig};
use crate::origin::{start, OriginOptions};

async fn gateway(data: &std::path::Path) -> komugate::gateway::start::Running {
    gateway_with_dns(data, None).await
}

/// The gateway resolving through `dns` (the origin's responder: every name → 127.0.0.1).
async fn gateway_with_dns(
    data: &std::path::Path,
    dns: Option<std::net::SocketAddr>,
) -> komugate::gateway::start::Running {
    let servers = dns
        .map(|d| format!("servers = [\"{d}\"]"))
        .unwrap_or_else(|| "servers = []".into());
    let text = komugate::config::DEFAULT_CONFIG
        .replace("servers = []", &servers)
        .replace(
            "dir = \"./komugate-data\"",
            &format!("dir = {:?}", data.display().to_string()),
        )
        .replace("create_pki = true", "create_pki = false")
        .replace("plain = \"127.0.0.1:3128\"", "plain = \"127.0.0.1:0\"")
        .replace("mtls = \"127.0.0.1:8443\"", "mtls = \"\"")
        .replace("admin = \"127.0.0.1:9090\"", "admin = \"\"")
        .replace(
            "allowed_ports = [80, 443, 8080, 8081, 8443]",
            "allowed_ports = []",
        );
    let config = komugate::config::Config::parse(&text, "test").expect("test config");
    komugate::gateway::start::start(config)
        .await
        .expect("gateway starts")
}

fn config(
    proxy: std::net::SocketAddr,
    origin: &crate::origin::Origin,
    ca: std::path::PathBuf,
    mix: &str,
) -> RunConfig {
    RunConfig {
        label: "test".into(),
        proxy: ProxySpec::Plain(proxy),
        proxy_name: "localhost".into(),
        proxy_ca: None,
        pki: None,
        trust: vec![ca],
        origin_http: origin.http[0].to_string(),
        origin_https: origin.https[0].to_string(),
        inspect_target: "outlook.office365.com:443".into(),
        blocked_url: "http://blocked.example/".into(),
        devices: 1,
        ramp: Duration::ZERO,
        duration: None,
        ops_per_device: Some(20),
        concurrency: 1,
        h2_share: 0.0,
        mix: parse_mix(mix).expect("mix"),
        size: 1000,
        large: 100_000,
        requests_per_tunnel: 2,
        inner_h2: false,
        inject_error_every: 0,
        op_timeout: Duration::from_secs(10),
        proxy_pid: None,
        hosts: Default::default(),
        blocked_hosts: Default::default(),
        blocked_share: 0.05,
        blocked_status: vec![403],
    }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-loadgen-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

#[tokio::test]
async fn counts_an_injected_error_and_nothing_else() {
    let dir = tempdir("inject");
    let ca = dir.join("origin-ca.pem");
    let origin = start(OriginOptions {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec!["127.0.0.1:0".parse().unwrap()],
        sans: vec![],
        ca_out: Some(ca.clone()),
        default_delay: Duration::ZERO,
        dns: None,
        cert_hosts: None,
    })
    .await
    .expect("origin");
    let gw = gateway(&dir).await;
    let proxy = gw.addrs.plain.expect("plain listener");

    // 20 plain GETs, every 7th fetches /status/500: exactly 2 errors.
    let mut cfg = config(proxy, &origin, ca.clone(), "http=1");
    cfg.inject_error_every = 7;
    let r = crate::client::run(cfg).await.expect("run");
    assert_eq!(r.errors.get("status_500"), Some(&2), "{:?}", r.errors);
    assert_eq!(r.errors_total, 2, "{:?}", r.errors);
    assert_eq!(r.operations_ok, 18);

    // Mixed, no injection: blocked (403) counts as success, tunnels and uploads work.
    let cfg = config(
        proxy,
        &origin,
        ca,
        "http=2,connect=2,blocked=1,upload=1,download=1",
    );
    let r = crate::client::run(cfg).await.expect("run");
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(r.operations_ok, 20);
    assert!(
        r.per_kind.contains_key("blocked") && r.per_kind.contains_key("connect"),
        "{:?}",
        r.per_kind.keys()
    );
    assert!(r.tls_handshakes > 0);
    assert!(r.bytes_up >= 100_000);

    gw.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dns_answers_a_with_loopback() {
    // Query id 0x1234, RD, one question: outlook.office365.com A IN.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["outlook", "office365", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let r = crate::origin::dns_answer(&q).expect("answer");
    assert_eq!(&r[0..2], &[0x12, 0x34]);
    assert_eq!(&r[6..8], &[0, 1], "one answer");
    assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 1]);
}

/// `--hosts` / `--blocked-hosts`: `http` and `connect` operations address the
/// listed names (TLS inside the tunnel verified for the name), a share goes
/// to blocked names and must get the block answer; a name the proxy lets
/// through counts as an error.
#[tokio::test]
async fn host_lists_exercise_the_filter() {
    let dir = tempdir("hosts");
    let ca = dir.join("origin-ca.pem");
    let allowed = dir.join("hosts.txt");
    std::fs::write(&allowed, "# allowed\nschool-a.test\nWWW.School-B.test\n\n").unwrap();
    let origin = start(OriginOptions {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec!["127.0.0.1:0".parse().unwrap()],
        sans: vec![],
        ca_out: Some(ca.clone()),
        default_delay: Duration::ZERO,
        dns: Some("127.0.0.1:0".parse().unwrap()),
        cert_hosts: Some(allowed.clone()),
    })
    .await
    .expect("origin");
    // The default config blocks `blocked.example` and `.gambling.example`.
    let gw = gateway_with_dns(&dir, origin.dns).await;
    let proxy = gw.addrs.plain.expect("plain listener");
    let blocked = dir.join("blocked.txt");
    std::fs::write(&blocked, "blocked.example\ncasino.gambling.example\n").unwrap();

    let mut cfg = config(proxy, &origin, ca.clone(), "http=1,connect=1");
    cfg.ops_per_device = Some(60);
    cfg.hosts = std::sync::Arc::new(crate::client::read_host_list(&allowed, "--hosts").unwrap());
    cfg.blocked_hosts =
        std::sync::Arc::new(crate::client::read_host_list(&blocked, "--blocked-hosts").unwrap());
    cfg.blocked_share = 0.3;
    let r = crate::client::run(cfg.clone()).await.expect("run");
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(r.operations_ok, 60);
    for k in ["http", "connect", "http_blocked", "connect_blocked"] {
        assert!(
            r.per_kind.contains_key(k),
            "no {k} in {:?}",
            r.per_kind.keys()
        );
    }
    let blocked_ops = r.per_kind["http_blocked"].ok + r.per_kind["connect_blocked"].ok;
    assert!(
        (5..=35).contains(&blocked_ops),
        "{blocked_ops} of 60 on blocked hosts with share 0.3"
    );

    // A "blocked" host the proxy lets through, or a block status not accepted: errors.
    std::fs::write(&blocked, "not-blocked.test\n").unwrap();
    cfg.blocked_hosts =
        std::sync::Arc::new(crate::client::read_host_list(&blocked, "--blocked-hosts").unwrap());
    cfg.blocked_share = 1.0;
    cfg.ops_per_device = Some(20);
    let r = crate::client::run(cfg.clone()).await.expect("run");
    assert_eq!(r.operations_ok, 0, "{:?}", r.per_kind);
    assert_eq!(r.errors_total, 20, "{:?}", r.errors);
    assert!(
        r.errors
            .keys()
            .all(|k| k == "not_blocked_200" || k == "not_blocked_connect_200"),
        "{:?}",
        r.errors
    );

    gw.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_list_and_status_parsing() {
    let dir = tempdir("hostlist");
    let f = dir.join("h.txt");
    std::fs::write(&f, "a.example\nhttp://b.example/\n").unwrap();
    let e = crate::client::read_host_list(&f, "--hosts")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("h.txt:2") && e.contains("not a host name"),
        "{e}"
    );
    std::fs::write(&f, "b.example:443\n").unwrap();
    assert!(crate::client::read_host_list(&f, "--hosts").is_err());
    std::fs::write(&f, "# nothing\n\n").unwrap();
    assert!(crate::client::read_host_list(&f, "--hosts")
        .unwrap_err()
        .to_string()
        .contains("no host name"));
    assert!(
        crate::client::read_host_list(&dir.join("missing.txt"), "--hosts")
            .unwrap_err()
            .to_string()
            .contains("cannot read")
    );
    assert_eq!(
        crate::client::parse_status_list("403, 302").unwrap(),
        vec![403, 302]
    );
    assert!(crate::client::parse_status_list("forbidden").is_err());
    assert!(crate::client::parse_status_list("").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inspected sessions: the gateway mints a certificate for the Microsoft
/// 365 name (resolved to the origin by its DNS responder), the client
/// offers `h2, http/1.1` or `http/1.1` inside and gets what it offered;
/// keep-alive requests on one session, the workload's inner HTTP/2 count,
/// and the steady-state and held-sessions modes of the profiling scripts.
#[tokio::test]
async fn inspected_sessions_speak_the_offered_inner_protocol() {
    let dir = tempdir("inspect");
    let ca = dir.join("origin-ca.pem");
    let origin = start(OriginOptions {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec!["127.0.0.1:0".parse().unwrap()],
        sans: vec!["outlook.office365.com".into()],
        ca_out: Some(ca.clone()),
        default_delay: Duration::ZERO,
        dns: Some("127.0.0.1:0".parse().unwrap()),
        cert_hosts: None,
    })
    .await
    .expect("origin");
    let text = komugate::config::DEFAULT_CONFIG
        .replace(
            "servers = []",
            &format!("servers = [\"{}\"]", origin.dns.expect("dns")),
        )
        .replace(
            "dir = \"./komugate-data\"",
            &format!("dir = {:?}", dir.join("data").display().to_string()),
        )
        .replace("plain = \"127.0.0.1:3128\"", "plain = \"127.0.0.1:0\"")
        .replace("mtls = \"127.0.0.1:8443\"", "mtls = \"\"")
        .replace("admin = \"127.0.0.1:9090\"", "admin = \"\"")
        .replace(
            "\nupstream_ca = \"\"",
            &format!("\nupstream_ca = {:?}", ca.display().to_string()),
        )
        .replace("\nhosts = []", "\nhosts = [\"*.office365.com\"]")
        .replace(
            "allowed_ports = [80, 443, 8080, 8081, 8443]",
            "allowed_ports = []",
        );
    komugate::pki::ensure(&dir.join("data/pki"), &[]).expect("test PKI");
    let gw_config = komugate::config::Config::parse(&text, "test").expect("test config");
    let gw = komugate::gateway::start::start(gw_config)
        .await
        .expect("gateway starts");
    let proxy = gw.addrs.plain.expect("plain listener");
    let inspect_ca = dir.join("data/pki/inspect-ca.pem");
    let target = format!("outlook.office365.com:{}", origin.https[0].port());

    for inner_h2 in [false, true] {
        let spec = crate::inspected::SessionSpec {
            proxy,
            target: target.clone(),
            trust: vec![inspect_ca.clone()],
            inner_h2,
        };
        let r = crate::inspected::steady(&spec, "/bytes/1000", 3, 20, &None, &None, None)
            .await
            .expect("steady session");
        assert_eq!(r.inner_h2, inner_h2);
        assert_eq!((r.requests, r.body_bytes), (20, 20_000));
        // Only the inspection CA is trusted: the session is the gateway's.
        let held = crate::inspected::held(
            &spec,
            std::process::id(),
            4,
            2,
            "/bytes/10",
            "/bytes/10?delay=200",
            Duration::from_millis(50),
        )
        .await
        .expect("held sessions");
        assert_eq!(held.sessions_open, 4, "{:?}", held.errors);
        assert!(held.errors.is_empty(), "{:?}", held.errors);
        assert_eq!(held.inner_h2, inner_h2);

        let mut cfg = config(proxy, &origin, inspect_ca.clone(), "inspect=1");
        cfg.inspect_target = target.clone();
        cfg.inner_h2 = inner_h2;
        cfg.requests_per_tunnel = 5;
        cfg.ops_per_device = Some(3);
        cfg.size = 1024;
        let r = crate::client::run(cfg).await.expect("run");
        assert_eq!(r.errors_total, 0, "{:?}", r.errors);
        assert_eq!(r.requests, 15);
        assert_eq!(r.inner_h2_tunnels, if inner_h2 { 3 } else { 0 });
    }

    gw.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
