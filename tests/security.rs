//! Security properties of the gateway, tested the way an attacker would
//! probe them: real TLS clients that keep their session store, real proxy
//! requests, raw bytes on the wire. docs/SECURITY.md names these tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use komugate::logs::audit::ReloadSource;
use komugate::pki::IssuedCert;
use komugate_tests::gw::{client_config, tls_connect, TestGateway, TestPki};
use komugate_tests::raw::{self, RawConn};
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{eventually, within};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

fn get(url: &str) -> Vec<u8> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// A device certificate valid from an hour ago until `secs` from now.
fn short_lived(pki: &TestPki, id: &str, secs: i64) -> IssuedCert {
    let now = time::OffsetDateTime::now_utc();
    pki.device_ca()
        .issue_device(
            id,
            &["staff".to_string()],
            now - time::Duration::hours(1),
            now + time::Duration::seconds(secs),
        )
        .unwrap()
}

/// A TLS client of one protocol version that keeps its session store
/// between connections (rustls' default in-memory resumption store).
fn resuming_client(pki: &TestPki, device: &IssuedCert, tls12: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.server_ca()).unwrap();
    let version: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(version)
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap()],
        rustls_pki_types::PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One HTTP/1.1 request over a new mTLS connection: the status, or None if
/// the gateway closed the connection instead of answering; and whether the
/// TLS session was resumed.
async fn mtls_get(
    gw: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    url: &str,
) -> (Option<u16>, bool) {
    let Ok(tls) = tls_connect(gw, config).await else {
        return (None, false);
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut c = RawConn::new(tls);
    if c.send(&get(url)).await.is_err() {
        return (None, resumed);
    }
    match tokio::time::timeout(Duration::from_secs(3), c.read_response(false)).await {
        Ok(Ok(r)) => (Some(r.status), resumed),
        _ => (None, resumed),
    }
}

async fn expired_certificate_does_not_survive_resumption(tls12: bool) {
    let gw = TestGateway::start(|_, _| {}).await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let pki = gw.tls();
    let device = short_lived(&pki, "laptop-resumer", 2);
    let client = resuming_client(&pki, &device, tls12);
    let url = format!("http://{}/before-expiry", up.addr);
    let (status, _) = mtls_get(gw.mtls(), client.clone(), &url).await;
    assert_eq!(status, Some(200), "valid certificate, first connection");
    // Resumption works while the certificate is valid (so the check below
    // really exercises a resumed session).
    let (status, resumed) = mtls_get(gw.mtls(), client.clone(), &url).await;
    assert_eq!(status, Some(200));
    assert!(resumed, "tls12={tls12}: the second connection must resume");

    // Past the certificate's not-after (second granularity, plus margin).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let url = format!("http://{}/after-expiry", up.addr);
    let (status, resumed) = mtls_get(gw.mtls(), client.clone(), &url).await;
    assert!(resumed, "tls12={tls12}: the client resumed its session");
    assert_eq!(
        status, None,
        "tls12={tls12}: a resumed session with an expired certificate must be refused"
    );
    assert!(
        !up.seen().iter().any(|s| s.uri.path() == "/after-expiry"),
        "nothing reaches the upstream after expiry"
    );
    let n = eventually(Duration::from_secs(2), || {
        let v = gw.metric(
            "komugate_tls_handshake_failures_total",
            &[("listener", "mtls"), ("reason", "expired")],
        );
        async move { (v >= 1.0).then_some(v) }
    })
    .await;
    assert!(n.is_some(), "refusal counted as expired:\n{}", gw.metrics());
    gw.shutdown().await;
}

#[tokio::test]
async fn s01_expired_certificate_refused_on_tls13_resumption() {
    within(
        "s01",
        expired_certificate_does_not_survive_resumption(false),
    )
    .await
}

#[tokio::test]
async fn s02_expired_certificate_refused_on_tls12_resumption() {
    within("s02", expired_certificate_does_not_survive_resumption(true)).await
}

#[tokio::test]
async fn s03_open_connection_is_closed_when_its_certificate_expires() {
    within("s03", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let device = short_lived(&pki, "laptop-keepalive", 2);
        let tls = tls_connect(gw.mtls(), resuming_client(&pki, &device, false))
            .await
            .unwrap();
        let mut c = RawConn::new(tls);
        c.send(&get(&format!("http://{}/one", up.addr)))
            .await
            .unwrap();
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "the keep-alive connection must be closed when the certificate expires"
        );
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s04_revocation_by_reload_closes_connections_and_ends_resumption() {
    within("s04", async {
        let gw = TestGateway::start(|c, _| {
            std::fs::write(c.data.dir.join("revoked.txt"), "# none yet\n").unwrap();
            c.tls.revoked_serials = "revoked.txt".into();
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let device = pki.device("laptop-lost", &["staff"]);
        let bystander = pki.device("laptop-fine", &["staff"]);
        let client = resuming_client(&pki, &device, false);
        let url = format!("http://{}/x", up.addr);
        assert_eq!(mtls_get(gw.mtls(), client.clone(), &url).await.0, Some(200));
        // An open connection of the device, and one of another device.
        let mut open = RawConn::new(tls_connect(gw.mtls(), client.clone()).await.unwrap());
        open.send(&get(&url)).await.unwrap();
        assert_eq!(open.read_response(false).await.unwrap().status, 200);
        let mut other = RawConn::new(
            tls_connect(gw.mtls(), resuming_client(&pki, &bystander, false))
                .await
                .unwrap(),
        );

        let der = CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap();
        let serial = komugate::device_auth::identity_from_cert(&der)
            .unwrap()
            .serial_hex;
        std::fs::write(
            gw.dir.path().join("revoked.txt"),
            format!("{serial} # lost\n"),
        )
        .unwrap();
        let gateway = gw.running.as_ref().unwrap().gateway.clone();
        gateway.reload(ReloadSource::Sighup).await.unwrap();

        assert!(
            open.closed_within(Duration::from_secs(3)).await,
            "the revoked device's open connection is closed at the reload"
        );
        let (status, _) = mtls_get(gw.mtls(), client.clone(), &url).await;
        assert_eq!(status, None, "no new connection for the revoked device");
        other.send(&get(&url)).await.unwrap();
        assert_eq!(
            other.read_response(false).await.unwrap().status,
            200,
            "other devices keep their connections"
        );
        // The reload changed the trust files: audited.
        let audit = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
        assert!(
            audit.contains("\"type\":\"ca_change\"")
                && audit.contains("mtls-trust")
                && audit.contains("1 revoked serial"),
            "{audit}"
        );
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s05_device_ca_change_applies_on_reload_without_restart() {
    within("s05", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let old_device = pki.device("laptop-old-ca", &[]);
        let url = format!("http://{}/x", up.addr);
        let client = resuming_client(&pki, &old_device, true);
        assert_eq!(mtls_get(gw.mtls(), client.clone(), &url).await.0, Some(200));
        // A new device CA replaces the old one (as after `pki init --force`).
        let new_ca = komugate::pki::generate_ca(komugate::pki::DEVICE_CA_CN).unwrap();
        std::fs::write(pki.dir.join("device-ca.pem"), new_ca.cert_pem()).unwrap();
        std::fs::write(pki.dir.join("device-ca.key"), new_ca.key_pem()).unwrap();
        let gateway = gw.running.as_ref().unwrap().gateway.clone();
        gateway.reload(ReloadSource::Sighup).await.unwrap();
        assert_eq!(
            mtls_get(gw.mtls(), client, &url).await.0,
            None,
            "a certificate of the replaced CA no longer works, resumed or not"
        );
        let new_device = pki.device("laptop-new-ca", &[]);
        let h1: &[&[u8]] = &[b"http/1.1"];
        let (status, _) = mtls_get(
            gw.mtls(),
            client_config(pki.server_ca(), Some(&new_device), h1),
            &url,
        )
        .await;
        assert_eq!(status, Some(200), "the new CA's devices are accepted");
        gw.shutdown().await;
    })
    .await
}

/// The block page's rule, or the status if it is not a refusal.
fn refusal_rule(r: &raw::RawResponse) -> String {
    match r.header("komugate-rule") {
        Some(rule) if r.status == 403 => rule,
        _ => format!("status {} ({})", r.status, r.text()),
    }
}

#[tokio::test]
async fn s06_own_listeners_are_never_a_destination() {
    within("s06", async {
        // Loopback is an allowed destination: the own-listener guard must
        // hold anyway.
        let gw = TestGateway::start(|c, _| {
            c.egress.allow_destinations =
                vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        })
        .await;
        let (plain, mtls, admin) = (gw.plain(), gw.mtls(), gw.admin());
        for url in [
            format!("http://{admin}/metrics"),
            format!("http://{admin}/healthz"),
            format!("http://localhost.rebind.test:{}/metrics", admin.port()),
            format!("http://[::ffff:127.0.0.1]:{}/metrics", admin.port()),
            format!("http://{plain}/"),
            format!("http://{mtls}/"),
        ] {
            let r = raw::proxy_get(plain, &url).await.unwrap();
            assert_eq!(refusal_rule(&r), "own-listener", "GET {url} via plain");
        }
        // CONNECT to the admin listener, on the plain listener.
        let mut c = RawConn::connect(plain).await;
        c.send(format!("CONNECT {admin} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = c.read_response(true).await.unwrap();
        assert_eq!(refusal_rule(&r), "own-listener", "CONNECT {admin}");
        // The same through the mTLS listener (HTTP/1.1 forward and CONNECT).
        let pki = gw.tls();
        let device = pki.device("laptop-curious", &[]);
        let h1: &[&[u8]] = &[b"http/1.1"];
        let tls = tls_connect(mtls, pki.client_config(Some(&device), h1))
            .await
            .unwrap();
        let mut c = RawConn::new(tls);
        c.send(&get(&format!("http://{admin}/metrics")))
            .await
            .unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(refusal_rule(&r), "own-listener", "via mTLS: {}", r.text());
        c.send(format!("CONNECT {admin} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = c.read_response(true).await.unwrap();
        assert_eq!(refusal_rule(&r), "own-listener", "CONNECT via mTLS");
        let rec = gw
            .access_record(|r| r["rule"] == "own-listener" && r["listener"] == "mtls")
            .await;
        assert_eq!(rec["decision"], "block");
        // Other loopback destinations stay reachable (allowed).
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::proxy_get(plain, &format!("http://{}/fine", up.addr))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s07_ipv6_forms_embedding_ipv4_are_classified_by_the_ipv4_address() {
    within("s07", async {
        let gw = TestGateway::start(|c, _| {
            c.egress.allow_destinations =
                vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        })
        .await;
        for host in [
            "[::127.0.0.1]",
            "[::169.254.169.254]",
            "[64:ff9b::7f00:1]",
            "[64:ff9b::a9fe:a9fe]",
            "[64:ff9b:1::a00:1]",
            "[2002:7f00:1::1]",
            "[2002:a9fe:a9fe::1]",
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        ] {
            let url = format!("http://{host}:8080/");
            let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
            assert_eq!(refusal_rule(&r), "destination-guard", "GET {url}");
            let mut c = RawConn::connect(gw.plain()).await;
            c.send(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let r = c.read_response(true).await.unwrap();
            assert_eq!(refusal_rule(&r), "destination-guard", "CONNECT {host}:443");
        }
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s08_framing_header_names_with_underscores_are_refused() {
    within("s08", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        for (name, value) in [
            ("Transfer_Encoding", "chunked"),
            ("transfer_encoding", "chunked"),
            ("Content_Length", "5"),
        ] {
            let mut c = RawConn::connect(gw.plain()).await;
            c.send(
                format!(
                    "POST http://{}/smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n{name}: {value}\r\n\r\nhello",
                    up.addr
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let r = c.read_response(false).await.unwrap();
            assert_eq!(r.status, 400, "{name}: {r:?}");
            assert!(r.text().contains(name) || r.text().contains(&name.to_ascii_lowercase()), "{}", r.text());
        }
        assert_eq!(up.accepts(), 0, "nothing was forwarded");
        // Other headers with underscores are fine.
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(
            format!(
                "GET http://{}/fine HTTP/1.1\r\nHost: x\r\nX_Custom_Header: 1\r\n\r\n",
                up.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        gw.shutdown().await;
    })
    .await
}

/// A GET whose head (request line to the empty line) is exactly `len` bytes.
fn head_of_len(url: &str, len: usize) -> Vec<u8> {
    let start = format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    let pad = len - start.len() - 4;
    format!("{start}{}\r\n\r\n", "p".repeat(pad)).into_bytes()
}

#[tokio::test]
async fn s09_request_head_limit_is_exact() {
    within("s09", async {
        let gw = TestGateway::start(|c, _| c.limits.max_header_bytes = 65536).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let url = format!("http://{}/head", up.addr);
        let at_limit = head_of_len(&url, 65536);
        assert_eq!(at_limit.len(), 65536);
        let r = raw::request(gw.plain(), &at_limit).await.unwrap();
        assert_eq!(r.status, 200, "a head of exactly max_header_bytes passes");
        for len in [65537, 70_000, 81_000, 83_000] {
            let r = raw::request(gw.plain(), &head_of_len(&url, len))
                .await
                .unwrap();
            assert_eq!(r.status, 431, "a head of {len} bytes must be refused");
        }
        assert_eq!(
            up.seen().len(),
            1,
            "only the head at the limit was forwarded"
        );
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s10_malformed_chunked_body_from_the_client_is_400() {
    within("s10", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        for body in [
            "5\r\nhello\r\nZZZ\r\n\r\n",      // chunk size not hex
            "5\r\nhelloXX0\r\n\r\n",          // no CRLF after the chunk data
            "fffffffffffffffffff\r\nx\r\n", // size overflows
        ] {
            let mut c = RawConn::connect(gw.plain()).await;
            c.send(
                format!(
                    "POST http://{}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
                    up.addr
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let r = c.read_response(false).await.unwrap();
            assert_eq!(r.status, 400, "body {body:?}: {}", r.text());
        }
        let rec = gw
            .access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/upload"))
            .await;
        assert_eq!(rec["status"], 400);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s11_access_log_files_are_0640_and_log_searches_are_audited() {
    use std::os::unix::fs::PermissionsExt;
    within("s11", async {
        let gw = TestGateway::start(|c, _| c.admin.token = "s3cret-token".into()).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::proxy_get(gw.plain(), &format!("http://{}/logged", up.addr))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        gw.access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/logged"))
            .await;
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&gw.access_log), 0o640, "{}", gw.access_log.display());
        assert_eq!(mode(&gw.dir.path().join("audit.log")), 0o640);
        assert_eq!(
            mode(gw.access_log.parent().unwrap()) & 0o007,
            0,
            "log dir not world-accessible"
        );

        // A search over the admin API is audited with who and what.
        let mut c = RawConn::connect(gw.admin()).await;
        c.send(
            b"GET /admin/logs?since=-1d&host=127.0.0.1&format=csv HTTP/1.1\r\nHost: a\r\n\
              Authorization: Bearer s3cret-token\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let audit = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
        let entry = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"]["type"] == "log_search")
            .unwrap_or_else(|| panic!("no log_search entry:\n{audit}"));
        assert_eq!(entry["event"]["via"], "admin-api");
        assert!(
            entry["event"]["actor"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "{entry}"
        );
        assert_eq!(
            entry["event"]["query"],
            "since=-1d host=127.0.0.1 format=csv"
        );
        assert_eq!(entry["event"]["format"], "csv");
        let verify = komugate::logs::audit::verify(&gw.dir.path().join("audit.log")).unwrap();
        assert!(verify.problems.is_empty(), "{:?}", verify.problems);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn s12_mtls_http2_requests_with_underscored_framing_headers_are_refused() {
    within("s12", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let device = pki.device("laptop-h2", &[]);
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"h2"]))
            .await
            .unwrap();
        let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/h2-smuggle", up.addr))
            .header("content-length", "5")
            .header("transfer_encoding", "chunked")
            .body(())
            .unwrap();
        let (resp, mut stream) = h2.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"hello"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(up.accepts(), 0);
        gw.shutdown().await;
    })
    .await
}
