//! The device's posture facts, as `komugate client` reports them.
//!
//! Collected here on Linux (the tested platform): OS and version from
//! `/etc/os-release`, disk encryption from device-mapper crypt targets
//! (`/sys/block/dm-*/dm/uuid` starting with `CRYPT-`), the host firewall
//! from loaded iptables tables (`/proc/net/ip_tables_names`), the last OS
//! update from the package database's change time
//! (`/var/lib/dpkg/status`). Elsewhere, and wherever device management
//! knows better (Intune compliance, BitLocker status from the OS), a
//! `posture_file` written by device management supplies the facts: the
//! fields present in it override the collected ones.

use std::path::Path;

use anyhow::{Context, Result};
use komugate_policy::Posture;

use super::config::ClientConfig;

/// The facts to report now.
pub fn collect(cfg: &ClientConfig) -> Result<Posture> {
    let mut p = Posture {
        os: std::env::consts::OS.to_string(),
        os_version: os_version().unwrap_or_default(),
        disk_encryption: disk_encrypted(),
        firewall: firewall_on(),
        client_version: env!("CARGO_PKG_VERSION").to_string(),
        last_os_update: last_os_update().unwrap_or(0),
    };
    if !cfg.posture_file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(&cfg.posture_file).with_context(|| {
            format!(
                "posture_file {}: cannot read it (written by device management)",
                cfg.posture_file.display()
            )
        })?;
        let over: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| {
                format!(
                    "posture_file {}: not a JSON object of posture facts",
                    cfg.posture_file.display()
                )
            })?;
        let mut merged = serde_json::to_value(&p)?;
        for (k, v) in over {
            if merged.get(&k).is_none() {
                anyhow::bail!(
                    "posture_file {}: unknown fact {k:?} (os, os_version, disk_encryption, firewall, client_version, last_os_update)",
                    cfg.posture_file.display()
                );
            }
            merged[k] = v;
        }
        p = serde_json::from_value(merged).with_context(|| {
            format!(
                "posture_file {}: a fact has the wrong type",
                cfg.posture_file.display()
            )
        })?;
    }
    Ok(p)
}

fn os_version() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim_matches('"').to_string())
}

fn disk_encrypted() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("dm/uuid")).is_ok_and(|u| u.starts_with("CRYPT-"))
    })
}

fn firewall_on() -> bool {
    let nonempty = |p: &str| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty());
    nonempty("/proc/net/ip_tables_names") || nonempty("/proc/net/ip6_tables_names")
}

fn last_os_update() -> Option<u64> {
    for p in ["/var/lib/dpkg/status", "/var/lib/rpm/rpmdb.sqlite"] {
        if let Ok(m) = std::fs::metadata(Path::new(p)) {
            if let Ok(t) = m.modified() {
                return t
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_posture_file_overrides_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("facts.json");
        std::fs::write(&f, r#"{"disk_encryption": true, "last_os_update": 1234}"#).unwrap();
        let cfg = ClientConfig {
            posture_file: f.clone(),
            ..Default::default()
        };
        let p = collect(&cfg).unwrap();
        assert!(p.disk_encryption);
        assert_eq!(p.last_os_update, 1234);
        assert_eq!(p.client_version, env!("CARGO_PKG_VERSION"));
        std::fs::write(&f, r#"{"bitlocker": true}"#).unwrap();
        let e = collect(&cfg).unwrap_err().to_string();
        assert!(e.contains("unknown fact \"bitlocker\""), "{e}");
        std::fs::write(&f, r#"{"firewall": "yes"}"#).unwrap();
        assert!(collect(&cfg).is_err());
    }
}
