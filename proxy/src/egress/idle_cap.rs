//! The set of idle pooled upstream connections: a global cap, fair across
//! hosts, and a cap per host.
//!
//! Without a global cap every upstream host keeps its own idle connections
//! and the gateway's memory and sockets grow with the number of hosts
//! visited (~3,900 idle connections for 2,000 hosts in the filtered load
//! test). Here, when more than `cap` are idle, the least recently used idle
//! connection of the host holding the most is closed, so a busy host keeps
//! its connections longest and every host keeps one until all hosts are
//! down to one.
//!
//! The set holds whatever the pool keeps for an idle connection (the bare
//! socket, `super::h1pool`); it is not locked itself: the pool holds it
//! under its own lock, and drops what comes out of it (closing sockets)
//! after letting go of that lock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, Registry};

/// Roughly what one idle HTTP/1.1 upstream connection holds in the
/// gateway: the socket's registration and the pool entry (a few hundred
/// bytes; hyper's buffers are freed while idle), plus the kernel's socket
/// (outside the process's RSS, but memory all the same).
pub const IDLE_CONNECTION_BYTES: u64 = 4 * 1024;

/// The default cap when `[limits] upstream_idle_total` is 0: idle pooled
/// connections may take about 1/256 of the memory the gateway may use (the
/// cgroup limit, else the machine's memory), at least 128 and at most
/// 4,096 connections. The upper bound keeps the gateway's own socket count
/// (and the origins' patience) reasonable, whatever the memory.
pub fn default_cap() -> usize {
    let bytes = memory_limit_bytes().unwrap_or(2 << 30);
    ((bytes / 256 / IDLE_CONNECTION_BYTES) as usize).clamp(128, 4096)
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
    pub idle: IntGauge,
    pub evictions: IntCounter,
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

/// What [`IdleSet::put`] pushed out.
pub struct PushedOut<T> {
    /// The host's oldest, past the per-host cap.
    pub over_host: Vec<T>,
    /// The oldest of the fullest hosts, past the global cap (evictions).
    pub over_cap: Vec<T>,
}

impl<T> PushedOut<T> {
    /// Everything pushed out, the host's own first.
    pub fn all(self) -> Vec<T> {
        let mut all = self.over_host;
        all.extend(self.over_cap);
        all
    }
}

/// Idle connections (`T`) per host (`K`), the global cap and the per-host cap.
pub struct IdleSet<K, T> {
    cap: usize,
    per_host: usize,
    /// Ticks at every connection put in: orders idle connections by age.
    clock: u64,
    hosts: HashMap<Arc<K>, BTreeMap<u64, T>>,
    /// (idle connections, Reverse(oldest tick), host): the last entry is
    /// the host to take from when over the cap, the oldest among the fullest.
    order: BTreeSet<(usize, Reverse<u64>, Arc<K>)>,
    len: usize,
}

impl<K: Hash + Ord, T> IdleSet<K, T> {
    /// `cap`: idle connections across all hosts; `per_host`: for one host.
    pub fn new(cap: usize, per_host: usize) -> IdleSet<K, T> {
        IdleSet {
            cap: cap.max(1),
            per_host: per_host.max(1),
            clock: 0,
            hosts: HashMap::new(),
            order: BTreeSet::new(),
            len: 0,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Idle connections held for `host`.
    pub fn len_of(&self, host: &K) -> usize {
        self.hosts.get(host).map_or(0, BTreeMap::len)
    }

    fn order_key(&self, host: &Arc<K>) -> Option<(usize, Reverse<u64>, Arc<K>)> {
        let conns = self.hosts.get(host)?;
        let oldest = *conns.keys().next()?;
        Some((conns.len(), Reverse(oldest), host.clone()))
    }

    /// Runs `change` on `host`'s idle connections, keeping `order` and
    /// `len` in step.
    fn with_host<R>(
        &mut self,
        host: &Arc<K>,
        change: impl FnOnce(&mut BTreeMap<u64, T>) -> R,
    ) -> R {
        if let Some(key) = self.order_key(host) {
            self.order.remove(&key);
        }
        let conns = self.hosts.entry(host.clone()).or_default();
        let before = conns.len();
        let out = change(conns);
        let after = conns.len();
        if after == 0 {
            self.hosts.remove(host);
        } else if let Some(key) = self.order_key(host) {
            self.order.insert(key);
        }
        self.len = self.len + after - before;
        out
    }

    /// Keeps `conn` as `host`'s most recently used idle connection; returns
    /// the connections this pushed out, for the caller to close.
    pub fn put(&mut self, host: Arc<K>, conn: T) -> PushedOut<T> {
        self.clock += 1;
        let tick = self.clock;
        let per_host = self.per_host;
        let over_host = self.with_host(&host, |conns| {
            conns.insert(tick, conn);
            let mut out = Vec::new();
            while conns.len() > per_host {
                out.extend(conns.pop_first().map(|(_, c)| c));
            }
            out
        });
        let mut over_cap = Vec::new();
        while self.len > self.cap {
            let Some((_, _, fullest)) = self.order.last().cloned() else {
                break;
            };
            over_cap.extend(self.with_host(&fullest, |c| c.pop_first().map(|(_, c)| c)));
        }
        PushedOut {
            over_host,
            over_cap,
        }
    }

    /// `host`'s most recently used idle connection, taken out.
    pub fn take_newest(&mut self, host: &K) -> Option<T> {
        let host = self.hosts.get_key_value(host)?.0.clone();
        self.with_host(&host, |c| c.pop_last().map(|(_, c)| c))
    }

    /// Takes out every idle connection `keep` says no to.
    pub fn remove_where(&mut self, mut keep: impl FnMut(&mut T) -> bool) -> Vec<T> {
        let hosts: Vec<Arc<K>> = self.hosts.keys().cloned().collect();
        let mut out = Vec::new();
        for host in hosts {
            self.with_host(&host, |conns| {
                let gone: Vec<u64> = conns
                    .iter_mut()
                    .filter_map(|(tick, c)| (!keep(c)).then_some(*tick))
                    .collect();
                out.extend(gone.into_iter().filter_map(|t| conns.remove(&t)));
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Arc<String> {
        Arc::new(name.to_string())
    }

    #[test]
    fn the_fullest_host_gives_up_its_oldest_first_and_each_host_keeps_one_longest() {
        let mut set: IdleSet<String, &str> = IdleSet::new(4, 100);
        assert!(set.put(host("busy"), "b1").all().is_empty());
        assert!(set.put(host("busy"), "b2").all().is_empty());
        assert!(set.put(host("busy"), "b3").all().is_empty());
        assert!(set.put(host("a"), "a1").all().is_empty());
        // Five idle: the busy host (three) loses its oldest.
        assert_eq!(set.put(host("b"), "x1").all(), vec!["b1"]);
        assert_eq!(set.put(host("c"), "c1").all(), vec!["b2"]);
        assert_eq!(set.len(), 4);
        // Now every host has one: the oldest one overall goes (b3, then a1).
        assert_eq!(set.put(host("d"), "d1").all(), vec!["b3"]);
        assert_eq!(set.put(host("e"), "e1").all(), vec!["a1"]);
        assert_eq!(set.len_of(&"busy".to_string()), 0);
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn the_newest_is_taken_first_and_the_per_host_cap_drops_the_oldest() {
        let mut set: IdleSet<String, u32> = IdleSet::new(100, 2);
        assert!(set.put(host("h"), 1).all().is_empty());
        assert!(set.put(host("h"), 2).all().is_empty());
        let pushed = set.put(host("h"), 3);
        assert_eq!(pushed.over_host, vec![1]);
        assert!(pushed.over_cap.is_empty());
        assert_eq!(set.take_newest(&"h".to_string()), Some(3));
        assert_eq!(set.take_newest(&"h".to_string()), Some(2));
        assert_eq!(set.take_newest(&"h".to_string()), None);
        assert!(set.is_empty());
    }

    #[test]
    fn removal_keeps_the_counts_and_the_order_in_step() {
        let mut set: IdleSet<String, u32> = IdleSet::new(3, 10);
        for (h, n) in [("a", 1), ("a", 2), ("b", 3)] {
            assert!(set.put(host(h), n).all().is_empty());
        }
        assert_eq!(set.remove_where(|n| *n != 1), vec![1]);
        assert_eq!(set.len(), 2);
        // a and b have one each; a's (2) is older than b's (3).
        assert!(set.put(host("c"), 4).all().is_empty());
        assert_eq!(set.put(host("d"), 5).all(), vec![2]);
        assert_eq!(set.len_of(&"a".to_string()), 0);
    }
}
