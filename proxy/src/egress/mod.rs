//! Egress: name resolution (hickory, cached), the destination address
//! guard (no loopback / private / metadata unless allowed), and upstream
//! TCP connects bound to the decision's source address, with a
//! happy-eyeballs style fallback across the resolved addresses.

pub mod h1pool;
pub mod idle_cap;
pub mod pinned;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tunnel;
pub mod udp;
pub mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{DnsConfig, EgressConfig};
use crate::metrics::Metrics;

/// Why an upstream connection was not made. Shown to the user on the error
/// page and written to the access record.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot resolve {host}: the DNS servers did not answer in time ({tries} tries of {timeout_ms} ms each)")]
    ResolveTimeout {
        host: String,
        tries: usize,
        timeout_ms: u64,
    },
    #[error("destination {addr} ({class}) is not allowed by the gateway configuration; add it to [egress] allow_destinations if it must be reachable")]
    ForbiddenDestination { addr: IpAddr, class: AddressClass },
    #[error("{addr} is one of this gateway's own listeners; the gateway never proxies to itself (use the listener directly)")]
    OwnListener { addr: SocketAddr },
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("connecting to {host}:{port} timed out")]
    Timeout { host: String, port: u16 },
    #[error("TLS with {host}:{port} failed: {error}")]
    Tls {
        host: String,
        port: u16,
        error: std::io::Error,
    },
}

impl Clone for EgressError {
    /// A copy for the refusal; an I/O error keeps its kind and message.
    fn clone(&self) -> Self {
        match self {
            EgressError::Resolve { host, reason } => EgressError::Resolve {
                host: host.clone(),
                reason: reason.clone(),
            },
            EgressError::ForbiddenDestination { addr, class } => {
                EgressError::ForbiddenDestination {
                    addr: *addr,
                    class: *class,
                }
            }
            EgressError::OwnListener { addr } => EgressError::OwnListener { addr: *addr },
            EgressError::ResolveTimeout {
                host,
                tries,
                timeout_ms,
            } => EgressError::ResolveTimeout {
                host: host.clone(),
                tries: *tries,
                timeout_ms: *timeout_ms,
            },
            EgressError::Connect { host, port, reason } => EgressError::Connect {
                host: host.clone(),
                port: *port,
                reason: reason.clone(),
            },
            EgressError::Timeout { host, port } => EgressError::Timeout {
                host: host.clone(),
                port: *port,
            },
            EgressError::Tls { host, port, error } => EgressError::Tls {
                host: host.clone(),
                port: *port,
                error: std::io::Error::new(error.kind(), error.to_string()),
            },
        }
    }
}

impl EgressError {
    /// Refused by the gateway's own rules (403) rather than an upstream failure (502/504).
    pub fn is_forbidden(&self) -> bool {
        self.guard_rule().is_some()
    }

    /// The access-log rule of a refusal by the gateway's own rules.
    pub fn guard_rule(&self) -> Option<&'static str> {
        match self {
            EgressError::ForbiddenDestination { .. } => Some("destination-guard"),
            EgressError::OwnListener { .. } => Some("own-listener"),
            _ => None,
        }
    }
}

/// What kind of address a destination is, for the destination guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    LinkLocal,
    Private,
    Metadata,
    Unspecified,
    Multicast,
    Broadcast,
    SharedCgnat,
    Documentation,
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Private => "private",
            AddressClass::Metadata => "cloud metadata",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::SharedCgnat => "shared address space (CGNAT)",
            AddressClass::Documentation => "documentation",
        };
        f.write_str(s)
    }
}

/// Classifies an address. IPv6 forms that carry an IPv4 address (see
/// [`embedded_ipv4`]) are classified as that IPv4 address, so
/// `::ffff:127.0.0.1`, `::127.0.0.1` and `64:ff9b::7f00:1` are loopback: a
/// NAT64 or 6to4 gateway on the path would deliver them there.
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            let carried = embedded_ipv4(v6);
            if carried.is_empty() {
                return classify_v6(v6);
            }
            // Several candidates only for the local-use NAT64 prefix: the
            // most restrictive one wins.
            carried
                .into_iter()
                .map(classify_v4)
                .max_by_key(|c| {
                    (
                        *c != AddressClass::Public,
                        *c != AddressClass::Documentation,
                    )
                })
                .unwrap_or(AddressClass::Public)
        }
    }
}

/// The IPv4 address(es) an IPv6 address carries:
/// - IPv4-mapped `::ffff:a.b.c.d`, SIIT `::ffff:0:a.b.c.d` and the
///   deprecated IPv4-compatible `::a.b.c.d` (not `::` and `::1`);
/// - NAT64 well-known prefix `64:ff9b::/96` (last 32 bits);
/// - NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215): the operator picks
///   the prefix length, so every RFC 6052 position that fits is returned
///   (/48, /56, /64, /96);
/// - 6to4 `2002:AABB:CCDD::/48` (bits 16..48);
/// - Teredo `2001:0::/32`: the client's address, last 32 bits XOR 0xffffffff.
pub fn embedded_ipv4(a: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = a.octets();
    let seg = a.segments();
    let v4 = |b: [u8; 4]| Ipv4Addr::from(b);
    let last = v4([o[12], o[13], o[14], o[15]]);
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || (seg[5] == 0 && u32::from(last) > 1)) {
        return vec![last];
    }
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return vec![last];
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return vec![last];
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 §2.2: bits 64..72 ("u") are skipped.
        return vec![
            v4([o[6], o[7], o[9], o[10]]),   // /48
            v4([o[7], o[9], o[10], o[11]]),  // /56
            v4([o[9], o[10], o[11], o[12]]), // /64
            last,                            // /96
        ];
    }
    if seg[0] == 0x2002 {
        return vec![v4([o[2], o[3], o[4], o[5]])];
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return vec![Ipv4Addr::from(u32::from(last) ^ 0xffff_ffff)];
    }
    Vec::new()
}

fn classify_v4(a: Ipv4Addr) -> AddressClass {
    let o = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) || a == Ipv4Addr::new(100, 100, 100, 200) {
        // AWS/GCP/Azure and Alibaba metadata endpoints.
        AddressClass::Metadata
    } else if a.is_loopback() {
        AddressClass::Loopback
    } else if a.is_link_local() {
        AddressClass::LinkLocal
    } else if a.is_private() {
        AddressClass::Private
    } else if a.is_unspecified() || o[0] == 0 {
        AddressClass::Unspecified
    } else if a.is_broadcast() {
        AddressClass::Broadcast
    } else if a.is_multicast() || o[0] >= 240 {
        AddressClass::Multicast
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if a.is_documentation() {
        AddressClass::Documentation
    } else {
        AddressClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddressClass {
    let seg = a.segments();
    if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::Metadata
    } else if a.is_loopback() {
        AddressClass::Loopback
    } else if a.is_unspecified() {
        AddressClass::Unspecified
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfec0 {
        // Unique local addresses, and the deprecated site-local range.
        AddressClass::Private
    } else if a.is_multicast() {
        AddressClass::Multicast
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        AddressClass::Documentation
    } else {
        AddressClass::Public
    }
}

/// The destination guard: public addresses pass, everything else only when
/// an `allow_destinations` CIDR covers it.
#[derive(Debug, Clone, Default)]
pub struct DestinationGuard {
    allowed: Vec<IpNet>,
}

impl DestinationGuard {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        DestinationGuard { allowed }
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), EgressError> {
        let class = classify(addr);
        // Documentation ranges are not routable; treat them like public so a
        // misconfigured test simply fails to connect rather than being hidden.
        if matches!(class, AddressClass::Public | AddressClass::Documentation) {
            return Ok(());
        }
        let canonical = addr.to_canonical();
        if self.allowed.iter().any(|net| net.contains(&canonical)) {
            return Ok(());
        }
        Err(EgressError::ForbiddenDestination {
            addr: canonical,
            class,
        })
    }
}

/// The gateway's own listening sockets, which are never a destination
/// through the proxy, whatever `allow_destinations` says: the admin API, or
/// a proxy listener looping into itself, must not be reachable by a proxy
/// user. Checked on the resolved address, so host names and every textual
/// form of an address are covered.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners {
    bound: Vec<SocketAddr>,
}

impl OwnListeners {
    pub fn new(bound: Vec<SocketAddr>) -> Self {
        OwnListeners { bound }
    }

    pub fn check(&self, addr: IpAddr, port: u16) -> Result<(), EgressError> {
        let ip = addr.to_canonical();
        for listener in self.bound.iter().filter(|l| l.port() == port) {
            let hit = if listener.ip().is_unspecified() {
                // 0.0.0.0 / [::]: every address of this host, on that port.
                is_local_address(ip)
            } else {
                listener.ip() == ip || ip.is_unspecified()
            };
            if hit {
                return Err(EgressError::OwnListener {
                    addr: SocketAddr::new(ip, port),
                });
            }
        }
        Ok(())
    }
}

/// Whether `ip` is an address of this host: loopback, unspecified (a
/// connect to 0.0.0.0 reaches the host itself), or one the kernel lets us
/// bind (an interface address).
fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// A DNS resolver with a TTL-respecting answer cache in front of hickory's,
/// so that hits are visible as a metric.
/// Cached answers: name → (addresses, when they expire).
type AnswerCache = HashMap<String, (Arc<Vec<IpAddr>>, Instant)>;

pub struct Resolver {
    inner: TokioResolver,
    timeout_ms: u64,
    tries: usize,
    cache: Mutex<AnswerCache>,
    max_entries: usize,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(config: &DnsConfig, metrics: Arc<Metrics>) -> anyhow::Result<Resolver> {
        let provider = TokioConnectionProvider::default();
        let builder = if config.servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| anyhow::anyhow!("cannot read the system DNS configuration (/etc/resolv.conf): {e}; set [dns] servers"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for server in &config.servers {
                let single =
                    NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                group.merge(single);
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                provider,
            )
        };
        let mut builder = builder;
        builder.options_mut().cache_size = config.cache_entries.max(16);
        builder.options_mut().timeout = Duration::from_millis(config.timeout_ms.max(1));
        builder.options_mut().attempts = config.attempts.max(1);
        Ok(Resolver {
            inner: builder.build(),
            timeout_ms: config.timeout_ms.max(1),
            tries: config.attempts.max(1) * config.servers.len().max(1),
            cache: Mutex::new(HashMap::new()),
            max_entries: config.cache_entries.max(16),
            metrics,
        })
    }

    /// The hickory resolver itself (DoH forwards whole queries through it).
    pub fn hickory(&self) -> &TokioResolver {
        &self.inner
    }

    /// Resolves a host name (or parses an IP literal) to its addresses.
    pub async fn resolve(&self, host: &str) -> Result<Arc<Vec<IpAddr>>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Arc::new(vec![ip]));
        }
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        if let Some((addrs, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if *until > now {
                self.metrics.dns_cache_hits.inc();
                return Ok(addrs.clone());
            }
        }
        self.metrics.dns_cache_misses.inc();
        let started = Instant::now();
        // A trailing dot makes the name fully qualified: no search-domain surprises.
        let lookup = self.inner.lookup_ip(format!("{key}.")).await;
        self.metrics
            .dns_lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        let lookup = lookup.map_err(|e| self.resolve_error(&key, &e))?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(EgressError::Resolve {
                host: key,
                reason: "no addresses".into(),
            });
        }
        let addrs = Arc::new(addrs);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.max_entries {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.max_entries {
                cache.clear();
            }
        }
        cache.insert(key, (addrs.clone(), lookup.valid_until()));
        Ok(addrs)
    }
}

impl Resolver {
    /// Says what DNS answered, in words an administrator can act on.
    fn resolve_error(&self, host: &str, e: &hickory_resolver::ResolveError) -> EgressError {
        use hickory_resolver::proto::op::ResponseCode;
        use hickory_resolver::proto::ProtoErrorKind;
        let reason = match e.proto().map(|p| p.kind()) {
            Some(ProtoErrorKind::Timeout) => {
                return EgressError::ResolveTimeout {
                    host: host.to_string(),
                    tries: self.tries,
                    timeout_ms: self.timeout_ms,
                }
            }
            Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
                ResponseCode::NXDomain => "no such domain (NXDOMAIN)".to_string(),
                ResponseCode::NoError => "the name has no address records".to_string(),
                // Debug is the RFC mnemonic in camel case: ServFail -> SERVFAIL.
                code => format!(
                    "the DNS server answered {}",
                    format!("{code:?}").to_uppercase()
                ),
            },
            _ => format!("DNS error: {e}"),
        };
        EgressError::Resolve {
            host: host.to_string(),
            reason,
        }
    }
}

/// Everything needed to open upstream connections.
pub struct Egress {
    pub resolver: Resolver,
    pub guard: DestinationGuard,
    /// Set once the listeners are bound (`gateway::start`).
    pub own_listeners: std::sync::OnceLock<OwnListeners>,
    pub connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Delay before racing the next address (RFC 8305 suggests 250 ms).
const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

impl Egress {
    pub fn new(
        dns: &DnsConfig,
        egress: &EgressConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Egress> {
        Ok(Egress {
            resolver: Resolver::new(dns, metrics.clone())?,
            guard: DestinationGuard::new(egress.allow_destinations.clone()),
            own_listeners: std::sync::OnceLock::new(),
            connect_timeout: Duration::from_millis(egress.connect_timeout_ms),
            metrics,
        })
    }

    /// Resolves `host` and checks every address against the gateway's own
    /// listeners and the destination guard. Refuses if ANY answer is
    /// forbidden: a name that resolves to both a public and an internal
    /// address is a rebinding attempt.
    pub async fn resolve_allowed(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Arc<Vec<IpAddr>>, EgressError> {
        let addrs = self.resolver.resolve(host).await?;
        for addr in addrs.iter() {
            if let Some(own) = self.own_listeners.get() {
                own.check(*addr, port)?;
            }
            self.guard.check(*addr)?;
        }
        Ok(addrs)
    }

    /// Resolves `host`, checks every address against the guard, and connects
    /// (bound to `source` when given). Returns the stream and the local
    /// address actually used.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        source: Option<IpAddr>,
    ) -> Result<TcpStream, EgressError> {
        let addrs = self.resolve_allowed(host, port).await?;
        let candidates = order_for_happy_eyeballs(&addrs, source);
        if candidates.is_empty() {
            return Err(EgressError::Connect {
                host: host.to_string(),
                port,
                reason: format!(
                    "no address of the family of the egress source {}",
                    source.map(|s| s.to_string()).unwrap_or_default()
                ),
            });
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.connect_timeout, race(candidates, port, source)).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(Ok(stream)) => {
                self.metrics
                    .upstream_connect_seconds
                    .with_label_values(&["ok"])
                    .observe(elapsed);
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(reason)) => {
                self.metrics
                    .upstream_connect_seconds
                    .with_label_values(&["error"])
                    .observe(elapsed);
                Err(EgressError::Connect {
                    host: host.to_string(),
                    port,
                    reason,
                })
            }
            Err(_) => {
                self.metrics
                    .upstream_connect_seconds
                    .with_label_values(&["timeout"])
                    .observe(elapsed);
                Err(EgressError::Timeout {
                    host: host.to_string(),
                    port,
                })
            }
        }
    }
}

/// Interleaves IPv6 and IPv4 (IPv6 first, RFC 8305 §4), keeping only the
/// family of a fixed source address when one is set.
fn order_for_happy_eyeballs(addrs: &[IpAddr], source: Option<IpAddr>) -> Vec<IpAddr> {
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|a| a.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut i6, mut i4) = (v6.into_iter(), v4.into_iter());
    loop {
        let (a, b) = (i6.next(), i4.next());
        if a.is_none() && b.is_none() {
            break;
        }
        out.extend(a);
        out.extend(b);
    }
    if let Some(src) = source {
        out.retain(|a| a.is_ipv6() == src.is_ipv6());
    }
    out
}

/// Starts a connect to each candidate in turn, HAPPY_EYEBALLS_DELAY apart
/// (or as soon as the previous one fails); the first success wins.
async fn race(
    candidates: Vec<IpAddr>,
    port: u16,
    source: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let mut pending = FuturesUnordered::new();
    let mut next = candidates.into_iter();
    let mut last_error = String::from("no addresses");
    if let Some(first) = next.next() {
        pending.push(connect_one(SocketAddr::new(first, port), source));
    }
    loop {
        if pending.is_empty() {
            return Err(last_error);
        }
        let delay = tokio::time::sleep(HAPPY_EYEBALLS_DELAY);
        tokio::pin!(delay);
        tokio::select! {
            Some(result) = pending.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last_error = e;
                    if let Some(addr) = next.next() {
                        pending.push(connect_one(SocketAddr::new(addr, port), source));
                    }
                }
            },
            _ = &mut delay => {
                if let Some(addr) = next.next() {
                    pending.push(connect_one(SocketAddr::new(addr, port), source));
                }
            }
        }
    }
}

async fn connect_one(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(src) = source {
        socket.bind(SocketAddr::new(src, 0)).map_err(|e| {
            format!(
                "cannot bind egress source {src}: {e} (is the address configured on this host?)"
            )
        })?;
    }
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classifier_ranges() {
        assert_eq!(c("10.1.2.3"), AddressClass::Private);
        assert_eq!(c("172.16.0.1"), AddressClass::Private);
        assert_eq!(c("172.31.255.255"), AddressClass::Private);
        assert_eq!(c("172.32.0.1"), AddressClass::Public);
        assert_eq!(c("192.168.1.1"), AddressClass::Private);
        assert_eq!(c("169.254.1.1"), AddressClass::LinkLocal);
        assert_eq!(c("169.254.169.254"), AddressClass::Metadata);
        assert_eq!(c("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("127.8.9.10"), AddressClass::Loopback);
        assert_eq!(c("::1"), AddressClass::Loopback);
        assert_eq!(c("fc00::1"), AddressClass::Private);
        assert_eq!(c("fdff:ffff::1"), AddressClass::Private);
        assert_eq!(c("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(c("fd00:ec2::254"), AddressClass::Metadata);
        assert_eq!(c("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("::ffff:10.0.0.1"), AddressClass::Private);
        assert_eq!(c("0.0.0.0"), AddressClass::Unspecified);
        assert_eq!(c("::"), AddressClass::Unspecified);
        assert_eq!(c("100.64.0.1"), AddressClass::SharedCgnat);
        assert_eq!(c("8.8.8.8"), AddressClass::Public);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
        assert_eq!(c("224.0.0.1"), AddressClass::Multicast);
        assert_eq!(c("255.255.255.255"), AddressClass::Broadcast);
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_classified_by_the_ipv4_address() {
        for (addr, class) in [
            ("::127.0.0.1", AddressClass::Loopback),
            ("::ffff:0:127.0.0.1", AddressClass::Loopback),
            ("::169.254.169.254", AddressClass::Metadata),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::Metadata),
            ("64:ff9b::10.1.2.3", AddressClass::Private),
            ("64:ff9b::8.8.8.8", AddressClass::Public),
            ("64:ff9b:1::10.0.0.1", AddressClass::Private), // /96 inside the local-use /48
            ("2002:7f00:1::1", AddressClass::Loopback),
            ("2002:c0a8:101::1", AddressClass::Private),
            ("2002:808:808::1", AddressClass::Public),
            // Teredo: client address is the last 32 bits inverted.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                AddressClass::Loopback,
            ),
            (
                "2001:0:4136:e378:8000:63bf:f5fe:fefe",
                AddressClass::Private,
            ),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", AddressClass::Public),
        ] {
            assert_eq!(c(addr), class, "{addr}");
        }
        // Local-use NAT64 with a shorter prefix: 127.0.0.1 at the /48 and at
        // the /56 position (RFC 6052, the "u" octet skipped) is never public.
        for addr in ["64:ff9b:1:7f00:0:100::", "64:ff9b:1:7f:0:1::"] {
            assert_ne!(c(addr), AddressClass::Public, "{addr}");
        }
        assert_eq!(
            embedded_ipv4("64:ff9b:1:7f00:0:100::".parse().unwrap())[0],
            Ipv4Addr::new(127, 0, 0, 1)
        );
        assert_eq!(
            embedded_ipv4("64:ff9b:1:7f:0:1::".parse().unwrap())[1],
            Ipv4Addr::new(127, 0, 0, 1)
        );
        // Not embedding forms: plain IPv6 stays classified as IPv6.
        assert_eq!(c("::1"), AddressClass::Loopback);
        assert_eq!(c("::"), AddressClass::Unspecified);
        assert_eq!(c("2001:db8::1"), AddressClass::Documentation);
        assert_eq!(c("2001:4860::8888"), AddressClass::Public);
        assert_eq!(
            embedded_ipv4("2001:0:4136:e378:8000:63bf:80ff:fffe".parse().unwrap()),
            vec![Ipv4Addr::new(127, 0, 0, 1)]
        );
    }

    #[test]
    fn embedded_ipv4_forms_are_refused_even_when_loopback_is_allowed() {
        // The demo configuration allows loopback; the embedding forms are not
        // loopback on this host and must not slip through as "public".
        let guard = DestinationGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        for addr in ["::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1"] {
            let err = guard.check(addr.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("loopback"), "{addr}: {err}");
        }
        assert!(guard.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn own_listeners_are_refused_by_address_and_port() {
        let own = OwnListeners::new(vec![
            "127.0.0.1:9090".parse().unwrap(),
            "0.0.0.0:3128".parse().unwrap(),
            "[::]:8443".parse().unwrap(),
        ]);
        let refused = |a: &str, p: u16| own.check(a.parse().unwrap(), p).is_err();
        assert!(refused("127.0.0.1", 9090));
        assert!(refused("::ffff:127.0.0.1", 9090));
        assert!(refused("0.0.0.0", 9090));
        assert!(!refused("127.0.0.2", 9090)); // bound to 127.0.0.1 only
        assert!(!refused("127.0.0.1", 9091));
        // Wildcard binds: any local address on that port.
        assert!(refused("127.0.0.1", 3128));
        assert!(refused("127.3.4.5", 3128));
        assert!(refused("::1", 8443));
        assert!(refused("127.0.0.1", 8443));
        assert!(!refused("192.0.2.1", 3128)); // TEST-NET: not an address of this host
        let err = own.check("127.0.0.1".parse().unwrap(), 9090).unwrap_err();
        assert_eq!(err.guard_rule(), Some("own-listener"));
        assert!(err.to_string().contains("127.0.0.1:9090"), "{err}");
    }

    #[test]
    fn guard_allows_only_listed_internal_ranges() {
        let guard = DestinationGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(guard.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(guard.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(guard.check("8.8.8.8".parse().unwrap()).is_ok());
        let err = guard.check("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(err.is_forbidden());
        assert!(err.to_string().contains("cloud metadata"));
        assert!(guard.check("10.0.0.1".parse().unwrap()).is_err());
        assert!(guard.check("::1".parse().unwrap()).is_err());
        assert!(DestinationGuard::default()
            .check("127.0.0.1".parse().unwrap())
            .is_err());
    }

    #[test]
    fn happy_eyeballs_order_interleaves_and_filters_by_source_family() {
        let addrs: Vec<IpAddr> = ["1.1.1.1", "2.2.2.2", "::1", "::2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let order = order_for_happy_eyeballs(&addrs, None);
        assert_eq!(order[0], "::1".parse::<IpAddr>().unwrap());
        assert_eq!(order[1], "1.1.1.1".parse::<IpAddr>().unwrap());
        let v4_only = order_for_happy_eyeballs(&addrs, Some("127.0.0.2".parse().unwrap()));
        assert!(v4_only.iter().all(|a| a.is_ipv4()));
    }
}
