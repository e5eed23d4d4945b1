//! CPU seconds and RSS of the proxy under test, read from /proc by pid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::ProxyUsage;

/// Resident set size (KiB) from /proc/PID/status VmRSS.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks, from /proc/PID/stat (fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples the proxy's RSS every 100 ms between `start` and `finish`.
pub struct Sampler {
    pid: u32,
    ticks0: u64,
    rss0: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let rss0 = rss_kib(pid).unwrap_or(0);
        peak.store(rss0, Ordering::Relaxed);
        let (p2, s2) = (peak.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            while !s2.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    p2.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler { pid, ticks0: cpu_ticks(pid).unwrap_or(0), rss0, peak, stop, handle }
    }

    pub async fn finish(self) -> ProxyUsage {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        let end = rss_kib(self.pid).unwrap_or(0);
        self.peak.fetch_max(end, Ordering::Relaxed);
        let ticks = cpu_ticks(self.pid).unwrap_or(self.ticks0).saturating_sub(self.ticks0);
        ProxyUsage {
            pid: self.pid,
            cpu_seconds: ticks as f64 / clk_tck(),
            peak_rss_kib: self.peak.load(Ordering::Relaxed),
            rss_start_kib: self.rss0,
            rss_end_kib: end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap_or(0) > 0);
        assert!(cpu_ticks(pid).is_some());
    }
}
