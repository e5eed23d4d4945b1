//! Access records: one JSON line per request or tunnel, written by a
//! background task so the data path never waits on the disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessRecord {
    /// RFC 3339 UTC time the request started.
    pub time: String,
    pub listener: &'static str,
    pub device: Option<String>,
    pub groups: Vec<String>,
    pub client: String,
    /// `CONNECT` for tunnels, otherwise the HTTP method.
    pub method: String,
    /// Full URL for forwarded requests, `host:port` for tunnels.
    pub target: String,
    /// `allow`, `block` or `error`.
    pub decision: &'static str,
    pub rule: String,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Local address of the upstream socket (the egress IP the upstream sees).
    pub egress: Option<String>,
    pub error: Option<String>,
    /// IPS / threat-intel events in detail (sid, msg, action, list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips_events: Vec<crate::ips::IpsEvent>,
}

pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Cloneable handle the data path uses to submit records.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessRecord>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens (appending) `path` and starts the writer task. The returned join
    /// handle finishes after every handle is dropped and the file is synced.
    pub async fn start(path: &Path, metrics: Arc<Metrics>) -> anyhow::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open access log {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel(65536);
        let handle = tokio::spawn(writer(file, rx, path.to_path_buf()));
        Ok((AccessLog { tx, metrics }, handle))
    }

    /// Never blocks: if the writer is behind by a whole channel, the record
    /// is counted as dropped and a warning logged.
    pub fn submit(&self, record: AccessRecord) {
        if self.tx.try_send(record).is_err() {
            self.metrics.access_log_dropped.inc();
            tracing::warn!("access log writer is behind; record dropped (komugate_access_log_dropped_total)");
        }
    }
}

async fn writer(mut file: tokio::fs::File, mut rx: mpsc::Receiver<AccessRecord>, path: PathBuf) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = false;
    loop {
        tokio::select! {
            record = rx.recv() => match record {
                Some(record) => {
                    if serde_json::to_writer(&mut buf, &record).is_ok() {
                        buf.push(b'\n');
                    }
                    // Drain what is queued before touching the disk.
                    while let Ok(record) = rx.try_recv() {
                        if serde_json::to_writer(&mut buf, &record).is_ok() {
                            buf.push(b'\n');
                        }
                        if buf.len() > 1 << 20 { break; }
                    }
                    if let Err(e) = file.write_all(&buf).await {
                        tracing::error!("cannot write access log {}: {e}", path.display());
                    }
                    buf.clear();
                    dirty = true;
                }
                None => break,
            },
            _ = tick.tick() => {
                if dirty {
                    if let Err(e) = file.sync_data().await {
                        tracing::error!("cannot sync access log {}: {e}", path.display());
                    }
                    dirty = false;
                }
            }
        }
    }
    let _ = file.sync_all().await;
}
