//! The plain listener's most common connection, served without hyper: a
//! new connection whose first request is a CONNECT (a browser opening an
//! HTTPS tunnel). Its head is read and parsed here, the flow decides it
//! ([`crate::flow::first_connect`]: the same checks and stages as any
//! CONNECT), the 200 is written here and the tunnel runs in the
//! connection's own task. No hyper connection, upgrade hand-off, boxed
//! stream or second task per tunnel: CPU per CONNECT is issue 20 point 6
//! (benches/RESULTS.md).
//!
//! Everything else goes to hyper as before, with the bytes read so far
//! replayed through the framing guard: another method, a head this parser
//! does not take as plain (framing, upgrade or `Connection: close`
//! headers, more headers than [`MAX_FAST_HEADERS`], over the head limit,
//! leading empty lines, not HTTP/1.1, a target that is not a URI), an EOF
//! before the head ends, and every refusal (its answer, decided here, is
//! written by hyper, which then serves the rest of the connection).

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures_util::future::Either;
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing_guard::{find_head_end, FramingGuard, FRAMING_ERROR_HEADER};
use super::{http as server, log_conn_end, server_limits, OpenConnection};
use crate::flow::tunnel_client::TunnelClient;
use crate::flow::{FirstConnect, OpenTunnel};
use crate::gateway::Gateway;
use crate::request::{ConnContext, ProxyBody};
use crate::stages::inspect::rewind::Rewind;

/// Headers parsed on the stack; a CONNECT with more goes to hyper.
pub const MAX_FAST_HEADERS: usize = 32;

/// Serves one admitted plain-listener connection.
///
/// The open tunnel holds this future for its whole life, so it is built
/// from named parts (as `flow::tunnel_task`): first everything before the
/// tunnel, boxed (the head, the stages, hyper), then only the tunnel.
pub fn serve(
    gw: Arc<Gateway>,
    ctx: Arc<ConnContext>,
    stream: TcpStream,
) -> impl Future<Output = ()> + Send {
    Box::pin(open(gw, ctx, stream)).then(|opened| match opened {
        Some((tunnel, client)) => Either::Left(tunnel.run(client)),
        None => Either::Right(std::future::ready(())),
    })
}

/// Everything before the tunnel: the head, the decision, the 200. `None`
/// when the connection ended or went to hyper (served to its end).
async fn open(
    gw: Arc<Gateway>,
    ctx: Arc<ConnContext>,
    mut stream: TcpStream,
) -> Option<(OpenTunnel, Result<TunnelClient, String>)> {
    let _open = OpenConnection::new(&gw, ctx.listener.label());
    let limits = server_limits(&gw, &ctx);
    // As hyper: a graceful shutdown closes a connection that has not sent
    // a request yet; the header timeout closes it without an answer.
    let read = tokio::select! {
        biased;
        _ = gw.shutdown.cancelled() => return None,
        read = tokio::time::timeout(
            limits.header_read_timeout,
            read_head(&mut stream, limits.max_header_bytes),
        ) => read,
    };
    let mut buf = match read {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => return conn_ended(&ctx, &e),
        Err(_) => return conn_ended(&ctx, &"read header from client timeout"),
    };
    let head = parse_connect(
        &buf,
        limits.max_header_bytes,
        limits.max_headers.min(MAX_FAST_HEADERS),
    );
    let mut prepared = None;
    if let Some((req, head_len)) = head {
        let decided = tokio::select! {
            biased;
            decided = crate::flow::first_connect(gw.clone(), ctx.clone(), &req) => decided,
            // As hyper drops a handler whose client left: the flow's
            // record says "client closed".
            () = client_gone(&stream) => return None,
        };
        match decided {
            FirstConnect::Tunnel(tunnel) => {
                buf.drain(..head_len);
                let client = match answer_ok(&mut stream).await {
                    Ok(()) => Ok(TunnelClient::Tcp(Rewind::new(buf, stream))),
                    Err(e) => Err(format!("client upgrade failed: {e}")),
                };
                // Dropping `_open`: the connection is a tunnel now
                // (counted in tunnels_open), as after hyper's upgrade.
                return Some((tunnel, client));
            }
            FirstConnect::Answer(resp) => prepared = Some(resp),
            FirstConnect::Hyper => {}
        }
    }
    let guard = FramingGuard::with_read(stream, limits.max_header_bytes, &buf);
    drop(buf);
    serve_hyper(gw.clone(), ctx, limits, guard, prepared).await;
    None
}

/// The connection through hyper; the first request gets `prepared` when
/// one was decided here.
async fn serve_hyper(
    gw: Arc<Gateway>,
    ctx: Arc<ConnContext>,
    limits: server::ServerLimits,
    guard: FramingGuard<TcpStream>,
    prepared: Option<http::Response<ProxyBody>>,
) {
    let prepared = Mutex::new(prepared);
    let (gw_svc, ctx_svc) = (gw.clone(), ctx.clone());
    let result = server::serve_guarded(limits, guard, Some(&gw.shutdown), move |req| {
        let first = prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        crate::flow::handle_prepared(gw_svc.clone(), ctx_svc.clone(), req, first)
    })
    .await;
    log_conn_end(&ctx, result);
}

fn conn_ended<T>(ctx: &ConnContext, e: &dyn std::fmt::Display) -> Option<T> {
    tracing::debug!(
        "{} connection from {} ended: {e}",
        ctx.listener.label(),
        ctx.client
    );
    None
}

/// Reads until the first head is complete, the client's EOF, or more than
/// `max_head` bytes: the bytes read (a head may be followed by the first
/// tunnel bytes).
async fn read_head(stream: &mut TcpStream, max_head: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.capacity());
        }
        let from = buf.len().saturating_sub(3);
        if stream.read_buf(&mut buf).await? == 0
            || find_head_end(&buf, from).is_some()
            || buf.len() > max_head
        {
            return Ok(buf);
        }
    }
}

/// A CONNECT head this module may answer itself: the request (no body)
/// and the head's length. `None` for anything hyper must see.
pub fn parse_connect(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
) -> Option<(Request<()>, usize)> {
    // Other methods (a forward request opening a keep-alive connection)
    // and empty lines before a request: hyper's business, unparsed here.
    if !buf.starts_with(b"CONNECT ") {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if len > max_head
        || parsed.method != Some("CONNECT")
        || parsed.version != Some(1)
        || parsed.headers.len() > max_headers
    {
        return None;
    }
    let uri = Uri::try_from(parsed.path?).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let plain = match name.as_str() {
            "content-length" | "transfer-encoding" | "upgrade" | FRAMING_ERROR_HEADER => false,
            // hyper would answer with `connection: close`.
            "connection" => !has_token(h.value, b"close") && !has_token(h.value, b"upgrade"),
            _ => true,
        };
        if !plain {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, len))
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The CONNECT's 200, as hyper writes it (a date, no body framing).
async fn answer_ok(stream: &mut TcpStream) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    stream.write_all(head.as_bytes()).await
}

/// Resolves when the client closes the connection before its CONNECT is
/// answered. Bytes it sends early stay in the socket for the tunnel.
async fn client_gone(stream: &TcpStream) {
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Option<(Request<()>, usize)> {
        parse_connect(head.as_bytes(), 65536, 100)
    }

    #[test]
    fn a_plain_connect_is_taken_with_its_headers_and_length() {
        let head = "CONNECT example.jp:443 HTTP/1.1\r\nHost: example.jp:443\r\nProxy-Connection: keep-alive\r\nX-Site: a\r\n\r\n";
        let mut bytes = head.to_string();
        bytes.push_str("\x16\x03\x01early");
        let (req, len) = parse_connect(bytes.as_bytes(), 65536, 100).expect("taken");
        assert_eq!(len, head.len());
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().authority().unwrap().as_str(), "example.jp:443");
        assert_eq!(req.headers()["x-site"], "a");
        assert_eq!(req.headers().len(), 3);
    }

    #[test]
    fn anything_hyper_must_decide_is_left_to_it() {
        for head in [
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "connect a:443 HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.0\r\n\r\n",
            "\r\nCONNECT a:443 HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nkomugate-framing-error: forged\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n",
            "CONNECT a b:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(head).is_none(), "{head:?}");
        }
        let many: String = (0..MAX_FAST_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert!(parse(&format!("CONNECT a:443 HTTP/1.1\r\n{many}\r\n")).is_none());
        let head = "CONNECT a:443 HTTP/1.1\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        assert!(
            parse_connect(head.as_bytes(), 65536, 1).is_none(),
            "over max_headers"
        );
        assert!(
            parse_connect(head.as_bytes(), head.len() - 1, 100).is_none(),
            "over the head limit"
        );
        assert!(
            parse_connect(head.as_bytes(), head.len(), 100).is_some(),
            "at the head limit"
        );
    }

    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each open tunnel from this path holds the connection's task for its
    /// whole life (50,000 idle tunnels at ≤ 4.5 KiB each, as through
    /// hyper's upgrade and `flow::tunnel_task`): what comes before the
    /// tunnel is boxed and does not size it.
    #[test]
    fn a_connection_task_stays_small() {
        let serve = future_size(serve);
        let connection = future_size(crate::listen::plain_connection);
        eprintln!("plain connection future: {connection} bytes (serve: {serve})");
        // 568 bytes in a debug build, as `flow::tunnel_task` (1,504 with
        // the head, stage and hyper states inline).
        assert!(
            connection <= 1024,
            "the connection future is {connection} bytes"
        );
    }
}
