//! The local listeners of `komugate client`: HTTP proxy (absolute-form
//! requests and CONNECT, plus `/proxy.pac`), SOCKS5 (CONNECT), DNS (UDP,
//! forwarded to the gateway's DoH).

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::link::{collect_limited, Link, LinkBody, StreamError};

/// Idle limit of a relayed local connection.
const IDLE: Duration = Duration::from_secs(600);

fn boxed(r: Response<Full<Bytes>>) -> Response<LinkBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

fn error_page(status: StatusCode, ja: &str, en: &str) -> Response<LinkBody> {
    let mut r: Response<Full<Bytes>> = crate::flow::block_page::error_response(status, ja, en);
    r.headers_mut()
        .insert("komugate-client-error", HeaderValue::from_static("1"));
    boxed(r)
}

fn stream_error_response(e: StreamError) -> Response<LinkBody> {
    match e {
        StreamError::Down(why) => error_page(
            StatusCode::BAD_GATEWAY,
            "komugate ゲートウェイに接続できません。ネットワーク接続を確認してください。接続が回復すると自動的に再開します。",
            &format!("The komugate gateway is unreachable: {why}. Traffic resumes automatically when it is back."),
        ),
        StreamError::Failed(why) => error_page(
            StatusCode::BAD_GATEWAY,
            "komugate ゲートウェイとの通信に失敗しました。",
            &format!("The request through the komugate gateway failed: {why}"),
        ),
        StreamError::Refused { status, headers, body } => {
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = status;
            for (k, v) in headers.iter() {
                if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING && k != header::CONNECTION {
                    r.headers_mut().append(k.clone(), v.clone());
                }
            }
            boxed(r)
        }
    }
}

// ---------------------------------------------------------------- HTTP

pub async fn serve_http(
    link: Arc<Link>,
    listener: TcpListener,
    pac_proxy: String,
    shutdown: CancellationToken,
) {
    let pac_proxy = Arc::new(pac_proxy);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(e) => { tracing::warn!("http listener: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_http_connection(
            link.clone(),
            pac_proxy.clone(),
            stream,
        ));
    }
}

/// Serves one connection of the local HTTP proxy. Entry point for fuzzing
/// and tests.
pub async fn serve_http_connection<S>(link: Arc<Link>, pac_proxy: Arc<String>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = crate::listen::http::ServerLimits::local(Duration::from_secs(30));
    let handler = move |req| http_request(link.clone(), pac_proxy.clone(), req);
    let _ = crate::listen::http::serve(limits, stream, false, None, handler).await;
}

async fn http_request(
    link: Arc<Link>,
    pac_proxy: Arc<String>,
    req: Request<Incoming>,
) -> Result<Response<LinkBody>, Infallible> {
    if crate::listen::framing_guard::flagged(&req) {
        return Ok(error_page(
            StatusCode::BAD_REQUEST,
            "Content-Length と Transfer-Encoding の両方を含むリクエストは受け付けません。",
            "A request with both Content-Length and Transfer-Encoding is refused (request smuggling risk).",
        ));
    }
    if req.method() == Method::CONNECT {
        return Ok(http_connect(link, req).await);
    }
    if req.uri().scheme().is_none() {
        if req.uri().path() == "/proxy.pac" || req.uri().path() == "/wpad.dat" {
            return Ok(boxed(crate::pac::response(local_pac(&link, &pac_proxy))));
        }
        if req.uri().path() == STATUS_PATH {
            return Ok(status(&link));
        }
        return Ok(error_page(
            StatusCode::BAD_REQUEST,
            "これは komugate のローカルプロキシです。PAC: /proxy.pac",
            "This is the komugate client's local proxy; send absolute-form requests. The PAC file is at /proxy.pac.",
        ));
    }
    if req.uri().scheme_str() != Some("http") {
        return Ok(error_page(
            StatusCode::BAD_REQUEST,
            "https:// は CONNECT で送ってください。",
            "Use CONNECT for https:// URLs.",
        ));
    }
    let (mut parts, body) = req.into_parts();
    crate::flow::http::strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(header::HOST);
    parts.version = Version::HTTP_2;
    let req = Request::from_parts(parts, body.boxed());
    match link.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            parts.version = Version::HTTP_11;
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(e) => Ok(stream_error_response(e)),
    }
}

async fn http_connect(link: Arc<Link>, req: Request<Incoming>) -> Response<LinkBody> {
    let Some(authority) = req.uri().authority().map(|a| a.to_string()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "CONNECT の接続先が不正です。",
            "CONNECT needs host:port.",
        );
    };
    match link.tunnel(&authority).await {
        Ok(remote) => {
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(local) => {
                        crate::egress::tunnel::relay(
                            TokioIo::new(local),
                            TokioIo::new(remote),
                            IDLE,
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!("local CONNECT upgrade failed: {e}"),
                }
            });
            Response::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
        }
        Err(e) => stream_error_response(e),
    }
}

/// The client's state for people and tests on the device: the link and,
/// in full-device mode, the TUN counters (drops by reason, refusals).
pub const STATUS_PATH: &str = "/.komugate/client/status";

fn status(link: &Link) -> Response<LinkBody> {
    #[allow(unused_mut)]
    let mut v = serde_json::json!({
        "device": link.device_id(),
        "link_up": link.is_up(),
        "connects": link.connects.load(std::sync::atomic::Ordering::Relaxed),
    });
    #[cfg(target_os = "linux")]
    if let Some(s) = link.tun_stats.get() {
        v["tun"] = s.json();
    }
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    boxed(r)
}

/// The client's PAC: the gateway's (same DIRECT lists, for this device's
/// site) with the local proxy as the proxy; a send-everything-here PAC
/// until the gateway's has been fetched.
pub fn local_pac(link: &Link, proxy: &str) -> String {
    let fetched = link
        .gateway_pac
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match fetched {
        Some(text) if text.contains("\nvar KOMUGATE_PROXY = \"") => {
            text.lines()
                .map(|l| {
                    if l.starts_with("var KOMUGATE_PROXY = ") {
                        format!("var KOMUGATE_PROXY = \"{proxy}\";")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
        _ => crate::pac::generate(&[], proxy, "komugate client; gateway PAC not fetched yet"),
    }
}

// ---------------------------------------------------------------- SOCKS5

/// SOCKS5 reply codes (RFC 1928 §6).
mod rep {
    pub const OK: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

pub async fn serve_socks(link: Arc<Link>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(e) => { tracing::warn!("socks listener: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
        };
        let _ = stream.set_nodelay(true);
        let link = link.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), socks_handshake(&link, stream))
                .await
            {
                Ok(Ok(Some((local, remote)))) => {
                    crate::egress::tunnel::relay(local, TokioIo::new(remote), IDLE).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!("socks {peer}: {e}"),
                Err(_) => tracing::debug!("socks {peer}: handshake timed out"),
            }
        });
    }
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: u8) -> std::io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    s.flush().await
}

/// Greeting + request; on success the local stream and the gateway stream.
async fn socks_handshake(
    link: &Link,
    mut s: TcpStream,
) -> std::io::Result<Option<(TcpStream, hyper::upgrade::Upgraded)>> {
    let Some((host, port)) = socks_request(&mut s).await? else {
        return Ok(None);
    };
    match link.tunnel(&format!("{host}:{port}")).await {
        Ok(remote) => {
            reply(&mut s, rep::OK).await?;
            Ok(Some((s, remote)))
        }
        Err(e) => {
            let code = match &e {
                StreamError::Down(_) => rep::NETWORK_UNREACHABLE,
                StreamError::Failed(_) => rep::GENERAL_FAILURE,
                StreamError::Refused { status, .. } => match status.as_u16() {
                    403 | 407 => rep::NOT_ALLOWED,
                    504 => rep::TTL_EXPIRED,
                    502 => rep::HOST_UNREACHABLE,
                    400 => rep::GENERAL_FAILURE,
                    _ => rep::CONNECTION_REFUSED,
                },
            };
            tracing::info!("socks CONNECT {host}:{port}: {e}");
            reply(&mut s, code).await?;
            Ok(None)
        }
    }
}

/// Reads a SOCKS5 greeting and request from `s`, answering the greeting
/// and any refusal itself: the CONNECT target (host, port), or `None` once
/// refused. Entry point for fuzzing and tests.
pub async fn socks_request<S>(s: &mut S) -> std::io::Result<Option<(String, u16)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(None); // not SOCKS5 (SOCKS4 has no reply we could send here)
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?; // no acceptable method
        return Ok(None);
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        reply(s, rep::GENERAL_FAILURE).await?;
        return Ok(None);
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            format!("[{}]", Ipv6Addr::from(a))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            s.read_exact(&mut name).await?;
            match String::from_utf8(name) {
                Ok(n)
                    if !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
                {
                    n
                }
                _ => {
                    reply(s, rep::HOST_UNREACHABLE).await?;
                    return Ok(None);
                }
            }
        }
        _ => {
            reply(s, rep::ADDRESS_TYPE_NOT_SUPPORTED).await?;
            return Ok(None);
        }
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    if req[1] != 1 {
        // BIND (2) and UDP ASSOCIATE (3) are not carried over the gateway.
        reply(s, rep::COMMAND_NOT_SUPPORTED).await?;
        return Ok(None);
    }
    Ok(Some((host, port)))
}

// ---------------------------------------------------------------- DNS

pub async fn serve_dns(link: Arc<Link>, socket: UdpSocket, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(e) => { tracing::debug!("dns listener: {e}"); continue; } },
        };
        if n < 12 {
            continue; // shorter than a DNS header
        }
        let query = Bytes::copy_from_slice(&buf[..n]);
        let (link, socket) = (link.clone(), socket.clone());
        tokio::spawn(async move {
            let answer = match doh(&link, query.clone()).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("DoH query failed: {e}");
                    servfail(&query)
                }
            };
            let _ = socket.send_to(&answer, peer).await;
        });
    }
}

/// RFC 8484 POST `/dns-query` on the gateway connection.
pub(crate) async fn doh(link: &Link, query: Bytes) -> Result<Bytes, String> {
    // RFC 8484 §4.1: use ID 0 on the wire for cacheability; restore it in the answer.
    let id = [query[0], query[1]];
    let mut q = query.to_vec();
    q[0] = 0;
    q[1] = 0;
    let resp = link
        .gateway_request(
            Method::POST,
            "/dns-query",
            Some("application/dns-message"),
            Bytes::from(q),
        )
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("gateway answered {}", resp.status()));
    }
    let ct_ok = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/dns-message"));
    if !ct_ok {
        return Err("the answer is not application/dns-message".into());
    }
    let body = collect_limited(resp.into_body(), 65535)
        .await
        .map_err(|e| e.to_string())?;
    if body.len() < 12 {
        return Err("short DNS answer".into());
    }
    let mut a = body.to_vec();
    a[0] = id[0];
    a[1] = id[1];
    Ok(Bytes::from(a))
}

/// A SERVFAIL answer to `query` (header + question copied).
pub fn servfail(query: &[u8]) -> Bytes {
    let mut a = query.to_vec();
    a[2] = (a[2] | 0x80) & !0x06; // QR=1, keep opcode/RD, clear AA/TC
    a[3] = (a[3] & 0x70) | 0x80 | 2; // RA=1, RCODE=2
                                     // Keep the question only: ANCOUNT=NSCOUNT=ARCOUNT=0 and cut after the question.
    let qd = u16::from_be_bytes([a[4], a[5]]);
    for b in &mut a[6..12] {
        *b = 0;
    }
    let mut end = 12;
    for _ in 0..qd {
        while end < a.len() && a[end] != 0 {
            if a[end] & 0xc0 == 0xc0 {
                end += 1;
                break;
            }
            end += a[end] as usize + 1;
        }
        end += 1 + 4;
    }
    a.truncate(end.min(a.len()));
    Bytes::from(a)
}

pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socks_request_reads_a_connect_and_refuses_other_commands() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x01\xbb")
            .await
            .unwrap();
        let target = socks_request(&mut server).await.unwrap();
        assert_eq!(target, Some(("example.com".to_string(), 443)));
        let mut greeting = [0u8; 2];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, [5, 0]);

        // UDP ASSOCIATE is not carried over the gateway.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        assert_eq!(socks_request(&mut server).await.unwrap(), None);
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[2..4], [5, rep::COMMAND_NOT_SUPPORTED]);
    }
}
