//! Egress for UDP flows (CONNECT-UDP): one UDP socket per flow, connected
//! to the target after the destination guard and bound to the egress
//! source like a TCP connect ([`connect`]); and the relay between the
//! device's capsule stream and that socket ([`relay`]).
//!
//! The relay reads capsules with [`masque::CapsuleDecoder`] and writes one
//! DATAGRAM capsule per received UDP payload. Datagrams over the size
//! limit, over the device's rate (the `admit` callback) or with an unknown
//! context are dropped and counted; a malformed capsule stream ends this
//! flow only (the HTTP/2 connection and its other streams stay up). Like
//! the TCP relay, buffers are held only while datagrams flow and given
//! back on the next quiet tick.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use masque::{CapsuleDecoder, CapsuleError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::tunnel::{BUFFER_RELEASE, HARD_STOP};
use super::{order_for_happy_eyeballs, Egress, EgressError};
use crate::metrics::UdpMetrics;

/// Client reads: capsule bytes arrive in HTTP/2 DATA frames (16 KiB).
const READ_BUF: usize = 16 * 1024;

/// Resolves `host`, checks every address against the gateway's own
/// listeners and the destination guard (any forbidden answer refuses the
/// flow, as for TCP), then binds a socket to `source` (or any address of
/// the family) and connects it to the first address that takes it.
pub async fn connect(
    egress: &Egress,
    host: &str,
    port: u16,
    source: Option<IpAddr>,
) -> Result<UdpSocket, EgressError> {
    let addrs = egress.resolve_allowed(host, port).await?;
    let mut last = format!(
        "no address of the family of the egress source {}",
        source.map(|s| s.to_string()).unwrap_or_default()
    );
    // A UDP connect only sets the peer: it fails at once when there is no
    // route (an IPv6 answer on an IPv4-only host), then the next is tried.
    for addr in order_for_happy_eyeballs(&addrs, source) {
        let local = source.unwrap_or(if addr.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let socket = match UdpSocket::bind(SocketAddr::new(local, 0)).await {
            Ok(s) => s,
            Err(e) if source.is_some() => {
                return Err(EgressError::Connect {
                    host: host.to_string(),
                    port,
                    reason: format!("cannot bind egress source {local}: {e} (is the address configured on this host?)"),
                })
            }
            Err(e) => {
                last = format!("UDP socket: {e}");
                continue;
            }
        };
        match socket.connect(SocketAddr::new(addr, port)).await {
            Ok(()) => return Ok(socket),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(EgressError::Connect {
        host: host.to_string(),
        port,
        reason: last,
    })
}

/// Limits of one flow's relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Largest UDP payload carried either way.
    pub max_datagram: usize,
    /// No datagram either way for this long ends the flow.
    pub idle: Duration,
}

/// What a finished UDP relay carried and dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UdpStats {
    /// UDP payload bytes, device to origin and back (not capsule bytes).
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    /// Dropped over the device's datagram rate.
    pub dropped_rate: u64,
    /// Dropped over `max_datagram`.
    pub dropped_oversized: u64,
    /// DATAGRAM capsules with an unknown context ID, and capsules of
    /// unknown types (skipped, RFC 9297).
    pub dropped_unknown: u64,
    /// Refused by the origin's socket (ICMP unreachable, no buffer).
    pub send_errors: u64,
    pub idle_timeout: bool,
    /// Ended at the shutdown hard stop.
    pub cut: bool,
    /// The device's capsule stream was malformed (the flow was ended).
    pub malformed: Option<CapsuleError>,
    /// The device's stream failed (reset, connection lost).
    pub client_error: Option<String>,
}

/// Relays between `client` (the CONNECT-UDP stream's capsules) and
/// `socket` until the client ends its stream, the flow is idle for
/// `limits.idle`, the stream is malformed or the gateway stops. `admit` is
/// asked for every datagram either way (the device's rate).
pub async fn relay<S>(
    client: S,
    socket: UdpSocket,
    limits: RelayLimits,
    mut admit: impl FnMut() -> bool,
    metrics: &UdpMetrics,
) -> UdpStats
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(client);
    let counters = Counters::new(metrics);
    let mut stats = UdpStats::default();
    // The context ID of a UDP payload is one byte (0).
    let mut decoder = CapsuleDecoder::new(limits.max_datagram + 1);
    let mut read_buf = BytesMut::new();
    // One byte over the limit, so an oversized datagram shows as one.
    let mut recv_buf: Vec<u8> = Vec::new();
    let mut out = BytesMut::new();
    let hard_stop = HARD_STOP.try_with(|t| t.clone()).unwrap_or_default();
    let tick_every = (limits.idle / 4).clamp(Duration::from_millis(50), BUFFER_RELEASE);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_traffic = Instant::now();
    let mut busy_since_tick = false;
    loop {
        if read_buf.capacity() == 0 {
            read_buf.reserve(READ_BUF);
        }
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => {
                stats.cut = true;
                break;
            }
            read = rd.read_buf(&mut read_buf) => {
                match read {
                    Ok(0) => {
                        if let Err(e) = decoder.finish() {
                            stats.malformed = Some(e);
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stats.client_error = Some(e.to_string());
                        break;
                    }
                }
                decoder.push(&read_buf);
                read_buf.clear();
                if let Err(e) = send_up(&mut decoder, &socket, &mut admit, &counters, &mut stats).await {
                    stats.malformed = Some(e);
                    break;
                }
                last_traffic = Instant::now();
                busy_since_tick = true;
            }
            ready = socket.readable() => {
                if ready.is_err() {
                    continue;
                }
                if recv_buf.is_empty() {
                    recv_buf.resize(limits.max_datagram + 1, 0);
                }
                let n = match socket.try_recv(&mut recv_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => {
                        // ICMP unreachable for an earlier datagram, reported here.
                        stats.send_errors += 1;
                        counters.send_error.inc();
                        continue;
                    }
                };
                last_traffic = Instant::now();
                busy_since_tick = true;
                if n > limits.max_datagram {
                    stats.dropped_oversized += 1;
                    counters.oversized.inc();
                    continue;
                }
                if !admit() {
                    stats.dropped_rate += 1;
                    counters.rate.inc();
                    continue;
                }
                out.clear();
                masque::encode_datagram(&recv_buf[..n], &mut out);
                if let Err(e) = write_capsule(&mut wr, &out).await {
                    stats.client_error = Some(e.to_string());
                    break;
                }
                stats.packets_down += 1;
                stats.bytes_down += n as u64;
                counters.down.inc();
            }
            _ = tick.tick() => {
                if last_traffic.elapsed() >= limits.idle {
                    stats.idle_timeout = true;
                    break;
                }
                if !busy_since_tick {
                    // Quiet since the last tick: give the buffers back.
                    read_buf = BytesMut::new();
                    recv_buf = Vec::new();
                    out = BytesMut::new();
                }
                busy_since_tick = false;
            }
        }
    }
    let dropped = decoder.stats();
    stats.dropped_oversized += dropped.oversized;
    stats.dropped_unknown += dropped.unknown_context + dropped.unknown_type;
    counters.oversized.inc_by(dropped.oversized);
    counters.unknown_context.inc_by(dropped.unknown_context);
    counters.unknown_capsule.inc_by(dropped.unknown_type);
    if stats.malformed.is_some() {
        metrics.malformed.inc();
    }
    let _ = wr.shutdown().await;
    stats
}

/// Sends every whole datagram the decoder holds to the origin.
async fn send_up(
    decoder: &mut CapsuleDecoder,
    socket: &UdpSocket,
    admit: &mut impl FnMut() -> bool,
    counters: &Counters,
    stats: &mut UdpStats,
) -> Result<(), CapsuleError> {
    while let Some(payload) = decoder.next_payload()? {
        if !admit() {
            stats.dropped_rate += 1;
            counters.rate.inc();
            continue;
        }
        match socket.send(&payload).await {
            Ok(_) => {
                stats.packets_up += 1;
                stats.bytes_up += payload.len() as u64;
                counters.up.inc();
            }
            Err(_) => {
                stats.send_errors += 1;
                counters.send_error.inc();
            }
        }
    }
    Ok(())
}

async fn write_capsule<W: AsyncWrite + Unpin>(wr: &mut W, capsule: &[u8]) -> io::Result<()> {
    wr.write_all(capsule).await?;
    wr.flush().await
}

/// The metric handles a relay bumps per datagram, looked up once.
struct Counters {
    up: prometheus::IntCounter,
    down: prometheus::IntCounter,
    rate: prometheus::IntCounter,
    oversized: prometheus::IntCounter,
    unknown_context: prometheus::IntCounter,
    unknown_capsule: prometheus::IntCounter,
    send_error: prometheus::IntCounter,
}

impl Counters {
    fn new(m: &UdpMetrics) -> Counters {
        let dropped = |reason: &str| m.dropped.with_label_values(&[reason]);
        Counters {
            up: m.datagrams.with_label_values(&["up"]),
            down: m.datagrams.with_label_values(&["down"]),
            rate: dropped("rate"),
            oversized: dropped("oversized"),
            unknown_context: dropped("unknown_context"),
            unknown_capsule: dropped("unknown_capsule"),
            send_error: dropped("send_error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP echo server on loopback and a relay fed by an in-memory
    /// stream: what goes in as capsules comes back as capsules.
    async fn echo_server() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0; 70_000];
            loop {
                let (n, from) = s.recv_from(&mut buf).await.unwrap();
                s.send_to(&buf[..n], from).await.unwrap();
            }
        });
        addr
    }

    async fn socket_to(addr: SocketAddr) -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(addr).await.unwrap();
        s
    }

    fn limits(max: usize) -> RelayLimits {
        RelayLimits {
            max_datagram: max,
            idle: Duration::from_secs(5),
        }
    }

    async fn read_payloads(client: &mut tokio::io::DuplexStream, n: usize) -> Vec<Vec<u8>> {
        let mut dec = CapsuleDecoder::default();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < n {
            let r = client.read(&mut buf).await.unwrap();
            assert!(r > 0, "stream ended after {} payloads", got.len());
            dec.push(&buf[..r]);
            while let Some(p) = dec.next_payload().unwrap() {
                got.push(p.to_vec());
            }
        }
        got
    }

    #[tokio::test]
    async fn echoes_and_drops_what_is_over_the_limits() {
        let echo = echo_server().await;
        let (mut client, gw_side) = tokio::io::duplex(1 << 20);
        let metrics = UdpMetrics::new();
        let mut budget = 3;
        let relay = tokio::spawn(async move {
            let socket = socket_to(echo).await;
            let admit = move || {
                budget -= 1;
                budget >= 0
            };
            relay(gw_side, socket, limits(100), admit, &metrics).await
        });
        let mut wire = Vec::new();
        masque::encode_datagram(b"one", &mut wire);
        masque::encode_datagram(&[9; 101], &mut wire); // over max: dropped
        masque::encode_capsule(0x3b, b"unknown", &mut wire); // skipped
        masque::encode_capsule(masque::DATAGRAM, &[0x05, 1, 2], &mut wire); // context 5
        client.write_all(&wire).await.unwrap();
        // "one" goes up (budget 2 left) and comes back (budget 1 left).
        assert_eq!(read_payloads(&mut client, 1).await, [b"one".to_vec()]);
        let mut wire = Vec::new();
        masque::encode_datagram(b"two", &mut wire);
        client.write_all(&wire).await.unwrap();
        // "two" goes up (budget 0); its echo is over the rate: dropped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.shutdown().await.unwrap();
        let stats = relay.await.unwrap();
        assert_eq!((stats.packets_up, stats.packets_down), (2, 1));
        assert_eq!((stats.bytes_up, stats.bytes_down), (6, 3));
        assert_eq!(stats.dropped_oversized, 1);
        assert_eq!(stats.dropped_unknown, 2);
        assert_eq!(stats.dropped_rate, 1);
        assert!(stats.malformed.is_none());
    }

    #[tokio::test]
    async fn malformed_stream_ends_the_flow() {
        let echo = echo_server().await;
        let (mut client, gw_side) = tokio::io::duplex(4096);
        let metrics = UdpMetrics::new();
        let relay = tokio::spawn(async move {
            relay(
                gw_side,
                socket_to(echo).await,
                limits(100),
                || true,
                &metrics,
            )
            .await
        });
        client.write_all(&[0x00, 0x00]).await.unwrap(); // DATAGRAM without context ID
        let stats = relay.await.unwrap();
        assert_eq!(
            stats.malformed,
            Some(CapsuleError::MissingContextId { len: 0 })
        );
        // The relay closed its side of the stream.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn idle_flow_ends() {
        let echo = echo_server().await;
        let (_client, gw_side) = tokio::io::duplex(4096);
        let metrics = UdpMetrics::new();
        let lim = RelayLimits {
            max_datagram: 100,
            idle: Duration::from_millis(200),
        };
        let started = Instant::now();
        let stats = relay(gw_side, socket_to(echo).await, lim, || true, &metrics).await;
        assert!(stats.idle_timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
