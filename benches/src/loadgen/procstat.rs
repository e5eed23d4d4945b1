//! CPU seconds and RSS of the proxy under test, read from /proc by pid.
//!
//! The proxy is measured as a process tree: the pid given with `--proxy-pid`
//! plus every live descendant (Squid's url_rewrite helpers such as
//! squidGuard, its certificate generators; komugate has none). CPU is the sum
//! of utime + stime over the tree, plus cutime + cstime, so helpers that
//! exited and were reaped during the run are still counted; RSS is the sum of
//! the VmRSS of the tree's processes (shared pages, e.g. libraries, are
//! counted once per process, as `ps` would).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::ProxyUsage;

/// Resident set size (KiB) from /proc/PID/status VmRSS.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The fields of /proc/PID/stat after the command name: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime in clock ticks, from /proc/PID/stat (fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // f[0] is field 4 (ppid): utime (field 14) is index 10.
    Some(f.get(10)? + f.get(11)?)
}

/// utime + stime + cutime + cstime (fields 14–17): the process and its reaped children.
fn cpu_ticks_with_reaped(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(10)? + f.get(11)? + f.get(12)? + f.get(13)?)
}

fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.first().map(|&p| p as u32)
}

/// `root` and all its live descendants (one scan of /proc). A root that is
/// gone gives an empty set.
pub fn process_tree(root: u32) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some(pp) = ppid(pid) {
                    children.entry(pp).or_default().push(pid);
                }
            }
        }
    }
    let mut tree = BTreeSet::new();
    if !std::path::Path::new(&format!("/proc/{root}")).exists() {
        return tree;
    }
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if tree.insert(p) {
            todo.extend(children.get(&p).into_iter().flatten().copied());
        }
    }
    tree
}

/// CPU ticks of a process tree: every live process's own time plus the
/// time of the children it reaped.
pub fn tree_cpu_ticks(tree: &BTreeSet<u32>) -> u64 {
    tree.iter().filter_map(|&p| cpu_ticks_with_reaped(p)).sum()
}

/// Summed VmRSS (KiB) of a process tree.
pub fn tree_rss_kib(tree: &BTreeSet<u32>) -> u64 {
    tree.iter().filter_map(|&p| rss_kib(p)).sum()
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

/// Samples the proxy tree's summed RSS every 100 ms (the tree is re-scanned
/// every second, so helpers started during the run are picked up) between
/// `start` and `finish`.
pub struct Sampler {
    pid: u32,
    ticks0: u64,
    rss0: u64,
    peak: Arc<AtomicU64>,
    max_procs: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tree = process_tree(pid);
        let rss0 = tree_rss_kib(&tree);
        let ticks0 = tree_cpu_ticks(&tree);
        let max_procs = Arc::new(AtomicUsize::new(tree.len()));
        peak.store(rss0, Ordering::Relaxed);
        let (p2, s2, m2) = (peak.clone(), stop.clone(), max_procs.clone());
        let handle = tokio::spawn(async move {
            let mut tree = tree;
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                if n % 10 == 0 {
                    tree = process_tree(pid);
                    m2.fetch_max(tree.len(), Ordering::Relaxed);
                }
                n += 1;
                p2.fetch_max(tree_rss_kib(&tree), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler {
            pid,
            ticks0,
            rss0,
            peak,
            max_procs,
            stop,
            handle,
        }
    }

    pub async fn finish(self) -> ProxyUsage {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        let tree = process_tree(self.pid);
        self.max_procs.fetch_max(tree.len(), Ordering::Relaxed);
        let end = tree_rss_kib(&tree);
        self.peak.fetch_max(end, Ordering::Relaxed);
        let ticks = if tree.is_empty() {
            0
        } else {
            tree_cpu_ticks(&tree).saturating_sub(self.ticks0)
        };
        let procs = self.max_procs.load(Ordering::Relaxed);
        if procs > 1 {
            eprintln!("loadgen: proxy CPU and RSS summed over pid {} and its descendants (up to {procs} processes)", self.pid);
        }
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

    #[test]
    fn tree_includes_children_cpu_and_rss() {
        // A child that burns CPU: the tree sum sees it, the parent's own ticks do not.
        let me = std::process::id();
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .expect("spawn sh");
        let cpid = child.id();
        let t0 = std::time::Instant::now();
        let tree = loop {
            let tree = process_tree(me);
            let busy = cpu_ticks(cpid).unwrap_or(0) >= 5;
            if (tree.contains(&cpid) && busy) || t0.elapsed() > Duration::from_secs(20) {
                break tree;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            tree.contains(&me) && tree.contains(&cpid),
            "{tree:?} lacks {me} or {cpid}"
        );
        assert!(
            tree_rss_kib(&tree) > rss_kib(me).unwrap_or(0),
            "child RSS not summed"
        );
        // Read the parts before the sum: other tests in this process keep burning CPU,
        // so a later reading of `me` may exceed an earlier tree sum.
        let parts = cpu_ticks(me).unwrap_or(0) + cpu_ticks(cpid).unwrap_or(0);
        let sum = tree_cpu_ticks(&tree);
        assert!(sum >= parts, "tree sum {sum} < parent + child {parts}");
        let _ = child.kill();
        let _ = child.wait();
        // Reaped: its CPU moves into our cutime/cstime and still counts.
        assert!(!process_tree(me).contains(&cpid));
        assert!(cpu_ticks_with_reaped(me).unwrap_or(0) >= 5);
        assert!(process_tree(u32::MAX - 1).is_empty());
    }
}
