//! PROXY protocol v2 (and v1) behind a load balancer: read only from
//! `[listen] proxy_protocol_from`, required there, and the carried source
//! address is the client address (plain_clients admission, access log);
//! from any other peer a header is not accepted.

use std::net::SocketAddr;
use std::time::Duration;

use komugate::listen::proxy_protocol::encode_v2;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::RawConn;
use komugate_tests::within;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

const BLOCKED_GET: &[u8] =
    b"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn send_with_header(proxy: SocketAddr, header: &[u8], request: &[u8]) -> RawConn<TcpStream> {
    let mut c = RawConn::connect(proxy).await;
    c.send(&[header, request].concat()).await.expect("send");
    c
}

#[tokio::test]
async fn carried_source_is_the_client_when_the_peer_is_the_load_balancer() {
    let gw = TestGateway::start(|c, _| {
        c.listen.proxy_protocol_from = vec!["127.0.0.1/32".parse().unwrap()];
        // Only the real (carried) clients are in-site; the balancer itself is not.
        c.listen.plain_clients = vec!["10.20.0.0/16".parse().unwrap()];
    })
    .await;
    let proxy = gw.plain();
    let dst = sa("198.51.100.10:3128");

    // v2 from an in-site client: admitted, decided (blocked host → 403), logged with its address.
    let mut c = send_with_header(proxy, &encode_v2(sa("10.20.1.5:40000"), dst), BLOCKED_GET).await;
    let r = within("v2 response", c.read_response(false))
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.head);
    let rec = gw.access_record(|v| v["client"] == "10.20.1.5:40000").await;
    assert!(
        rec["target"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked.test"),
        "{rec}"
    );

    // v1 text header works as well.
    let mut c = send_with_header(
        proxy,
        b"PROXY TCP4 10.20.9.9 198.51.100.10 41000 3128\r\n",
        BLOCKED_GET,
    )
    .await;
    let r = within("v1 response", c.read_response(false))
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.head);
    gw.access_record(|v| v["client"] == "10.20.9.9:41000").await;

    // The carried address decides admission: an off-site source is refused.
    let mut c = send_with_header(proxy, &encode_v2(sa("192.0.2.9:5000"), dst), BLOCKED_GET).await;
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "off-site carried source must be refused"
    );
    assert!(
        gw.metric(
            "komugate_connections_refused_total",
            &[("listener", "plain"), ("reason", "client_not_allowed")]
        ) >= 1.0
    );

    // From the balancer the header is required: a bare request is refused.
    let mut c = send_with_header(proxy, b"", BLOCKED_GET).await;
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "missing header must be refused"
    );
    assert!(
        gw.metric(
            "komugate_connections_refused_total",
            &[("listener", "plain"), ("reason", "proxy_protocol")]
        ) >= 1.0
    );

    gw.shutdown().await;
}

#[tokio::test]
async fn header_from_any_other_peer_is_not_accepted() {
    let gw = TestGateway::start(|c, _| {
        // The balancer is elsewhere; loopback clients are ordinary in-site clients.
        c.listen.proxy_protocol_from = vec!["192.0.2.0/24".parse().unwrap()];
        c.listen.plain_clients = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let proxy = gw.plain();

    // A forged header is not parsed: HTTP sees garbage → 400 or close, never a decision.
    let mut c = send_with_header(
        proxy,
        &encode_v2(sa("10.20.1.5:40000"), sa("198.51.100.10:3128")),
        BLOCKED_GET,
    )
    .await;
    // Either a 400 or closed without a response.
    if let Ok(r) = within("forged header", c.read_response(false)).await {
        assert_eq!(r.status, 400, "{}", r.head);
    }
    let log = std::fs::read_to_string(&gw.access_log).unwrap_or_default();
    assert!(
        !log.contains("10.20.1.5"),
        "forged address reached the log:\n{log}"
    );

    // The same peer without a header is a normal connection.
    let mut c = send_with_header(proxy, b"", BLOCKED_GET).await;
    let r = within("normal request", c.read_response(false))
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.head);
    gw.access_record(|v| {
        v["client"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:")
    })
    .await;

    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_listener_reads_the_header_before_tls() {
    let gw = TestGateway::start(|c, _| {
        c.listen.proxy_protocol_from = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let pki = gw.tls();
    let device = pki.device("PP-LAPTOP-1", &["teachers"]);
    let config = pki.client_config(Some(&device), &[b"http/1.1"]);

    let mut tcp = TcpStream::connect(gw.mtls()).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        &encode_v2(sa("203.0.113.50:1234"), sa("198.51.100.10:8443")),
    )
    .await
    .expect("header");
    let tls = within(
        "tls",
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS after the PROXY header");
    let mut c = RawConn::new(tls);
    c.send(BLOCKED_GET).await.expect("send");
    let r = within("mtls response", c.read_response(false))
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.head);
    let rec = gw
        .access_record(|v| v["client"] == "203.0.113.50:1234")
        .await;
    assert_eq!(rec["device"], "PP-LAPTOP-1", "{rec}");

    gw.shutdown().await;
}
