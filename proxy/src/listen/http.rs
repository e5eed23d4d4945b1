//! The one HTTP server komugate runs: the proxy listeners, inside
//! inspected tunnels, the admin listener, the site beacon, the local
//! proxy of `komugate client` and the embedded demo's origin. HTTP/1.1 always behind the request-smuggling
//! guard ([`FramingGuard`]) with bounded heads, HTTP/2 with bounded streams
//! and header lists. A handler answers a request the guard flagged
//! ([`super::framing_guard::flagged`]) with 400.

use std::convert::Infallible;
use std::future::Future;
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

/// Serves one client connection until it ends. `h2`: HTTP/2 (by ALPN),
/// else HTTP/1.1 with upgrades (CONNECT, WebSocket). When `graceful` is
/// cancelled the connection finishes its requests and closes.
pub async fn serve<S, F, Fut, B>(
    limits: ServerLimits,
    stream: S,
    h2: bool,
    graceful: Option<&CancellationToken>,
    handler: F,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = service_fn(handler);
    let stop = async {
        match graceful {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    if h2 {
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
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            _ = &mut stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_buf_size(hyper_buf_size(limits.max_header_bytes))
            .keep_alive(true);
        let stream = FramingGuard::new(stream, limits.max_header_bytes);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            _ = &mut stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }
}

/// hyper's read buffer: room for a head of exactly `max_header_bytes` plus
/// what follows it in the same read. The exact limit is the framing guard's.
pub fn hyper_buf_size(max_header_bytes: usize) -> usize {
    (max_header_bytes + 16 * 1024).max(8192)
}
