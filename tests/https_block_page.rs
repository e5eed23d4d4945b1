//! The block page for blocked `https://` sites: a CONNECT refused by policy
//! is answered inside TLS with a certificate from the inspection CA, so the
//! browser shows the page. Real TLS clients (rustls trusting only the
//! test inspection CA) through the mTLS listener, HTTP/1.1 and HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use komugate_tests::gw::{client_config, tls_connect, TestGateway};
use komugate_tests::within;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends `CONNECT authority` on `stream` and reads the response head byte by
/// byte (no tunnel bytes consumed); returns its status line and headers.
async fn connect<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, authority: &str) -> String {
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One GET over TLS to `name` inside `tunnel`, trusting only `ca`, with
/// `alpn`; the status, the negotiated protocol and the body.
async fn get_inside<S>(
    tunnel: S,
    name: &str,
    ca: rustls_pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> (StatusCode, String, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config: Arc<rustls::ClientConfig> = client_config(ca, None, &[alpn]);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tunnel)
        .await
        .expect("the minted certificate is trusted for the SNI");
    let proto =
        String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"")).into_owned();
    let resp = if proto == "h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}/casino/table?x=1"))
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/casino/table?x=1")
            .header("host", name)
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, proto, String::from_utf8_lossy(&body).into_owned())
}

/// The access records whose target is `target`, once the first is written
/// and a moment more (a second one would come at the tunnel's end).
async fn records_for(gw: &TestGateway, target: &str) -> Vec<serde_json::Value> {
    gw.access_record(|r| r["target"] == target).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::read_to_string(&gw.access_log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["target"] == target)
        .collect()
}

#[tokio::test]
async fn blocked_https_gets_the_japanese_block_page_over_http1_and_http2() {
    within("HTTPS block page", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let pki = gw.tls();
        let device = pki.device("T-0042", &["teachers"]);
        for (alpn, authority) in [
            (&b"http/1.1"[..], "www.gambling.test:443"),
            (&b"h2"[..], "poker.gambling.test:443"),
        ] {
            let mut proxy =
                tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
                    .await
                    .unwrap();
            let head = connect(&mut proxy, authority).await;
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "CONNECT {authority}: {head}"
            );
            let name = authority.trim_end_matches(":443");
            let (status, proto, body) = get_inside(proxy, name, pki.server_ca(), alpn).await;
            assert_eq!(proto.as_bytes(), alpn, "ALPN");
            assert_eq!(status, StatusCode::FORBIDDEN, "{proto}: {body}");
            for needle in [
                "このページへのアクセスはブロックされました",
                "次にすること",
                &format!("https://{name}/casino/table"),
                "blocked-hosts",
                "T-0042",
                " JST",
            ] {
                assert!(body.contains(needle), "{proto}: {needle:?} in {body}");
            }
            let records = records_for(&gw, authority).await;
            assert_eq!(records.len(), 1, "one record per CONNECT: {records:?}");
            let rec = &records[0];
            assert_eq!(rec["method"], "CONNECT");
            assert_eq!(rec["decision"], "block");
            assert_eq!(rec["rule"], "blocked-hosts");
            assert_eq!(rec["status"], 403);
            assert_eq!(rec["device"], "T-0042");
            assert!(rec["bytes_down"].as_u64().unwrap() > 1000, "{rec}");
        }
        assert_eq!(
            gw.metric(
                "komugate_requests_total",
                &[("kind", "connect"), ("decision", "block")]
            ),
            2.0
        );
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn bypass_listed_hosts_and_the_plain_listener_get_the_plain_refusal() {
    within("plain refusals", async {
        let gw = TestGateway::start(|c, _| {
            c.inspect.bypass_hosts = vec!["pinned.gambling.test".into()];
        })
        .await;
        let pki = gw.tls();
        let device = pki.device("T-0043", &["teachers"]);
        // A host on the inspection bypass list is never intercepted.
        let mut proxy = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
            .await
            .unwrap();
        let head = connect(&mut proxy, "pinned.gambling.test:443").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(head.contains("komugate-rule: blocked-hosts"), "{head}");
        // The plain listener without [block_page] https_on_plain.
        let mut plain = tokio::net::TcpStream::connect(gw.plain()).await.unwrap();
        let head = connect(&mut plain, "www.gambling.test:443").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        // A port other than 443 (rarely a browser; SOCKS clients read the status).
        let mut proxy = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
            .await
            .unwrap();
        let head = connect(&mut proxy, "www.gambling.test:8443").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let records = records_for(&gw, "pinned.gambling.test:443").await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["status"], 403);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn plain_http_inside_a_blocked_tunnel_gets_the_refusal_in_http1() {
    within("non-TLS bytes", async {
        let gw = TestGateway::start(|c, _| c.block_page.https_on_plain = true).await;
        let mut plain = tokio::net::TcpStream::connect(gw.plain()).await.unwrap();
        let head = connect(&mut plain, "blocked.test:443").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        plain
            .write_all(b"GET /page HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        plain.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("http://blocked.test:443/page"), "{answer}");
        assert!(answer.contains("ブロックされました"), "{answer}");
        let records = records_for(&gw, "blocked.test:443").await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["decision"], "block");
        assert_eq!(records[0]["status"], 403);
        gw.shutdown().await;
    })
    .await
}

/// What a teacher sees: headless chromium (trusting the inspection CA
/// through its NSS database) opens a blocked https:// URL through the plain
/// listener with `[block_page] https_on_plain`, and renders the Japanese
/// block page. The screenshot is saved under the test output directory.
#[tokio::test]
async fn a_real_browser_renders_the_japanese_block_page_for_a_blocked_https_site() {
    let gw = TestGateway::start(|c, _| c.block_page.https_on_plain = true).await;
    let ca_pem = std::fs::read_to_string(gw.pki.join("inspect-ca.pem")).unwrap();
    let browser =
        komugate_tests::browser::Browser::start(&komugate_tests::browser::BrowserOptions {
            proxy: Some(gw.plain()),
            trusted_ca_pems: vec![ca_pem],
            ..Default::default()
        })
        .await;
    let opened = tokio::time::timeout(
        Duration::from_secs(60),
        browser.client.goto("https://www.gambling.test/casino"),
    )
    .await;
    assert!(matches!(opened, Ok(Ok(()))), "opening the page: {opened:?}");
    let text = browser.body_text().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("browser")
        .join("https-block-page.png");
    browser.screenshot(&shot).await;
    for needle in [
        "このページへのアクセスはブロックされました",
        "次にすること",
        "https://www.gambling.test/casino",
        "blocked-hosts",
        " JST",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} on the rendered page ({}):\n{text}",
            shot.display()
        );
    }
    let title = browser.client.title().await.unwrap();
    assert!(title.contains("アクセスがブロックされました"), "{title}");
    browser.stop().await;
    // Chromium also opens spare connections it never uses (recorded as
    // blocked CONNECTs the client closed, 499); the page's is the 403.
    let rec = gw
        .access_record(|r| r["target"] == "www.gambling.test:443" && r["status"] == 403)
        .await;
    assert_eq!(rec["decision"], "block");
    assert_eq!(rec["rule"], "blocked-hosts");
    gw.shutdown().await;
}
