//! Accept loops for the two proxy listeners: client admission (CIDRs on
//! the plain listener, device certificates on the mTLS one: the identity
//! stage), protocol selection (HTTP/1.1 or HTTP/2 by ALPN), connection
//! limits and graceful shutdown. Each admitted connection is served by
//! [`http::serve`] with [`crate::flow::handle`] for every request; on the
//! plain listener a first request that is a CONNECT is read and answered
//! without hyper ([`first_connect`]).

pub mod coalesce;
pub mod first_connect;
pub mod framing_guard;
pub mod http;
pub mod proxy_protocol;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::device_auth::DeviceAuth;
use crate::gateway::Gateway;
use crate::request::{ConnContext, ListenerKind};

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
        gw.spawn_tracked(plain_connection(gw.clone(), stream, peer));
    }
}

/// One plain-listener connection: admission, then [`first_connect::serve`].
/// An open tunnel holds this future for its whole life, so admission is a
/// step of its own (see `first_connect::serve`).
fn plain_connection(
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    admit_plain(gw, stream, peer).then(|admitted| match admitted {
        Some((gw, ctx, stream)) => Either::Left(first_connect::serve(gw, ctx, stream)),
        None => Either::Right(std::future::ready(())),
    })
}

/// The plain listener's admission: the client address (PROXY header) and
/// `[listen] plain_clients`.
async fn admit_plain(
    gw: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<Gateway>, Arc<ConnContext>, TcpStream)> {
    let client = client_address(&gw, "plain", &mut stream, peer).await?;
    if !listed(&gw.config.listen.plain_clients, client) {
        gw.metrics
            .connections_refused
            .with_label_values(&["plain", "client_not_allowed"])
            .inc();
        tracing::info!(
            "plain listener: refused {client} (via {peer}): not in [listen] plain_clients"
        );
        return None;
    }
    let ctx = Arc::new(ConnContext::new(ListenerKind::Plain, client, None, None));
    Some((gw, ctx, stream))
}

/// Whether `addr` is in one of `nets` (an IPv4-mapped IPv6 address as IPv4).
fn listed(nets: &[ipnet::IpNet], addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    nets.iter().any(|net| net.contains(&ip))
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
    if !listed(&gw.config.listen.proxy_protocol_from, peer) {
        return Some(peer);
    }
    // Boxed: a plain connection's task lives as long as its tunnel.
    let header =
        crate::listen::proxy_protocol::read_header(stream, gw.config.limits.header_read_timeout());
    match Box::pin(header).await {
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
        crate::multiplexed_socket::tune(&stream);
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
            let ctx = Arc::new(ConnContext::new(
                ListenerKind::Mtls,
                peer,
                Some(identity),
                device.chain.first().map(|c| c.as_ref().into()),
            ));
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

/// Counts a client connection in `connections_total` and, while it lives,
/// in `connections_open`.
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

/// Serves one client connection that has passed admission (and, on the
/// mTLS listener, the TLS handshake) with the flow's handler: HTTP/2 when
/// `h2`, else HTTP/1.1 behind the framing guard. Entry point for fuzzing
/// and tests.
pub async fn serve_connection<S>(gw: Arc<Gateway>, ctx: Arc<ConnContext>, stream: S, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = OpenConnection::new(&gw, ctx.listener.label());
    let (gw_svc, ctx_svc) = (gw.clone(), ctx.clone());
    let result = http::serve(
        server_limits(&gw, &ctx),
        stream,
        h2,
        Some(&gw.shutdown),
        move |req| crate::flow::handle(gw_svc.clone(), ctx_svc.clone(), req),
    )
    .await;
    log_conn_end(&ctx, result);
}

/// The server limits of a proxy listener's connection.
fn server_limits(gw: &Gateway, ctx: &ConnContext) -> http::ServerLimits {
    // Extended CONNECT on both proxy listeners: the mTLS one carries
    // CONNECT-UDP, the plain one answers it with a clear refusal.
    let mut limits = http::ServerLimits {
        extended_connect: true,
        ..(&gw.config.limits).into()
    };
    if ctx.listener == crate::request::ListenerKind::Mtls {
        // A device link multiplexes all of the device's flows.
        limits.max_streams = gw.config.limits.max_streams_per_device_link;
    }
    limits
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
