//! Idle tunnels: open N CONNECT tunnels (HTTP/2 streams over mTLS, one
//! connection per device, `per_conn` streams each), hold them, and report
//! the proxy's memory per tunnel from its RSS before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::client::{ProxySpec, RunConfig};
use crate::procstat;

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub tunnels_requested: usize,
    pub tunnels_open: usize,
    pub connections: usize,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub open_seconds: f64,
    pub proxy_rss_before_kib: u64,
    pub proxy_rss_connections_kib: u64,
    pub proxy_rss_tunnels_kib: u64,
    /// (RSS with tunnels − RSS with the connections only) / tunnels.
    pub kib_per_tunnel: f64,
    /// (RSS with tunnels − RSS before) / tunnels: connection overhead included.
    pub kib_per_tunnel_with_connections: f64,
    pub hold_seconds: u64,
    pub command: String,
}

pub async fn run(cfg: RunConfig, tunnels: usize, per_conn: usize, targets: Vec<String>, hold: Duration, pid: u32) -> Result<IdleReport> {
    let per_conn = per_conn.max(1);
    let devices = tunnels.div_ceil(per_conn);
    let mut cfg = cfg;
    cfg.devices = devices;
    cfg.h2_share = 1.0;
    anyhow::ensure!(matches!(cfg.proxy, ProxySpec::Mtls(_)), "idle tunnels use HTTP/2 over mTLS: --proxy mtls://...");
    let tls = crate::client::device_tls_pub(&cfg, devices)?;
    settle().await;
    let rss_before = procstat::rss_kib(pid).unwrap_or(0);
    let mut errors = std::collections::BTreeMap::new();
    let mut senders = Vec::new();
    for (i, t) in tls.iter().enumerate() {
        match crate::client::dial_h2(&cfg, t.clone()).await {
            Ok(s) => senders.push(s),
            Err(e) => {
                *errors.entry(e).or_insert(0u64) += 1;
                eprintln!("device {i}: connection failed");
            }
        }
    }
    settle().await;
    let rss_conns = procstat::rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    let mut remaining = tunnels;
    for (ci, s) in senders.iter().enumerate() {
        let n = remaining.min(per_conn);
        remaining -= n;
        for k in 0..n {
            let mut s = s.clone();
            let target = targets[(ci * per_conn + k) % targets.len()].clone();
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire_owned().await;
                let req = Request::builder().method(Method::CONNECT).uri(&target).body(Full::new(Bytes::new())).map_err(|_| "config".to_string())?;
                s.ready().await.map_err(|_| "proxy_h2".to_string())?;
                let resp = s.send_request(req).await.map_err(|_| "proxy_h2".to_string())?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("connect_status_{}", resp.status().as_u16()));
                }
                hyper::upgrade::on(resp).await.map_err(|_| "tunnel".to_string())
            }));
        }
    }
    let mut open = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(u)) => open.push(u),
            Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
            Err(_) => *errors.entry("panic".into()).or_insert(0) += 1,
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    settle().await;
    let rss_tunnels = procstat::rss_kib(pid).unwrap_or(0);
    eprintln!("loadgen idle: {} tunnels open over {} connections; holding {} s", open.len(), senders.len(), hold.as_secs());
    tokio::time::sleep(hold).await;
    let n = open.len().max(1) as f64;
    let report = IdleReport {
        tunnels_requested: tunnels,
        tunnels_open: open.len(),
        connections: senders.len(),
        errors,
        open_seconds,
        proxy_rss_before_kib: rss_before,
        proxy_rss_connections_kib: rss_conns,
        proxy_rss_tunnels_kib: rss_tunnels,
        kib_per_tunnel: rss_tunnels.saturating_sub(rss_conns) as f64 / n,
        kib_per_tunnel_with_connections: rss_tunnels.saturating_sub(rss_before) as f64 / n,
        hold_seconds: hold.as_secs(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    drop(open);
    drop(senders);
    Ok(report)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}
