//! The one HTTP server komugate runs: the proxy listeners, inside
//! inspected tunnels, the admin listener, the site beacon, the local
//! proxy of `komugate client` and the embedded demo's origin. HTTP/1.1 always behind the request-smuggling
//! guard ([`FramingGuard`]) with bounded heads, HTTP/2 with bounded streams
//! and header lists. A handler answers a request the guard flagged
//! ([`super::framing_guard::flagged`]) with 400.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::coalesce::Coalesce;
use super::framing_guard::FramingGuard;
use crate::config::Limits;

/// The limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// HTTP/2 extended CONNECT (RFC 8441 `SETTINGS_ENABLE_CONNECT_PROTOCOL`),
    /// for CONNECT-UDP: on the proxy listeners only.
    pub extended_connect: bool,
}

impl From<&Limits> for ServerLimits {
    fn from(l: &Limits) -> ServerLimits {
        ServerLimits {
            header_read_timeout: l.header_read_timeout(),
            max_headers: l.max_headers,
            max_header_bytes: l.max_header_bytes,
            max_streams: l.max_streams_per_connection,
            extended_connect: false,
        }
    }
}

impl ServerLimits {
    /// For small local servers (beacon, the client's local proxy): the
    /// default gateway limits with their own head timeout.
    pub fn local(header_read_timeout: Duration) -> ServerLimits {
        ServerLimits {
            header_read_timeout,
            ..ServerLimits::from(&Limits::default())
        }
    }
}

/// What [`serve`] calls for every request: any `Fn(Request) -> future of
/// a response` (a closure, usually).
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;
    fn call(&self, req: Request<Incoming>) -> Self::Future;
}

impl<F, Fut, B> Handler for F
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = B;
    type Future = Fut;
    fn call(&self, req: Request<Incoming>) -> Fut {
        self(req)
    }
}

/// Serves one client connection until it ends. `h2`: HTTP/2 (by ALPN),
/// else HTTP/1.1 with upgrades (CONNECT, WebSocket). When `graceful` is
/// cancelled the connection finishes its requests and closes.
pub async fn serve<S, H>(
    limits: ServerLimits,
    stream: S,
    h2: bool,
    graceful: Option<&CancellationToken>,
    handler: H,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    if !h2 {
        let guard = FramingGuard::new(stream, limits.max_header_bytes);
        return serve_guarded(limits, guard, graceful, handler).await;
    }
    let service = service_fn(move |req| handler.call(req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size((limits.max_header_bytes as u32).max(16 * 1024))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    if limits.extended_connect {
        builder.enable_connect_protocol();
    }
    // HTTP/2 writes a frame header and a large payload as two pieces:
    // one write, so over TLS one record (`Coalesce`).
    let conn = builder.serve_connection(TokioIo::new(Coalesce::new(stream)), service);
    until_stopped(conn, graceful, |c| c.graceful_shutdown()).await
}

/// HTTP/1.1 with upgrades over a framing guard that may hold bytes read
/// already (`crate::listen::first_connect`); see [`serve`].
pub async fn serve_guarded<S, H>(
    limits: ServerLimits,
    stream: FramingGuard<S>,
    graceful: Option<&CancellationToken>,
    handler: H,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(hyper_buf_size(limits.max_header_bytes))
        .keep_alive(true);
    let conn = builder
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handler.call(req)),
        )
        .with_upgrades();
    until_stopped(conn, graceful, |c| c.graceful_shutdown()).await
}

/// Drives `conn` to its end; once `graceful` is cancelled, gracefully
/// (`shut_down`: the connection's `graceful_shutdown`).
async fn until_stopped<C>(
    conn: C,
    graceful: Option<&CancellationToken>,
    shut_down: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let stop = async {
        match graceful {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = stop => {
            shut_down(conn.as_mut());
            conn.await
        }
    }
}

/// hyper's read buffer: room for a head of exactly `max_header_bytes` plus
/// what follows it in the same read. The exact limit is the framing guard's.
pub fn hyper_buf_size(max_header_bytes: usize) -> usize {
    (max_header_bytes + 16 * 1024).max(8192)
}
