//! komugate gateway integration tests: real sockets on 127.0.0.0/8, real
//! TLS, a local authoritative DNS server. Numbers refer to the checks of
//! the integration-test issue.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use komugate_tests::gw::{city_fixed_egress, tls_connect, TestGateway};
use komugate_tests::raw::{self, RawConn};
use komugate_tests::upstream::{EchoServer, HttpUpstream, TlsUpstream};
use komugate_tests::{eventually, within};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn get(url: &str, extra: &str) -> Vec<u8> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}

fn connect_req(target: &str) -> Vec<u8> {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes()
}

// ------------------------------------------------------------------ 1

#[tokio::test]
async fn c01_forward_get_keepalive_via_and_hop_by_hop_headers() {
    within("check 1 (GET)", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let mut c = RawConn::connect(gw.plain()).await;
        let hop = "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                   Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Foo: bar\r\nTE: trailers\r\n\
                   Trailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n";
        c.send(&get(&format!("http://{}/one", up.addr), hop))
            .await
            .unwrap();
        let r1 = c.read_response(false).await.unwrap();
        assert_eq!(r1.status, 200, "{r1:?}");
        assert_eq!(r1.text(), "hello from upstream /one");
        assert!(
            r1.header("via").unwrap_or_default().contains("komugate"),
            "Via on the response: {r1:?}"
        );
        // Keep-alive: a second request on the same client connection.
        c.send(&get(&format!("http://{}/two", up.addr), ""))
            .await
            .unwrap();
        let r2 = c.read_response(false).await.unwrap();
        assert_eq!(r2.status, 200, "{r2:?}");
        assert_eq!(r2.text(), "hello from upstream /two");

        let seen = up.seen();
        assert_eq!(seen.len(), 2);
        let h = &seen[0].headers;
        for name in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "proxy-foo",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(
                !h.contains_key(name),
                "hop-by-hop header {name} reached the upstream: {h:?}"
            );
        }
        assert_eq!(h["x-kept"], "yes");
        assert!(
            h.get("via")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .contains("komugate"),
            "no Via upstream: {h:?}"
        );
        assert_eq!(seen[0].uri.path(), "/one", "origin-form upstream");
        assert_eq!(h["host"], up.addr.to_string().as_str());

        let rec = gw
            .access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/one"))
            .await;
        assert_eq!(rec["listener"], "plain");
        assert_eq!(rec["method"], "GET");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["bytes_down"], "hello from upstream /one".len());
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn c01_forward_post_streams_5mb_body_intact() {
    within("check 1 (POST)", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let stream = TcpStream::connect(gw.plain()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        const CHUNK: usize = 64 * 1024;
        const N: usize = 80; // 5 MiB
        let expected: Vec<u8> = (0..N)
            .flat_map(|i| (0..CHUNK).map(move |j| ((i * 7 + j) % 251) as u8))
            .collect();
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = expected
            .chunks(CHUNK)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        // No Content-Length: the body is streamed chunked end to end.
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let req = Request::post(format!("http://{}/upload", up.addr))
            .header("host", up.addr.to_string())
            .body(body)
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), expected.len());
        assert!(got[..] == expected[..], "echoed body differs");
        assert_eq!(up.seen()[0].body_len, N * CHUNK);
        let rec = gw.access_record(|r| r["method"] == "POST").await;
        assert_eq!(rec["bytes_up"], N * CHUNK);
        assert_eq!(rec["bytes_down"], N * CHUNK);
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 2

#[tokio::test]
async fn c02_websocket_upgrade_passes_through() {
    within("check 2", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&get(
            &format!("http://{}/ws", up.addr),
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ))
        .await
        .unwrap();
        let r = c.read_head().await.unwrap();
        assert_eq!(r.status, 101, "{r:?}");
        assert!(r.header("upgrade").unwrap_or_default().eq_ignore_ascii_case("websocket"));
        for msg in [&b"first frame bytes"[..], &b"\x81\x05hello"[..]] {
            c.send(msg).await.unwrap();
            assert_eq!(c.read_exact_n(msg.len()).await.unwrap(), msg);
        }
        let seen = up.seen();
        assert_eq!(seen[0].headers["upgrade"], "websocket");
        assert_eq!(seen[0].headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        drop(c); // see c13_drain_timeout_closes_remaining_tunnels
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 3

#[tokio::test]
async fn c03_connect_h1_to_tls_upstream_verifies_cert() {
    within("check 3", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = TlsUpstream::start().await;
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&up.addr.to_string())).await.unwrap();
        let r = c.read_head().await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(c.take_buffered().is_empty());
        let mut tls = tokio_rustls::TlsConnector::from(up.client_config())
            .connect(ServerName::try_from("localhost").unwrap(), c.stream)
            .await
            .expect("TLS through the tunnel verifies the upstream certificate");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("secure hello"), "{out}");
        assert_eq!(up.accepts(), 1);
        drop(tls); // the tunnel (and its access record) ends when both sides closed
        let rec = gw.access_record(|r| r["method"] == "CONNECT").await;
        assert_eq!(rec["target"], up.addr.to_string());
        assert!(
            rec["bytes_up"].as_u64().unwrap() > 0 && rec["bytes_down"].as_u64().unwrap() > 0,
            "{rec}"
        );
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 4

#[tokio::test]
async fn c04_fifty_h2_connect_tunnels_over_one_mtls_connection() {
    within("check 4", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let echo = EchoServer::start().await;
        let pki = gw.tls();
        let device = pki.device("laptop-h2", &["staff"]);
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"h2"]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let tunnels = (0..50).map(|i| {
            let client = client.clone();
            let target = echo.addr.to_string();
            async move {
                let mut client = client.ready().await.unwrap();
                let req = Request::builder()
                    .method(Method::CONNECT)
                    .uri(target)
                    .body(())
                    .unwrap();
                let (resp, mut send) = client.send_request(req, false).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200, "tunnel {i}");
                let data = Bytes::from(format!("tunnel {i:02} says hello;").repeat(50 + i));
                send.send_data(data.clone(), true).unwrap();
                let mut body = resp.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                assert!(
                    got == data[..],
                    "tunnel {i}: echoed {} bytes, sent {}",
                    got.len(),
                    data.len()
                );
            }
        });
        futures_util::future::join_all(tunnels).await;
        assert_eq!(echo.accepts(), 50);
        assert_eq!(
            gw.metric("komugate_connections_total", &[("listener", "mtls")]),
            1.0,
            "one client connection"
        );
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 5

/// True if the gateway refuses this TLS client: the handshake fails, or
/// (TLS 1.3: the client finishes first) the first read gets an error/EOF.
async fn mtls_refused(addr: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut s) = tls_connect(addr, config).await else {
        return true;
    };
    if s.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn c05_device_identity_refusals_by_reason_and_access_record() {
    within("check 5", async {
        let mut revoked = None;
        let gw = TestGateway::start(|c, pki| {
            let cert = pki.device("laptop-stolen", &["staff"]);
            let der =
                rustls_pki_types::pem::PemObject::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
            let serial = komugate::device_auth::identity_from_cert(&der)
                .unwrap()
                .serial_hex;
            std::fs::write(
                c.data.dir.join("revoked.txt"),
                format!("# stolen\n{serial}\n"),
            )
            .unwrap();
            c.tls.revoked_serials = "revoked.txt".into();
            revoked = Some(cert);
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let h1: &[&[u8]] = &[b"http/1.1"];

        // No client certificate.
        assert!(
            mtls_refused(gw.mtls(), pki.client_config(None, h1)).await,
            "no cert must be refused"
        );
        // A certificate from another CA.
        let rogue_ca = komugate::pki::generate_ca("rogue device CA").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let rogue = rogue_ca
            .issue_device(
                "laptop-rogue",
                &[],
                now - time::Duration::hours(1),
                now + time::Duration::days(1),
            )
            .unwrap();
        assert!(
            mtls_refused(gw.mtls(), pki.client_config(Some(&rogue), h1)).await,
            "unknown CA must be refused"
        );
        // Revoked by serial.
        assert!(
            mtls_refused(gw.mtls(), pki.client_config(revoked.as_ref(), h1)).await,
            "revoked must be refused"
        );
        // Expired.
        let expired = pki
            .device_ca()
            .issue_device(
                "laptop-old",
                &[],
                now - time::Duration::days(10),
                now - time::Duration::days(1),
            )
            .unwrap();
        assert!(
            mtls_refused(gw.mtls(), pki.client_config(Some(&expired), h1)).await,
            "expired must be refused"
        );

        for reason in ["no_client_cert", "unknown_ca", "revoked", "expired"] {
            let labels = [("listener", "mtls"), ("reason", reason)];
            let n = eventually(Duration::from_secs(2), || {
                let v = gw.metric("komugate_tls_handshake_failures_total", &labels);
                async move { (v >= 1.0).then_some(v) }
            })
            .await;
            assert_eq!(
                n,
                Some(1.0),
                "handshake failures with reason {reason}:\n{}",
                gw.metrics()
            );
        }

        // A good device gets through and is named in the access record.
        let good = pki.device("laptop-7", &["staff", "grade-3"]);
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&good), h1))
            .await
            .unwrap();
        let mut c = RawConn::new(tls);
        c.send(&get(
            &format!("http://{}/good", up.addr),
            "Connection: close\r\n",
        ))
        .await
        .unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let rec = gw
            .access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/good"))
            .await;
        assert_eq!(rec["listener"], "mtls");
        assert_eq!(rec["device"], "laptop-7");
        assert_eq!(rec["groups"], serde_json::json!(["staff", "grade-3"]));
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 6

#[tokio::test]
async fn c06_fixed_egress_source_for_listed_hosts_only() {
    within("check 6", async {
        let gw = TestGateway::start(|c, _| {
            c.egress.fixed = vec![city_fixed_egress()];
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let port = up.addr.port();

        let r = raw::proxy_get(gw.plain(), &format!("http://www.c4th.test:{port}/c4th"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let r = raw::proxy_get(gw.plain(), &format!("http://plain.test:{port}/other"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        // A tunnel to the fixed-egress host leaves from the fixed source too.
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&format!("www.c4th.test:{port}")))
            .await
            .unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.send(b"GET /tunnelled HTTP/1.1\r\nHost: www.c4th.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        drop(c); // ends the tunnel: its access record is written

        let seen = up.seen();
        let peer_of = |path: &str| {
            seen.iter()
                .find(|s| s.uri.path() == path)
                .map(|s| s.peer.ip().to_string())
        };
        assert_eq!(peer_of("/c4th").as_deref(), Some("127.0.0.2"), "{seen:?}");
        assert_eq!(peer_of("/other").as_deref(), Some("127.0.0.1"), "{seen:?}");
        assert_eq!(
            peer_of("/tunnelled").as_deref(),
            Some("127.0.0.2"),
            "{seen:?}"
        );

        let rec = gw
            .access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/c4th"))
            .await;
        assert_eq!(rec["egress"], "127.0.0.2");
        let rec = gw
            .access_record(|r| r["target"].as_str().unwrap_or("").ends_with("/other"))
            .await;
        assert_eq!(rec["egress"], "127.0.0.1");
        let rec = gw.access_record(|r| r["method"] == "CONNECT").await;
        assert_eq!(rec["egress"], "127.0.0.2");
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 7

#[tokio::test]
async fn c07_destination_guard_refuses_loopback_before_connecting() {
    within("check 7", async {
        let gw = TestGateway::start(|c, _| c.egress.allow_destinations = Vec::new()).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let port = up.addr.port();
        let targets = [
            format!("127.0.0.1:{port}"),
            format!("localhost.rebind.test:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
        ];
        for t in &targets {
            let r = raw::proxy_get(gw.plain(), &format!("http://{t}/"))
                .await
                .unwrap();
            assert_eq!(r.status, 403, "forward to {t}: {r:?}");
            assert_eq!(
                r.header("komugate-rule").as_deref(),
                Some("destination-guard"),
                "forward to {t}"
            );
            let r = raw::request(gw.plain(), &connect_req(t)).await.unwrap();
            assert_eq!(r.status, 403, "CONNECT to {t}: {r:?}");
            assert_eq!(
                r.header("komugate-rule").as_deref(),
                Some("destination-guard"),
                "CONNECT to {t}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(up.accepts(), 0, "the upstream must not see any connection");
        let rec = gw
            .access_record(|r| r["rule"] == "destination-guard" && r["method"] == "CONNECT")
            .await;
        assert_eq!(rec["decision"], "block");
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 8

#[tokio::test]
async fn c08_blocked_host_and_disallowed_port() {
    within("check 8", async {
        let gw = TestGateway::start(|c, _| {
            c.decision.allowed_ports = vec![80, 443];
            c.block_page.contact = "校務支援係 内線 123".into();
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::proxy_get(gw.plain(), "http://blocked.test/page")
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("komugate-rule").as_deref(), Some("blocked-hosts"));
        let body = r.text();
        assert!(
            body.contains("ブロックされました") && body.contains("Access to this page was blocked"),
            "{body}"
        );
        assert!(body.contains("http://blocked.test/page"), "{body}");
        assert!(body.contains("次にすること"), "what to do next: {body}");
        assert!(
            body.contains("校務支援係 内線 123"),
            "[block_page] contact without a policy contact: {body}"
        );
        let year = time::OffsetDateTime::now_utc().year();
        assert!(
            body.contains(&format!("<td>{year}年"))
                || body.contains(&format!("<td>{}年", year + 1)),
            "the time as a date in Japanese: {body}"
        );
        assert!(body.contains(" JST</td>"), "Japan time by default: {body}");
        let r = raw::request(gw.plain(), &connect_req("www.gambling.test:443"))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("komugate-rule").as_deref(), Some("blocked-hosts"));

        let r = raw::proxy_get(
            gw.plain(),
            &format!("http://plain.test:{}/", up.addr.port()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("komugate-rule").as_deref(), Some("allowed-ports"));
        let r = raw::request(gw.plain(), &connect_req(&up.addr.to_string()))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("komugate-rule").as_deref(), Some("allowed-ports"));
        assert_eq!(up.accepts(), 0);
        let rec = gw.access_record(|r| r["rule"] == "blocked-hosts").await;
        assert_eq!(rec["decision"], "block");
        assert_eq!(rec["status"], 403);
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 9

/// Sends the malformed request (aimed at a live upstream), expects one of
/// `statuses`, then the connection closed and nothing reaching the
/// upstream, then a fresh connection served normally. Returns the status.
async fn malformed(request: impl FnOnce(SocketAddr) -> Vec<u8>, statuses: &[u16]) -> u16 {
    let gw = TestGateway::start(|c, _| c.limits.max_header_bytes = 8192).await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let bytes = request(up.addr);
    let mut c = RawConn::connect(gw.plain()).await;
    // Write and read concurrently: the gateway may answer before reading it all.
    let (status, eof) = {
        let (mut rd, mut wr) = c.stream.split();
        let write = async {
            let _ = wr.write_all(&bytes).await;
        };
        let read = async {
            let mut all = Vec::new();
            let eof = tokio::time::timeout(Duration::from_secs(4), rd.read_to_end(&mut all))
                .await
                .is_ok();
            (all, eof)
        };
        let ((), (all, eof)) = tokio::join!(write, read);
        let text = String::from_utf8_lossy(&all).into_owned();
        (
            text.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0),
            eof,
        )
    };
    assert!(
        statuses.contains(&status),
        "expected one of {statuses:?}, got {status}"
    );
    assert!(eof, "connection must be closed after a malformed request");
    assert!(
        up.seen().is_empty(),
        "the malformed request reached the upstream: {:?}",
        up.seen()
    );
    let r = raw::proxy_get(gw.plain(), &format!("http://{}/after", up.addr))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "a fresh connection is still served");
    gw.shutdown().await;
    status
}

fn post_with(up: SocketAddr, headers: &str, body: &str) -> Vec<u8> {
    format!("POST http://{up}/x HTTP/1.1\r\nHost: {up}\r\n{headers}\r\n{body}").into_bytes()
}

#[tokio::test]
async fn c09_bad_request_line() {
    within(
        "check 9",
        malformed(|_| b"GARBAGE\r\n\r\n".to_vec(), &[400]),
    )
    .await;
}

#[tokio::test]
async fn c09_invalid_content_length() {
    within(
        "check 9",
        malformed(
            |up| post_with(up, "Content-Length: abc\r\n", "hello"),
            &[400],
        ),
    )
    .await;
}

#[tokio::test]
async fn c09_two_different_content_lengths() {
    within(
        "check 9",
        malformed(
            |up| post_with(up, "Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            &[400],
        ),
    )
    .await;
}

#[tokio::test]
async fn c09_transfer_encoding_not_chunked() {
    within(
        "check 9",
        malformed(
            |up| post_with(up, "Transfer-Encoding: gzip\r\n", "hello"),
            &[400],
        ),
    )
    .await;
}

#[tokio::test]
async fn c09_transfer_encoding_and_content_length() {
    let req = |up| {
        post_with(
            up,
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n",
        )
    };
    within("check 9", malformed(req, &[400])).await;
}

#[tokio::test]
async fn c09_oversize_headers() {
    // max_header_bytes = 8192; a 9000-byte header value.
    let req = |up: SocketAddr| {
        get(
            &format!("http://{up}/"),
            &format!("X-Big: {}\r\n", "a".repeat(9000)),
        )
    };
    let status = within("check 9", malformed(req, &[400, 431])).await;
    eprintln!("oversize request head answered with {status}");
}

#[tokio::test]
async fn c09_too_many_headers() {
    let extra: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = move |up: SocketAddr| get(&format!("http://{up}/"), &extra);
    let status = within("check 9", malformed(req, &[400, 431])).await;
    eprintln!("too many headers answered with {status}");
}

// ------------------------------------------------------------------ 10

#[tokio::test]
async fn c10_slowloris_is_disconnected_and_others_are_served() {
    within("check 10", async {
        let gw = TestGateway::start(|c, _| c.limits.header_read_timeout_ms = 1000).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let slow = TcpStream::connect(gw.plain()).await.unwrap();
        let (mut rd, mut wr) = slow.into_split();
        let head = get(&format!("http://{}/slow", up.addr), "X-Slow: 1\r\n");
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for b in head {
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        // Meanwhile a normal client is served promptly.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = raw::proxy_get(gw.plain(), &format!("http://{}/normal", up.addr))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "normal client waited {:?}",
            t.elapsed()
        );

        let mut got = Vec::new();
        let res = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
        let elapsed = started.elapsed();
        writer.abort();
        assert!(res.is_ok(), "slow client still connected after 5 s");
        assert!(
            elapsed >= Duration::from_millis(900),
            "disconnected too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(3000),
            "disconnected late: {elapsed:?}"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains(" 200 "), "slow client was served: {text}");
        assert!(up.seen().iter().all(|s| s.uri.path() != "/slow"));
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 11

#[tokio::test]
async fn c11_plain_listener_refuses_clients_outside_plain_clients() {
    within("check 11", async {
        let gw = TestGateway::start(|c, _| {
            c.listen.plain_clients = vec!["127.0.0.2/32".parse().unwrap()]
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let mut c = RawConn::connect(gw.plain()).await; // from 127.0.0.1
        let _ = c.send(&get(&format!("http://{}/", up.addr), "")).await;
        assert!(
            c.closed_within(Duration::from_secs(2)).await,
            "closed without a response"
        );
        assert_eq!(
            gw.metric(
                "komugate_connections_refused_total",
                &[("listener", "plain"), ("reason", "client_not_allowed")]
            ),
            1.0
        );
        // From an allowed address it works.
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut ok = RawConn::new(sock.connect(gw.plain()).await.unwrap());
        ok.send(&get(
            &format!("http://{}/ok", up.addr),
            "Connection: close\r\n",
        ))
        .await
        .unwrap();
        assert_eq!(ok.read_response(false).await.unwrap().status, 200);
        assert_eq!(up.seen().len(), 1);
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 12

#[tokio::test]
async fn c12_max_connections_per_device() {
    within("check 12", async {
        let gw = TestGateway::start(|c, _| c.limits.max_connections_per_device = 2).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let pki = gw.tls();
        let device = pki.device("laptop-busy", &[]);
        let cfg = pki.client_config(Some(&device), &[b"http/1.1"]);
        let open = |n: usize| {
            let cfg = cfg.clone();
            let url = format!("http://{}/c{n}", up.addr);
            let addr = gw.mtls();
            async move {
                let mut c = RawConn::new(tls_connect(addr, cfg).await.unwrap());
                c.send(&get(&url, "")).await.ok()?;
                let r = c.read_response(false).await.ok()?;
                (r.status == 200).then_some(c)
            }
        };
        let first = open(1).await.expect("1st connection served");
        let _second = open(2).await.expect("2nd connection served");
        assert!(
            open(3).await.is_none(),
            "3rd connection of the same device must be closed"
        );
        assert_eq!(
            gw.metric(
                "komugate_connections_refused_total",
                &[("listener", "mtls"), ("reason", "device_connection_limit")]
            ),
            1.0
        );
        // Another device is not affected.
        let other = pki.device("laptop-other", &[]);
        let mut c = RawConn::new(
            tls_connect(gw.mtls(), pki.client_config(Some(&other), &[b"http/1.1"]))
                .await
                .unwrap(),
        );
        c.send(&get(&format!("http://{}/other", up.addr), ""))
            .await
            .unwrap();
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        // Closing one frees a slot.
        drop(first);
        let again = eventually(Duration::from_secs(3), || open(4)).await;
        assert!(again.is_some(), "a slot is freed when a connection closes");
        gw.shutdown().await;
    })
    .await
}

// ------------------------------------------------------------------ 13

#[tokio::test]
async fn c13_graceful_shutdown_drains_open_tunnel() {
    within("check 13", async {
        let mut gw = TestGateway::start(|_, _| {}).await;
        let echo = EchoServer::start().await;
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&echo.addr.to_string())).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.send(b"before").await.unwrap();
        assert_eq!(c.read_exact_n(6).await.unwrap(), b"before");

        let running = gw.running.take().unwrap();
        let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(8)));
        // New connections are refused once shutdown started.
        let plain = gw.plain();
        let refused = eventually(Duration::from_secs(2), || async move {
            match TcpStream::connect(plain).await {
                Err(_) => Some(()),
                Ok(s) => {
                    let mut c = RawConn::new(s);
                    let _ = c
                        .send(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await;
                    c.closed_within(Duration::from_millis(300))
                        .await
                        .then_some(())
                }
            }
        })
        .await;
        assert!(
            refused.is_some(),
            "new connections must be refused during drain"
        );
        let mtls = gw.mtls();
        let mtls_closed = eventually(Duration::from_secs(2), || async move {
            TcpStream::connect(mtls).await.is_err().then_some(())
        })
        .await;
        assert!(mtls_closed.is_some(), "mTLS listener closed too");

        // The open tunnel keeps working.
        c.send(b"during drain").await.unwrap();
        assert_eq!(c.read_exact_n(12).await.unwrap(), b"during drain");
        assert!(
            !shutdown.is_finished(),
            "shutdown must wait for the open tunnel"
        );

        // End the tunnel: shutdown returns promptly (well before the 8 s drain).
        let ended = Instant::now();
        c.stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.stream.read_to_end(&mut rest).await.unwrap();
        tokio::time::timeout(Duration::from_secs(4), shutdown)
            .await
            .expect("shutdown returns once the tunnel ended")
            .unwrap();
        assert!(
            ended.elapsed() < Duration::from_secs(4),
            "{:?}",
            ended.elapsed()
        );
        // The tunnel was logged on the way out.
        let text = std::fs::read_to_string(&gw.access_log).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("\"CONNECT\"") && l.contains(&echo.addr.to_string())),
            "{text}"
        );
    })
    .await
}

/// When the drain time is over, the remaining tunnels are closed (the log
/// says "closing the remaining connections") and shutdown returns.
#[tokio::test]
async fn c13_drain_timeout_closes_remaining_tunnels() {
    within("check 13 (drain timeout)", async {
        let mut gw = TestGateway::start(|_, _| {}).await;
        let echo = EchoServer::start().await;
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&echo.addr.to_string())).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.send(b"ping").await.unwrap();
        assert_eq!(c.read_exact_n(4).await.unwrap(), b"ping");
        let running = gw.running.take().unwrap();
        let t = Instant::now();
        let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(1)));
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "the tunnel is closed when the drain time is over"
        );
        tokio::time::timeout(Duration::from_secs(3), shutdown)
            .await
            .expect("shutdown returns")
            .unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(2000),
            "shutdown(drain = 1 s) took {took:?}"
        );
        let log = std::fs::read_to_string(&gw.access_log).unwrap();
        assert!(
            log.contains("\"CONNECT\""),
            "the cut tunnel is logged:\n{log}"
        );
    })
    .await
}

// ------------------------------------------------------------------ 14

#[tokio::test]
async fn c14_health_and_metrics() {
    within("check 14", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let echo = EchoServer::start().await;
        let r = raw::request(
            gw.admin(),
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

        // Two lookups of plain.test: a forward request and a tunnel.
        let r = raw::proxy_get(
            gw.plain(),
            &format!("http://plain.test:{}/m", up.addr.port()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&format!("plain.test:{}", echo.addr.port())))
            .await
            .unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        drop(c);

        let m = eventually(Duration::from_secs(2), || {
            let admin = gw.admin();
            async move {
                let r = raw::request(
                    admin,
                    b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                )
                .await
                .ok()?;
                let m = r.text();
                (komugate_tests::gw::metric_value(
                    &m,
                    "komugate_requests_total",
                    &[("kind", "connect")],
                ) >= 1.0)
                    .then_some(m)
            }
        })
        .await
        .expect("metrics show the tunnel");
        use komugate_tests::gw::metric_value as v;
        assert_eq!(
            v(
                &m,
                "komugate_requests_total",
                &[("kind", "http"), ("decision", "allow")]
            ),
            1.0,
            "{m}"
        );
        assert!(
            v(&m, "komugate_connections_total", &[("listener", "plain")]) >= 2.0,
            "{m}"
        );
        assert_eq!(
            v(
                &m,
                "komugate_upstream_connect_seconds_count",
                &[("result", "ok")]
            ),
            2.0,
            "{m}"
        );
        assert_eq!(v(&m, "komugate_dns_cache_misses_total", &[]), 1.0, "{m}");
        assert_eq!(v(&m, "komugate_dns_cache_hits_total", &[]), 1.0, "{m}");
        gw.shutdown().await;
    })
    .await
}

/// An idle keep-alive connection to the admin listener (a Prometheus
/// scraper, or the gateway's own upstream pool after proxying to /healthz as
/// the banner suggests) must not hold up shutdown or the final log flush.
#[tokio::test]
async fn c13_shutdown_is_prompt_with_idle_admin_keepalive() {
    within("check 13 (admin keep-alive)", async {
        let mut gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::proxy_get(gw.plain(), &format!("http://{}/before-shutdown", up.addr))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let mut scraper = RawConn::connect(gw.admin()).await;
        scraper
            .send(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(scraper.read_response(false).await.unwrap().status, 200);

        let running = gw.running.take().unwrap();
        let t = Instant::now();
        running.shutdown(Duration::from_secs(2)).await;
        let took = t.elapsed();
        let log = std::fs::read_to_string(&gw.access_log).unwrap();
        assert!(
            log.contains("/before-shutdown"),
            "access log flushed on shutdown:\n{log}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "shutdown with nothing in flight took {took:?}"
        );
    })
    .await
}

// ------------------------------------------------------------------ extra edges

/// h2 CONNECT refusals carry the same 403 + `komugate-rule` as HTTP/1.1,
/// and CONNECT over HTTP/1.1 works on the mTLS listener too.
#[tokio::test]
async fn x_mtls_h2_connect_refusals_and_h1_connect() {
    within("mTLS CONNECT refusals", async {
        let gw = TestGateway::start(|c, _| {
            c.egress.allow_destinations = vec!["127.0.0.1/32".parse().unwrap()]
        })
        .await;
        let echo = EchoServer::start().await;
        let pki = gw.tls();
        let device = pki.device("laptop-9", &["staff"]);
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"h2"]))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        // Port 8443: a blocked CONNECT to 443 on this listener gets the
        // block page inside TLS instead (tests/https_block_page.rs).
        for (target, rule) in [
            ("www.gambling.test:8443".to_string(), "blocked-hosts"),
            (
                format!("127.0.0.2:{}", echo.addr.port()),
                "destination-guard",
            ),
        ] {
            let mut client = client.clone().ready().await.unwrap();
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(target.as_str())
                .body(())
                .unwrap();
            let (resp, _send) = client.send_request(req, false).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 403, "h2 CONNECT {target}");
            assert_eq!(
                resp.headers()
                    .get("komugate-rule")
                    .map(|v| v.to_str().unwrap()),
                Some(rule),
                "h2 CONNECT {target}"
            );
        }
        let rec = gw.access_record(|r| r["rule"] == "blocked-hosts").await;
        assert_eq!(rec["device"], "laptop-9");
        assert_eq!(rec["listener"], "mtls");
        assert_eq!(echo.accepts(), 0);

        // HTTP/1.1 CONNECT on the mTLS listener.
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut c = RawConn::new(tls);
        c.send(&connect_req(&echo.addr.to_string())).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.send(b"over h1 in TLS").await.unwrap();
        assert_eq!(c.read_exact_n(14).await.unwrap(), b"over h1 in TLS");
        drop((c, client)); // see c13_drain_timeout_closes_remaining_tunnels
        gw.shutdown().await;
    })
    .await
}

/// A tunnel nobody uses is closed after `idle_timeout_secs` and logged so.
#[tokio::test]
async fn x_idle_tunnel_is_closed() {
    within("idle tunnel", async {
        let gw = TestGateway::start(|c, _| c.limits.idle_timeout_secs = 1).await;
        let echo = EchoServer::start().await;
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req(&echo.addr.to_string())).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.send(b"x").await.unwrap();
        assert_eq!(c.read_exact_n(1).await.unwrap(), b"x");
        let t = Instant::now();
        assert!(
            c.closed_within(Duration::from_secs(4)).await,
            "idle tunnel must be closed"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(800),
            "closed too early: {:?}",
            t.elapsed()
        );
        let rec = gw.access_record(|r| r["method"] == "CONNECT").await;
        assert_eq!(rec["error"], "idle timeout");
        gw.shutdown().await;
    })
    .await
}

/// Absolute-form target wins over a conflicting Host header (RFC 9112
/// §3.2.2); origin-form and https:// requests to the proxy are 400.
#[tokio::test]
async fn x_host_header_and_request_forms() {
    within("request forms", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let r = raw::request(
            gw.plain(),
            format!(
                "GET http://{}/h HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
                up.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(up.seen()[0].headers["host"], up.addr.to_string().as_str());
        let r = raw::request(
            gw.plain(),
            format!(
                "GET /h HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                up.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "origin-form to a proxy");
        let r = raw::proxy_get(gw.plain(), &format!("https://{}/h", up.addr))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "https:// absolute-form");
        assert_eq!(up.seen().len(), 1);
        gw.shutdown().await;
    })
    .await
}

/// A client that goes away before the upstream answers still leaves one
/// access record: status 499 ("client closed"), with what was sent so far.
#[tokio::test]
async fn client_closing_before_the_answer_is_logged() {
    let gw = TestGateway::start(|_, _| {}).await;
    // Forward: the upstream accepts and never answers.
    let silent = komugate_tests::upstream::SilentServer::start().await;
    let url = format!("http://127.0.0.1:{}/waiting", silent.addr.port());
    let mut c = RawConn::connect(gw.plain()).await;
    c.send(&get(&url, "")).await.unwrap();
    eventually(Duration::from_secs(3), || {
        let n = silent.accepts();
        async move { (n > 0).then_some(()) }
    })
    .await
    .expect("the request reached the upstream");
    drop(c);
    let rec = gw.access_record(|r| r["target"] == url.as_str()).await;
    assert_eq!(rec["status"], 499, "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("client closed"),
        "{rec}"
    );

    // CONNECT: the upstream's TCP handshake does not complete.
    let unanswered = komugate_tests::upstream::UnansweredAddress::start().await;
    let target = unanswered.addr.to_string();
    let mut c = RawConn::connect(gw.plain()).await;
    c.send(&connect_req(&target)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let rec = gw.access_record(|r| r["target"] == target.as_str()).await;
    assert_eq!(rec["status"], 499, "{rec}");
    assert_eq!(rec["method"], "CONNECT", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("client closed"),
        "{rec}"
    );
    gw.shutdown().await;
}

/// Writes `data` and half-closes while reading everything that comes back.
async fn send_and_read_to_end<S>(stream: S, data: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        all
    };
    tokio::join!(send, recv).1
}

/// Plain CONNECT tunnels (plain listener, plain upstream socket) are relayed
/// with splice(2), bytes the client sent with its CONNECT head included;
/// a tunnel on the mTLS listener goes through the buffered relay. Both
/// deliver every byte both ways and count it.
#[tokio::test]
async fn tunnels_splice_plain_sockets_and_buffer_tls() {
    within("tunnel relays", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let echo = EchoServer::start().await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();

        // Plain listener: the CONNECT head and the first tunnel bytes in one write.
        let mut c = RawConn::connect(gw.plain()).await;
        let mut first = connect_req(&echo.addr.to_string());
        first.extend_from_slice(b"sent with the head;");
        c.send(&first).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        let mut got = c.take_buffered();
        got.extend_from_slice(&send_and_read_to_end(c.stream, &payload).await);
        assert_eq!(&got[..19], b"sent with the head;");
        assert!(
            got[19..] == payload[..],
            "echo through the spliced tunnel is intact"
        );
        let rec = gw.access_record(|r| r["method"] == "CONNECT").await;
        let total = payload.len() as u64 + 19;
        assert_eq!(rec["bytes_up"].as_u64(), Some(total), "{rec}");
        assert_eq!(rec["bytes_down"].as_u64(), Some(total), "{rec}");
        let counted = |relay: &'static str| {
            let gw = &gw;
            move || {
                let n = gw.metric("komugate_tunnel_relays_total", &[("relay", relay)]);
                async move { (n == 1.0).then_some(()) }
            }
        };
        eventually(Duration::from_secs(5), counted("splice"))
            .await
            .expect("the plain tunnel was spliced");

        // mTLS listener, HTTP/1.1 CONNECT inside TLS: buffered.
        let pki = gw.tls();
        let device = pki.device("laptop-relay", &["staff"]);
        let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
            .await
            .unwrap();
        let mut c = RawConn::new(tls);
        c.send(&connect_req(&echo.addr.to_string())).await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        let echoed = send_and_read_to_end(c.stream, &payload).await;
        assert!(echoed == payload, "echo through the TLS tunnel is intact");
        eventually(Duration::from_secs(5), counted("buffered"))
            .await
            .expect("the TLS tunnel went through the buffered relay");
        assert_eq!(
            gw.metric("komugate_tunnel_relays_total", &[("relay", "splice")]),
            1.0
        );
        gw.shutdown().await;
    })
    .await
}

/// The plain listener reads a connection's first CONNECT itself
/// (`listen::first_connect`) and leaves the rest to hyper as before: a
/// refused CONNECT is answered by hyper, which serves the next request on
/// the same connection; a CONNECT hyper must read (`Connection: close`)
/// still tunnels. Both 200s carry the same headers.
#[tokio::test]
async fn first_connect_and_what_it_leaves_to_hyper() {
    within("first CONNECT", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let echo = EchoServer::start().await;
        let up = HttpUpstream::start("127.0.0.1").await;

        // Refused, then a forward request on the same connection.
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(&connect_req("www.gambling.test:443")).await.unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("komugate-rule").as_deref(), Some("blocked-hosts"));
        c.send(&get(
            &format!("http://127.0.0.1:{}/after", up.addr.port()),
            "",
        ))
        .await
        .unwrap();
        let r = c.read_response(false).await.unwrap();
        assert_eq!(
            r.status, 200,
            "the connection goes on after the refusal: {r:?}"
        );
        let rec = gw
            .access_record(|r| r["target"] == "www.gambling.test:443")
            .await;
        assert_eq!(
            (rec["decision"].as_str(), rec["status"].as_u64()),
            (Some("block"), Some(403))
        );

        // Taken here, and left to hyper: both tunnel, with the same head.
        let mut heads = Vec::new();
        for extra in ["", "Connection: keep-alive, close\r\n"] {
            let target = echo.addr.to_string();
            let mut c = RawConn::connect(gw.plain()).await;
            let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n");
            c.send(head.as_bytes()).await.unwrap();
            let r = c.read_head().await.unwrap();
            assert_eq!(r.status, 200, "{extra:?}: {r:?}");
            assert!(r.header("date").is_some(), "{extra:?}: {r:?}");
            heads.push(
                r.head
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
                    .collect::<Vec<_>>(),
            );
            let echoed = send_and_read_to_end(c.stream, b"through the tunnel").await;
            assert_eq!(echoed, b"through the tunnel", "{extra:?}");
        }
        assert_eq!(heads[0], heads[1], "the 200 written here is hyper's");
        assert_eq!(echo.accepts(), 2);
        gw.shutdown().await;
    })
    .await
}
