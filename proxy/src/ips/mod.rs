//! IPS signatures (a Suricata rule subset) and threat-intelligence lists in
//! the gateway: configuration, loading, event logging and the data-path hooks.
//! Rule parsing, PCRE translation, the scanning engine, the SNI parser and the
//! threat-intel lists are the pure `komugate-ips` crate, re-exported here.
//!
//! - [`tunnel`]: inspection of the first bytes of CONNECT tunnels
//! - the HTTP hooks live in [`crate::stages::ips`]
//! - [`cli`]: `komugate ips check` and `komugate ips check-lists`
//!
//! Every hit becomes an [`IpsEvent`] in the access record (field `ips`), a
//! `tracing` line with sid, msg, device and destination, and a metric
//! (`komugate_ips_events_total{action}`, `komugate_threat_intel_blocks_total{via}`).

pub mod cli;
pub mod tunnel;

pub use komugate_ips::{engine, pcre, rule, sni, threat_intel};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::config::{IpsConfig, ThreatIntelConfig};
pub use crate::record::IpsEvent;
pub use komugate_ips::{
    Action, BodyScan, Buffer, Direction, HttpRequestBuffers, IpsEngine, IpsMatch, LoadReport,
    ThreatHit, ThreatIntel,
};

use crate::metrics::Metrics;

/// The loaded IPS rules and threat-intel lists (swap on reload).
pub struct Security {
    pub engine: IpsEngine,
    pub intel: ThreatIntel,
    pub stream_depth: usize,
    pub body_depth: usize,
    pub report: LoadReport,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            engine: IpsEngine::empty(),
            intel: ThreatIntel::default(),
            stream_depth: IpsConfig::default().stream_depth,
            body_depth: IpsConfig::default().body_depth,
            report: LoadReport::default(),
        }
    }
}

impl Security {
    /// Loads `[ips] rules` and `[threat_intel] lists` (paths relative to
    /// the data directory). Unreadable files are errors; skipped rules and
    /// invalid list lines are logged.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Security> {
        let mut rule_paths: Vec<PathBuf> = config
            .ips
            .rules
            .iter()
            .map(|p| config.data_path(p))
            .collect();
        for feed in &config.ips.feeds {
            rule_paths.extend(rule_files(&config.data_path(&feed.path))?);
        }
        let mut list_paths: Vec<PathBuf> = config
            .threat_intel
            .lists
            .iter()
            .map(|p| config.data_path(p))
            .collect();
        // A feed not downloaded yet is empty until its first update.
        list_paths.extend(
            config
                .threat_intel
                .feeds
                .iter()
                .map(|f| config.data_path(&f.path))
                .filter(|p| p.exists()),
        );
        let (engine, report) = IpsEngine::load(&rule_paths)?;
        let (intel, lists) = ThreatIntel::load(&list_paths)?;
        if !rule_paths.is_empty() {
            tracing::info!(
                "IPS: {} rules loaded, {} skipped (run `komugate ips check FILE` for the reasons)",
                report.loaded,
                report.skipped_total()
            );
        }
        for l in &lists {
            tracing::info!(
                "threat intel list {}: {} addresses/networks, {} domains",
                l.name,
                l.ips,
                l.domains
            );
            for (line, text) in l.invalid.iter().take(5) {
                tracing::warn!(
                    "threat intel list {} line {line}: not an address, CIDR or domain: {text:?}",
                    l.name
                );
            }
        }
        Ok(Security {
            engine,
            intel,
            stream_depth: config.ips.stream_depth.max(64),
            body_depth: config.ips.body_depth,
            report,
        })
    }
}

/// The rules files of a downloaded IPS feed: the file itself, or every
/// `*.rules` file under the directory an archive was unpacked to (sorted);
/// nothing while it has not been downloaded yet.
pub fn rule_files(path: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "rules") {
                out.push(p);
            }
        }
        Ok(())
    }
    if !path.exists() {
        return Ok(Vec::new());
    }
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    walk(path, &mut out).map_err(|e| {
        anyhow::anyhow!("cannot read the IPS feed directory {}: {e}", path.display())
    })?;
    out.sort();
    Ok(out)
}

/// Who and where, for the event log line and metrics.
#[derive(Clone)]
pub struct EventContext {
    pub metrics: Arc<Metrics>,
    pub device: Option<String>,
    pub client: SocketAddr,
    /// `host:port` or URL.
    pub target: String,
}

impl EventContext {
    /// Logs and counts IPS matches, returning their access-record events.
    pub fn ips(&self, source: &'static str, matches: &[IpsMatch]) -> Vec<IpsEvent> {
        matches
            .iter()
            .map(|m| {
                let action = m.action.label();
                self.metrics.ips_events.with_label_values(&[action]).inc();
                tracing::warn!(
                    target: "komugate::ips",
                    sid = m.sid,
                    rev = m.rev,
                    action,
                    source,
                    device = self.device.as_deref().unwrap_or("-"),
                    client = %self.client,
                    destination = %self.target,
                    "IPS {action} sid {}: {}",
                    m.sid,
                    m.msg
                );
                IpsEvent {
                    source,
                    action,
                    sid: Some(m.sid),
                    rev: Some(m.rev),
                    msg: m.msg.to_string(),
                    classtype: m.classtype.as_deref().map(str::to_string),
                    list: None,
                    entry: None,
                }
            })
            .collect()
    }

    /// Logs and counts a threat-intel hit (always a block).
    pub fn threat(&self, via: &'static str, checked: &str, hit: &ThreatHit) -> IpsEvent {
        self.metrics
            .threat_intel_blocks
            .with_label_values(&[via])
            .inc();
        tracing::warn!(
            target: "komugate::ips",
            list = %hit.list,
            entry = %hit.entry,
            via,
            device = self.device.as_deref().unwrap_or("-"),
            client = %self.client,
            destination = %self.target,
            "threat intel: {checked} is listed in {} ({}); refused",
            hit.list,
            hit.entry
        );
        IpsEvent {
            source: via,
            action: "drop",
            sid: None,
            rev: None,
            msg: format!("{checked} is a known-bad destination"),
            classtype: None,
            list: Some(hit.list.clone()),
            entry: Some(hit.entry.clone()),
        }
    }
}
