//! Accept loops for the two proxy listeners: client admission (CIDRs on
//! the plain listener, device certificates on the mTLS one), protocol
//! selection (HTTP/1.1 or HTTP/2 by ALPN), limits and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::decision::ListenerKind;
use crate::device_auth::DeviceAuth;
use crate::gateway::Gateway;
use crate::http_proxy::{handle, ConnContext};

/// Plain HTTP/1.1 forward proxy: only clients from `plain_clients` CIDRs.
pub async fn serve_plain(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("plain listener accept: {e}"); continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        gw.spawn_tracked(async move {
            let mut stream = stream;
            let Some(client) = client_address(&gw2, "plain", &mut stream, peer).await else {
                return;
            };
            let client_ip = canonical_ip(client);
            if !gw2
                .config
                .listen
                .plain_clients
                .iter()
                .any(|net| net.contains(&client_ip))
            {
                gw2.metrics
                    .connections_refused
                    .with_label_values(&["plain", "client_not_allowed"])
                    .inc();
                tracing::info!(
                    "plain listener: refused {client} (via {peer}): not in [listen] plain_clients"
                );
                return;
            }
            let ctx = Arc::new(ConnContext {
                listener: ListenerKind::Plain,
                client,
                device: None,
            });
            serve_http1(gw2, ctx, stream).await;
        });
    }
}

/// The client address: the TCP peer, or, when the peer is a load balancer in
/// `[listen] proxy_protocol_from`, the source its PROXY header carries (the
/// header is then required). From other peers no header is read.
async fn client_address(
    gw: &Gateway,
    listener: &'static str,
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let peer_ip = canonical_ip(peer);
    if !gw
        .config
        .listen
        .proxy_protocol_from
        .iter()
        .any(|net| net.contains(&peer_ip))
    {
        return Some(peer);
    }
    match crate::proxy_protocol::read_header(stream, gw.config.limits.header_read_timeout()).await {
        Ok(header) => Some(header.client(peer)),
        Err(e) => {
            gw.metrics
                .connections_refused
                .with_label_values(&[listener, "proxy_protocol"])
                .inc();
            tracing::info!("{listener} listener: {peer}: {e}");
            None
        }
    }
}

fn canonical_ip(addr: SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(addr.ip()),
        v4 => v4,
    }
}

/// HTTPS proxy with mutual TLS: the device certificate is verified by
/// rustls during a full handshake and again by [`DeviceAuth::admit`] on
/// every connection (resumed sessions included); the connection is closed
/// when the certificate expires or a reload revokes it. Failures are
/// counted by reason.
pub async fn serve_mtls(gw: Arc<Gateway>, listener: TcpListener, auth: Arc<DeviceAuth>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("mtls listener accept: {e}"); continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        // The config of the moment: a reload swaps in a new one (new session cache).
        let acceptor = TlsAcceptor::from(auth.server_config());
        let auth = auth.clone();
        gw.spawn_tracked(async move {
            let mut stream = stream;
            let Some(peer) = client_address(&gw2, "mtls", &mut stream, peer).await else {
                return;
            };
            let handshake = tokio::time::timeout(
                gw2.config.limits.header_read_timeout(),
                acceptor.accept(stream),
            )
            .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = crate::device_auth::handshake_failure_reason(&e);
                    gw2.metrics
                        .tls_handshake_failures
                        .with_label_values(&["mtls", reason])
                        .inc();
                    tracing::info!("mtls: TLS handshake with {peer} failed ({reason}): {e}");
                    return;
                }
                Err(_) => {
                    gw2.metrics
                        .tls_handshake_failures
                        .with_label_values(&["mtls", "timeout"])
                        .inc();
                    tracing::info!("mtls: TLS handshake with {peer} timed out");
                    return;
                }
            };
            let (_, conn) = tls.get_ref();
            let device = match auth.admit(conn) {
                Ok(device) => device,
                Err(e) => {
                    let reason = e.reason();
                    gw2.metrics
                        .tls_handshake_failures
                        .with_label_values(&["mtls", reason])
                        .inc();
                    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    tracing::info!("mtls: {peer} refused ({reason}, resumed session: {resumed}): {e}");
                    return;
                }
            };
            let identity = device.identity.clone();
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let Some(_slot) = gw2.device_connection(&identity.device_id) else {
                gw2.metrics
                    .connections_refused
                    .with_label_values(&["mtls", "device_connection_limit"])
                    .inc();
                tracing::warn!(
                    "mtls: device {} is over its connection limit; refusing {peer}",
                    identity.device_id
                );
                return;
            };
            let ctx = Arc::new(ConnContext {
                listener: ListenerKind::Mtls,
                client: peer,
                device: Some(identity),
            });
            let serve = serve_connection(gw2.clone(), ctx, tls, h2);
            tokio::select! {
                _ = serve => {}
                reason = auth.until_invalid(&device) => {
                    // Dropping the connection closes it, with its HTTP/2 streams.
                    gw2.metrics
                        .connections_refused
                        .with_label_values(&["mtls", reason])
                        .inc();
                    tracing::info!(
                        "mtls: closing the connection of device {} from {peer}: certificate {reason}",
                        device.identity.device_id
                    );
                }
            }
        });
    }
}

/// Serves one client connection that has passed admission (and, on the
/// mTLS listener, the TLS handshake): HTTP/2 when `h2`, else HTTP/1.1
/// behind the framing guard. Entry point for fuzzing and tests.
pub async fn serve_connection<S>(gw: Arc<Gateway>, ctx: Arc<ConnContext>, stream: S, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        serve_http2(gw, ctx, stream).await;
    } else {
        serve_http1(gw, ctx, stream).await;
    }
}

struct OpenConnection<'a> {
    gw: &'a Gateway,
    listener: &'static str,
}

impl<'a> OpenConnection<'a> {
    fn new(gw: &'a Gateway, listener: &'static str) -> Self {
        gw.metrics
            .connections_total
            .with_label_values(&[listener])
            .inc();
        gw.metrics
            .connections_open
            .with_label_values(&[listener])
            .inc();
        OpenConnection { gw, listener }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.gw
            .metrics
            .connections_open
            .with_label_values(&[self.listener])
            .dec();
    }
}

async fn serve_http1<S>(gw: Arc<Gateway>, ctx: Arc<ConnContext>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = OpenConnection::new(&gw, ctx.listener.label());
    let limits = &gw.config.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_headers(limits.max_headers)
        .max_buf_size(hyper_buf_size(limits.max_header_bytes))
        .keep_alive(true);
    let gw_svc = gw.clone();
    let ctx_svc = ctx.clone();
    let service = service_fn(move |req| handle(gw_svc.clone(), ctx_svc.clone(), req));
    let stream = crate::framing_guard::FramingGuard::new(stream, limits.max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_conn_end(&ctx, result),
        _ = gw.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(&ctx, conn.await);
        }
    }
}

async fn serve_http2<S>(gw: Arc<Gateway>, ctx: Arc<ConnContext>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = OpenConnection::new(&gw, ctx.listener.label());
    let limits = &gw.config.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size((limits.max_header_bytes as u32).max(16 * 1024))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    let gw_svc = gw.clone();
    let ctx_svc = ctx.clone();
    let service = service_fn(move |req| handle(gw_svc.clone(), ctx_svc.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_conn_end(&ctx, result),
        _ = gw.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(&ctx, conn.await);
        }
    }
}

/// hyper's read buffer: room for a head of exactly `max_header_bytes` plus
/// what follows it in the same read. The exact limit is the framing guard's.
pub fn hyper_buf_size(max_header_bytes: usize) -> usize {
    (max_header_bytes + 16 * 1024).max(8192)
}

fn log_conn_end(ctx: &ConnContext, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(
            "{} connection from {} ended: {e}",
            ctx.listener.label(),
            ctx.client
        );
    }
}
