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

/// An upstream TCP stream that reports its addresses to the pool.
pub struct EgressStream {
    io: TokioIo<tokio::net::TcpStream>,
    info: EgressInfo,
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.info)
    }
}

impl hyper::rt::Read for EgressStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Connector used by the pooled client: DNS, destination guard, bind, connect.
#[derive(Clone)]
pub struct EgressConnector {
    egress: Arc<Egress>,
    source: Option<IpAddr>,
}

impl tower_service::Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, EgressError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let egress = self.egress.clone();
        let source = self.source;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = egress.connect(&host, port, source).await?;
            let info = EgressInfo {
                local: stream.local_addr().map_err(|e| EgressError::Connect { host: host.clone(), port, reason: e.to_string() })?,
                remote: stream.peer_addr().map_err(|e| EgressError::Connect { host: host.clone(), port, reason: e.to_string() })?,
            };
            Ok(EgressStream { io: TokioIo::new(stream), info })
        })
    }
}

/// The pools, keyed by egress source.
pub struct UpstreamPools {
    egress: Arc<Egress>,
    clients: Mutex<HashMap<Option<IpAddr>, UpstreamClient>>,
}

impl UpstreamPools {
    pub fn new(egress: Arc<Egress>) -> Self {
        UpstreamPools { egress, clients: Mutex::new(HashMap::new()) }
    }

    pub fn client(&self, source: Option<IpAddr>) -> UpstreamClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(source)
            .or_insert_with(|| {
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(32)
                    .set_host(false)
                    .build(EgressConnector { egress: self.egress.clone(), source })
            })
            .clone()
    }
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
