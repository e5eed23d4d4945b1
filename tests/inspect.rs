//! TLS inspection through the gateway: real TLS on both sides, a local
//! upstream with its own CA (given to komugate as the extra upstream CA), a
//! client that trusts only the inspection CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use komugate::pki::CaMaterial;
use komugate_tests::gw::TestGateway;
use komugate_tests::within;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTPS upstream (HTTP/1.1 and HTTP/2) answering `GET` with the path
/// and the negotiated protocol, and echoing `POST` bodies.
struct HttpsUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    /// Connections accepted and not yet closed.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsUpstream {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Validity {
    Good,
    Expired,
}

async fn https_upstream(ca: &CaMaterial, name: &str, validity: Validity) -> HttpsUpstream {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    match validity {
        Validity::Good => {
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
        }
        Validity::Expired => {
            params.not_before = now - time::Duration::days(10);
            params.not_after = now - time::Duration::days(1);
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params
        .signed_by(&key, ca.certificate(), ca.key_pair())
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (accepts2, open2) = (accepts.clone(), open.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepts2.fetch_add(1, Ordering::SeqCst);
            open2.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let open = open2.clone();
            tokio::spawn(async move {
                struct Closed(Arc<AtomicUsize>);
                impl Drop for Closed {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _closed = Closed(open);
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let proto = if h2 { "h2" } else { "http/1.1" };
                    let path = req.uri().path().to_string();
                    let body = if req.method() == http::Method::POST {
                        req.into_body().collect().await?.to_bytes()
                    } else {
                        Bytes::from(format!("secure {path} via {proto}"))
                    };
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    HttpsUpstream {
        addr,
        accepts,
        open,
        task,
    }
}

/// The gateway with inspection on for every host, trusting `upstream_ca` for upstreams.
async fn inspecting_gateway(
    upstream_ca: &CaMaterial,
    tweak: impl FnOnce(&mut komugate::config::Config),
) -> TestGateway {
    let ca_pem = upstream_ca.cert_pem();
    TestGateway::start(move |c, pki| {
        let path = pki.dir.join("upstream-ca.pem");
        std::fs::write(&path, ca_pem).unwrap();
        c.inspect.upstream_ca = path.display().to_string();
        c.inspect.hosts = vec!["*".into()];
        tweak(c);
    })
    .await
}

/// CONNECT through the plain listener; returns the raw tunnel.
async fn connect_tunnel(gw: &TestGateway, authority: &str) -> TcpStream {
    let mut conn = TcpStream::connect(gw.plain()).await.unwrap();
    conn.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read the response head byte by byte so no tunnel bytes are consumed.
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
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {authority}: {head}"
    );
    conn
}

fn trust_only(ca: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    komugate_tests::gw::client_config(ca, None, alpn)
}

async fn tls_over(
    tunnel: TcpStream,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tunnel)
        .await
}

/// A client connection over an established TLS stream (h1 or h2 by ALPN).
enum InnerClient {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl InnerClient {
    async fn over(tls: tokio_rustls::client::TlsStream<TcpStream>) -> InnerClient {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            InnerClient::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            InnerClient::H1(sender)
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
        let resp = match self {
            InnerClient::H1(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(req).await.unwrap()
            }
            InnerClient::H2(sender) => sender.send_request(req).await.unwrap(),
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).to_string(),
        )
    }
}

/// Sends requests one after the other over an established TLS stream.
async fn send(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    reqs: Vec<Request<Full<Bytes>>>,
) -> Vec<(StatusCode, http::HeaderMap, String)> {
    let mut client = InnerClient::over(tls).await;
    let mut out = Vec::new();
    for req in reqs {
        out.push(client.send(req).await);
    }
    out
}

fn get(authority: &str, path: &str, h2: bool) -> Request<Full<Bytes>> {
    let b = Request::get(if h2 {
        format!("https://{authority}{path}")
    } else {
        path.to_string()
    });
    let b = if h2 { b } else { b.header("host", authority) };
    b.body(Full::default()).unwrap()
}

fn post(authority: &str, path: &str, h2: bool, body: &'static str) -> Request<Full<Bytes>> {
    let b = Request::post(if h2 {
        format!("https://{authority}{path}")
    } else {
        path.to_string()
    });
    let b = if h2 { b } else { b.header("host", authority) };
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn inspected_get_and_post_over_http1_and_http2() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let authority = format!("plain.test:{}", upstream.addr.port());
    for (alpn, h2) in [
        (&[b"http/1.1".as_slice()][..], false),
        (&[b"h2".as_slice(), b"http/1.1".as_slice()][..], true),
    ] {
        let tunnel = connect_tunnel(&gw, &authority).await;
        // The client trusts ONLY the inspection CA: success proves the leaf
        // was minted by it for "plain.test".
        let tls = within(
            "client handshake",
            tls_over(tunnel, "plain.test", trust_only(gw.tls().server_ca(), alpn)),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol() == Some(b"h2"), h2);
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let answers = within(
            "inspected requests",
            send(
                tls,
                vec![
                    get(&authority, "/hello", h2),
                    post(&authority, "/echo", h2, "posted body"),
                    get(&authority, "/again", h2),
                ],
            ),
        )
        .await;
        assert_eq!(answers[0].0, StatusCode::OK);
        // ALPN is mirrored upstream: an h2 client gets h2 to the upstream too.
        assert_eq!(
            answers[0].2,
            format!("secure /hello via {}", if h2 { "h2" } else { "http/1.1" })
        );
        assert_eq!(answers[1].2, "posted body");
        assert_eq!(
            answers[2].2,
            format!("secure /again via {}", if h2 { "h2" } else { "http/1.1" })
        );
        assert!(leaf.as_ref() != upstream_ca.cert_der().as_ref());
        let url = format!("https://{authority}/echo");
        let rec = gw
            .access_record(|r| r["target"] == url.as_str() && r["method"] == "POST")
            .await;
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["bytes_up"], 11);
    }
    // Connections to the upstream are pooled per (host, port, egress, ALPN):
    // two tunnels, two protocol variants, at most two upstream connections.
    assert!(
        upstream.accepts() <= 2,
        "upstream accepts: {}",
        upstream.accepts()
    );
    let tunnel = gw
        .access_record(|r| {
            r["method"] == "CONNECT" && r["rule"].as_str().unwrap_or("").contains("inspected")
        })
        .await;
    assert!(tunnel["bytes_up"].as_u64().unwrap() > 0);
    assert!(
        gw.metric("komugate_inspect_cert_cache_hits_total", &[]) >= 1.0,
        "second tunnel to the host hits the cert cache"
    );
    assert_eq!(
        gw.metric("komugate_inspect_cert_cache_misses_total", &[]),
        1.0
    );
    gw.shutdown().await;
}

/// A tunnel keeps one upstream connection for all its requests (HTTP/1.1
/// and HTTP/2 upstream, GETs and POSTs), and when it ends the connection
/// waits for the next tunnel to the same origin, which uses it instead of
/// a new handshake.
#[tokio::test]
async fn a_tunnel_keeps_one_upstream_connection_and_leaves_it_to_the_next() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let pools = &gw.running.as_ref().expect("running").gateway.pools;
    for (alpn, h2) in [
        (&[b"http/1.1".as_slice()][..], false),
        (&[b"h2".as_slice(), b"http/1.1".as_slice()][..], true),
    ] {
        let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
        let authority = format!("plain.test:{}", upstream.addr.port());
        let idle_before = pools.pinned_idle.len();
        for tunnel_no in 1..=2 {
            let tunnel = connect_tunnel(&gw, &authority).await;
            let tls = tls_over(tunnel, "plain.test", trust_only(gw.tls().server_ca(), alpn))
                .await
                .unwrap();
            let reqs = (0..12)
                .map(|i| match i % 4 {
                    3 => post(&authority, "/echo", h2, "posted body"),
                    _ => get(&authority, &format!("/r{tunnel_no}-{i}"), h2),
                })
                .collect();
            let answers = within("requests on one tunnel", send(tls, reqs)).await;
            for (i, (status, _, body)) in answers.iter().enumerate() {
                assert_eq!(*status, StatusCode::OK, "request {i}: {body}");
                if i % 4 == 3 {
                    assert_eq!(body, "posted body");
                } else {
                    assert_eq!(
                        body,
                        &format!(
                            "secure /r{tunnel_no}-{i} via {}",
                            if h2 { "h2" } else { "http/1.1" }
                        )
                    );
                }
            }
            // The tunnel's record is written once it has ended and left its
            // upstream connection for the next tunnel.
            let want = tunnel_no;
            let ended = komugate_tests::eventually(Duration::from_secs(3), || {
                let n = std::fs::read_to_string(&gw.access_log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("\"CONNECT\"") && l.contains(&authority))
                    .count();
                async move { (n >= want).then_some(()) }
            })
            .await;
            assert!(ended.is_some(), "tunnel {tunnel_no} not logged as ended");
            assert_eq!(
                pools.pinned_idle.len(),
                idle_before + 1,
                "tunnel {tunnel_no}: idle pinned connections"
            );
        }
        assert_eq!(
            upstream.accepts(),
            1,
            "upstream connections for 2 tunnels × 12 requests"
        );
    }
    gw.shutdown().await;
}

/// A session the client keeps open but quiet gives its upstream connection
/// up after `[limits] upstream_idle_secs`; its next request connects again.
#[tokio::test]
async fn a_quiet_tunnel_closes_its_upstream_connection() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let gw = inspecting_gateway(&upstream_ca, |c| c.limits.upstream_idle_secs = 1).await;
    let pools = &gw.running.as_ref().expect("running").gateway.pools;
    for (alpn, h2) in [
        (&[b"http/1.1".as_slice()][..], false),
        (&[b"h2".as_slice(), b"http/1.1".as_slice()][..], true),
    ] {
        let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
        let authority = format!("plain.test:{}", upstream.addr.port());
        let tunnel = connect_tunnel(&gw, &authority).await;
        let tls = tls_over(tunnel, "plain.test", trust_only(gw.tls().server_ca(), alpn))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let (go, mut wait) = tokio::sync::mpsc::channel::<()>(1);
        let auth = authority.clone();
        // One client connection: a request, a quiet pause, a request.
        let client = tokio::spawn(async move {
            let mut client = InnerClient::over(tls).await;
            for path in ["/before", "/after"] {
                tx.send(client.send(get(&auth, path, h2)).await)
                    .await
                    .unwrap();
                if wait.recv().await.is_none() {
                    break;
                }
            }
        });
        let first = within("first request", rx.recv()).await.unwrap();
        assert_eq!(first.0, StatusCode::OK, "{}", first.2);
        assert_eq!((upstream.accepts(), upstream.open()), (1, 1));
        let idle_before = pools.pinned_idle.len();
        let closed = komugate_tests::eventually(Duration::from_secs(5), || {
            let open = upstream.open();
            async move { (open == 0).then_some(()) }
        })
        .await;
        assert!(
            closed.is_some(),
            "h2 {h2}: the quiet session still holds its upstream connection"
        );
        assert_eq!(
            pools.pinned_idle.len(),
            idle_before,
            "closed, not left idle"
        );
        go.send(()).await.unwrap();
        let second = within("request after the pause", rx.recv()).await.unwrap();
        assert_eq!(second.0, StatusCode::OK, "{}", second.2);
        assert_eq!(
            second.2,
            format!("secure /after via {}", if h2 { "h2" } else { "http/1.1" })
        );
        assert_eq!(
            upstream.accepts(),
            2,
            "h2 {h2}: the next request connects again"
        );
        drop(go);
        client.await.unwrap();
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_upstream_certificates_yield_the_block_page() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let expired = https_upstream(&upstream_ca, "plain.test", Validity::Expired).await;
    let wrong_name = https_upstream(&upstream_ca, "other.test", Validity::Good).await;
    let unknown_ca = komugate::pki::generate_ca("someone else's CA").unwrap();
    let unknown = https_upstream(&unknown_ca, "plain.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    for (upstream, expect) in [
        (&expired, "有効期限"),
        (&wrong_name, "ホスト名"),
        (&unknown, "発行元"),
    ] {
        let authority = format!("plain.test:{}", upstream.addr.port());
        let tunnel = connect_tunnel(&gw, &authority).await;
        let tls = tls_over(
            tunnel,
            "plain.test",
            trust_only(gw.tls().server_ca(), &[b"http/1.1"]),
        )
        .await
        .unwrap();
        let answers = within(
            "request to a bad upstream",
            send(tls, vec![get(&authority, "/", false)]),
        )
        .await;
        let (status, headers, body) = &answers[0];
        assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(headers["komugate-rule"], "upstream-certificate-invalid");
        assert!(body.contains(expect), "{expect} not in {body}");
        assert!(!body.contains("secure /"), "no upstream content may leak");
    }
    let rec = gw
        .access_record(|r| r["rule"] == "upstream-certificate-invalid")
        .await;
    assert!(rec["error"]
        .as_str()
        .unwrap()
        .contains("upstream certificate"));
    gw.shutdown().await;
}

#[tokio::test]
async fn bypassed_host_shows_the_real_certificate() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "www.c4th.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |c| {
        c.inspect.bypass_hosts = vec!["*.c4th.test".into()]
    })
    .await;
    let authority = format!("www.c4th.test:{}", upstream.addr.port());
    let tunnel = connect_tunnel(&gw, &authority).await;
    // Trusting only the UPSTREAM's CA works: the tunnel is not inspected.
    let tls = tls_over(
        tunnel,
        "www.c4th.test",
        trust_only(upstream_ca.cert_der().clone(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let answers = within(
        "bypassed request",
        send(tls, vec![get(&authority, "/x", false)]),
    )
    .await;
    assert_eq!(answers[0].2, "secure /x via http/1.1");
    assert_eq!(
        gw.metric("komugate_inspect_cert_cache_misses_total", &[]),
        0.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn plain_bytes_on_an_inspected_tunnel_do_not_hang() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let authority = format!("plain.test:{}", upstream.addr.port());
    let mut tunnel = connect_tunnel(&gw, &authority).await;
    tunnel
        .write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut buf))
        .await
        .expect("closed, not hung");
    assert!(n.is_ok());
    let rec = gw.access_record(|r| r["rule"] == "inspect-non-tls").await;
    assert_eq!(rec["decision"], "block");
    assert_eq!(upstream.accepts(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn client_rejecting_the_minted_certificate_is_counted() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let authority = format!("plain.test:{}", upstream.addr.port());
    let tunnel = connect_tunnel(&gw, &authority).await;
    // A pinning client: trusts only the real CA, so it refuses our leaf.
    assert!(tls_over(
        tunnel,
        "plain.test",
        trust_only(upstream_ca.cert_der().clone(), &[b"http/1.1"])
    )
    .await
    .is_err());
    komugate_tests::eventually(Duration::from_secs(3), || {
        let v = gw.metric(
            "komugate_inspect_client_rejects_total",
            &[("sni", "plain.test")],
        );
        async move { (v >= 1.0).then_some(()) }
    })
    .await
    .expect("client reject counted by SNI");
    gw.shutdown().await;
}

/// A policy that inspects every tunnel and blocks one URL path: the rule
/// sees inside HTTPS, over an HTTP/2 CONNECT on the mTLS listener.
#[tokio::test]
async fn url_path_rule_inside_https_over_h2_connect() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[defaults]\naction = \"allow\"\ntunnel = \"inspect\"\n\n\
         [[rule]]\nname = \"no secret path\"\nscheme = \"https\"\npaths = [\"/secret\"]\naction = \"block\"\nmessage = \"この資料は閲覧できません。\"\n",
    )
    .unwrap();
    let policy_path = policy.display().to_string();
    let gw = inspecting_gateway(&upstream_ca, move |c| {
        c.inspect.hosts = Vec::new();
        c.policy.file = policy_path;
    })
    .await;
    let authority = format!("plain.test:{}", upstream.addr.port());

    // HTTP/2 to the gateway with a device certificate, CONNECT as an h2 stream.
    let device = gw.tls().device("T-100", &["teachers"]);
    let gw_tls =
        komugate_tests::gw::tls_connect(gw.mtls(), gw.tls().client_config(Some(&device), &[b"h2"]))
            .await
            .unwrap();
    let (h2, conn) = h2::client::handshake(gw_tls).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(authority.as_str())
        .body(())
        .unwrap();
    let (resp, send) = h2.send_request(req, false).unwrap();
    let resp = within("h2 CONNECT", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let tunnel = H2Tunnel::new(send, resp.into_body());

    let tls = tokio_rustls::TlsConnector::from(trust_only(gw.tls().server_ca(), &[b"http/1.1"]))
        .connect(ServerName::try_from("plain.test").unwrap(), tunnel)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for path in ["/public/a", "/secret/report", "/public/b"] {
        sender.ready().await.unwrap();
        let resp = sender
            .send_request(get(&authority, path, false))
            .await
            .unwrap();
        let status = resp.status();
        let rule = resp
            .headers()
            .get("komugate-rule")
            .map(|v| v.to_str().unwrap().to_string());
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .to_string();
        answers.push((status, rule, body));
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    assert_eq!(answers[0].2, "secure /public/a via http/1.1");
    assert_eq!(answers[1].0, StatusCode::FORBIDDEN);
    assert_eq!(answers[1].1.as_deref(), Some("no secret path"));
    assert!(answers[1].2.contains("この資料は閲覧できません。") && answers[1].2.contains("T-100"));
    assert_eq!(
        answers[2].0,
        StatusCode::OK,
        "the same inspected connection keeps serving after a block"
    );
    let rec = gw
        .access_record(|r| {
            r["target"]
                .as_str()
                .map(|t| t.ends_with("/secret/report"))
                .unwrap_or(false)
        })
        .await;
    assert_eq!(rec["decision"], "block");
    assert_eq!(rec["device"], "T-100");
    gw.shutdown().await;
}

/// An HTTP/2 CONNECT stream as AsyncRead + AsyncWrite.
struct H2Tunnel {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    pending: Bytes,
}

impl H2Tunnel {
    fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        H2Tunnel {
            send,
            recv,
            pending: Bytes::new(),
        }
    }
}

impl tokio::io::AsyncRead for H2Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl tokio::io::AsyncWrite for H2Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        self.send.reserve_capacity(buf.len());
        match self.send.poll_capacity(cx) {
            Poll::Ready(Some(Ok(n))) => {
                let n = n.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(std::io::Error::other)?;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(std::io::Error::other(e))),
            Poll::Ready(None) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        std::task::Poll::Ready(Ok(()))
    }
}

/// IPS inside inspected tunnels: an HTTP rule fires on a decrypted inner
/// request (dropped with the block page), and a `tls.sni` drop rule closes
/// an inspected tunnel before any certificate is minted.
#[tokio::test]
async fn ips_rules_apply_inside_inspected_tunnels() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("inspect.rules");
    std::fs::write(
        &rules,
        "drop http any any -> any any (msg:\"KOMUGATE TEST secret path\"; flow:to_server; http.uri; content:\"/exfil\"; startswith; sid:9200001; rev:1;)\n\
         drop tls any any -> any any (msg:\"KOMUGATE TEST bad sni\"; tls.sni; content:\"www.c4th.test\"; sid:9200002; rev:1;)\n",
    )
    .unwrap();
    let gw = inspecting_gateway(&upstream_ca, |c| c.ips.rules = vec![rules.clone()]).await;
    let authority = format!("plain.test:{}", upstream.addr.port());
    let tunnel = connect_tunnel(&gw, &authority).await;
    let tls = tls_over(
        tunnel,
        "plain.test",
        trust_only(gw.tls().server_ca(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let answers = within(
        "inspected requests",
        send(
            tls,
            vec![
                get(&authority, "/ok", false),
                get(&authority, "/exfil/data", false),
            ],
        ),
    )
    .await;
    assert_eq!(answers[0].0, StatusCode::OK);
    assert_eq!(answers[1].0, StatusCode::FORBIDDEN, "{}", answers[1].2);
    let rec = gw
        .access_record(|r| {
            r["target"]
                .as_str()
                .map(|t| t.ends_with("/exfil/data"))
                .unwrap_or(false)
        })
        .await;
    assert_eq!(rec["ips"], "9200001");

    let bad = format!("www.c4th.test:{}", upstream.addr.port());
    let tunnel = connect_tunnel(&gw, &bad).await;
    assert!(tls_over(
        tunnel,
        "www.c4th.test",
        trust_only(gw.tls().server_ca(), &[b"http/1.1"])
    )
    .await
    .is_err());
    let rec = gw.access_record(|r| r["ips"] == "9200002").await;
    assert_eq!(rec["decision"], "block");
    gw.shutdown().await;
}

#[tokio::test]
async fn inspected_requests_never_reach_the_gateways_own_listeners() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    for port in [gw.admin().port(), gw.mtls().port(), gw.plain().port()] {
        // localhost.rebind.test resolves to 127.0.0.1, an allowed destination.
        let authority = format!("localhost.rebind.test:{port}");
        let tunnel = connect_tunnel(&gw, &authority).await;
        let tls = within(
            "client handshake",
            tls_over(
                tunnel,
                "localhost.rebind.test",
                trust_only(gw.tls().server_ca(), &[b"http/1.1"]),
            ),
        )
        .await
        .unwrap();
        let answers = within(
            "inspected request",
            send(tls, vec![get(&authority, "/metrics", false)]),
        )
        .await;
        assert_eq!(answers[0].0, StatusCode::FORBIDDEN, "{authority}");
        assert_eq!(answers[0].1["komugate-rule"], "own-listener", "{authority}");
    }
    gw.shutdown().await;
}

/// The request-smuggling guard also fronts the HTTP/1.1 server inside an
/// inspected tunnel: Content-Length with Transfer-Encoding is a 400, and
/// nothing reaches the origin.
#[tokio::test]
async fn smuggling_inside_an_inspected_tunnel_is_refused() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let upstream = https_upstream(&upstream_ca, "plain.test", Validity::Good).await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let authority = format!("plain.test:{}", upstream.addr.port());
    let tunnel = connect_tunnel(&gw, &authority).await;
    let tls = tls_over(
        tunnel,
        "plain.test",
        trust_only(gw.tls().server_ca(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let mut conn = komugate_tests::raw::RawConn::new(tls);
    conn.send(
        format!(
            "POST /smuggle HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = within("400", conn.read_response(false)).await.unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    let url = format!("https://{authority}/smuggle");
    let rec = gw.access_record(|r| r["status"] == 400).await;
    assert_eq!(rec["method"], "POST", "{rec} ({url})");
    assert_eq!(upstream.accepts(), 0, "nothing reached the origin");
    gw.shutdown().await;
}

/// A client that leaves an inspected tunnel while an inner request waits for
/// the upstream still leaves that request's access record (status 499).
#[tokio::test]
async fn inner_request_of_a_client_that_went_away_is_logged() {
    let upstream_ca = komugate::pki::generate_ca("inspect-test upstream CA").unwrap();
    let silent = komugate_tests::upstream::SilentServer::start().await;
    let gw = inspecting_gateway(&upstream_ca, |_| {}).await;
    let authority = format!("plain.test:{}", silent.addr.port());
    let tunnel = connect_tunnel(&gw, &authority).await;
    let tls = tls_over(
        tunnel,
        "plain.test",
        trust_only(gw.tls().server_ca(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let mut conn = komugate_tests::raw::RawConn::new(tls);
    conn.send(format!("GET /waiting HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    komugate_tests::eventually(Duration::from_secs(3), || {
        let n = silent.accepts();
        async move { (n > 0).then_some(()) }
    })
    .await
    .expect("the inner request reached the upstream");
    drop(conn);
    let url = format!("https://{authority}/waiting");
    let rec = gw.access_record(|r| r["target"] == url.as_str()).await;
    assert_eq!(rec["status"], 499, "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("client closed"),
        "{rec}"
    );
    gw.shutdown().await;
}
