//! Non-web firewall: `[firewall]` rules allow and deny raw
//! TCP flows (CONNECT tunnels) to local echo servers by port, CIDR, group and
//! location; web ports are left to the web policy; each flow is one access
//! record with bytes and duration.

use std::net::SocketAddr;

use komugate_tests::gw::TestGateway;
use komugate_tests::upstream::EchoServer;
use komugate_tests::within;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

struct Echoes {
    none: EchoServer,
    allow: EchoServer,
    group: EchoServer,
    loc: EchoServer,
    web: EchoServer,
}

fn policy_text(e: &Echoes) -> String {
    format!(
        r#"
version = 1

[defaults]
action = "allow"

[[group]]
name = "students"

[[group]]
name = "staff"

[[site]]
name = "school"
cidrs = ["127.0.0.1/32"]

[firewall]
web_ports = [80, 443, 8080, 8443, {web}]
default = "deny"

[[firewall.rule]]
name = "students-no-admin-port"
groups = ["students"]
ports = [{group}]
action = "deny"

[[firewall.rule]]
name = "school-only"
ports = ["{loc}-{loc}"]
location = "school"
protocol = "tcp"
action = "allow"

[[firewall.rule]]
name = "loopback-services"
cidrs = ["127.0.0.0/8"]
ports = [{allow}, {group}]
action = "allow"
log = true
"#,
        web = e.web.addr.port(),
        group = e.group.addr.port(),
        loc = e.loc.addr.port(),
        allow = e.allow.addr.port(),
    )
}

/// Sends CONNECT and reads the response head byte by byte (no tunnel bytes consumed).
async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    authority: &str,
) -> (String, S) {
    conn.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            within("CONNECT response", conn.read(&mut b)).await.unwrap(),
            1,
            "closed during CONNECT"
        );
        head.push(b[0]);
    }
    (String::from_utf8_lossy(&head).to_string(), conn)
}

async fn plain_from(gw: &TestGateway, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(gw.plain()).await.unwrap()
}

/// Echo round trip through an established tunnel.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    within("echo", conn.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, msg);
}

fn rule_of(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.strip_prefix("komugate-rule: ")
            .map(|s| s.trim().to_string())
    })
}

#[tokio::test]
async fn firewall_rules_by_port_cidr_group_and_location() {
    let e = Echoes {
        none: EchoServer::start().await,
        allow: EchoServer::start().await,
        group: EchoServer::start().await,
        loc: EchoServer::start().await,
        web: EchoServer::start().await,
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&e)).unwrap();
    let policy = policy.display().to_string();
    let gw = TestGateway::start(move |c, _| {
        c.policy.file = policy;
    })
    .await;

    // 1. A non-web port with no rule: denied by the default, never connected.
    let target = e.none.addr.to_string();
    let (head, _c) = connect_on(plain_from(&gw, "127.0.0.1").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        rule_of(&head).as_deref(),
        Some("firewall-default"),
        "{head}"
    );
    let rec = gw.access_record(|r| r["target"] == target.as_str()).await;
    assert_eq!(rec["decision"], "block", "{rec}");
    assert_eq!(rec["rule"], "firewall-default", "{rec}");
    assert_eq!(
        e.none.accepts(),
        0,
        "the echo server must see no connection"
    );

    // 2. Allowed by CIDR + port: bytes flow; one record with bytes and duration.
    let target = e.allow.addr.to_string();
    let (head, mut c) = connect_on(plain_from(&gw, "127.0.0.1").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echo(&mut c, b"hello firewall").await;
    drop(c);
    let rec = gw
        .access_record(|r| r["target"] == target.as_str() && r["bytes_up"].as_u64() > Some(0))
        .await;
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["rule"], "loopback-services", "{rec}");
    assert_eq!(rec["bytes_up"], 14, "{rec}");
    assert_eq!(rec["bytes_down"], 14, "{rec}");
    assert!(rec["duration_ms"].is_u64(), "{rec}");
    assert_eq!(e.allow.accepts(), 1);

    // 3. Denied by group (device certificate groups on the mTLS listener),
    //    while another group reaches the same port through the CIDR rule.
    let target = e.group.addr.to_string();
    for (device, groups, status) in [("S-1", "students", 403), ("T-1", "staff", 200)] {
        let cert = gw.tls().device(device, &[groups]);
        let config = gw.tls().client_config(Some(&cert), &[b"http/1.1"]);
        let tcp = TcpStream::connect(gw.mtls()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (head, mut c) = connect_on(tls, &target).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{device}: {head}"
        );
        if status == 200 {
            echo(&mut c, b"ping").await;
        } else {
            assert_eq!(
                rule_of(&head).as_deref(),
                Some("students-no-admin-port"),
                "{head}"
            );
        }
    }
    let rec = gw
        .access_record(|r| r["target"] == target.as_str() && r["decision"] == "block")
        .await;
    assert_eq!(rec["rule"], "students-no-admin-port", "{rec}");
    assert_eq!(e.group.accepts(), 1, "only the staff device got through");

    // 4. Location-limited allow: from the school site it works, off-site it is denied.
    let target = e.loc.addr.to_string();
    let (head, mut c) = connect_on(plain_from(&gw, "127.0.0.1").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "in school: {head}");
    echo(&mut c, b"at school").await;
    drop(c);
    let (head, _c) = connect_on(plain_from(&gw, "127.0.0.2").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 403"), "off-site: {head}");
    assert_eq!(
        rule_of(&head).as_deref(),
        Some("firewall-default"),
        "{head}"
    );
    assert_eq!(e.loc.accepts(), 1);
    let rec = gw
        .access_record(|r| r["target"] == target.as_str() && r["bytes_up"].as_u64() > Some(0))
        .await;
    assert_eq!(rec["rule"], "school-only", "{rec}");

    // 5. A web port with no firewall rule is left to the web policy (allowed here).
    let target = e.web.addr.to_string();
    let (head, mut c) = connect_on(plain_from(&gw, "127.0.0.2").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "web port: {head}");
    echo(&mut c, b"web").await;
    drop(c);
    let rec = gw
        .access_record(|r| r["target"] == target.as_str() && r["bytes_up"].as_u64() > Some(0))
        .await;
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_ne!(rec["rule"], "firewall-default", "{rec}");
}

/// Bypassed tunnels are firewalled too: a tunnel bypassed by the policy (at
/// CONNECT time) and one the inspector bypasses after the fact (plain bytes on
/// an inspected tunnel with `non_tls = "tunnel"`), while an inspected web port
/// is left to the web policy at CONNECT time.
#[tokio::test]
async fn bypassed_tunnels_are_firewalled() {
    let by_policy = EchoServer::start().await;
    let by_inspector = EchoServer::start().await;
    let (p1, p2) = (by_policy.addr.port(), by_inspector.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
version = 1
[defaults]
action = "allow"
tunnel = "inspect"

[[rule]]
name = "bypass this port"
ports = [{p1}]
action = "allow"
tunnel = "bypass"

[firewall]
web_ports = [443, {p1}, {p2}]

[[firewall.rule]]
name = "no-loopback-web"
cidrs = ["127.0.0.0/8"]
ports = [{p1}, {p2}]
action = "deny"
"#
        ),
    )
    .unwrap();
    let policy = policy.display().to_string();
    let gw = TestGateway::start(move |c, _| {
        c.policy.file = policy;
        c.inspect.hosts = vec!["*".into()];
        c.inspect.non_tls = komugate::config::NonTlsAction::Tunnel;
    })
    .await;

    // Bypassed by the policy: refused at CONNECT.
    let target = by_policy.addr.to_string();
    let (head, _c) = connect_on(plain_from(&gw, "127.0.0.1").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(rule_of(&head).as_deref(), Some("no-loopback-web"), "{head}");
    assert_eq!(by_policy.accepts(), 0);

    // Inspected web port: accepted at CONNECT; the inspector's bypass of the
    // non-TLS bytes is firewalled and the tunnel closed.
    let target = by_inspector.addr.to_string();
    let (head, mut c) = connect_on(plain_from(&gw, "127.0.0.1").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"SSH-2.0-test\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("tunnel closed", c.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the tunnel must be closed without data");
    let rec = gw.access_record(|r| r["target"] == target.as_str()).await;
    assert_eq!(rec["decision"], "block", "{rec}");
    assert_eq!(rec["rule"], "no-loopback-web", "{rec}");
    assert_eq!(by_inspector.accepts(), 0);
}

/// The firewall locates a flow like the decision does: a valid site
/// assertion on the CONNECT places the device at its site, so a rule
/// limited to that site allows the flow; without it the device is off-site.
#[tokio::test]
async fn firewall_honours_a_site_assertion() {
    let echo_server = EchoServer::start().await;
    let port = echo_server.addr.port();
    let key = komugate::beacon::BeaconKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
version = 1

[[site]]
name = "hospital"
assertion = true
beacon_key = "{}"

[firewall]
default = "deny"

[[firewall.rule]]
name = "hospital-only"
ports = [{port}]
location = "hospital"
action = "allow"
"#,
            key.public_base64()
        ),
    )
    .unwrap();
    let policy = policy.display().to_string();
    let gw = TestGateway::start(move |c, _| c.policy.file = policy).await;
    let target = echo_server.addr.to_string();
    let now = komugate::common::unix_now();
    for (device, assert_site, status) in [("H-1", false, 403), ("H-2", true, 200)] {
        let cert = gw.tls().device(device, &["staff"]);
        let config = gw.tls().client_config(Some(&cert), &[b"http/1.1"]);
        let tcp = TcpStream::connect(gw.mtls()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let assertion = if assert_site {
            format!(
                "{}: {}\r\n",
                komugate::beacon::ASSERTION_HEADER,
                key.issue("hospital", device, now).unwrap()
            )
        } else {
            String::new()
        };
        tls.write_all(
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{assertion}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(
                within("CONNECT response", tls.read(&mut b)).await.unwrap(),
                1
            );
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{device}: {head}"
        );
        if status == 200 {
            echo(&mut tls, b"at the hospital").await;
        } else {
            assert_eq!(
                rule_of(&head).as_deref(),
                Some("firewall-default"),
                "{head}"
            );
        }
    }
    let rec = gw
        .access_record(|r| r["device"] == "H-2" && r["target"] == target.as_str())
        .await;
    assert_eq!(rec["rule"], "hospital-only", "{rec}");
    assert_eq!(rec["site"], "hospital", "{rec}");
    assert_eq!(
        echo_server.accepts(),
        1,
        "only the device at the hospital got through"
    );
}
