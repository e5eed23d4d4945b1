//! Full-device mode (`komugate client --tun`): a TUN device takes the
//! device's traffic, a user-space TCP/IP stack (ipstack) turns its packets
//! into flows, and the flows ride the one mTLS HTTP/2 link like the local
//! proxy's connections do.
//!
//! ```text
//! TUN device ─▶ pump ─ packet::inspect ─┬─ pass ─▶ ipstack ─▶ flows::tcp      → CONNECT name:port on the link
//!     ▲                                 │                    flows::dns_udp  → DoH on the link
//!     │                                 │                    flows::udp      → CONNECT-UDP (RFC 9298) on the link
//!     │                                 ├─ drop + count (bad checksum, fragment, malformed, not carried)
//!     └── writer ◀── RST / ICMP ◀───────┴─ reply (link down: fail closed; UDP not carried)
//! ```
//!
//! - `device`: the TUN device and the stack's port; `routes`: the routes
//!   (split tunnel from the policy's PAC lists); `packet`: the checks;
//!   `names`: address → host name from DNS answers; `captive`: the
//!   captive-portal window; `flows`: TCP and DNS.
//! - Fail closed: while the link is down, TCP is reset, UDP refused with
//!   ICMP and DNS answered SERVFAIL — except the captive-portal check
//!   hosts for `captive_portal_secs`.

mod captive;
mod device;
mod flows;
mod names;
pub mod packet;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::TunConfig;
use super::link::Link;

/// Counters (the local proxy serves them at `/.komugate/client/status`).
#[derive(Debug, Clone, Copy)]
pub enum Stat {
    PacketsIn,
    Malformed,
    BadChecksum,
    Fragments,
    NotCarried,
    RefusedLinkDown,
    UdpNotCarried,
    TcpFlows,
    TcpRefused,
    UdpFlows,
    UdpRefused,
    DnsQueries,
    CaptiveDirect,
}

const STATS: [(Stat, &str); 13] = [
    (Stat::PacketsIn, "packets_in"),
    (Stat::Malformed, "dropped_malformed"),
    (Stat::BadChecksum, "dropped_bad_checksum"),
    (Stat::Fragments, "dropped_fragments"),
    (Stat::NotCarried, "dropped_not_carried"),
    (Stat::RefusedLinkDown, "refused_link_down"),
    (Stat::UdpNotCarried, "refused_udp_not_carried"),
    (Stat::TcpFlows, "tcp_flows"),
    (Stat::TcpRefused, "tcp_refused"),
    (Stat::UdpFlows, "udp_flows"),
    (Stat::UdpRefused, "udp_refused"),
    (Stat::DnsQueries, "dns_queries"),
    (Stat::CaptiveDirect, "captive_direct"),
];

#[derive(Default)]
pub struct Stats([AtomicU64; STATS.len()]);

impl Stats {
    pub fn get(&self, s: Stat) -> u64 {
        self.0[s as usize].load(Ordering::Relaxed)
    }
    pub fn json(&self) -> serde_json::Value {
        STATS
            .iter()
            .map(|(s, name)| (name.to_string(), self.get(*s).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// What the pump and the flows share.
struct Shared {
    link: Arc<Link>,
    names: names::Names,
    captive: captive::Captive,
    stats: Arc<Stats>,
    /// ICMP errors for refused UDP flows go to the device this way.
    to_device: mpsc::UnboundedSender<Vec<u8>>,
    /// The link connection (`Link::connects`) whose gateway has no
    /// CONNECT-UDP (u64::MAX: none known).
    no_connect_udp: AtomicU64,
    /// The device's MTU: no packet from the device is larger (fragments
    /// are dropped), which bounds a UDP flow's buffers.
    mtu: usize,
}

impl Shared {
    /// The gateway of the current connection does not carry CONNECT-UDP:
    /// refuse UDP in the pump until the next connection.
    fn connect_udp_unsupported(&self) {
        self.no_connect_udp.store(
            self.link.connects.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// The captive-portal window, brought up to date with the link first
    /// (the follower notices a change only every 250 ms).
    fn captive(&self) -> &captive::Captive {
        self.captive.observe(self.link.is_up());
        &self.captive
    }

    fn count(&self, s: Stat) {
        self.stats.0[s as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl packet::Gate for Shared {
    fn link_up(&self) -> bool {
        self.link.is_up()
    }
    fn captive_direct(&self, dst: SocketAddr) -> bool {
        self.captive().direct(dst)
    }
    fn udp_carried(&self) -> bool {
        // A gateway without CONNECT-UDP: refused at once, so QUIC falls
        // back to TCP (which the gateway inspects) without waiting.
        self.no_connect_udp.load(Ordering::Relaxed) != self.link.connects.load(Ordering::Relaxed)
    }
}

/// A running TUN device; dropping it removes the routes it added.
pub struct Tun {
    pub name: String,
    pub stats: Arc<Stats>,
    _routes: Arc<Mutex<routes::Routes>>,
}

/// Creates the device and the routes and starts the pump, the stack and
/// the route updates; everything stops with `shutdown`.
pub async fn start(link: Arc<Link>, cfg: &TunConfig, shutdown: CancellationToken) -> Result<Tun> {
    let server = link.config().server.clone();
    let gateway: Vec<IpAddr> = tokio::net::lookup_host(&server)
        .await
        .with_context(|| {
            format!("cannot resolve the gateway {server} (needed to keep it off the TUN device)")
        })?
        .map(|a| a.ip())
        .collect();
    let (dev, name) = device::create(&cfg.name, cfg.address, cfg.mtu)?;
    let routes = routes::Routes::setup(&name, &gateway)
        .with_context(|| format!("routes for the TUN device {name}"))?;
    tracing::info!(
        "full-device mode: {name} carries the traffic; the gateway {server} ({}) via {}",
        gateway
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        routes.uplink().dev
    );
    let stats = Arc::new(Stats::default());
    let (to_device, device_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        captive: captive::Captive::new(
            &cfg.captive_portal_hosts,
            Duration::from_secs(cfg.captive_portal_secs),
            Some(routes.uplink().dev.clone()),
        ),
        link,
        names: names::Names::default(),
        stats: stats.clone(),
        to_device: to_device.clone(),
        no_connect_udp: AtomicU64::new(u64::MAX),
        mtu: cfg.mtu.into(),
    });
    let routes = Arc::new(Mutex::new(routes));

    let (to_stack, from_pump) = mpsc::channel(1024);
    let mut stack_cfg = ipstack::IpStackConfig::default();
    stack_cfg
        .mtu(cfg.mtu)
        .map_err(|e| anyhow!("[tun] mtu {}: {e}", cfg.mtu))?;
    let mut tcp = ipstack::TcpConfig::default();
    // The stack's idle limit (60 s by default) would cut quiet SSH or
    // database sessions: the relay's own idle limit applies instead.
    tcp.timeout = flows::TCP_IDLE + Duration::from_secs(5);
    // 16 KiB in flight towards the application capped a download near
    // one window per scheduling round; 128 KiB only while bytes flow.
    tcp.max_unacked_bytes = 128 * 1024;
    stack_cfg.with_tcp_config(tcp);
    stack_cfg.udp_timeout(flows::UDP_IDLE);
    let stack = ipstack::IpStack::new(
        stack_cfg,
        device::StackPort {
            from_pump,
            to_device: to_device.clone(),
        },
    );
    let tasks = [
        tokio::spawn(device::writer(dev.clone(), device_rx)),
        tokio::spawn(pump(shared.clone(), dev, to_stack, to_device, cfg.mtu)),
        tokio::spawn(accept(shared.clone(), stack)),
        tokio::spawn(follow(shared, routes.clone(), gateway)),
    ];
    tokio::spawn(async move {
        shutdown.cancelled().await;
        for t in tasks {
            t.abort();
        }
    });
    Ok(Tun {
        name,
        stats,
        _routes: routes,
    })
}

/// Reads the device, checks each packet, hands it on.
async fn pump(
    s: Arc<Shared>,
    dev: device::Device,
    to_stack: mpsc::Sender<Vec<u8>>,
    to_device: mpsc::UnboundedSender<Vec<u8>>,
    mtu: u16,
) {
    let mut buf = vec![0u8; mtu as usize + 4];
    loop {
        let n = match dev.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("TUN read: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        s.count(Stat::PacketsIn);
        match packet::inspect(&buf[..n], &*s) {
            packet::Verdict::Pass => {
                if to_stack.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
            packet::Verdict::Drop(why) => s.count(match why {
                packet::Drop::Malformed => Stat::Malformed,
                packet::Drop::BadChecksum => Stat::BadChecksum,
                packet::Drop::Fragment => Stat::Fragments,
                packet::Drop::NotCarried => Stat::NotCarried,
            }),
            packet::Verdict::Reply(why, reply) => {
                if let packet::Refusal::LinkDown = why {
                    s.count(Stat::RefusedLinkDown);
                    s.link.demand();
                } else {
                    s.count(Stat::UdpNotCarried);
                }
                let _ = to_device.send(reply);
            }
        }
    }
}

/// Takes the stack's new flows.
async fn accept(s: Arc<Shared>, mut stack: ipstack::IpStack) {
    while let Ok(flow) = stack.accept().await {
        match flow {
            ipstack::IpStackStream::Tcp(t) => {
                tokio::spawn(flows::tcp(s.clone(), t));
            }
            ipstack::IpStackStream::Udp(u) if u.peer_addr().port() == packet::DNS_PORT => {
                tokio::spawn(flows::dns_udp(s.clone(), u));
            }
            ipstack::IpStackStream::Udp(u) => {
                tokio::spawn(flows::udp(s.clone(), u));
            }
            _ => s.count(Stat::NotCarried),
        }
    }
}

/// Follows the link (the captive-portal window) and the gateway's PAC
/// (the direct networks).
async fn follow(s: Arc<Shared>, routes: Arc<Mutex<routes::Routes>>, gateway: Vec<IpAddr>) {
    let mut direct = None;
    loop {
        s.captive.observe(s.link.is_up());
        let pac = s
            .link
            .gateway_pac
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(text) = pac {
            let nets = crate::pac::direct_networks(&text);
            if direct.as_ref() != Some(&nets) {
                routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_direct(&gateway, &nets);
                direct = Some(nets);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
