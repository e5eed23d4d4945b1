//! What the stack's flows become: TCP to a CONNECT stream on the link
//! (by the name the address was looked up under, so the gateway's policy
//! sees host names), DNS (UDP or TCP, port 53, to any address) to the
//! gateway's DoH, other UDP to a CONNECT-UDP flow (RFC 9298, one per
//! 5-tuple, ended after `UDP_IDLE` without datagrams), and — inside the
//! captive-portal window — direct.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use ipstack::{IpStackTcpStream, IpStackUdpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{packet, Shared, Stat};
use crate::client::link::StreamError;
use crate::client::local;

/// Idle limit of a carried TCP flow (as for the local proxy's tunnels).
pub(super) const TCP_IDLE: Duration = Duration::from_secs(600);
/// A UDP flow with no datagram either way for this long ends.
pub(super) const UDP_IDLE: Duration = Duration::from_secs(60);
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

/// UDP other than DNS: a CONNECT-UDP flow on the link, each datagram one
/// DATAGRAM capsule. A refusal (the gateway's firewall, or a gateway
/// without CONNECT-UDP) reaches the application as an ICMP error.
pub async fn udp(s: Arc<Shared>, mut flow: IpStackUdpStream) {
    let (app, dst) = (flow.local_addr(), flow.peer_addr());
    let host = match s.names.name_of(dst.ip()) {
        Some(name) => name,
        None => dst.ip().to_string(),
    };
    let stream = match s.link.connect_udp(&host, dst.port()).await {
        Ok(u) => u,
        Err(e) => {
            if let StreamError::Refused { status, .. } = &e {
                if matches!(status.as_u16(), 404 | 405 | 501) {
                    s.connect_udp_unsupported();
                }
            }
            s.count(Stat::UdpRefused);
            tracing::info!("TUN: UDP {host}:{}: {e}", dst.port());
            if let Some(icmp) = packet::udp_refusal(app, dst) {
                let _ = s.to_device.send(icmp);
            }
            return;
        }
    };
    s.count(Stat::UdpFlows);
    let (mut from_gw, mut to_gw) = tokio::io::split(TokioIo::new(stream));
    // A flow's buffers hold one packet from the device (never larger than
    // its MTU: fragments are dropped) and are filled without zeroing, so an
    // open flow keeps only the bytes it has seen resident. 64 KiB zeroed
    // buffers per flow made 1,000 open UDP flows (a browser's QUIC and DNS,
    // a video call) cost the client ~38 MiB. A larger datagram from the
    // gateway still arrives (the decoder buffers it across reads).
    let mut decoder = masque::CapsuleDecoder::default();
    let mut datagram = BytesMut::with_capacity(s.mtu);
    let mut wire = BytesMut::with_capacity(s.mtu + 16);
    let mut capsule = Vec::with_capacity(masque::datagram_capsule_len(s.mtu));
    loop {
        tokio::select! {
            // The stack ends the flow (0 or an error) after UDP_IDLE without packets.
            r = flow.read_buf(&mut datagram) => {
                let Ok(1..) = r else { break };
                capsule.clear();
                masque::encode_datagram(&datagram, &mut capsule);
                datagram.clear();
                if to_gw.write_all(&capsule).await.is_err() {
                    break;
                }
            }
            r = from_gw.read_buf(&mut wire) => {
                let Ok(1..) = r else { break };
                decoder.push(&wire);
                wire.clear();
                if !deliver(&s, &mut decoder, &mut flow).await {
                    break;
                }
            }
        }
    }
    let _ = to_gw.shutdown().await;
}

/// Writes the complete datagrams in `decoder` to the application; false
/// when the flow must end (malformed capsules: the gateway is not speaking
/// RFC 9297, or the application's side is gone).
async fn deliver(
    s: &Shared,
    decoder: &mut masque::CapsuleDecoder,
    flow: &mut IpStackUdpStream,
) -> bool {
    loop {
        match decoder.next_payload() {
            Ok(Some(p)) => {
                if flow.write_all(&p).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                s.count(Stat::Malformed);
                tracing::info!("TUN: CONNECT-UDP from the gateway: {e}");
                return false;
            }
        }
    }
}
