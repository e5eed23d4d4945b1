//! The gateway side: the sites and beacon keys from the policy, and the
//! asserted site of each connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use ed25519_dalek::VerifyingKey;
use http::HeaderMap;
use ipnet::IpNet;

use super::replay::ReplayCache;
use super::token::{verify, Assertion, AssertionError};
use super::{ASSERTION_HEADER, MAX_AGE_SECS, MAX_FUTURE_SKEW_SECS};
use crate::common::unix_now;
use crate::device_auth::DeviceIdentity;

/// A site as the gateway needs it for locating requesters and PAC files.
#[derive(Debug, Clone)]
pub struct SiteEntry {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub pac_direct: Vec<String>,
}

/// Sites, their beacon keys and the PAC settings, from the policy.
#[derive(Debug, Clone, Default)]
pub struct SiteDirectory {
    pub sites: Vec<SiteEntry>,
    pub keys: HashMap<String, VerifyingKey>,
    /// `[pac] direct`.
    pub pac_direct: Vec<String>,
    /// `[pac] proxy`, e.g. `HTTPS gw.example.jp:8443`.
    pub pac_proxy: Option<String>,
}

impl SiteDirectory {
    pub fn from_policy(policy: &komugate_policy::Policy) -> SiteDirectory {
        let mut keys = HashMap::new();
        for s in policy.sites() {
            match s.beacon_key.map(|k| VerifyingKey::from_bytes(&k)) {
                Some(Ok(k)) => {
                    keys.insert(s.name.clone(), k);
                }
                Some(Err(e)) => tracing::warn!("site {}: beacon_key is not a valid Ed25519 key ({e}); its assertions will be refused", s.name),
                None if s.assertion => tracing::warn!("site {} has assertion = true but no beacon_key; its assertions will be refused", s.name),
                None => {}
            }
        }
        SiteDirectory {
            sites: policy
                .sites()
                .iter()
                .map(|s| SiteEntry {
                    name: s.name.clone(),
                    cidrs: s.cidrs.clone(),
                    pac_direct: s.pac_direct.clone(),
                })
                .collect(),
            keys,
            pac_direct: policy.pac().direct.clone(),
            pac_proxy: policy.pac().proxy.clone(),
        }
    }

    /// Loads a policy file and takes its sites.
    pub fn load(path: &Path) -> Result<SiteDirectory> {
        let policy = komugate_policy::Policy::load(path).map_err(|e| anyhow!("{e}"))?;
        Ok(SiteDirectory::from_policy(&policy))
    }

    /// The site whose CIDRs contain `ip` (first in policy order).
    pub fn site_by_ip(&self, ip: IpAddr) -> Option<&SiteEntry> {
        let ip = ip.to_canonical();
        self.sites
            .iter()
            .find(|s| s.cidrs.iter().any(|n| n.contains(&ip)))
    }

    pub fn site(&self, name: &str) -> Option<&SiteEntry> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// Result of the latest valid assertion on one connection.
#[derive(Debug, Clone)]
struct Asserted {
    device: String,
    site: String,
    expires_at: u64,
}

/// The gateway's site-assertion state: the replay cache, the
/// per-connection asserted sites, metrics. The site directory is part of
/// the reloadable generation and is passed in.
pub struct SiteAssertions {
    replay: ReplayCache,
    connections: Mutex<HashMap<SocketAddr, Asserted>>,
    results: prometheus::IntCounterVec,
}

impl SiteAssertions {
    pub fn new(registry: &prometheus::Registry) -> SiteAssertions {
        let results = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "komugate_site_assertions_total",
                "Site assertions checked, by result (ok or why refused)",
            ),
            &["result"],
        )
        .expect("metric");
        if let Err(e) = registry.register(Box::new(results.clone())) {
            tracing::warn!("cannot register komugate_site_assertions_total: {e}");
        }
        SiteAssertions {
            replay: ReplayCache::new(1_000_000),
            connections: Mutex::new(HashMap::new()),
            results,
        }
    }

    /// Checks the assertion header of a request, if any, and records the
    /// asserted site for the connection. Refusals are logged and counted.
    pub fn observe(
        &self,
        directory: &SiteDirectory,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
        headers: &HeaderMap,
    ) {
        let Some(value) = headers.get(ASSERTION_HEADER) else {
            return;
        };
        let token = value.to_str().unwrap_or("");
        let now = unix_now();
        let device_id = device.map(|d| d.device_id.as_str());
        let result = self.check(directory, token, device_id, client, now);
        match result {
            Ok(a) => {
                self.results.with_label_values(&["ok"]).inc();
                let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                let expires_at = a.iat + MAX_AGE_SECS;
                let fresh = conns
                    .get(&client)
                    .map(|c| c.site != a.site || c.device != a.device)
                    .unwrap_or(true);
                if fresh {
                    tracing::info!(device = %a.device, site = %a.site, %client, "site assertion accepted: device is at site {}", a.site);
                }
                if conns.len() > 100_000 {
                    conns.retain(|_, c| c.expires_at >= now);
                }
                conns.insert(
                    client,
                    Asserted {
                        device: a.device,
                        site: a.site,
                        expires_at,
                    },
                );
            }
            Err(e) => {
                self.results.with_label_values(&[e.label()]).inc();
                tracing::warn!(device = device_id.unwrap_or("-"), %client, reason = e.label(), "site assertion refused: {e}; location stays by address");
                // A refused assertion also withdraws an earlier one on this connection.
                self.connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&client);
            }
        }
    }

    fn check(
        &self,
        directory: &SiteDirectory,
        token: &str,
        device: Option<&str>,
        client: SocketAddr,
        now: u64,
    ) -> Result<Assertion, AssertionError> {
        let device = device.ok_or(AssertionError::NoDevice)?;
        let a = verify(token, &directory.keys, device, now)?;
        if !self.replay.bind(
            &a.nonce,
            &format!("{device}@{client}"),
            a.iat + MAX_AGE_SECS + MAX_FUTURE_SKEW_SECS,
            now,
        ) {
            return Err(AssertionError::Replayed);
        }
        Ok(a)
    }

    /// The site established by a valid, unexpired assertion on this
    /// connection (device `device` from `client`), if any.
    pub fn asserted_site(
        &self,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<String> {
        let device = device?;
        let now = unix_now();
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .get(&client)
            .filter(|c| c.device == device.device_id && c.expires_at >= now)
            .map(|c| c.site.clone())
    }

    /// The location the decision point sees: `Some(Site)` for an asserted
    /// site, `None` = locate by address (the policy does that).
    pub fn location(
        &self,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<komugate_policy::Location> {
        self.asserted_site(device, client)
            .map(komugate_policy::Location::Site)
    }

    /// Asserted site, else the site whose CIDRs contain the client address.
    pub fn site_of(
        &self,
        directory: &SiteDirectory,
        device: Option<&DeviceIdentity>,
        client: SocketAddr,
    ) -> Option<String> {
        self.asserted_site(device, client)
            .or_else(|| directory.site_by_ip(client.ip()).map(|s| s.name.clone()))
    }
}
