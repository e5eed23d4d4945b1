//! Prometheus metrics, all named `komugate_*`, served on the admin listener.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub connections_total: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub requests_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub upstream_connect_seconds: HistogramVec,
    pub dns_cache_hits: IntCounter,
    pub dns_cache_misses: IntCounter,
    pub dns_lookup_seconds: Histogram,
    pub tunnels_open: IntGauge,
    /// Finished tunnel relays by how the bytes moved: `splice` (two plain
    /// sockets, kernel only) or `buffered`.
    pub tunnel_relays: IntCounterVec,
    pub access_log_dropped: IntCounter,
    /// IPS rule matches by action (alert, drop).
    pub ips_events: IntCounterVec,
    /// Connections and DNS queries refused by threat-intel lists, by where the hit was seen.
    pub threat_intel_blocks: IntCounterVec,
    /// DNS-over-HTTPS queries by result (allow, block, error).
    pub doh_queries: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_generation: IntGauge,
    /// `komugate_casb_*` / `komugate_dlp_*` (app-labelled, see `crate::stages::casb`).
    pub casb: CasbMetrics,
    /// `komugate_category_list_lines` (see `crate::list_import_report`).
    pub list_imports: crate::list_import_report::ListImportMetrics,
    /// `komugate_udp_*` (CONNECT-UDP flows, see `crate::flow::udp`).
    pub udp: UdpMetrics,
    /// Label handles of the counters every request touches.
    pub per_request: PerRequestCounters,
}

/// The label handles of the counters every request updates, looked up
/// once each: `with_label_values` hashes the labels and takes the vector's
/// lock on every call. Created on first use, so `/metrics` shows a series
/// only once it has counted something, as before.
#[derive(Default)]
pub struct PerRequestCounters {
    bytes_up: OnceLock<IntCounter>,
    bytes_down: OnceLock<IntCounter>,
    /// `requests_total` for the common (kind, decision) pairs, indexed by
    /// [`PerRequestCounters::slot`].
    requests: [OnceLock<IntCounter>; 4],
}

impl PerRequestCounters {
    fn slot(kind: &str, decision: &str) -> Option<usize> {
        match (kind, decision) {
            ("http", "allow") => Some(0),
            ("http", "block") => Some(1),
            ("connect", "allow") => Some(2),
            ("connect", "block") => Some(3),
            _ => None,
        }
    }
}

impl Metrics {
    /// `bytes_total{direction="up"}` and `{direction="down"}`.
    pub fn bytes_up_down(&self) -> (&IntCounter, &IntCounter) {
        let c = &self.per_request;
        (
            c.bytes_up
                .get_or_init(|| self.bytes_total.with_label_values(&["up"])),
            c.bytes_down
                .get_or_init(|| self.bytes_total.with_label_values(&["down"])),
        )
    }

    /// Counts one request in `requests_total{kind, decision}`.
    pub fn count_request(&self, kind: &str, decision: &str) {
        match PerRequestCounters::slot(kind, decision) {
            Some(i) => self.per_request.requests[i]
                .get_or_init(|| self.requests_total.with_label_values(&[kind, decision]))
                .inc(),
            None => self
                .requests_total
                .with_label_values(&[kind, decision])
                .inc(),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            connections_total: IntCounterVec::new(
                Opts::new(
                    "komugate_connections_total",
                    "Accepted client connections by listener",
                ),
                &["listener"],
            )
            .expect("metric"),
            connections_open: IntGaugeVec::new(
                Opts::new(
                    "komugate_connections_open",
                    "Open client connections by listener",
                ),
                &["listener"],
            )
            .expect("metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "komugate_connections_refused_total",
                    "Client connections refused before any request",
                ),
                &["listener", "reason"],
            )
            .expect("metric"),
            requests_total: IntCounterVec::new(
                Opts::new(
                    "komugate_requests_total",
                    "Requests and tunnels by kind and decision",
                ),
                &["kind", "decision"],
            )
            .expect("metric"),
            bytes_total: IntCounterVec::new(
                Opts::new(
                    "komugate_bytes_total",
                    "Payload bytes relayed, by direction (up = client to upstream)",
                ),
                &["direction"],
            )
            .expect("metric"),
            tls_handshake_failures: IntCounterVec::new(
                Opts::new(
                    "komugate_tls_handshake_failures_total",
                    "Failed client TLS handshakes by reason",
                ),
                &["listener", "reason"],
            )
            .expect("metric"),
            upstream_connect_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "komugate_upstream_connect_seconds",
                    "Time to establish an upstream TCP connection",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["result"],
            )
            .expect("metric"),
            dns_cache_hits: IntCounter::new(
                "komugate_dns_cache_hits_total",
                "DNS answers served from cache",
            )
            .expect("metric"),
            dns_cache_misses: IntCounter::new(
                "komugate_dns_cache_misses_total",
                "DNS lookups sent to a server",
            )
            .expect("metric"),
            dns_lookup_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "komugate_dns_lookup_seconds",
                    "DNS lookup time on cache misses",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("metric"),
            tunnels_open: IntGauge::new("komugate_tunnels_open", "CONNECT tunnels currently open")
                .expect("metric"),
            tunnel_relays: IntCounterVec::new(
                Opts::new(
                    "komugate_tunnel_relays_total",
                    "Finished CONNECT tunnel relays by relay kind (splice: plain sockets relayed inside the kernel; buffered)",
                ),
                &["relay"],
            )
            .expect("metric"),
            access_log_dropped: IntCounter::new(
                "komugate_access_log_dropped_total",
                "Access records dropped because the log writer could not keep up",
            )
            .expect("metric"),
            ips_events: IntCounterVec::new(
                Opts::new("komugate_ips_events_total", "IPS rule matches by action"),
                &["action"],
            )
            .expect("metric"),
            threat_intel_blocks: IntCounterVec::new(
                Opts::new(
                    "komugate_threat_intel_blocks_total",
                    "Destinations refused by threat-intel lists, by where seen",
                ),
                &["via"],
            )
            .expect("metric"),
            doh_queries: IntCounterVec::new(
                Opts::new(
                    "komugate_doh_queries_total",
                    "DNS-over-HTTPS queries by result",
                ),
                &["result"],
            )
            .expect("metric"),
            policy_reloads: IntCounterVec::new(
                Opts::new(
                    "komugate_policy_reloads_total",
                    "Policy reloads by result (ok, error)",
                ),
                &["result"],
            )
            .expect("metric"),
            policy_generation: IntGauge::new(
                "komugate_policy_generation",
                "Policy generation in force",
            )
            .expect("metric"),
            casb: CasbMetrics::new(),
            list_imports: crate::list_import_report::ListImportMetrics::new(),
            udp: UdpMetrics::new(),
            per_request: PerRequestCounters::default(),
            registry,
        };
        m.casb.register(&m.registry);
        m.udp.register(&m.registry);
        m.list_imports.register(&m.registry);
        let r = &m.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections_total.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.requests_total.clone()),
            Box::new(m.bytes_total.clone()),
            Box::new(m.tls_handshake_failures.clone()),
            Box::new(m.upstream_connect_seconds.clone()),
            Box::new(m.dns_cache_hits.clone()),
            Box::new(m.dns_cache_misses.clone()),
            Box::new(m.dns_lookup_seconds.clone()),
            Box::new(m.tunnels_open.clone()),
            Box::new(m.tunnel_relays.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.ips_events.clone()),
            Box::new(m.threat_intel_blocks.clone()),
            Box::new(m.doh_queries.clone()),
            Box::new(m.policy_reloads.clone()),
            Box::new(m.policy_generation.clone()),
        ];
        for c in collectors {
            r.register(c).expect("metric names are unique");
        }
        m
    }

    /// Text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `komugate_casb_*` metrics.
#[derive(Clone)]
pub struct CasbMetrics {
    /// Requests to catalog apps by app and action (allow, block).
    pub requests: IntCounterVec,
    /// CASB events by app and kind (upload, download, dlp, over-cap, tenant-restriction).
    pub events: IntCounterVec,
    /// DLP pattern matches by pattern name and action.
    pub dlp_matches: IntCounterVec,
    /// The most body bytes ever buffered for one request's inspection.
    pub buffer_max: IntGauge,
}

impl CasbMetrics {
    pub fn new() -> CasbMetrics {
        CasbMetrics {
            requests: IntCounterVec::new(
                Opts::new("komugate_casb_requests_total", "Requests to cloud apps (catalog) by app and action"),
                &["app", "action"],
            )
            .expect("metric"),
            events: IntCounterVec::new(
                Opts::new("komugate_casb_events_total", "CASB events by app and kind (upload, download, dlp, over-cap, tenant-restriction)"),
                &["app", "kind"],
            )
            .expect("metric"),
            dlp_matches: IntCounterVec::new(
                Opts::new("komugate_dlp_matches_total", "DLP pattern matches by pattern name and action"),
                &["pattern", "action"],
            )
            .expect("metric"),
            buffer_max: IntGauge::new(
                "komugate_casb_inspect_buffer_max_bytes",
                "The most request-body bytes buffered for one request's CASB/DLP inspection",
            )
            .expect("metric"),
        }
    }

    pub fn register(&self, r: &Registry) {
        for c in [
            Box::new(self.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.events.clone()),
            Box::new(self.dlp_matches.clone()),
            Box::new(self.buffer_max.clone()),
        ] {
            let _ = r.register(c);
        }
    }

    pub fn buffered(&self, n: usize) {
        let n = n as i64;
        if n > self.buffer_max.get() {
            self.buffer_max.set(n);
        }
    }
}

impl Default for CasbMetrics {
    fn default() -> Self {
        CasbMetrics::new()
    }
}

/// UDP flows (CONNECT-UDP) and their datagrams.
pub struct UdpMetrics {
    /// Flows by outcome: `allow` (relayed), `block` (policy, firewall,
    /// guard), `limited` (over the device's flow limit), `error`.
    pub flows: IntCounterVec,
    pub flows_open: IntGauge,
    /// Datagrams relayed, by direction (`up` device to origin, `down`).
    pub datagrams: IntCounterVec,
    /// Datagrams dropped, by reason: `rate` (device's datagram rate),
    /// `oversized`, `unknown_context`, `send_error` (the origin's socket
    /// refused it); and capsules skipped (`unknown_capsule`).
    pub dropped: IntCounterVec,
    /// Flows ended on a malformed capsule stream.
    pub malformed: IntCounter,
}

impl UdpMetrics {
    pub fn new() -> UdpMetrics {
        UdpMetrics {
            flows: IntCounterVec::new(
                Opts::new("komugate_udp_flows_total", "CONNECT-UDP flows by outcome"),
                &["result"],
            )
            .expect("metric"),
            flows_open: IntGauge::new("komugate_udp_flows_open", "UDP flows currently open")
                .expect("metric"),
            datagrams: IntCounterVec::new(
                Opts::new(
                    "komugate_udp_datagrams_total",
                    "UDP datagrams relayed, by direction",
                ),
                &["direction"],
            )
            .expect("metric"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "komugate_udp_datagrams_dropped_total",
                    "UDP datagrams and capsules dropped, by reason",
                ),
                &["reason"],
            )
            .expect("metric"),
            malformed: IntCounter::new(
                "komugate_udp_malformed_streams_total",
                "UDP flows ended because the device sent a malformed capsule stream",
            )
            .expect("metric"),
        }
    }

    pub fn register(&self, r: &Registry) {
        for c in [
            Box::new(self.flows.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.flows_open.clone()),
            Box::new(self.datagrams.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.malformed.clone()),
        ] {
            let _ = r.register(c);
        }
    }
}

impl Default for UdpMetrics {
    fn default() -> Self {
        UdpMetrics::new()
    }
}
