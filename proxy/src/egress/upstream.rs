//! Pooled upstream HTTP/1.1 clients, one pool per egress source address, so
//! a connection bound to the fixed egress IP is never reused for a request
//! that must leave from another address.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::egress::h1pool::{Driver, H1Pool, SendError};
use crate::egress::idle_cap::IdleMetrics;
use crate::egress::{Egress, EgressError};

pub type UpstreamBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;
pub type UpstreamClient = Client<EgressConnector, UpstreamBody>;

/// Local and remote address of the upstream socket; the legacy client puts
/// it into each response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct EgressInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// An upstream stream (plain TCP, or TLS for inspected HTTPS) that reports
/// its addresses and negotiated protocol to the pool.
pub enum EgressStream {
    Plain {
        io: TokioIo<TcpStream>,
        info: EgressInfo,
    },
    Tls {
        /// Boxed: a TLS session is over 1 KiB, and plain connections
        /// should not carry that size.
        io: Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
        info: EgressInfo,
        h2: bool,
    },
}

impl EgressStream {
    pub fn info(&self) -> EgressInfo {
        match self {
            EgressStream::Plain { info, .. } | EgressStream::Tls { info, .. } => *info,
        }
    }
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        match self {
            EgressStream::Plain { info, .. } => Connected::new().extra(*info),
            EgressStream::Tls { info, h2, .. } => {
                let c = Connected::new().extra(*info);
                if *h2 {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl hyper::rt::Read for EgressStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain { io, .. } => Pin::new(io).poll_read(cx, buf),
            EgressStream::Tls { io, .. } => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for EgressStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Plain { io, .. } => Pin::new(io).poll_write(cx, buf),
            EgressStream::Tls { io, .. } => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain { io, .. } => Pin::new(io).poll_flush(cx),
            EgressStream::Tls { io, .. } => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain { io, .. } => Pin::new(io).poll_shutdown(cx),
            EgressStream::Tls { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// Connector used by the pooled clients: DNS, destination guard, bind,
/// connect, and for `https` URIs a strictly verified TLS handshake.
#[derive(Clone)]
pub struct EgressConnector {
    egress: Arc<Egress>,
    source: Option<IpAddr>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl tower_service::Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, EgressError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            connector.connect_to(host, port, https).await
        })
    }
}

impl EgressConnector {
    /// Connects to `host:port` (a name or a bare IP address) through the
    /// egress guard, bound to the source address; with `https`, a strictly
    /// verified TLS handshake offering this connector's ALPN protocols.
    pub async fn connect_to(
        &self,
        host: &str,
        port: u16,
        https: bool,
    ) -> Result<EgressStream, EgressError> {
        let stream = self.egress.connect(host, port, self.source).await?;
        let address_error = |e: std::io::Error| EgressError::Connect {
            host: host.to_string(),
            port,
            reason: e.to_string(),
        };
        let info = EgressInfo {
            local: stream.local_addr().map_err(address_error)?,
            remote: stream.peer_addr().map_err(address_error)?,
        };
        if !https {
            return Ok(EgressStream::Plain {
                io: TokioIo::new(stream),
                info,
            });
        }
        let Some(tls) = &self.tls else {
            return Err(EgressError::Connect {
                host: host.to_string(),
                port,
                reason: "https upstream without a TLS configuration".into(),
            });
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
            EgressError::Connect {
                host: host.to_string(),
                port,
                reason: format!("invalid server name: {e}"),
            }
        })?;
        let tls_stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| EgressError::Tls {
                host: host.to_string(),
                port,
                error: e,
            })?;
        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(EgressStream::Tls {
            io: Box::new(TokioIo::new(tls_stream)),
            info,
            h2,
        })
    }
}

/// Which connections can carry a request: same origin, egress source and
/// ALPN offer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginKey {
    pub host: String,
    pub port: u16,
    pub source: Option<IpAddr>,
    pub alpn: UpstreamAlpn,
}

/// `http://host/path?q` → `/path?q`, else `/`: HTTP/1.1 sends the origin
/// form (the host is in the Host header).
pub fn origin_form(uri: &mut Uri) {
    *uri = match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
        _ => Uri::default(),
    };
}

/// Which application protocols to offer an HTTPS upstream: the same ones
/// the client offered us (ALPN mirroring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamAlpn {
    /// Plain HTTP upstream.
    None,
    Http1,
    H2AndHttp1,
}

/// The pools, keyed by egress source and ALPN offer. Inside one client the
/// pool is keyed by scheme + host + port, so a connection is reused only for
/// the same (host, port, egress).
pub struct UpstreamPools {
    egress: Arc<Egress>,
    tls_h1: Arc<rustls::ClientConfig>,
    tls_h2: Arc<rustls::ClientConfig>,
    idle_per_host: usize,
    idle_timeout: Duration,
    /// HTTP/1.1 connections (plain HTTP, and HTTPS offered HTTP/1.1 only),
    /// kept as bare sockets under the global cap on idle connections.
    pub h1: Arc<H1Pool>,
    /// HTTPS upstreams offered HTTP/2 (one connection carries every
    /// request to a host) and WebSocket upgrades.
    clients: Mutex<HashMap<(Option<IpAddr>, UpstreamAlpn), UpstreamClient>>,
    /// Connections inspected tunnels pinned and left (`super::pinned`).
    pub pinned_idle: Arc<super::pinned::IdleConns>,
}

impl UpstreamPools {
    /// `tls` is the verifying client config (roots, no ALPN); ALPN variants are derived from it.
    /// `idle_per_host`: idle keep-alive connections kept per upstream host;
    /// `idle_timeout`: a connection unused this long is closed;
    /// `idle_total`: idle HTTP/1.1 connections kept across all hosts.
    pub fn new(
        egress: Arc<Egress>,
        tls: rustls::ClientConfig,
        idle_per_host: usize,
        idle_timeout: Duration,
        idle_total: usize,
        metrics: IdleMetrics,
    ) -> Self {
        let mut h1 = tls.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2 = tls;
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        UpstreamPools {
            egress,
            tls_h1: Arc::new(h1),
            tls_h2: Arc::new(h2),
            idle_per_host,
            idle_timeout,
            h1: H1Pool::new(idle_total, idle_per_host, idle_timeout, metrics),
            clients: Mutex::new(HashMap::new()),
            pinned_idle: Arc::new(super::pinned::IdleConns::new(idle_per_host, idle_timeout)),
        }
    }

    /// A connector like the pools' for `source` and the `alpn` offer (for
    /// connections an inspected tunnel pins).
    pub fn connector(&self, source: Option<IpAddr>, alpn: UpstreamAlpn) -> EgressConnector {
        EgressConnector {
            egress: self.egress.clone(),
            source,
            tls: self.tls_connector(alpn),
        }
    }

    fn tls_connector(&self, alpn: UpstreamAlpn) -> Option<tokio_rustls::TlsConnector> {
        match alpn {
            UpstreamAlpn::None => None,
            UpstreamAlpn::Http1 => Some(tokio_rustls::TlsConnector::from(self.tls_h1.clone())),
            UpstreamAlpn::H2AndHttp1 => Some(tokio_rustls::TlsConnector::from(self.tls_h2.clone())),
        }
    }

    pub fn client(&self, source: Option<IpAddr>, alpn: UpstreamAlpn) -> UpstreamClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((source, alpn))
            .or_insert_with(|| {
                let tls = self.tls_connector(alpn);
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_max_idle_per_host(self.idle_per_host)
                    .set_host(false)
                    .build(EgressConnector {
                        egress: self.egress.clone(),
                        source,
                        tls,
                    })
            })
            .clone()
    }

    /// Sends an HTTP/1.1 request to `key`'s origin through [`H1Pool`]; the
    /// [`Driver`] must be polled while the response body is relayed and
    /// dropped after it.
    pub async fn send_h1(
        &self,
        key: OriginKey,
        req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Driver), SendError> {
        let (source, alpn) = (key.source, key.alpn);
        self.h1
            .send(key, || self.connector(source, alpn), req)
            .await
    }
}

/// The verifying TLS client config for upstreams: webpki roots plus an
/// optional extra CA bundle; host names are always verified.
pub fn upstream_tls_config(
    extra_ca: Option<&std::path::Path>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in crate::pki::load_certs(path)? {
            roots.add(cert).map_err(|e| {
                anyhow::anyhow!("{}: not a usable CA certificate: {e}", path.display())
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Finds a rustls error (e.g. an invalid upstream certificate) in an error chain.
pub fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(EgressError::Tls { error, .. }) = e.downcast_ref::<EgressError>() {
            if let Some(inner) = error
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
            {
                return Some(inner);
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(inner);
            }
        }
        cur = e.source();
    }
    None
}

/// Finds the egress error in a client error's source chain.
pub fn egress_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<EgressError>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}
