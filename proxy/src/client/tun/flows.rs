//! What the stack's flows become: TCP to a CONNECT stream on the link
//! (by the name the address was looked up under, so the gateway's policy
//! sees host names), DNS (UDP or TCP, port 53, to any address) to the
//! gateway's DoH, and — inside the captive-portal window — direct.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use ipstack::{IpStackTcpStream, IpStackUdpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Shared, Stat};
use crate::client::local;

/// Idle limit of a carried TCP flow (as for the local proxy's tunnels).
pub(super) const TCP_IDLE: Duration = Duration::from_secs(600);
/// A DNS-over-TCP connection with no query for this long is closed.
const DNS_TCP_IDLE: Duration = Duration::from_secs(30);

pub async fn tcp(s: Arc<Shared>, flow: IpStackTcpStream) {
    let dst = flow.peer_addr();
    if dst.port() == super::packet::DNS_PORT {
        return dns_tcp(s, flow).await;
    }
    if s.link.is_up() {
        let authority = match s.names.name_of(dst.ip()) {
            Some(name) => format!("{name}:{}", dst.port()),
            None => dst.to_string(),
        };
        match s.link.tunnel(&authority).await {
            Ok(up) => {
                s.count(Stat::TcpFlows);
                crate::egress::tunnel::relay(flow, TokioIo::new(up), TCP_IDLE).await;
            }
            Err(e) => {
                s.count(Stat::TcpRefused);
                tracing::info!("TUN: TCP {authority}: {e}");
            }
        }
    } else if s.captive().direct(dst) {
        match s.captive.connect(dst).await {
            Ok(up) => {
                s.count(Stat::CaptiveDirect);
                crate::egress::tunnel::relay(flow, up, TCP_IDLE).await;
            }
            Err(e) => tracing::info!("TUN: captive-portal check {dst}: {e:#}"),
        }
    } else {
        s.count(Stat::TcpRefused);
    }
    // Dropping the flow closes it towards the application.
}

/// DNS over UDP: each datagram of the flow is a query, answered on its own
/// task (resolvers send A and AAAA on one socket at once).
pub async fn dns_udp(s: Arc<Shared>, flow: IpStackUdpStream) {
    let dst = flow.peer_addr();
    let (mut rx, tx) = tokio::io::split(flow);
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let mut buf = vec![0u8; 4096];
    // The stack ends the flow after its UDP timeout without packets.
    while let Ok(n) = rx.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let query = Bytes::copy_from_slice(&buf[..n]);
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&s, query, dst).await {
                let _ = tx.lock().await.write_all(&answer).await;
            }
        });
    }
}

/// DNS over TCP (RFC 7766): length-prefixed queries, answered in order.
async fn dns_tcp(s: Arc<Shared>, mut flow: IpStackTcpStream) {
    let dst = flow.peer_addr();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(DNS_TCP_IDLE, flow.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if flow.read_exact(&mut q).await.is_err() {
            return;
        }
        let Some(a) = answer(&s, Bytes::from(q), dst).await else {
            return;
        };
        let mut out = Vec::with_capacity(a.len() + 2);
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(&a);
        if flow.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The answer to one query sent to `dst`: through the gateway's DoH; while
/// the link is down SERVFAIL, except the captive-portal check hosts in
/// their window (asked of `dst` directly). `None`: not a DNS message.
async fn answer(s: &Shared, query: Bytes, dst: SocketAddr) -> Option<Bytes> {
    if query.len() < 12 {
        s.count(Stat::Malformed);
        return None;
    }
    s.count(Stat::DnsQueries);
    if s.link.is_up() {
        return Some(match local::doh(&s.link, query.clone()).await {
            Ok(a) => {
                s.names.learn(&a);
                a
            }
            Err(e) => {
                tracing::debug!("TUN: DoH: {e}");
                local::servfail(&query)
            }
        });
    }
    s.link.demand();
    let name = super::names::question(&query);
    let captive = s.captive();
    if let Some(name) = name.filter(|n| captive.open() && captive.is_check_host(n)) {
        match s.captive.resolve(&query, dst).await {
            Ok(a) => {
                let ips = s.names.learn(&a);
                s.captive.allow(&name, &ips);
                s.count(Stat::CaptiveDirect);
                return Some(Bytes::from(a));
            }
            Err(e) => tracing::info!("TUN: captive-portal check host {name} at {dst}: {e:#}"),
        }
    }
    s.count(Stat::RefusedLinkDown);
    Some(local::servfail(&query))
}
