//! The access-log handle: records ([`crate::record::AccessRecord`]) are
//! handed to the log writer ([`crate::logs::writer`]) so the data path
//! never waits on the disk.

use std::sync::Arc;

use crate::config::Config;
use crate::logs::audit::AuditLog;
use crate::logs::ship::ShipStop;
use crate::logs::writer::{self, LogMetrics, Submitter, WriterSettings};
use crate::metrics::Metrics;
use crate::record::AccessRecord;

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
        let targets = crate::logs::ship::targets(
            &log.syslog,
            &log.clickhouse,
            log.retention_days,
            Some(audit.clone()),
        )
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
        if log.clickhouse.enabled {
            crate::logs::audit_ship::spawn(
                audit_path.clone(),
                &dir,
                log.clickhouse.clone(),
                lm.clone(),
                stop.clone(),
            )
            .map_err(|e| anyhow::anyhow!("cannot start audit log shipping: {e}"))?;
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
