//! Issue 6 points 1-3: `komugate client` (HTTP proxy, SOCKS5, DNS over one
//! mTLS HTTP/2 connection), PAC files from policy, site assertions.
//! Real sockets on 127.0.0.0/8, real TLS, curl as the local application.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use komugate::beacon::{Assertion, BeaconKey};
use komugate::client::{ClientConfig, RunningClient};
use komugate::config::Config;
use komugate::gateway::start::Running;
use komugate_tests::dns::{self, DnsServer};
use komugate_tests::gw::{base_config, metric_value, TestPki, DNS_RECORDS};
use komugate_tests::upstream::HttpUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOSPITAL: &str = "院内学級";

/// A gateway we can stop and start again on the same port with the same PKI.
struct Gw {
    running: Option<Running>,
    config: Config,
    dir: tempfile::TempDir,
    _dns: DnsServer,
    beacon_key: BeaconKey,
}

impl Gw {
    async fn start() -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        komugate::pki::init(&pki, &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        let dns = dns::start("test.", DNS_RECORDS).await;
        let beacon_key = BeaconKey::generate().unwrap();
        let policy = format!(
            r#"
[[site]]
name = "{HOSPITAL}"
assertion = true
beacon_key = "{}"
pac_direct = ["learning.hospital.local"]

[[site]]
name = "豊科南小学校"
cidrs = ["203.0.113.0/29"]

[pac]
direct = ["*.school.local", "10.0.0.0/8"]

[[rule]]
name = "no blocked.test"
hosts = ["blocked.test"]
action = "block"

[[rule]]
name = "c4th only at a site"
host = "www.c4th.test"
location = "offsite"
action = "block"
"#,
            beacon_key.public_base64()
        );
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        let mut config = base_config(dir.path(), dns.addr);
        // A fixed port, so the PAC names it and a restart can reuse it.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        config.listen.mtls = free.to_string();
        config.policy.file = "policy.toml".into();
        config
            .egress
            .allow_destinations
            .push("::1/128".parse().unwrap());
        let mut gw = Gw {
            running: None,
            config,
            dir,
            _dns: dns,
            beacon_key,
        };
        gw.up().await;
        gw
    }

    async fn up(&mut self) {
        let running = komugate::gateway::start::start(self.config.clone())
            .await
            .expect("gateway starts");
        // Restart on the same addresses.
        self.config.listen.mtls = running.addrs.mtls.unwrap().to_string();
        self.config.listen.admin = running.addrs.admin.unwrap().to_string();
        self.config.listen.plain = running.addrs.plain.unwrap().to_string();
        self.running = Some(running);
    }

    async fn down(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_millis(200)).await;
        }
    }

    fn mtls(&self) -> SocketAddr {
        self.config.listen.mtls.parse().unwrap()
    }
    fn admin(&self) -> SocketAddr {
        self.config.listen.admin.parse().unwrap()
    }
    fn pki(&self) -> TestPki {
        TestPki {
            dir: self.dir.path().join("pki"),
        }
    }
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(
            &self.running.as_ref().unwrap().gateway.metrics.render(),
            name,
            labels,
        )
    }

    /// Device certificate + key files for `id`.
    fn device_files(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.pki().device(id, &["teachers"]);
        let cert = self.dir.path().join(format!("{id}.pem"));
        let key = self.dir.path().join(format!("{id}.key"));
        std::fs::write(&cert, &d.cert_pem).unwrap();
        std::fs::write(&key, &d.key_pem).unwrap();
        (cert, key)
    }

    async fn client(&self, id: &str, beacons: Vec<String>, dns: bool) -> RunningClient {
        let (cert, key) = self.device_files(id);
        let cfg = ClientConfig {
            server: self.mtls().to_string(),
            server_name: "localhost".into(),
            cert,
            key,
            ca: self.dir.path().join("pki/inspect-ca.pem"),
            http: "127.0.0.1:0".into(),
            socks: "127.0.0.1:0".into(),
            dns: if dns {
                "127.0.0.1:0".into()
            } else {
                String::new()
            },
            beacons,
            backoff_min_ms: 50,
            backoff_max_ms: 500,
            ..ClientConfig::default()
        };
        komugate_tests::gw::start_client(cfg).await
    }
}

/// curl with a 5 s limit: (HTTP status, or the CONNECT status when the
/// tunnel was refused, or 0; body; stderr; elapsed).
async fn curl(args: &[&str]) -> (u16, String, String, Duration) {
    let started = Instant::now();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code} %{http_connect}",
        ])
        .args(args)
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", "0 0"));
    let mut codes = codes
        .split_whitespace()
        .map(|c| c.parse::<u16>().unwrap_or(0));
    let (code, connect) = (codes.next().unwrap_or(0), codes.next().unwrap_or(0));
    let code = if code == 0 { connect } else { code };
    (
        code,
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        started.elapsed(),
    )
}

/// Sends a SOCKS5 greeting + request; returns the reply code.
async fn socks_reply(addr: SocketAddr, request: &[u8]) -> u8 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).await.unwrap();
    assert_eq!(g, [5, 0]);
    s.write_all(request).await.unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(r[0], 5);
    r[1]
}

#[tokio::test]
async fn http_connect_and_socks5_share_one_http2_connection() {
    let gw = Gw::start().await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let up6 = HttpUpstream::start("::1").await;
    let c = gw.client("PC-0001", vec![], false).await;
    let http = format!("http://{}", c.http.unwrap());
    let socks = c.socks.unwrap().to_string();
    let port = up.addr.port();

    // Local HTTP proxy: forwarded request, and CONNECT (-p).
    let (code, body, err, _) = curl(&["-x", &http, &format!("http://127.0.0.1:{port}/fwd")]).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from upstream /fwd"),
        "{err}"
    );
    let (code, body, err, _) = curl(&[
        "-p",
        "-x",
        &http,
        &format!("http://127.0.0.1:{port}/tunnel"),
    ])
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from upstream /tunnel"),
        "{err}"
    );
    // SOCKS5: domain name (resolved by the gateway), IPv4, IPv6.
    let (code, body, err, _) = curl(&[
        "--socks5-hostname",
        &socks,
        &format!("http://plain.test:{port}/name"),
    ])
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from upstream /name"),
        "{err}"
    );
    let (code, body, err, _) =
        curl(&["--socks5", &socks, &format!("http://127.0.0.1:{port}/v4")]).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from upstream /v4"),
        "{err}"
    );
    let (code, body, err, _) = curl(&[
        "--socks5",
        &socks,
        &format!("http://[::1]:{}/v6", up6.addr.port()),
    ])
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from upstream /v6"),
        "{err}"
    );

    // Policy still applies: blocked host -> 403 block page / SOCKS "not allowed".
    let (code, body, _, _) = curl(&["-x", &http, "http://blocked.test/"]).await;
    assert_eq!(code, 403, "{body}");
    let (code, _, _, _) = curl(&["-p", "-x", &http, "http://blocked.test/"]).await;
    assert_eq!(code, 403);
    let mut req = vec![5, 1, 0, 3, 12];
    req.extend_from_slice(b"blocked.test");
    req.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(
        socks_reply(c.socks.unwrap(), &req).await,
        0x02,
        "connection not allowed by ruleset"
    );
    // Other SOCKS commands and address types are refused with the right code.
    assert_eq!(
        socks_reply(c.socks.unwrap(), &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        0x07,
        "BIND"
    );
    assert_eq!(
        socks_reply(c.socks.unwrap(), &[5, 3, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        0x07,
        "UDP ASSOCIATE"
    );
    assert_eq!(
        socks_reply(c.socks.unwrap(), &[5, 1, 0, 9, 0, 0]).await,
        0x08,
        "address type"
    );

    // All of it over one TLS connection to the gateway.
    assert_eq!(
        gw.metric("komugate_connections_total", &[("listener", "mtls")]),
        1.0
    );
    assert_eq!(c.link.connects.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        up.seen().iter().filter(|s| s.uri.path() == "/fwd").count(),
        1
    );
}

#[tokio::test]
async fn gateway_down_fails_fast_then_recovers() {
    let mut gw = Gw::start().await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let c = gw.client("PC-0002", vec![], false).await;
    let http = format!("http://{}", c.http.unwrap());
    let url = format!("http://127.0.0.1:{}/x", up.addr.port());
    assert_eq!(curl(&["-x", &http, &url]).await.0, 200);

    gw.down().await;
    let link = c.link.clone();
    komugate_tests::eventually(Duration::from_secs(3), || {
        let up = link.is_up();
        async move { (!up).then_some(()) }
    })
    .await
    .expect("client notices the gateway is gone");
    for target in [url.as_str(), "http://plain.test/"] {
        let (code, body, _, took) = curl(&["-x", &http, target]).await;
        assert_eq!(code, 502, "{body}");
        assert!(body.contains("gateway"), "{body}");
        assert!(
            took < Duration::from_secs(1),
            "must fail fast, took {took:?}"
        );
    }
    let (code, _, _, took) = curl(&["-p", "-x", &http, &url]).await;
    assert!(
        code == 502 && took < Duration::from_secs(1),
        "CONNECT: {code} after {took:?}"
    );
    let started = Instant::now();
    assert_eq!(
        socks_reply(c.socks.unwrap(), &[5, 1, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        0x03,
        "network unreachable"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    gw.up().await;
    let ok = komugate_tests::eventually(Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move { (curl(&["-x", &http, &url]).await.0 == 200).then_some(()) }
    })
    .await;
    assert!(ok.is_some(), "traffic resumes when the gateway is back");
    assert_eq!(c.link.connects.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (code, _, _, _) = curl(&[
        "--socks5-hostname",
        &c.socks.unwrap().to_string(),
        &format!("http://plain.test:{}/y", up.addr.port()),
    ])
    .await;
    assert_eq!(code, 200);
}

/// A SOCKS5 CONNECT to `dst` through the client: the reply code and the
/// connection (kept open by the caller to hold the flow).
async fn socks_flow(socks: SocketAddr, dst: SocketAddr) -> (u8, TcpStream) {
    let mut s = TcpStream::connect(socks).await.unwrap();
    let SocketAddr::V4(v4) = dst else {
        panic!("IPv4 only")
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut r = [0u8; 12];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(&r[..2], &[5, 0], "greeting");
    (r[3], s)
}

/// All of a laptop's flows share its one link (full-device mode holds
/// hundreds), so the mTLS listener takes `max_streams_per_device_link`
/// streams per connection, not the plain listener's
/// `max_streams_per_connection` (a flow past that used to wait for a free
/// stream and fail after 13 s as a SOCKS "general failure"). Past the
/// device-link limit a new flow waits for one to end.
#[tokio::test]
async fn a_device_link_holds_more_flows_than_a_plain_connection() {
    let mut gw = Gw::start().await;
    gw.down().await;
    gw.config.limits.max_streams_per_connection = 8;
    gw.config.limits.max_streams_per_device_link = 24;
    gw.up().await;
    // An origin that holds every connection until the client closes its
    // side, so each flow keeps its stream until the application ends it.
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dst = origin.local_addr().unwrap();
    let held_by_origin = tokio::spawn(async move {
        while let Ok((mut s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            });
        }
    });
    let c = gw.client("PC-0003", vec![], false).await;
    let socks = c.socks.unwrap();

    let mut flows = Vec::new();
    for i in 0..24 {
        let (code, s) = socks_flow(socks, dst).await;
        assert_eq!(code, 0, "flow {i} of 24 on one device link");
        flows.push(s);
    }
    // The 25th waits for a free stream, and opens when one flow ends.
    let mut next = tokio::spawn(socks_flow(socks, dst));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut next)
            .await
            .is_err(),
        "a flow past max_streams_per_device_link must wait"
    );
    drop(flows.pop());
    let (code, _s) = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("the waiting flow opens once a stream is free")
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        gw.metric("komugate_connections_total", &[("listener", "mtls")]),
        1.0
    );
    held_by_origin.abort();
}

// ---------------------------------------------------------------- PAC

/// Evaluates `FindProxyForURL(url, host)` in a JavaScript engine.
fn find_proxy(pac: &str, url: &str, host: &str) -> String {
    use boa_engine::{Context, Source};
    let mut ctx = Context::default();
    ctx.eval(Source::from_bytes(pac))
        .unwrap_or_else(|e| panic!("PAC does not evaluate: {e}\n{pac}"));
    let call = format!("FindProxyForURL({url:?}, {host:?})");
    let v = ctx
        .eval(Source::from_bytes(&call))
        .unwrap_or_else(|e| panic!("{call}: {e}"));
    v.to_string(&mut ctx).unwrap().to_std_string_escaped()
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s
        .send_request(
            http::Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).to_string(),
    )
}

#[tokio::test]
async fn pac_files_from_policy_evaluate() {
    let gw = Gw::start().await;
    // Gateway, admin listener (requester off-site): DIRECT for school servers, else the HTTPS proxy.
    let (status, headers, pac) = http_get(gw.admin(), "/proxy.pac").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ns-proxy-autoconfig");
    assert_eq!(headers["komugate-pac-location"], "offsite");
    let gw_proxy = format!("HTTPS 127.0.0.1:{}", gw.mtls().port());
    assert_eq!(
        find_proxy(&pac, "https://c4th.school.local/", "c4th.school.local"),
        "DIRECT"
    );
    assert_eq!(find_proxy(&pac, "http://10.1.2.3/", "10.1.2.3"), "DIRECT");
    assert_eq!(
        find_proxy(&pac, "http://127.0.0.1:9/", "127.0.0.1"),
        "DIRECT"
    );
    assert_eq!(
        find_proxy(&pac, "https://www.example.com/", "www.example.com"),
        gw_proxy
    );
    assert_eq!(
        find_proxy(
            &pac,
            "https://school.local.evil.example/",
            "school.local.evil.example"
        ),
        gw_proxy
    );
    assert_eq!(find_proxy(&pac, "http://11.0.0.1/", "11.0.0.1"), gw_proxy);
    // Off-site PAC does not have the hospital's own learning server.
    assert_eq!(
        find_proxy(
            &pac,
            "http://learning.hospital.local/",
            "learning.hospital.local"
        ),
        gw_proxy
    );

    // The client's PAC at http://127.0.0.1:PORT/proxy.pac: same lists, local proxy.
    let c = gw.client("PC-0003", vec![], false).await;
    let local = c.http.unwrap();
    let pac = komugate_tests::eventually(Duration::from_secs(3), || async move {
        let (status, _, pac) = http_get(local, "/proxy.pac").await;
        (status == 200 && pac.contains("school.local")).then_some(pac)
    })
    .await
    .expect("client serves the gateway's PAC lists");
    assert_eq!(
        find_proxy(&pac, "https://c4th.school.local/", "c4th.school.local"),
        "DIRECT"
    );
    assert_eq!(
        find_proxy(&pac, "https://www.example.com/", "www.example.com"),
        format!("PROXY {local}")
    );
}

// ---------------------------------------------------------------- site assertions

/// One mTLS HTTP/2 connection as device `id`; returns the PAC location the
/// gateway gives for each assertion header sent on it.
struct H2Conn(hyper::client::conn::http2::SendRequest<Empty<Bytes>>);

impl H2Conn {
    async fn open(gw: &Gw, id: &str) -> H2Conn {
        let d = gw.pki().device(id, &["teachers"]);
        let tls =
            komugate_tests::gw::tls_connect(gw.mtls(), gw.pki().client_config(Some(&d), &[b"h2"]))
                .await
                .unwrap();
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Conn(s)
    }

    /// Status of a CONNECT to `target` with `assertion`.
    async fn connect(&mut self, target: &str, assertion: Option<&str>) -> u16 {
        let mut req = http::Request::connect(target);
        if let Some(a) = assertion {
            req = req.header(komugate::beacon::ASSERTION_HEADER, a);
        }
        self.0
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The DoH answer (DNS wire format) for an A query of `name`.
    async fn doh(&mut self, name: &str, assertion: Option<&str>) -> Vec<u8> {
        let q = komugate_tests::base64url(&dns_query(0x0d0e, name));
        let mut req = http::Request::get(format!("https://localhost/dns-query?dns={q}"));
        if let Some(a) = assertion {
            req = req.header(komugate::beacon::ASSERTION_HEADER, a);
        }
        let resp = self
            .0
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    async fn location(&mut self, assertion: Option<&str>) -> String {
        let mut req = http::Request::get("https://localhost/proxy.pac");
        if let Some(a) = assertion {
            req = req.header(komugate::beacon::ASSERTION_HEADER, a);
        }
        let resp = self
            .0
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let loc = resp.headers()["komugate-pac-location"]
            .to_str()
            .unwrap()
            .to_string();
        percent_decode(&loc)
    }
}

fn percent_decode(s: &str) -> String {
    komugate::beacon::percent_decode(s).expect("UTF-8")
}

#[tokio::test]
async fn valid_site_assertion_moves_device_to_the_site() {
    let gw = Gw::start().await;
    // The beacon on the hospital's server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let beacon_addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let key = std::sync::Arc::new(BeaconKey::from_pem(&gw.beacon_key.to_pem(), "test").unwrap());
    tokio::spawn(komugate::beacon::serve_beacon(
        listener,
        HOSPITAL.into(),
        key,
        stop.clone(),
    ));

    let c = gw
        .client(
            "PC-H-0001",
            vec![format!("http://{beacon_addr}/assertion")],
            false,
        )
        .await;
    assert!(
        c.link.assertion().is_some(),
        "client got an assertion from the beacon"
    );
    let local = c.http.unwrap();
    // The gateway sees the device at the hospital: the PAC the client got is the site's.
    let pac = komugate_tests::eventually(Duration::from_secs(3), || async move {
        let (_, _, pac) = http_get(local, "/proxy.pac").await;
        pac.contains("learning.hospital.local").then_some(pac)
    })
    .await
    .expect("site PAC via the assertion");
    assert!(pac.contains(&format!("site {HOSPITAL}")), "{pac}");
    assert_eq!(
        find_proxy(
            &pac,
            "http://learning.hospital.local/",
            "learning.hospital.local"
        ),
        "DIRECT"
    );
    // The hospital's policy applies: C4th (blocked off-site) is allowed.
    let up = HttpUpstream::start("127.0.0.1").await;
    let c4th = format!("http://www.c4th.test:{}/", up.addr.port());
    let (code, body, _, _) = curl(&["-x", &format!("http://{local}"), &c4th]).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _, _) = curl(&["-p", "-x", &format!("http://{local}"), &c4th]).await;
    assert_eq!(code, 200);
    // The same device without a beacon is off-site: blocked.
    let offsite = gw.client("PC-H-0001", vec![], false).await;
    let (code, body, _, _) =
        curl(&["-x", &format!("http://{}", offsite.http.unwrap()), &c4th]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("c4th only at a site"), "{body}");
    assert!(gw.metric("komugate_site_assertions_total", &[("result", "ok")]) >= 2.0);
    assert_eq!(
        gw.metric("komugate_site_assertions_total", &[("result", "replayed")]),
        0.0
    );
    let sites = &gw.running.as_ref().unwrap().gateway.sites;
    assert_eq!(sites.location(None, "127.0.0.1:1".parse().unwrap()), None);
    stop.cancel();
}

#[tokio::test]
async fn forged_expired_replayed_and_other_device_assertions_are_refused() {
    let gw = Gw::start().await;
    let now = komugate::common::unix_now();
    let key = &gw.beacon_key;
    let mut a = H2Conn::open(&gw, "PC-H-0001").await;
    assert_eq!(a.location(None).await, "offsite");

    let valid = key.issue(HOSPITAL, "PC-H-0001", now).unwrap();
    assert_eq!(a.location(Some(&valid)).await, format!("site {HOSPITAL}"));
    assert_eq!(
        a.location(Some(&valid)).await,
        format!("site {HOSPITAL}"),
        "same token, same connection: fine"
    );

    // Replayed: the same token on another connection of the same device.
    let mut b = H2Conn::open(&gw, "PC-H-0001").await;
    assert_eq!(b.location(Some(&valid)).await, "offsite");
    // Other device: PC-2 presenting PC-1's (fresh) assertion.
    let mut other = H2Conn::open(&gw, "PC-H-0002").await;
    let for_pc1 = key.issue(HOSPITAL, "PC-H-0001", now).unwrap();
    assert_eq!(other.location(Some(&for_pc1)).await, "offsite");
    // Forged: signed with a key that is not the site's.
    let forged = BeaconKey::generate()
        .unwrap()
        .issue(HOSPITAL, "PC-H-0002", now)
        .unwrap();
    assert_eq!(other.location(Some(&forged)).await, "offsite");
    // Expired (6 minutes old) and from the future.
    let nonce = "00112233445566778899aabbccddeeff".to_string();
    let old = key.sign(&Assertion {
        site: HOSPITAL.into(),
        device: "PC-H-0002".into(),
        iat: now - 360,
        nonce: nonce.clone(),
    });
    assert_eq!(other.location(Some(&old)).await, "offsite");
    let future = key.sign(&Assertion {
        site: HOSPITAL.into(),
        device: "PC-H-0002".into(),
        iat: now + 600,
        nonce,
    });
    assert_eq!(other.location(Some(&future)).await, "offsite");
    assert_eq!(other.location(Some("garbage")).await, "offsite");
    // Decisions follow: C4th is blocked off-site, allowed at the site.
    let up = HttpUpstream::start("127.0.0.1").await;
    let c4th = format!("www.c4th.test:{}", up.addr.port());
    assert_eq!(other.connect(&c4th, Some(&forged)).await, 403);
    assert_eq!(b.connect(&c4th, Some(&valid)).await, 403, "replayed");
    let mut c = H2Conn::open(&gw, "PC-H-0003").await;
    let good = key.issue(HOSPITAL, "PC-H-0003", now).unwrap();
    assert_eq!(c.connect(&c4th, Some(&good)).await, 200);
    // A refused assertion also withdraws a valid one on that connection.
    let fresh = key.issue(HOSPITAL, "PC-H-0002", now).unwrap();
    assert_eq!(
        other.location(Some(&fresh)).await,
        format!("site {HOSPITAL}")
    );
    assert_eq!(other.location(Some(&forged)).await, "offsite");

    for (result, n) in [
        ("ok", 4.0),
        ("replayed", 2.0),
        ("wrong_device", 1.0),
        ("bad_signature", 3.0),
        ("expired", 1.0),
        ("from_future", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            gw.metric("komugate_site_assertions_total", &[("result", result)]),
            n,
            "{result}"
        );
    }
}

/// DoH queries are located like web requests: the policy blocks C4th
/// off-site, so its name does not resolve; with a valid site assertion on
/// the connection it does.
#[tokio::test]
async fn doh_honours_a_site_assertion() {
    let gw = Gw::start().await;
    let rcode = |a: &[u8]| a[3] & 0x0f;
    let mut conn = H2Conn::open(&gw, "PC-H-0005").await;
    let offsite = conn.doh("www.c4th.test", None).await;
    assert_eq!(rcode(&offsite), 3, "NXDOMAIN off-site: {offsite:?}");
    let now = komugate::common::unix_now();
    let token = gw.beacon_key.issue(HOSPITAL, "PC-H-0005", now).unwrap();
    let at_site = conn.doh("www.c4th.test", Some(&token)).await;
    assert_eq!(rcode(&at_site), 0, "NOERROR at the site: {at_site:?}");
    assert_eq!(&at_site[at_site.len() - 4..], &[127, 0, 0, 1]);
}

// ---------------------------------------------------------------- DNS

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[tokio::test]
async fn dns_queries_are_forwarded_over_doh() {
    let mut gw = Gw::start().await;
    let c = gw.client("PC-0004", vec![], true).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&dns_query(0x4242, "plain.test."), c.dns.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("DNS answer")
        .unwrap();
    let a = &buf[..n];
    assert_eq!(&a[..2], &[0x42, 0x42], "ID restored");
    assert_eq!(a[3] & 0x0f, 0, "NOERROR: {a:?}");
    assert!(u16::from_be_bytes([a[6], a[7]]) >= 1, "an answer: {a:?}");
    assert_eq!(&a[n - 4..], &[127, 0, 0, 1]);

    // Gateway down: SERVFAIL at once, not a timeout.
    gw.down().await;
    let link = c.link.clone();
    komugate_tests::eventually(Duration::from_secs(3), || {
        let up = link.is_up();
        async move { (!up).then_some(()) }
    })
    .await
    .unwrap();
    sock.send_to(&dns_query(7, "plain.test."), c.dns.unwrap())
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .expect("fast SERVFAIL")
        .unwrap();
    assert_eq!(buf[3] & 0x0f, 2, "SERVFAIL: {:?}", &buf[..n]);
}
