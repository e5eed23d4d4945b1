//! Counters, latency samples and the JSON / Markdown report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile of an ascending sample (`p` in 0..=100).
/// Empty sample: 0.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From microsecond samples (sorted in place).
    pub fn of(samples: &mut [u32]) -> Latency {
        samples.sort_unstable();
        let ms = |us: u32| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(percentile(samples, 50.0)),
            p90_ms: ms(percentile(samples, 90.0)),
            p99_ms: ms(percentile(samples, 99.0)),
            max_ms: ms(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// What one worker (or the whole run, after merging) observed.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Successful operations: kind -> latency samples (µs).
    pub ok: BTreeMap<&'static str, Vec<u32>>,
    /// Failed operations by error kind.
    pub errors: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// TLS handshakes the clients made (to the proxy and, inside tunnels, to origins).
    pub handshakes: u64,
    /// HTTP requests completed (a tunnel carrying 3 requests counts 3).
    pub requests: u64,
    /// Tunnels whose inner session negotiated HTTP/2.
    pub inner_h2_tunnels: u64,
}

impl Recorder {
    pub fn success(&mut self, kind: &'static str, micros: u64) {
        self.ok
            .entry(kind)
            .or_default()
            .push(micros.min(u32::MAX as u64) as u32);
    }
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_insert(0) += 1;
    }
    pub fn merge(&mut self, other: Recorder) {
        for (k, mut v) in other.ok {
            self.ok.entry(k).or_default().append(&mut v);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_insert(0) += n;
        }
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.handshakes += other.handshakes;
        self.requests += other.requests;
        self.inner_h2_tunnels += other.inner_h2_tunnels;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindReport {
    pub ok: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub proxy: String,
    pub devices: usize,
    pub ramp_seconds: f64,
    pub wall_seconds: f64,
    pub operations_ok: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub requests: u64,
    pub requests_per_second: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub bytes_per_second: f64,
    pub tls_handshakes: u64,
    pub tls_handshakes_per_second: f64,
    /// Tunnels whose inner session negotiated HTTP/2.
    #[serde(default)]
    pub inner_h2_tunnels: u64,
    pub latency: Latency,
    pub per_kind: BTreeMap<String, KindReport>,
    pub proxy_usage: Option<ProxyUsage>,
    pub command: String,
}

impl Report {
    pub fn build(
        label: &str,
        proxy: &str,
        devices: usize,
        ramp: f64,
        wall: f64,
        mut rec: Recorder,
    ) -> Report {
        let wall = wall.max(1e-9);
        let mut all: Vec<u32> = Vec::new();
        let mut per_kind = BTreeMap::new();
        let mut ops = 0;
        for (k, v) in rec.ok.iter_mut() {
            all.extend_from_slice(v);
            ops += v.len() as u64;
            per_kind.insert(
                k.to_string(),
                KindReport {
                    ok: v.len() as u64,
                    latency: Latency::of(v),
                },
            );
        }
        let errors_total = rec.errors.values().sum();
        Report {
            label: label.to_string(),
            proxy: proxy.to_string(),
            devices,
            ramp_seconds: ramp,
            wall_seconds: wall,
            operations_ok: ops,
            errors_total,
            errors: rec.errors,
            requests: rec.requests,
            requests_per_second: rec.requests as f64 / wall,
            bytes_up: rec.bytes_up,
            bytes_down: rec.bytes_down,
            bytes_per_second: (rec.bytes_up + rec.bytes_down) as f64 / wall,
            tls_handshakes: rec.handshakes,
            tls_handshakes_per_second: rec.handshakes as f64 / wall,
            inner_h2_tunnels: rec.inner_h2_tunnels,
            latency: Latency::of(&mut all),
            per_kind,
            proxy_usage: None,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "**{}** via `{}`: {} devices, ramp {:.0} s, wall {:.1} s\n\n",
            self.label, self.proxy, self.devices, self.ramp_seconds, self.wall_seconds
        ));
        s.push_str("| metric | value |\n|---|---|\n");
        s.push_str(&format!(
            "| requests/s | {:.1} |\n",
            self.requests_per_second
        ));
        s.push_str(&format!(
            "| bytes/s | {} |\n",
            human_bytes(self.bytes_per_second)
        ));
        s.push_str(&format!(
            "| new TLS handshakes/s | {:.1} |\n",
            self.tls_handshakes_per_second
        ));
        s.push_str(&format!(
            "| latency p50 / p90 / p99 / max (ms) | {:.2} / {:.2} / {:.2} / {:.2} |\n",
            self.latency.p50_ms, self.latency.p90_ms, self.latency.p99_ms, self.latency.max_ms
        ));
        s.push_str(&format!("| operations ok | {} |\n", self.operations_ok));
        s.push_str(&format!("| errors | {} |\n", errors_text(self)));
        if let Some(u) = &self.proxy_usage {
            s.push_str(&format!("| proxy CPU seconds | {:.2} |\n", u.cpu_seconds));
            // The figure that does not depend on how many cores the load
            // generator takes; the same definition as the side-by-side tables.
            if self.requests > 0 {
                s.push_str(&format!(
                    "| proxy CPU µs per request | {:.1} |\n",
                    u.cpu_seconds * 1e6 / self.requests as f64
                ));
            }
            s.push_str(&format!(
                "| proxy peak RSS | {:.1} MiB |\n",
                u.peak_rss_kib as f64 / 1024.0
            ));
        }
        for (k, r) in &self.per_kind {
            s.push_str(&format!(
                "| `{k}`: ok, p50 / p99 (ms) | {} , {:.2} / {:.2} |\n",
                r.ok, r.latency.p50_ms, r.latency.p99_ms
            ));
        }
        s
    }
}

pub fn errors_text(r: &Report) -> String {
    if r.errors.is_empty() {
        "0".into()
    } else {
        r.errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn human_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// Side-by-side table: `left` (Squid) and `right` (komugate) with the ratio right ÷ left.
pub fn compare_markdown(
    title: &str,
    left_name: &str,
    left: &Report,
    right_name: &str,
    right: &Report,
) -> String {
    let ratio = |r: f64, l: f64| {
        if l > 0.0 {
            format!("{:.2}", r / l)
        } else {
            "–".into()
        }
    };
    let mut s = format!("#### {title}\n\n| metric | {left_name} | {right_name} | {right_name} ÷ {left_name} |\n|---|---:|---:|---:|\n");
    let mut row = |name: &str, l: f64, r: f64, fmt: &dyn Fn(f64) -> String| {
        s.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            fmt(l),
            fmt(r),
            ratio(r, l)
        ));
    };
    let f1 = |v: f64| format!("{v:.1}");
    let f2 = |v: f64| format!("{v:.2}");
    let hb = |v: f64| human_bytes(v);
    row(
        "requests/s",
        left.requests_per_second,
        right.requests_per_second,
        &f1,
    );
    row(
        "bytes/s",
        left.bytes_per_second,
        right.bytes_per_second,
        &hb,
    );
    row(
        "new TLS handshakes/s",
        left.tls_handshakes_per_second,
        right.tls_handshakes_per_second,
        &f1,
    );
    row(
        "latency p50 (ms)",
        left.latency.p50_ms,
        right.latency.p50_ms,
        &f2,
    );
    row(
        "latency p90 (ms)",
        left.latency.p90_ms,
        right.latency.p90_ms,
        &f2,
    );
    row(
        "latency p99 (ms)",
        left.latency.p99_ms,
        right.latency.p99_ms,
        &f2,
    );
    row(
        "latency max (ms)",
        left.latency.max_ms,
        right.latency.max_ms,
        &f2,
    );
    if let (Some(lu), Some(ru)) = (&left.proxy_usage, &right.proxy_usage) {
        row("proxy CPU seconds", lu.cpu_seconds, ru.cpu_seconds, &f2);
        let per_k = |u: &ProxyUsage, rep: &Report| {
            if rep.requests > 0 {
                u.cpu_seconds * 1e6 / rep.requests as f64
            } else {
                0.0
            }
        };
        row(
            "proxy CPU µs per request",
            per_k(lu, left),
            per_k(ru, right),
            &f1,
        );
        row(
            "proxy peak RSS (MiB)",
            lu.peak_rss_kib as f64 / 1024.0,
            ru.peak_rss_kib as f64 / 1024.0,
            &f1,
        );
    }
    if left.inner_h2_tunnels + right.inner_h2_tunnels > 0 {
        s.push_str(&format!(
            "| tunnels with inner HTTP/2 | {} | {} | |\n",
            left.inner_h2_tunnels, right.inner_h2_tunnels
        ));
    }
    s.push_str(&format!(
        "| errors | {} | {} | |\n",
        errors_text(left),
        errors_text(right)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_on_a_known_sample() {
        // 1..=100 shuffled: nearest rank gives exactly p.
        let mut v: Vec<u32> = (1..=100).map(|i| (i * 37) % 100 + 1).collect();
        let l = Latency::of(&mut v);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (0.05, 0.09, 0.099, 0.1)
        );
        // Small sample: 10 values, p99 and max are the largest, p50 the 5th.
        let mut v: Vec<u32> = vec![
            9000, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 100_000,
        ];
        let l = Latency::of(&mut v);
        assert_eq!(l.p50_ms, 5.0);
        assert_eq!(l.p90_ms, 9.0);
        assert_eq!(l.p99_ms, 100.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Recorder::default();
        a.success("http", 10);
        a.error("x");
        let mut b = Recorder::default();
        b.success("http", 20);
        b.error("x");
        b.error("y");
        b.requests = 2;
        a.merge(b);
        assert_eq!(a.ok["http"], vec![10, 20]);
        assert_eq!(a.errors["x"], 2);
        assert_eq!(a.errors["y"], 1);
        let r = Report::build("t", "p", 1, 0.0, 1.0, a);
        assert_eq!(r.errors_total, 3);
        assert_eq!(r.operations_ok, 2);
    }
}
