//! UDP through the gateway (issue 18): datagram rate and added latency of
//! CONNECT-UDP (HTTP/2 extended CONNECT over the mTLS link, a device
//! certificate, the real gateway) against the same UDP echo origin reached
//! directly, on loopback, side by side in one run.
//!
//! 1. latency: one datagram at a time (ping-pong), p50 / p99 round trip;
//! 2. rate: a window of datagrams in flight, echoed datagrams per second
//!    (a datagram not back within 100 ms counts as lost and frees its slot).
//!
//! Custom main (not criterion): prints the figures for benches/RESULTS.md.
//!
//! ```text
//! cargo bench -p komugate-benches --bench udp
//! KOMUGATE_UDP_PINGS=5000      round trips per latency run
//! KOMUGATE_UDP_SECS=5          seconds per rate run
//! KOMUGATE_UDP_WINDOW=64       datagrams in flight in the rate run
//! KOMUGATE_UDP_SIZE=200        payload bytes
//! ```

use std::time::{Duration, Instant};

use komugate_tests::gw::{tls_connect, TestGateway};
use komugate_tests::udp::{Link, UdpEcho, UdpFlow};
use tokio::net::UdpSocket;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// One way of sending a datagram to the echo origin and getting it back.
trait Path {
    fn send(&mut self, payload: &[u8]) -> impl std::future::Future<Output = ()>;
    fn recv(&mut self, limit: Duration) -> impl std::future::Future<Output = bool>;
}

struct Direct(UdpSocket, Vec<u8>);

impl Path for Direct {
    async fn send(&mut self, payload: &[u8]) {
        self.0.send(payload).await.expect("send");
    }
    async fn recv(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.0.recv(&mut self.1)).await,
            Ok(Ok(_))
        )
    }
}

struct Gateway(UdpFlow);

impl Path for Gateway {
    async fn send(&mut self, payload: &[u8]) {
        self.0.send(payload);
    }
    async fn recv(&mut self, limit: Duration) -> bool {
        self.0.recv_within(limit).await.is_some()
    }
}

/// p50 and p99 of `pings` sequential round trips, in microseconds.
async fn latency(path: &mut impl Path, payload: &[u8], pings: u64) -> (f64, f64) {
    let mut rtts = Vec::with_capacity(pings as usize);
    for _ in 0..pings {
        let t = Instant::now();
        path.send(payload).await;
        if path.recv(Duration::from_secs(1)).await {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

/// Echoed datagrams per second with `window` in flight, and the loss.
async fn rate(path: &mut impl Path, payload: &[u8], window: u64, secs: u64) -> (f64, f64) {
    let (mut sent, mut back, mut in_flight) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    while Instant::now() < end {
        while in_flight < window {
            path.send(payload).await;
            sent += 1;
            in_flight += 1;
        }
        if path.recv(Duration::from_millis(100)).await {
            back += 1;
            in_flight -= 1;
        } else {
            in_flight = 0;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    (back as f64 / elapsed, 1.0 - back as f64 / sent as f64)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let pings = env_u64("KOMUGATE_UDP_PINGS", 5000);
    let secs = env_u64("KOMUGATE_UDP_SECS", 5);
    let window = env_u64("KOMUGATE_UDP_WINDOW", 64);
    let payload = vec![0x5a; env_u64("KOMUGATE_UDP_SIZE", 200) as usize];
    println!("load average before: {}", load());

    let gw = TestGateway::start(|c, _| {
        // Measure the relay, not the per-device rate limit.
        c.udp.datagrams_per_second = 10_000_000;
        c.udp.datagram_burst = 10_000_000;
    })
    .await;
    let echo = UdpEcho::start("127.0.0.1").await;
    let pki = gw.tls();
    let device = pki.device("bench-laptop", &[]);
    let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"h2"]))
        .await
        .expect("mTLS");
    let link = Link::over(tls).await;
    let mut through = Gateway(
        link.open("127.0.0.1", echo.addr.port())
            .await
            .expect("flow opens"),
    );
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(echo.addr).await.unwrap();
    let mut direct = Direct(socket, vec![0; 65_536]);

    // Warm up both paths.
    latency(&mut direct, &payload, 200).await;
    latency(&mut through, &payload, 200).await;

    let (d50, d99) = latency(&mut direct, &payload, pings).await;
    let (g50, g99) = latency(&mut through, &payload, pings).await;
    let (drate, dloss) = rate(&mut direct, &payload, window, secs).await;
    let (grate, gloss) = rate(&mut through, &payload, window, secs).await;

    println!(
        "payload {} B, {pings} round trips, rate runs of {secs} s with {window} in flight",
        payload.len()
    );
    println!("| path | RTT p50 | RTT p99 | echoed datagrams/s | lost |");
    println!("|---|---|---|---|---|");
    println!(
        "| direct | {d50:.0} µs | {d99:.0} µs | {drate:.0} | {:.2} % |",
        dloss * 100.0
    );
    println!(
        "| CONNECT-UDP through the gateway | {g50:.0} µs | {g99:.0} µs | {grate:.0} | {:.2} % |",
        gloss * 100.0
    );
    println!(
        "added latency p50 {:.0} µs, p99 {:.0} µs; rate {:.2}x direct",
        g50 - d50,
        g99 - d99,
        grate / drate
    );
    println!("load average after: {}", load());
    gw.shutdown().await;
}
