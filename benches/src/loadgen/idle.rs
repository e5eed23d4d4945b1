//! Idle tunnels: open N CONNECT tunnels (HTTP/2 streams over mTLS, one
//! connection per device, `per_conn` streams each), hold them, and report
//! the proxy's memory per tunnel from its RSS before and after.
//!
//! The tunnels can be spread over several proxy processes (`--replica`):
//! one process may hold only as many tunnels as its open-file limit allows
//! (one upstream socket per tunnel), so past that limit the scale point runs
//! on replicas, as it would on Kubernetes. All tunnels are open at the same
//! time; memory per tunnel is the sum of the processes' RSS deltas over the
//! total.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};

use crate::client::{ProxySpec, RunConfig};
use crate::procstat;

/// One proxy process and the tunnels it is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub proxy: SocketAddr,
    pub pid: u32,
    pub tunnels: usize,
    /// CONNECT targets, round robin.
    pub targets: Vec<String>,
}

impl Shard {
    /// `--replica mtls://IP:PORT,pid=PID,tunnels=N,targets=HOST:PORT+HOST:PORT...`
    pub fn parse(s: &str) -> Result<Shard> {
        let mut parts = s.split(',');
        let proxy = match ProxySpec::parse(parts.next().unwrap_or(""))? {
            ProxySpec::Mtls(a) => a,
            ProxySpec::Plain(_) => {
                bail!("--replica {s}: idle tunnels use HTTP/2 over mTLS (mtls://IP:PORT)")
            }
        };
        let (mut pid, mut tunnels, mut targets) = (None, None, Vec::new());
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("--replica {s}: expected key=value, got {kv:?}"))?;
            match k {
                "pid" => {
                    pid = Some(
                        v.parse::<u32>()
                            .with_context(|| format!("--replica {s}: pid"))?,
                    )
                }
                "tunnels" => {
                    tunnels = Some(
                        v.parse::<usize>()
                            .with_context(|| format!("--replica {s}: tunnels"))?,
                    )
                }
                "targets" => {
                    targets = v
                        .split('+')
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                other => bail!("--replica {s}: unknown key {other:?} (pid, tunnels, targets)"),
            }
        }
        let pid =
            pid.ok_or_else(|| anyhow!("--replica {s}: pid=PID is required (its RSS is measured)"))?;
        let tunnels = tunnels.ok_or_else(|| anyhow!("--replica {s}: tunnels=N is required"))?;
        anyhow::ensure!(
            !targets.is_empty(),
            "--replica {s}: targets=HOST:PORT[+HOST:PORT...] is required"
        );
        Ok(Shard {
            proxy,
            pid,
            tunnels,
            targets,
        })
    }
}

/// Figures of one proxy process.
#[derive(Debug, Serialize)]
pub struct ProxyIdle {
    pub proxy: String,
    pub pid: u32,
    pub tunnels_requested: usize,
    pub tunnels_open: usize,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_connections_kib: u64,
    pub rss_tunnels_kib: u64,
    /// Open file descriptors of the process with the tunnels open.
    pub open_fds: Option<usize>,
    /// (RSS with tunnels − RSS with the connections only) / tunnels.
    pub kib_per_tunnel: f64,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub tunnels_requested: usize,
    pub tunnels_open: usize,
    /// Tunnels still open (not closed by the proxy) at the end of the hold.
    pub tunnels_open_after_hold: usize,
    pub connections: usize,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub open_seconds: f64,
    /// Sums over the proxy processes.
    pub proxy_rss_before_kib: u64,
    pub proxy_rss_connections_kib: u64,
    pub proxy_rss_tunnels_kib: u64,
    /// Σ(RSS with tunnels − RSS with the connections only) / Σ tunnels.
    pub kib_per_tunnel: f64,
    /// Σ(RSS with tunnels − RSS before) / Σ tunnels: connection overhead included.
    pub kib_per_tunnel_with_connections: f64,
    pub proxies: Vec<ProxyIdle>,
    pub hold_seconds: u64,
    pub command: String,
}

impl IdleReport {
    pub fn markdown(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        let mut md = format!(
            "| idle tunnels open | {} of {} over {} connections{} |\n",
            self.tunnels_open,
            self.tunnels_requested,
            self.connections,
            if self.proxies.len() > 1 {
                format!(", {} proxy processes", self.proxies.len())
            } else {
                String::new()
            },
        );
        md += &format!(
            "| still open after the {} s hold | {} |\n",
            self.hold_seconds, self.tunnels_open_after_hold
        );
        if self.proxies.len() > 1 {
            for (i, p) in self.proxies.iter().enumerate() {
                md += &format!(
                    "| process {} ({}) | {} tunnels, {} open fds, RSS {:.1} → {:.1} MiB, {:.1} KiB per tunnel |\n",
                    i + 1,
                    p.proxy,
                    p.tunnels_open,
                    p.open_fds.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                    mib(p.rss_connections_kib),
                    mib(p.rss_tunnels_kib),
                    p.kib_per_tunnel
                );
            }
        }
        let sum = if self.proxies.len() > 1 {
            " (sums over the processes)"
        } else {
            ""
        };
        md += &format!(
            "| proxy RSS before / with connections / with tunnels{sum} | {:.1} / {:.1} / {:.1} MiB |\n",
            mib(self.proxy_rss_before_kib),
            mib(self.proxy_rss_connections_kib),
            mib(self.proxy_rss_tunnels_kib)
        );
        md += &format!(
            "| memory per tunnel | {:.1} KiB ({:.1} KiB with its share of connections) |\n| errors | {:?} |\n",
            self.kib_per_tunnel, self.kib_per_tunnel_with_connections, self.errors
        );
        md
    }
}

/// Opens the tunnels of every shard (all at the same time), measures, holds.
pub async fn run(
    cfg: RunConfig,
    shards: Vec<Shard>,
    per_conn: usize,
    hold: Duration,
) -> Result<IdleReport> {
    let per_conn = per_conn.max(1);
    anyhow::ensure!(!shards.is_empty(), "idle: no proxy to open tunnels to");
    let devices: Vec<usize> = shards
        .iter()
        .map(|s| s.tunnels.div_ceil(per_conn))
        .collect();
    let mut cfg = cfg;
    cfg.devices = devices.iter().sum();
    cfg.h2_share = 1.0;
    anyhow::ensure!(
        matches!(cfg.proxy, ProxySpec::Mtls(_)),
        "idle tunnels use HTTP/2 over mTLS: --proxy mtls://..."
    );
    // One certificate per device across all shards: device ids stay unique.
    let tls = crate::client::device_tls_pub(&cfg, cfg.devices)?;
    settle().await;
    let rss_before: Vec<u64> = shards
        .iter()
        .map(|s| procstat::rss_kib(s.pid).unwrap_or(0))
        .collect();
    let mut errors = std::collections::BTreeMap::new();
    let mut senders = Vec::new(); // per shard
    let mut next_device = 0;
    for (si, shard) in shards.iter().enumerate() {
        let mut shard_cfg = cfg.clone();
        shard_cfg.proxy = ProxySpec::Mtls(shard.proxy);
        let mut s = Vec::new();
        for t in &tls[next_device..next_device + devices[si]] {
            match crate::client::dial_h2(&shard_cfg, t.clone()).await {
                Ok(sender) => s.push(sender),
                Err(e) => {
                    *errors.entry(e).or_insert(0u64) += 1;
                    eprintln!("{}: a device connection failed", shard.proxy);
                }
            }
        }
        next_device += devices[si];
        senders.push(s);
    }
    settle().await;
    let rss_conns: Vec<u64> = shards
        .iter()
        .map(|s| procstat::rss_kib(s.pid).unwrap_or(0))
        .collect();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for (si, (shard, conns)) in shards.iter().zip(&senders).enumerate() {
        let mut remaining = shard.tunnels;
        for (ci, s) in conns.iter().enumerate() {
            let n = remaining.min(per_conn);
            remaining -= n;
            for k in 0..n {
                let mut s = s.clone();
                let target = shard.targets[(ci * per_conn + k) % shard.targets.len()].clone();
                let sem = sem.clone();
                tasks.push((
                    si,
                    tokio::spawn(async move {
                        let _p = sem.acquire_owned().await;
                        let req = Request::builder()
                            .method(Method::CONNECT)
                            .uri(&target)
                            .body(Full::new(Bytes::new()))
                            .map_err(|_| "config".to_string())?;
                        s.ready().await.map_err(|_| "proxy_h2".to_string())?;
                        let resp = s
                            .send_request(req)
                            .await
                            .map_err(|_| "proxy_h2".to_string())?;
                        if resp.status() != StatusCode::OK {
                            return Err(format!("connect_status_{}", resp.status().as_u16()));
                        }
                        hyper::upgrade::on(resp)
                            .await
                            .map_err(|_| "tunnel".to_string())
                    }),
                ));
            }
        }
    }
    let mut open: Vec<Vec<TokioIo<Upgraded>>> = shards.iter().map(|_| Vec::new()).collect();
    for (si, t) in tasks {
        match t.await {
            Ok(Ok(u)) => open[si].push(TokioIo::new(u)),
            Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
            Err(_) => *errors.entry("panic".into()).or_insert(0) += 1,
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    settle().await;
    let rss_tunnels: Vec<u64> = shards
        .iter()
        .map(|s| procstat::rss_kib(s.pid).unwrap_or(0))
        .collect();
    let fds: Vec<Option<usize>> = shards.iter().map(|s| open_fds(s.pid)).collect();
    let total_open: usize = open.iter().map(Vec::len).sum();
    eprintln!(
        "loadgen idle: {total_open} tunnels open over {} connections to {} proxies; holding {} s",
        senders.iter().map(Vec::len).sum::<usize>(),
        shards.len(),
        hold.as_secs()
    );
    tokio::time::sleep(hold).await;
    let open_after_hold = open
        .iter_mut()
        .flatten()
        .map(still_open)
        .filter(|&alive| alive)
        .count();

    let proxies: Vec<ProxyIdle> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| ProxyIdle {
            proxy: s.proxy.to_string(),
            pid: s.pid,
            tunnels_requested: s.tunnels,
            tunnels_open: open[i].len(),
            connections: senders[i].len(),
            rss_before_kib: rss_before[i],
            rss_connections_kib: rss_conns[i],
            rss_tunnels_kib: rss_tunnels[i],
            open_fds: fds[i],
            kib_per_tunnel: per_tunnel(rss_tunnels[i], rss_conns[i], open[i].len()),
        })
        .collect();
    let (before, conns, tunnels): (u64, u64, u64) = (
        rss_before.iter().sum(),
        rss_conns.iter().sum(),
        rss_tunnels.iter().sum(),
    );
    let report = IdleReport {
        tunnels_requested: shards.iter().map(|s| s.tunnels).sum(),
        tunnels_open: total_open,
        tunnels_open_after_hold: open_after_hold,
        connections: senders.iter().map(Vec::len).sum(),
        errors,
        open_seconds,
        proxy_rss_before_kib: before,
        proxy_rss_connections_kib: conns,
        proxy_rss_tunnels_kib: tunnels,
        // Per-process deltas summed (a process that shrank counts as 0).
        kib_per_tunnel: proxies
            .iter()
            .map(|p| p.rss_tunnels_kib.saturating_sub(p.rss_connections_kib))
            .sum::<u64>() as f64
            / total_open.max(1) as f64,
        kib_per_tunnel_with_connections: proxies
            .iter()
            .map(|p| p.rss_tunnels_kib.saturating_sub(p.rss_before_kib))
            .sum::<u64>() as f64
            / total_open.max(1) as f64,
        proxies,
        hold_seconds: hold.as_secs(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    drop(open);
    drop(senders);
    Ok(report)
}

fn per_tunnel(rss_tunnels: u64, rss_conns: u64, tunnels: usize) -> f64 {
    rss_tunnels.saturating_sub(rss_conns) as f64 / tunnels.max(1) as f64
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// True unless the proxy ended the tunnel (EOF or error); nothing is sent.
fn still_open(t: &mut TokioIo<Upgraded>) -> bool {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    match Pin::new(t).poll_read(&mut cx, &mut buf) {
        Poll::Pending => true,
        // Bytes from the origin would mean the tunnel is alive (it sends none).
        Poll::Ready(Ok(())) => !buf.filled().is_empty(),
        Poll::Ready(Err(_)) => false,
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_syntax() {
        let s = Shard::parse(
            "mtls://127.0.0.1:28444,pid=42,tunnels=18000,targets=127.0.0.1:18090+127.0.0.1:18091",
        )
        .unwrap();
        assert_eq!(
            s,
            Shard {
                proxy: "127.0.0.1:28444".parse().unwrap(),
                pid: 42,
                tunnels: 18000,
                targets: vec!["127.0.0.1:18090".into(), "127.0.0.1:18091".into()]
            }
        );
        for bad in [
            "plain://127.0.0.1:1,pid=1,tunnels=1,targets=a:1",
            "mtls://127.0.0.1:1,tunnels=1,targets=a:1",
            "mtls://127.0.0.1:1,pid=1,targets=a:1",
            "mtls://127.0.0.1:1,pid=1,tunnels=1",
            "mtls://127.0.0.1:1,pid=1,tunnels=x,targets=a:1",
            "mtls://127.0.0.1:1,pid=1,tunnels=1,targets=a:1,port=3",
            "mtls://127.0.0.1:1,pid",
        ] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    /// Two in-process gateways (replicas sharing one PKI, as the script's
    /// replicas do) and a TCP sink as origin: every tunnel opens, is counted
    /// on its own proxy, and is still open after the hold.
    #[tokio::test]
    async fn tunnels_spread_over_replicas() {
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = sink.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = sink.accept().await {
                held.push(s);
            }
        });
        let dir = std::env::temp_dir().join(format!("komugate-idle-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = dir.join("pki");
        komugate::pki::ensure(&pki, &["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let mut gateways = Vec::new();
        for i in 0..2 {
            let data = dir.join(format!("kg{i}"));
            copy_dir(&pki, &data.join("pki"));
            let text = komugate::config::DEFAULT_CONFIG
                .replace(
                    "dir = \"./komugate-data\"",
                    &format!("dir = {:?}", data.display().to_string()),
                )
                .replace("plain = \"127.0.0.1:3128\"", "plain = \"\"")
                .replace("mtls = \"127.0.0.1:8443\"", "mtls = \"127.0.0.1:0\"")
                .replace("admin = \"127.0.0.1:9090\"", "admin = \"\"")
                .replace(
                    "allowed_ports = [80, 443, 8080, 8081, 8443]",
                    "allowed_ports = []",
                );
            let config = komugate::config::Config::parse(&text, "test").expect("test config");
            gateways.push(
                komugate::gateway::start::start(config)
                    .await
                    .expect("gateway starts"),
            );
        }
        let addr = |i: usize| gateways[i].addrs.mtls.expect("mtls listener");
        let pid = std::process::id();
        let shards = vec![
            Shard {
                proxy: addr(0),
                pid,
                tunnels: 7,
                targets: vec![target.clone()],
            },
            Shard {
                proxy: addr(1),
                pid,
                tunnels: 5,
                targets: vec![target],
            },
        ];
        // The RunConfig as the command line builds it.
        let args = [
            "komugate-loadgen",
            "idle",
            "--proxy",
            &format!("mtls://{}", addr(0)),
            "--pki",
            pki.to_str().unwrap(),
        ];
        let crate::Cmd::Idle { common, .. } = <crate::Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .cmd
        else {
            unreachable!()
        };
        let r = run(
            common.config().unwrap(),
            shards,
            3,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.tunnels_open, r.tunnels_open_after_hold, r.connections),
            (12, 12, 5),
            "{:?}",
            r.errors
        );
        assert_eq!(
            r.proxies.iter().map(|p| p.tunnels_open).collect::<Vec<_>>(),
            vec![7, 5]
        );
        assert!(r.markdown().contains("| process 2 ("), "{}", r.markdown());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
