//! Access records: one JSON line per request or tunnel, handed to the log
//! writer ([`crate::logs::writer`]) so the data path never waits on the disk.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::logs::audit::AuditLog;
use crate::logs::ship::ShipStop;
use crate::logs::writer::{self, LogMetrics, Submitter, WriterSettings};
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
    /// Signed-in user, when known (filled by identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Site name from location ("offsite" outside the sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// URL categories of the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// CASB application (m365, google, c4th ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Policy generation that decided (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// IPS signature id(s) that fired, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<String>,
    /// IPS / threat-intel events in detail (sid, msg, action, list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips_events: Vec<crate::ips::IpsEvent>,
    /// CASB / DLP: upload, download, DLP pattern names (never the data), tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub casb: Option<crate::casb::CasbNote>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Cloneable handle the data path uses to submit records.
#[derive(Clone)]
pub struct AccessLog {
    submitter: Submitter,
    metrics: Arc<LogMetrics>,
    audit: Option<Arc<AuditLog>>,
}

impl AccessLog {
    /// Starts the log writer for `config`'s `[log]` (recovering what a crash
    /// left), the shipping threads and the audit log. The returned join
    /// handle finishes after every handle is dropped and the file is synced.
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
        let log = &config.log;
        let audit_path = config.data_path(&log.audit_log);
        let audit = Arc::new(AuditLog::open(&audit_path).map_err(anyhow::Error::msg)?);
        let targets = crate::logs::ship::targets(&log.syslog, &log.clickhouse, log.retention_days)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut s = WriterSettings::new(config.data_path(&log.access_log));
        s.retention_days = log.retention_days;
        s.fsync_interval = std::time::Duration::from_millis(log.fsync_interval_ms.clamp(1, 1000));
        s.rotate_secs = log.rotate_secs;
        s.channel_capacity = log.channel_capacity;
        s.spill_capacity = log.spill_capacity;
        s.zstd_level = log.zstd_level;
        s.ship_queues = targets.iter().map(|t| t.name().to_string()).collect();
        s.audit = Some(audit.clone());
        let dir = s.dir();
        let (submitter, handle, lm) =
            tokio::task::spawn_blocking(move || writer::start(s, &metrics))
                .await
                .map_err(|e| anyhow::anyhow!("log writer: {e}"))?
                .map_err(|e| {
                    anyhow::anyhow!("cannot start the access log in {}: {e}", dir.display())
                })?;
        let stop = ShipStop::default();
        for t in targets {
            crate::logs::ship::spawn(&dir, t, lm.clone(), stop.clone())
                .map_err(|e| anyhow::anyhow!("cannot start log shipping: {e}"))?;
        }
        let join = tokio::task::spawn_blocking(move || {
            handle.join();
            stop.stop();
        });
        Ok((
            AccessLog {
                submitter,
                metrics: lm,
                audit: Some(audit),
            },
            join,
        ))
    }

    /// Never blocks: if the writer is behind by a whole channel, the record
    /// goes to the on-disk spill queue; only if that is full too is it
    /// dropped (counted in `komugate_access_log_dropped_total`, logged).
    pub fn submit(&self, record: AccessRecord) {
        self.submitter.submit(record);
    }

    /// Flushes and fsyncs what was submitted before (blocking; tests, admin).
    pub fn sync(&self, timeout: std::time::Duration) -> bool {
        self.submitter.sync(timeout)
    }

    /// The audit log of administration (policy reloads, CA changes, sweeps).
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    pub fn log_metrics(&self) -> &Arc<LogMetrics> {
        &self.metrics
    }
}
