//! Hot reload. A new [`Generation`] (policy + categories + registry, IPS
//! rules and threat-intel lists, sites) is built off the hot path, validated,
//! and swapped in with one store; requests already running keep the
//! generation they loaded. A failure keeps
//! the running generation and is reported (log line, metric, audit entry,
//! HTTP error body). Triggers: SIGHUP, a change of the policy file or any
//! file it includes (polled), `POST /admin/reload`. The mTLS listener's
//! trust files (device CA, CRLs, revoked serials, server certificate) are
//! reloaded with it and watched too, so a revocation applies without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::generation::Generation;
use super::Gateway;
use crate::logs::audit::{AuditEvent, DiffSummary, ReloadSource};
use crate::stages::decide::Runtime;

/// When the last reload ran and how it ended (`Err`: the first line of
/// the error; the running generation stayed).
#[derive(Debug, Clone)]
pub struct LastReload {
    pub at_ms: i64,
    pub result: Result<u64, String>,
}

/// Result of a successful reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub digest: String,
    /// Why the IPS rules / threat-intel lists were not reloaded (the loaded ones stayed).
    #[serde(skip)]
    pub security_error: Option<String>,
}

impl Gateway {
    /// Rebuilds the hot-reloadable state and swaps it in as one
    /// [`Generation`]: the policy from the configured file (a failure keeps
    /// the running one), the IPS rules and threat-intel lists (a failure
    /// keeps the loaded ones). Reloads are serialised; the builds run on a
    /// blocking thread.
    pub async fn reload(self: &Arc<Self>, source: ReloadSource) -> Result<Reloaded, String> {
        let mut one_at_a_time = self.reload_lock.lock().await;
        let old = self.generation.load_full();
        let generation = old.number() + 1;
        let config = self.config.clone();
        let (built, security) = tokio::task::spawn_blocking(move || {
            let built = Runtime::build(&config, generation);
            let security = crate::ips::Security::from_config(&config);
            crate::memory::release_thread_cache();
            (built, security)
        })
        .await
        .unwrap_or_else(|e| {
            let failed = format!("the reload task failed: {e}");
            (Err(failed.clone()), Err(anyhow::anyhow!(failed)))
        });
        let mut security_error = None;
        let security = match security {
            Ok(sec) => Arc::new(sec),
            Err(e) => {
                security_error = Some(format!("{e:#}"));
                tracing::error!("IPS rules / threat-intel lists not reloaded (the loaded ones stay in force): {e:#}");
                self.alerts.raise(
                    crate::alerts::Kind::ReloadFailed,
                    format!("IPS rules / threat-intel lists: {e:#}"),
                );
                old.security.clone()
            }
        };
        let result = match built {
            Ok(runtime) => {
                let next = Generation::assemble(Arc::new(runtime), security);
                let digest = next.runtime.digest.clone();
                self.metrics
                    .list_imports
                    .publish(next.runtime.policy.import_report(), generation);
                self.generation.store(Arc::new(next));
                self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                self.metrics.policy_generation.set(generation as i64);
                tracing::info!(generation, digest = %digest, ?source, "policy reloaded");
                Ok(Reloaded {
                    generation,
                    digest,
                    security_error,
                })
            }
            Err(error) => {
                // The running policy stays; the IPS state may still be new.
                if !Arc::ptr_eq(&security, &old.security) {
                    self.generation.store(Arc::new(Generation {
                        runtime: old.runtime.clone(),
                        security,
                        sites: old.sites.clone(),
                    }));
                }
                self.metrics
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(
                    ?source,
                    "policy reload failed; generation {} stays in force:\n{error}",
                    old.number()
                );
                self.alerts.raise(
                    crate::alerts::Kind::ReloadFailed,
                    format!("{source:?}: {}", error.lines().next().unwrap_or("")),
                );
                Err(error)
            }
        };
        // The mTLS trust: a new server config (and session cache) from the files.
        let policy_result = result.clone();
        let mut result = result;
        if let Some(auth) = self.device_auth.clone() {
            match tokio::task::spawn_blocking(move || auth.reload()).await {
                Ok(Ok(Some(change))) => {
                    tracing::info!(detail = %change.detail, "mTLS device CA / revocations reloaded");
                    if let Some(audit) = self.access_log.audit() {
                        let event = AuditEvent::CaChange {
                            what: "mtls-trust".into(),
                            old_fingerprint: Some(change.old_fingerprint),
                            new_fingerprint: Some(change.new_fingerprint),
                            detail: format!("reloaded ({source:?}): {}", change.detail),
                        };
                        if let Err(e) = audit.append(event) {
                            tracing::error!("cannot write the audit log: {e}");
                        }
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    let message = format!("the mTLS device CA / CRLs / revoked serials were not reloaded (the loaded ones stay in force): {e:#}");
                    tracing::error!("{message}");
                    result = Err(match result {
                        Ok(r) => format!(
                            "policy generation {} is in force, but {message}",
                            r.generation
                        ),
                        Err(policy) => format!("{policy}\n{message}"),
                    });
                }
                Err(e) => tracing::error!("the mTLS reload task failed: {e}"),
            }
        }
        if let Some(audit) = self.access_log.audit() {
            let (ok, error, new_generation, new_digest, diff) = match &policy_result {
                Ok(r) => {
                    let new = self.generation.load();
                    (
                        true,
                        None,
                        Some(r.generation),
                        Some(r.digest.clone()),
                        DiffSummary::of_rules(&old.runtime.rule_digests, &new.runtime.rule_digests),
                    )
                }
                Err(e) => (false, Some(e.clone()), None, None, DiffSummary::default()),
            };
            let event = AuditEvent::PolicyReload {
                source,
                ok,
                error,
                old_generation: old.number(),
                new_generation,
                old_digest: old.runtime.digest.clone(),
                new_digest,
                diff,
            };
            if let Err(e) = audit.append(event) {
                tracing::error!("cannot write the audit log: {e}");
            }
        }
        *one_at_a_time = Some(LastReload {
            at_ms: crate::logs::record::now_ms(),
            result: result
                .as_ref()
                .map(|r| r.generation)
                .map_err(|e| e.lines().next().unwrap_or("").to_string()),
        });
        result
    }
}

/// Reloads on SIGHUP until shutdown.
pub fn spawn_sighup(gw: Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /admin/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = gw.shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() { return; }
                    let _ = gw.reload(ReloadSource::Sighup).await;
                }
            }
        }
    });
}

/// Size and modification time of each watched file (None = missing).
type Snapshot = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

fn snapshot(files: &[PathBuf]) -> Snapshot {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            (f.clone(), meta)
        })
        .collect()
}

/// The policy file and every file it read (lists, registry), for watching.
fn watched_files(gw: &Gateway) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = crate::stages::decide::policy_path(&gw.config)
        .into_iter()
        .collect();
    files.extend(gw.generation.load().runtime.policy.source_files());
    if let Some(auth) = &gw.device_auth {
        let tls = auth.files();
        files.extend([
            tls.device_ca.clone(),
            tls.server_cert.clone(),
            tls.server_key.clone(),
        ]);
        files.extend(tls.crls.iter().cloned());
        files.extend(tls.revoked_serials.iter().cloned());
    }
    files.sort();
    files.dedup();
    files
}

/// Polls the watched files; reloads once a change has settled (two equal
/// polls in a row), so a file caught half-written is not loaded.
pub fn spawn_file_watch(gw: Arc<Gateway>) {
    if !gw.config.policy.watch || watched_files(&gw).is_empty() {
        return;
    }
    let every = Duration::from_millis(gw.config.policy.watch_interval_ms.max(100));
    tokio::spawn(async move {
        let mut files = watched_files(&gw);
        let mut loaded = snapshot(&files);
        let mut pending: Option<Snapshot> = None;
        loop {
            tokio::select! {
                _ = gw.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = tokio::task::spawn_blocking({
                let files = files.clone();
                move || snapshot(&files)
            })
            .await
            .unwrap_or_default();
            if now == loaded {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                pending = Some(now);
                continue;
            }
            let changed = now
                .iter()
                .zip(loaded.iter())
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.0.display().to_string())
                .unwrap_or_default();
            let _ = gw.reload(ReloadSource::FileWatch { path: changed }).await;
            // Whatever the outcome, wait for the next change before trying again.
            files = watched_files(&gw);
            loaded = snapshot(&files);
            pending = None;
        }
    });
}
