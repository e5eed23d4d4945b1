//! A global cap on idle pooled upstream connections, fair across hosts.
//!
//! hyper-util's pool caps idle connections per host only: with thousands of
//! upstream hosts every one of them keeps its own, and the gateway's memory
//! grows with the number of hosts visited (~3,900 idle connections for
//! 2,000 hosts in the filtered load test). Here every pooled HTTP/1.1
//! connection's IO is wrapped ([`Tracked`]) and registered in one
//! [`IdleCap`] while it is idle. When more than `cap` are idle, the least
//! recently used idle connection of the host holding the most is closed, so
//! a busy host keeps its connections longest and every host keeps one until
//! all hosts are down to one.
//!
//! When is a connection idle? Between the end of a response and the next
//! request. The IO sees the start of a request (its first write after
//! reading); the end of a response is known to the proxy only (the body's
//! last byte handed to the client), so the response's [`ResponseDone`]
//! guard, taken from the response's extensions, says it on drop. Counting
//! both (`started` vs `done`) keeps this right when hyper reuses the
//! connection before the previous body's guard is dropped.
//!
//! Closing without losing a request: an evicted connection's next read
//! returns end-of-file. hyper's HTTP/1.1 client polls the read side of an
//! idle connection before it takes the next request from its queue, so a
//! request that picked the connection in the meantime is handed back unsent
//! and hyper-util retries it on another connection (a canceled request on a
//! reused connection). A request whose write gets in first cancels the
//! eviction instead (one atomic word holds the request count and the
//! eviction flag).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus::{IntCounter, IntGauge, Registry};

/// Set in [`Slot::state`] when the connection is chosen for eviction.
const EVICT: u64 = 1;
/// One request started, in [`Slot::state`] (the low bit is [`EVICT`]).
const ONE_REQUEST: u64 = 2;

/// Roughly what one idle HTTP/1.1 upstream connection holds in the
/// gateway: hyper's 8 KiB read and 8 KiB header buffers, the connection
/// task, the pool entry and allocator slack (RSS over the filtered load
/// test: ~36 KiB).
pub const IDLE_CONNECTION_BYTES: u64 = 36 * 1024;

/// The default cap when `[limits] upstream_idle_total` is 0: idle pooled
/// connections may take about 1/64 of the memory the gateway may use (the
/// cgroup limit, else the machine's memory), at least 128 and at most
/// 2,048 connections (2,048 × 36 KiB = 72 MiB).
pub fn default_cap() -> usize {
    let bytes = memory_limit_bytes().unwrap_or(2 << 30);
    ((bytes / 64 / IDLE_CONNECTION_BYTES) as usize).clamp(128, 2048)
}

/// The memory this process may use: the cgroup v2 limit when one is set
/// (a Kubernetes pod), else the machine's total memory.
fn memory_limit_bytes() -> Option<u64> {
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(n) = max.trim().parse::<u64>() {
            return Some(n);
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// `komugate_upstream_idle_*`.
#[derive(Clone)]
pub struct IdleMetrics {
    idle: IntGauge,
    evictions: IntCounter,
}

impl IdleMetrics {
    pub fn new(registry: &Registry) -> IdleMetrics {
        let m = IdleMetrics {
            idle: IntGauge::new(
                "komugate_upstream_idle_connections",
                "Idle pooled HTTP/1.1 upstream connections (kept for reuse, at most [limits] upstream_idle_total)",
            )
            .expect("metric"),
            evictions: IntCounter::new(
                "komugate_upstream_idle_evictions_total",
                "Idle pooled upstream connections closed because more than [limits] upstream_idle_total were idle",
            )
            .expect("metric"),
        };
        // Tests build several gateways on one registry; the first one wins.
        let _ = registry.register(Box::new(m.idle.clone()));
        let _ = registry.register(Box::new(m.evictions.clone()));
        m
    }
}

/// The registry of idle pooled connections and the cap on them.
pub struct IdleCap {
    cap: usize,
    inner: Mutex<Inner>,
    metrics: IdleMetrics,
}

#[derive(Default)]
struct Inner {
    /// Ticks at every connection that becomes idle: orders idle connections by age.
    clock: u64,
    hosts: HashMap<Arc<str>, BTreeMap<u64, Arc<Slot>>>,
    /// (idle connections, Reverse(oldest idle tick), host): the last entry
    /// is the host to take from, the oldest among the fullest.
    order: BTreeSet<(usize, Reverse<u64>, Arc<str>)>,
    idle: usize,
}

impl Inner {
    fn order_key(&self, host: &Arc<str>) -> Option<(usize, Reverse<u64>, Arc<str>)> {
        let conns = self.hosts.get(host)?;
        let oldest = *conns.keys().next()?;
        Some((conns.len(), Reverse(oldest), host.clone()))
    }

    /// Runs `change` on `host`'s idle connections, keeping `order` in step.
    fn with_host<R>(
        &mut self,
        host: &Arc<str>,
        change: impl FnOnce(&mut BTreeMap<u64, Arc<Slot>>) -> R,
    ) -> R {
        if let Some(key) = self.order_key(host) {
            self.order.remove(&key);
        }
        let conns = self.hosts.entry(host.clone()).or_default();
        let out = change(conns);
        if conns.is_empty() {
            self.hosts.remove(host);
        } else if let Some(key) = self.order_key(host) {
            self.order.insert(key);
        }
        out
    }

    fn remove(&mut self, slot: &Slot) {
        let tick = slot.idle_since.swap(0, Ordering::Relaxed);
        if tick != 0 && self.with_host(&slot.host, |c| c.remove(&tick)).is_some() {
            self.idle -= 1;
        }
    }
}

impl IdleCap {
    pub fn new(cap: usize, metrics: IdleMetrics) -> Arc<IdleCap> {
        Arc::new(IdleCap {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
            metrics,
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Idle connections registered now.
    pub fn idle(&self) -> usize {
        self.lock().idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new pooled connection to `host` (the pool key: scheme, host, port,
    /// egress source and ALPN offer).
    pub fn slot(self: &Arc<Self>, host: Arc<str>) -> Arc<Slot> {
        Arc::new(Slot {
            cap: self.clone(),
            host,
            state: AtomicU64::new(0),
            done: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        })
    }

    /// Registers `slot` as idle if no request is in flight on it, then
    /// closes the oldest idle connections of the fullest hosts while more
    /// than `cap` are idle.
    fn became_idle(&self, slot: &Arc<Slot>) {
        let mut evicted = Vec::new();
        {
            let mut inner = self.lock();
            if !slot.is_idle() || slot.closed.load(Ordering::Relaxed) {
                return;
            }
            if slot.idle_since.load(Ordering::Relaxed) != 0 {
                return;
            }
            inner.clock += 1;
            let tick = inner.clock;
            slot.idle_since.store(tick, Ordering::Relaxed);
            inner.with_host(&slot.host, |c| c.insert(tick, slot.clone()));
            inner.idle += 1;
            while inner.idle > self.cap {
                let Some((_, _, host)) = inner.order.last().cloned() else {
                    break;
                };
                let Some(victim) = inner.with_host(&host, |c| c.pop_first().map(|(_, s)| s)) else {
                    break;
                };
                victim.idle_since.store(0, Ordering::Relaxed);
                inner.idle -= 1;
                evicted.push(victim);
            }
            self.metrics.idle.set(inner.idle as i64);
        }
        for victim in evicted {
            // A request that started since keeps the connection (the
            // eviction fails and it is just no longer counted as idle).
            if victim.mark_evicted() {
                self.metrics.evictions.inc();
                victim.reader.wake();
            }
        }
    }

    fn forget(&self, slot: &Slot) {
        let mut inner = self.lock();
        inner.remove(slot);
        self.metrics.idle.set(inner.idle as i64);
    }
}

/// One pooled connection's bookkeeping, shared by its IO ([`Tracked`]) and
/// the guards of its responses.
pub struct Slot {
    cap: Arc<IdleCap>,
    host: Arc<str>,
    /// Requests started × [`ONE_REQUEST`], plus [`EVICT`].
    state: AtomicU64,
    /// Responses finished (their guard dropped).
    done: AtomicU64,
    /// The registry tick at which it became idle; 0 = not registered.
    /// Changed under the registry's lock only.
    idle_since: AtomicU64,
    /// The IO is gone.
    closed: AtomicBool,
    /// The connection task, parked on a read: woken to see the eviction.
    reader: AtomicWaker,
}

impl Slot {
    fn is_idle(&self) -> bool {
        let state = self.state.load(Ordering::SeqCst);
        state & EVICT == 0 && state / ONE_REQUEST == self.done.load(Ordering::SeqCst)
    }

    /// Sets the eviction flag if the connection is still idle.
    fn mark_evicted(&self) -> bool {
        let done = self.done.load(Ordering::SeqCst);
        self.state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s & EVICT == 0 && s / ONE_REQUEST == done).then_some(s | EVICT)
            })
            .is_ok()
    }

    fn evicted(&self) -> bool {
        self.state.load(Ordering::SeqCst) & EVICT != 0
    }

    /// A request starts writing: counted, and any pending eviction is
    /// called off (the connection is in use again).
    fn request_started(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some((s & !EVICT) + ONE_REQUEST)
            });
        self.cap.forget(self);
    }
}

/// The response-side half: dropped when the proxy has relayed (or dropped)
/// the response body. Take it with [`ResponseDone::take`].
pub struct ResponseDone(Arc<Slot>);

impl ResponseDone {
    /// The guard for a response of the pooled client; `None` for responses
    /// on connections that are not tracked (HTTP/2).
    pub fn take(extensions: &mut http::Extensions) -> Option<ResponseDone> {
        extensions
            .remove::<PoolSlot>()
            .map(|PoolSlot(slot)| ResponseDone(slot))
    }
}

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.cap.became_idle(&self.0);
    }
}

/// Put into every response's extensions by the pool (`Connected::extra`).
#[derive(Clone)]
struct PoolSlot(Arc<Slot>);

/// A pooled connection's IO, reporting request starts and obeying evictions.
pub struct Tracked<S> {
    inner: S,
    slot: Option<Arc<Slot>>,
    /// The last IO was a read (or nothing yet): the next write starts a request.
    reading: bool,
}

impl<S> Tracked<S> {
    /// `slot`: `None` leaves the connection out of the cap (HTTP/2: one
    /// connection per host carries every request).
    pub fn new(inner: S, slot: Option<Arc<Slot>>) -> Tracked<S> {
        Tracked {
            inner,
            slot,
            reading: true,
        }
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.closed.store(true, Ordering::Relaxed);
            slot.cap.forget(slot);
        }
    }
}

impl<S: Connection> Connection for Tracked<S> {
    fn connected(&self) -> Connected {
        let connected = self.inner.connected();
        match &self.slot {
            Some(slot) => connected.extra(PoolSlot(slot.clone())),
            None => connected,
        }
    }
}

impl<S: hyper::rt::Read + Unpin> hyper::rt::Read for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(slot) = &this.slot else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if slot.evicted() {
            // End of file: hyper closes an idle connection that reads it.
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                slot.reader.register(cx.waker());
                if slot.evicted() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                // Response bytes (or end of file, after which nothing is
                // written): the next write is the next request.
                this.reading = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: hyper::rt::Write + Unpin> hyper::rt::Write for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.reading && !buf.is_empty() {
            if let Some(slot) = &this.slot {
                slot.request_started();
            }
            this.reading = false;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::upstream::{upstream_tls_config, UpstreamAlpn, UpstreamPools};
    use crate::egress::Egress;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    const BODY: usize = 4096;

    /// An origin on `ip` that answers every request with BODY bytes and
    /// counts the connections it accepted.
    async fn origin(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(vec![b'x'; BODY])),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// `n` origins on 127.0.0.2, 127.0.0.3, …: one upstream host each.
    async fn origins(n: usize) -> Vec<(SocketAddr, Arc<AtomicUsize>)> {
        let mut all = Vec::new();
        for i in 0..n {
            all.push(origin(&format!("127.0.0.{}", 2 + i)).await);
        }
        all
    }

    fn pools(cap: usize) -> (UpstreamPools, Arc<IdleCap>) {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let dns: crate::config::DnsConfig = toml::from_str("servers = [\"127.0.0.1:9\"]").unwrap();
        let egress: crate::config::EgressConfig =
            toml::from_str("allow_destinations = [\"127.0.0.0/8\"]").unwrap();
        let egress = Arc::new(Egress::new(&dns, &egress, metrics.clone()).unwrap());
        let cap = IdleCap::new(cap, IdleMetrics::new(&metrics.registry));
        let pools = UpstreamPools::new(
            egress,
            upstream_tls_config(None).unwrap(),
            1024,
            Duration::from_secs(60),
            cap.clone(),
        );
        (pools, cap)
    }

    /// One GET relayed as the proxy does: the body read to its end, then
    /// the response's guard dropped.
    async fn get(pools: &UpstreamPools, addr: SocketAddr) -> Result<(), String> {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let mut resp = pools
            .client(None, UpstreamAlpn::None)
            .request(req)
            .await
            .map_err(|e| format!("request to {addr}: {e:?}"))?;
        let done = ResponseDone::take(resp.extensions_mut());
        assert!(
            done.is_some(),
            "a pooled HTTP/1.1 response carries its guard"
        );
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body from {addr}: {e}"))?
            .to_bytes();
        if body.len() != BODY {
            return Err(format!("{} bytes from {addr}", body.len()));
        }
        drop(done);
        Ok(())
    }

    fn idle_of(cap: &IdleCap, addr: SocketAddr) -> usize {
        let inner = cap.lock();
        inner
            .hosts
            .iter()
            .filter(|(host, _)| host.contains(&addr.to_string()))
            .map(|(_, conns)| conns.len())
            .sum()
    }

    /// Lets hyper hand a finished connection back to its pool.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_stay_under_the_cap_and_a_busy_host_keeps_one() {
        const CAP: usize = 8;
        let hosts = origins(40).await;
        let (pools, cap) = pools(CAP);
        let (busy, busy_accepted) = hosts[0].clone();

        // The busy host: four requests at once leave several idle connections.
        let burst: Vec<_> = (0..4).map(|_| get(&pools, busy)).collect();
        for r in futures_util::future::join_all(burst).await {
            r.unwrap();
        }
        settle().await;
        // Up to four: a request may take a connection another one just
        // finished with, and hyper pools the spare connection untracked.
        assert!(idle_of(&cap, busy) >= 1);

        // Every other host once, the busy one again after every few.
        for (i, (addr, _)) in hosts.iter().enumerate().skip(1) {
            get(&pools, *addr).await.unwrap();
            settle().await;
            assert!(cap.idle() <= CAP, "{} idle > cap {CAP}", cap.idle());
            if i % 3 == 0 {
                get(&pools, busy).await.unwrap();
                settle().await;
            }
        }
        // The fullest host gave up its extra connections first, then the
        // oldest single ones went; the busy host kept one, so its next
        // request needs no new connection.
        assert!(idle_of(&cap, busy) >= 1);
        assert_eq!(cap.idle(), CAP);
        let before = busy_accepted.load(Ordering::SeqCst);
        get(&pools, busy).await.unwrap();
        assert_eq!(busy_accepted.load(Ordering::SeqCst), before);
        // Hosts visited long ago lost theirs: closed, not only forgotten.
        let (first_other, first_accepted) = hosts[1].clone();
        assert_eq!(idle_of(&cap, first_other), 0);
        get(&pools, first_other).await.unwrap();
        assert_eq!(first_accepted.load(Ordering::SeqCst), 2);
        assert!(cap.metrics.evictions.get() >= 30);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_on_a_connection_being_evicted_is_retried_on_a_fresh_one() {
        let hosts = origins(1).await;
        let (addr, accepted) = hosts[0].clone();
        let (pools, cap) = pools(4);
        get(&pools, addr).await.unwrap();
        settle().await;
        // Evict the idle connection without waking its task: the next
        // request picks it from hyper's pool as if the eviction raced it.
        let slot = {
            let mut inner = cap.lock();
            let host = inner.hosts.keys().next().unwrap().clone();
            let slot = inner.with_host(&host, |c| c.pop_first().unwrap().1);
            slot.idle_since.store(0, Ordering::Relaxed);
            inner.idle -= 1;
            slot
        };
        assert!(slot.mark_evicted());
        drop(slot);
        get(&pools, addr).await.unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "retried on a new connection"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_request_fails_while_a_tiny_cap_evicts_under_load() {
        let hosts = origins(12).await;
        let (pools, cap) = pools(2);
        let pools = Arc::new(pools);
        let tasks: Vec<_> = (0..24)
            .map(|t| {
                let pools = pools.clone();
                let hosts: Vec<SocketAddr> = hosts.iter().map(|(a, _)| *a).collect();
                tokio::spawn(async move {
                    for i in 0..60 {
                        get(&pools, hosts[(t * 7 + i * 5) % hosts.len()]).await?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        settle().await;
        assert!(cap.idle() <= 2);
        assert!(cap.metrics.evictions.get() > 0);
    }
}
