//! What the updater downloads: the policy's `[[categories.source]]` with a
//! `url`, and the gateway configuration's `[[ips.feed]]` and
//! `[[threat_intel.feed]]`, as one [`Feed`] type with the same safety keys.

use std::time::Duration;

use komugate_policy::RemoteSource;

use crate::config::{Config, FeedConfig};
use crate::gateway::Gateway;

/// Default `max_invalid_ratio` of an IPS feed: the engine loads a subset of
/// Suricata's rule language, so a real rule set has rules it skips.
const IPS_DEFAULT_MAX_INVALID_RATIO: f64 = 0.5;
const THREAT_DEFAULT_MAX_INVALID_RATIO: f64 = 0.01;

/// What a feed holds, and so how a download is checked and loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// Category lists of the policy (squidguard tree or a single list).
    Categories,
    /// Suricata rules: a `.rules` file, or a tar / tar.gz of them.
    IpsRules,
    /// Threat intelligence: addresses, networks and domains, one a line.
    ThreatIntel,
}

impl FeedKind {
    /// The `kind` label of the update metrics.
    pub fn label(self) -> &'static str {
        match self {
            FeedKind::Categories => "categories",
            FeedKind::IpsRules => "ips",
            FeedKind::ThreatIntel => "threat_intel",
        }
    }
}

/// One downloaded feed: its kind and the download settings every kind
/// shares (those of a policy source; `format` names the kind for IPS and
/// threat-intel feeds, and their `entries` are counted from the files when
/// a check needs them, see `stage::entries_in_force`).
#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    pub kind: FeedKind,
    pub src: RemoteSource,
}

impl std::ops::Deref for Feed {
    type Target = RemoteSource;
    fn deref(&self) -> &RemoteSource {
        &self.src
    }
}

impl Feed {
    fn from_config(config: &Config, f: &FeedConfig, kind: FeedKind) -> Feed {
        let (format, default_ratio) = match kind {
            FeedKind::IpsRules => ("suricata", IPS_DEFAULT_MAX_INVALID_RATIO),
            _ => ("threat-intel", THREAT_DEFAULT_MAX_INVALID_RATIO),
        };
        let path = config.data_path(&f.path);
        let src = RemoteSource {
            url: f.url.clone(),
            present: path.exists(),
            path,
            format: format.into(),
            only: None,
            category: None,
            refresh: Duration::from_secs(f.refresh_secs),
            sha256: f.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            sha256_url: f.sha256_url.clone(),
            max_bytes: f.max_bytes,
            max_invalid_ratio: f.max_invalid_ratio.unwrap_or(default_ratio),
            max_shrink: f.max_shrink,
            entries: 0,
        };
        Feed { kind, src }
    }

    /// A short name for logs and the audit trail.
    pub fn describe(&self) -> String {
        format!("{} feed {}", self.kind.label(), self.url)
    }
}

/// Every feed of the policy and configuration in force.
pub fn feeds(gw: &Gateway) -> Vec<Feed> {
    feeds_of(&gw.config, &gw.generation.load().runtime.policy)
}

/// The feeds of a configuration and its compiled policy (`komugate doctor`
/// reads them without a running gateway).
pub fn feeds_of(config: &Config, policy: &komugate_policy::Policy) -> Vec<Feed> {
    let mut out: Vec<Feed> = policy
        .remote_sources()
        .iter()
        .map(|src| Feed {
            kind: FeedKind::Categories,
            src: src.clone(),
        })
        .collect();
    out.extend(
        config
            .ips
            .feeds
            .iter()
            .map(|f| Feed::from_config(config, f, FeedKind::IpsRules)),
    );
    out.extend(
        config
            .threat_intel
            .feeds
            .iter()
            .map(|f| Feed::from_config(config, f, FeedKind::ThreatIntel)),
    );
    out
}
