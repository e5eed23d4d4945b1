//! IPS signatures, threat-intel lists and DNS over HTTPS: real sockets on 127.0.0.0/8, the hand-written rules file
//! `tests/data/ips/komugate-test.rules` (plus any real Suricata rules in
//! `../shared/ips/`), a local hickory DNS server.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{RData, RecordType};
use komugate::config::Config;
use komugate_tests::gw::{tls_connect, TestGateway, TestPki};
use komugate_tests::raw::{self, RawConn};
use komugate_tests::upstream::{EchoServer, HttpUpstream, TlsUpstream};
use komugate_tests::{base64url, dns, within};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ips/komugate-test.rules")
}

/// Names the DoH / threat-intel tests resolve (zone `test.`).
const RECORDS: &[(&str, Ipv4Addr)] = &[
    ("www.allowed.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("blocked.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("x.dnsdrop.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("c2.test.", Ipv4Addr::new(127, 0, 0, 3)),
    ("evil.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("plain.test.", Ipv4Addr::new(127, 0, 0, 1)),
];

const THREAT_LIST: &str = "# test threat intel\n127.0.0.3\n127.0.99.0/24\nevil.test\n";

/// A gateway with the test rules, a threat list and its own DNS zone.
async fn gateway(
    tweak: impl FnOnce(&mut Config),
) -> (TestGateway, dns::DnsServer, tempfile::TempDir) {
    let dns = dns::start("test.", RECORDS).await;
    let lists = tempfile::tempdir().unwrap();
    let list = lists.path().join("test-threats.txt");
    std::fs::write(&list, THREAT_LIST).unwrap();
    let dns_addr = dns.addr;
    let gw = TestGateway::start(|c: &mut Config, _: &TestPki| {
        c.dns.servers = vec![dns_addr];
        c.ips.rules = vec![rules_file()];
        c.threat_intel.lists = vec![list];
        tweak(c);
    })
    .await;
    (gw, dns, lists)
}

fn has_ips(rec: &serde_json::Value, sid: &str) -> bool {
    rec["ips"]
        .as_str()
        .map(|s| s.split(',').any(|x| x == sid))
        .unwrap_or(false)
}

// ---------------------------------------------------------------- ips check

#[test]
fn ips_check_reports_loaded_and_skipped_rules() {
    let (engine, report) = komugate::ips::IpsEngine::load(&[rules_file()]).unwrap();
    let summary = report.summary();
    println!("{summary}");
    assert_eq!(report.loaded, 21, "{summary}");
    assert_eq!(engine.rule_count(), 21);
    assert_eq!(report.skipped_total(), 9, "{summary}");
    for reason in [
        "unsupported protocol udp",
        "unsupported protocol icmp",
        "unsupported keyword byte_test",
        "unsupported keyword flowbits",
        "pcre lookaround",
        "pcre backreference",
        "unsupported keyword http.cookie",
        "unsupported keyword dsize",
        "missing sid",
    ] {
        assert_eq!(
            report.skipped.get(reason).map(|s| s.count),
            Some(1),
            "{reason}:\n{summary}"
        );
    }
    assert!(summary.contains("skipped by reason:"), "{summary}");
    assert!(
        summary.contains("komugate-test.rules:"),
        "examples carry file:line\n{summary}"
    );
    assert!(summary.contains("sid 9100903"), "{summary}");
    // A missing file is an error that names it.
    let err = komugate::ips::IpsEngine::load(&[Path::new("/nonexistent/x.rules")])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("/nonexistent/x.rules") && err.contains("[ips] rules"),
        "{err}"
    );
}

/// Real Suricata rule files, if the environment provides them.
#[test]
fn real_suricata_rules_load_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/ips");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("{} absent: skipping the real-rules check", dir.display());
        return;
    };
    let files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rules"))
        .collect();
    if files.is_empty() {
        eprintln!("no .rules files in {}: skipping", dir.display());
        return;
    }
    let (_, report) = komugate::ips::IpsEngine::load(&files).unwrap();
    println!("{}", report.summary());
    assert_eq!(report.loaded + report.skipped_total(), report.rules);
}

// ---------------------------------------------------------------- plain HTTP

#[tokio::test]
async fn http_rules_alert_and_drop_on_forwarded_requests() {
    within("http rules", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;

        // alert: passes, recorded.
        let url = format!("http://{}/ips-alert-marker?x=1", up.addr);
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let rec = gw.access_record(|v| v["target"].as_str() == Some(url.as_str())).await;
        assert!(has_ips(&rec, "9100002"), "{rec}");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["ips_events"][0]["msg"], "KOMUGATE POLICY test marker in URI");
        assert_eq!(rec["ips_events"][0]["action"], "alert");

        // drop on the User-Agent: 403 block page, upstream never sees it.
        let seen_before = up.seen().len();
        let req = format!("GET http://{}/x HTTP/1.1\r\nHost: {}\r\nUser-Agent: sqlmap/1.7\r\nConnection: close\r\n\r\n", up.addr, up.addr);
        let r = raw::request(gw.plain(), req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("komugate-rule").as_deref(), Some("ips:9100001"));
        assert!(r.text().contains("9100001"), "{}", r.text());
        assert_eq!(up.seen().len(), seen_before);
        let rec = gw.access_record(|v| v["rule"] == "ips:9100001").await;
        assert_eq!(rec["decision"], "block");

        // drop on method + uri + header together.
        let req = format!(
            "POST http://{}/panel/gate.php HTTP/1.1\r\nHost: {}\r\nX-Bot-Id: 42\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            up.addr, up.addr
        );
        let r = raw::request(gw.plain(), req.as_bytes()).await.unwrap();
        assert_eq!(r.header("komugate-rule").as_deref(), Some("ips:9100003"), "{r:?}");
        // ... not without the header.
        let req = format!("POST http://{}/panel/gate.php HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", up.addr, up.addr);
        assert_eq!(raw::request(gw.plain(), req.as_bytes()).await.unwrap().status, 200);

        // pcre on the URI.
        let r = raw::proxy_get(gw.plain(), &format!("http://{}/static/../../../etc/passwd", up.addr)).await.unwrap();
        assert_eq!(r.header("komugate-rule").as_deref(), Some("ips:9100004"), "{r:?}");

        // Request body: the credential pattern in the first bytes is dropped
        // before anything reaches the upstream; a harmless body passes.
        let accepts_before = up.seen().len();
        let body = "user=alice&password=hunter2";
        let req = format!(
            "POST http://{}/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            up.addr,
            up.addr,
            body.len()
        );
        let r = raw::request(gw.plain(), req.as_bytes()).await.unwrap();
        assert_eq!(r.header("komugate-rule").as_deref(), Some("ips:9100006"), "{r:?}");
        assert_eq!(up.seen().len(), accepts_before);
        let chunked = format!(
            "POST http://{}/upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            up.addr, up.addr
        );
        let r = raw::request(gw.plain(), chunked.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "hello world");

        assert!(gw.metric("komugate_ips_events_total", &[("action", "alert")]) >= 1.0);
        assert!(gw.metric("komugate_ips_events_total", &[("action", "drop")]) >= 4.0);
        gw.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------- tunnels

async fn connect_tunnel(
    proxy: std::net::SocketAddr,
    target: &str,
) -> RawConn<tokio::net::TcpStream> {
    let mut c = RawConn::connect(proxy).await;
    c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    c
}

#[tokio::test]
async fn raw_tunnel_first_bytes_alert_and_drop() {
    within("raw tunnel rules", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;
        let echo = EchoServer::start().await;
        let target = echo.addr.to_string();

        // alert: the bytes pass (echoed back), the tunnel record carries the sid.
        let mut c = connect_tunnel(gw.plain(), &target).await;
        c.send(b"hello ips-stream-alert").await.unwrap();
        assert_eq!(c.read_exact_n(22).await.unwrap(), b"hello ips-stream-alert");
        drop(c);
        let rec = gw
            .access_record(|v| v["method"] == "CONNECT" && has_ips(v, "9100305"))
            .await;
        assert_eq!(rec["decision"], "allow");

        // drop: the matching bytes never reach the upstream; the tunnel closes.
        let mut c = connect_tunnel(gw.plain(), &target).await;
        c.send(b"EVILSHELL\x00\x01\x02 spawn").await.unwrap();
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "tunnel must be closed"
        );
        let rec = gw.access_record(|v| v["rule"] == "ips:9100302").await;
        assert_eq!(rec["decision"], "block");
        assert_eq!(rec["bytes_up"], 0, "{rec}");
        assert_eq!(rec["ips_events"][0]["classtype"], "trojan-activity");
        gw.shutdown().await;
    })
    .await;
}

async fn tls_through_tunnel(
    gw: &TestGateway,
    up: &TlsUpstream,
    sni: &str,
) -> std::io::Result<String> {
    let c = connect_tunnel(gw.plain(), &up.addr.to_string()).await;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut config = (*up.client_config()).clone();
    // The name differs from the certificate's on purpose: the test is about
    // what the gateway does with the ClientHello, so skip name checks.
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(NoVerify));
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, c.stream)
        .await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out)
        .await
        .or_else(|e| if out.is_empty() { Err(e) } else { Ok(0) })?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn sni_of_tls_tunnels_is_inspected() {
    within("sni rules", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;
        let up = TlsUpstream::start().await;
        let ok = tls_through_tunnel(&gw, &up, "localhost").await.unwrap();
        assert!(ok.contains("secure hello"), "{ok}");

        // tls.sni drop rule: the handshake never completes.
        let err = tls_through_tunnel(&gw, &up, "www.bad-sni.example").await;
        assert!(err.is_err(), "{err:?}");
        let rec = gw.access_record(|v| v["rule"] == "ips:9100101").await;
        assert_eq!(rec["decision"], "block");
        assert_eq!(rec["ips_events"][0]["source"], "sni");

        // alert rule: passes, logged.
        let ok = tls_through_tunnel(&gw, &up, "tracker.example")
            .await
            .unwrap();
        assert!(ok.contains("secure hello"));
        gw.access_record(|v| has_ips(v, "9100103")).await;

        // A threat-intel domain in the SNI of a tunnel to an innocent address.
        let err = tls_through_tunnel(&gw, &up, "cdn.evil.test").await;
        assert!(err.is_err());
        let rec = gw
            .access_record(|v| v["rule"] == "threat-intel" && v["method"] == "CONNECT")
            .await;
        assert_eq!(rec["ips_events"][0]["list"], "test-threats");
        gw.shutdown().await;
    })
    .await;
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------- threat intel

#[tokio::test]
async fn threat_intel_listed_destinations_are_refused() {
    within("threat intel", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;

        // A name that resolves to a listed address: CONNECT refused before any connect.
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(b"CONNECT c2.test:443 HTTP/1.1\r\nHost: c2.test:443\r\n\r\n")
            .await
            .unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("komugate-rule").as_deref(), Some("threat-intel"));
        assert!(r.text().contains("test-threats"), "{}", r.text());

        // A listed CIDR as a literal address, on a forwarded request.
        let r = raw::proxy_get(gw.plain(), "http://127.0.99.7:8080/")
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("komugate-rule").as_deref(), Some("threat-intel"));

        // A listed domain (and its subdomains), without resolving it.
        let r = raw::proxy_get(gw.plain(), "http://www.evil.test/")
            .await
            .unwrap();
        assert_eq!(r.header("komugate-rule").as_deref(), Some("threat-intel"));

        // Which laptop talked to the malicious server: one search on the log.
        let dev = gw.tls().device("T-0042", &["teachers"]);
        let cfg = gw.tls().client_config(Some(&dev), &[b"http/1.1"]);
        let mut c = RawConn::new(tls_connect(gw.mtls(), cfg).await.unwrap());
        c.send(b"CONNECT c2.test:8443 HTTP/1.1\r\nHost: c2.test:8443\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.read_response(false).await.unwrap().status, 403);
        let rec = gw
            .access_record(|v| v["device"] == "T-0042" && v["ips"] == "threat-intel")
            .await;
        assert_eq!(rec["target"], "c2.test:8443");
        assert_eq!(rec["ips_events"][0]["entry"], "127.0.0.3/32");

        // Unlisted destinations still work.
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::proxy_get(
            gw.plain(),
            &format!("http://plain.test:{}/ok", up.addr.port()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(gw.metric("komugate_threat_intel_blocks_total", &[("via", "address")]) >= 2.0);
        gw.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------- DoH

fn dns_query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0xbeef).set_recursion_desired(true);
    m.add_query(Query::query(format!("{name}.").parse().unwrap(), qtype));
    m.to_vec().unwrap()
}

struct Doh {
    conn: RawConn<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl Doh {
    async fn connect(gw: &TestGateway, device: &str) -> Doh {
        let dev = gw.tls().device(device, &["teachers"]);
        let cfg = gw.tls().client_config(Some(&dev), &[b"http/1.1"]);
        Doh {
            conn: RawConn::new(tls_connect(gw.mtls(), cfg).await.unwrap()),
        }
    }

    async fn get(&mut self, name: &str, qtype: RecordType) -> Message {
        let q = base64url(&dns_query(name, qtype));
        self.conn
            .send(format!("GET /dns-query?dns={q} HTTP/1.1\r\nHost: localhost\r\nAccept: application/dns-message\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = self.conn.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{r:?} {}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/dns-message")
        );
        Message::from_vec(&r.body).unwrap()
    }

    async fn post(&mut self, name: &str, qtype: RecordType) -> Message {
        let q = dns_query(name, qtype);
        let mut req = format!(
            "POST /dns-query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/dns-message\r\nContent-Length: {}\r\n\r\n",
            q.len()
        )
        .into_bytes();
        req.extend_from_slice(&q);
        self.conn.send(&req).await.unwrap();
        let r = self.conn.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        Message::from_vec(&r.body).unwrap()
    }
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| {
            if let RData::A(a) = r.data() {
                Some(a.0)
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test]
async fn doh_answers_and_filters() {
    within("doh", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;
        let mut doh = Doh::connect(&gw, "T-0100").await;

        // Allowed name: answered from the local authoritative server (GET and POST).
        let m = doh.get("www.allowed.test", RecordType::A).await;
        assert_eq!(m.id(), 0xbeef);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(127, 0, 0, 1)]);
        let m = doh.post("www.allowed.test", RecordType::A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(127, 0, 0, 1)]);

        // A name that does not exist: the upstream's NXDOMAIN.
        let m = doh.get("nonexistent.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);

        // Policy (the decision point blocks blocked.test): NXDOMAIN.
        let m = doh.get("blocked.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty());
        let rec = gw.access_record(|v| v["method"] == "DNS" && v["target"] == "blocked.test").await;
        assert_eq!(rec["decision"], "block");
        assert_eq!(rec["device"], "T-0100");

        // Threat intel: a listed domain, and a name whose answer is a listed address.
        let m = doh.get("www.evil.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = doh.get("c2.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let rec = gw.access_record(|v| v["method"] == "DNS" && v["target"] == "c2.test").await;
        assert_eq!(rec["rule"], "threat-intel");

        // IPS dns.query rules: drop blocks, alert logs.
        let m = doh.get("x.dnsdrop.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        gw.access_record(|v| v["target"] == "x.dnsdrop.test" && v["rule"] == "ips:9100201").await;
        let m = doh.get("hidden.onion", RecordType::A).await;
        assert_ne!(m.response_code(), ResponseCode::NoError);
        gw.access_record(|v| v["target"] == "hidden.onion" && has_ips(v, "9100202")).await;

        // Malformed requests.
        doh.conn.send(b"GET /dns-query?dns=!!! HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        assert_eq!(doh.conn.read_response(false).await.unwrap().status, 400);
        doh.conn.send(b"POST /dns-query HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx").await.unwrap();
        assert_eq!(doh.conn.read_response(false).await.unwrap().status, 415);

        assert!(gw.metric("komugate_doh_queries_total", &[("result", "block")]) >= 4.0);
        assert!(gw.metric("komugate_doh_queries_total", &[("result", "allow")]) >= 3.0);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn doh_block_page_address_and_http2() {
    within("doh block address", async {
        let (gw, _dns, _lists) = gateway(|c| c.doh.blocked_answer = "127.0.0.9".into()).await;
        let mut doh = Doh::connect(&gw, "T-0101").await;
        let m = doh.get("blocked.test", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(127, 0, 0, 9)]);
        let m = doh.get("blocked.test", RecordType::AAAA).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        // RFC 8484 clients use HTTP/2.
        let dev = gw.tls().device("T-0102", &["teachers"]);
        let cfg = gw.tls().client_config(Some(&dev), &[b"h2"]);
        let tls = tls_connect(gw.mtls(), cfg).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let q = base64url(&dns_query("www.allowed.test", RecordType::A));
        let req = http::Request::get(format!("https://localhost/dns-query?dns={q}"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            a_records(&Message::from_vec(&bytes).unwrap()),
            vec![Ipv4Addr::new(127, 0, 0, 1)]
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn doh_is_only_for_devices() {
    within("doh plain listener", async {
        let (gw, _dns, _lists) = gateway(|_| {}).await;
        let q = base64url(&dns_query("www.allowed.test", RecordType::A));
        let r = raw::request(
            gw.plain(),
            format!("GET /dns-query?dns={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(
            r.status, 400,
            "the plain listener is a proxy, not a DoH server: {r:?}"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn threat_lists_are_reread_on_reload() {
    within("threat intel reload", async {
        let (gw, _dns, lists) = gateway(|_| {}).await;
        let r = raw::proxy_get(gw.plain(), "http://127.0.55.1:8080/")
            .await
            .unwrap();
        assert_ne!(
            r.header("komugate-rule").as_deref(),
            Some("threat-intel"),
            "{r:?}"
        );
        std::fs::write(
            lists.path().join("test-threats.txt"),
            format!("{THREAT_LIST}127.0.55.0/24\n"),
        )
        .unwrap();
        let gateway = gw.running.as_ref().unwrap().gateway.clone();
        gateway
            .reload(komugate::logs::audit::ReloadSource::Sighup)
            .await
            .unwrap();
        let r = raw::proxy_get(gw.plain(), "http://127.0.55.1:8080/")
            .await
            .unwrap();
        assert_eq!(
            r.header("komugate-rule").as_deref(),
            Some("threat-intel"),
            "{r:?}"
        );
        drop(gateway);
        gw.shutdown().await;
    })
    .await;
}
