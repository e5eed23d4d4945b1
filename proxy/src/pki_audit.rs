//! The audit trail of certificate authority and certificate actions:
//! `pki init` (with or without `--force`), `pki issue-device`, `pki revoke`,
//! and the demo PKI the embedded default creates on first start. Each is a
//! `ca_change` entry in the hash-chained audit log: what, the certificate
//! fingerprints before and after, and who did it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::logs::audit::{digest, AuditEvent, AuditLog};
use crate::pki::{self, PkiPaths};

/// The audit log for PKI commands: `--audit-log`, else `audit.log` next to
/// the PKI directory (the data directory layout: DATA/pki, DATA/audit.log).
pub fn audit_log_path(pki_dir: &Path, explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let data = pki_dir.parent().filter(|p| !p.as_os_str().is_empty());
        data.unwrap_or(Path::new(".")).join("audit.log")
    })
}

/// The gateway's PKI directory (the one holding `[tls] device_ca`, whose
/// key `device-ca.key` sits beside it) and its revoked-serials list (`[tls]
/// revoked_serials`, else `revoked-serials.txt` in that directory).
pub fn gateway_pki(config: &crate::config::Config) -> (PathBuf, PathBuf) {
    let ca = config.data_path(&config.tls.device_ca);
    let dir = ca.parent().unwrap_or(Path::new(".")).to_path_buf();
    let list = if config.tls.revoked_serials.is_empty() {
        pki::inventory::default_revoked_list(&dir)
    } else {
        config.data_path(Path::new(&config.tls.revoked_serials))
    };
    (dir, list)
}

/// SHA-256 of the first certificate in a PEM file; None if there is none.
pub fn cert_fingerprint(path: &Path) -> Option<String> {
    let certs = pki::load_certs(path).ok()?;
    certs.first().map(|c| digest(c.as_ref()))
}

/// Fingerprints of the three PKI certificates (device CA, inspection CA,
/// server), taken before an init so the audit entry can say what it replaced.
pub struct PkiSnapshot([(&'static str, PathBuf, Option<String>); 3]);

impl PkiSnapshot {
    pub fn take(dir: &Path) -> PkiSnapshot {
        let paths = PkiPaths::new(dir);
        let entry = |what, path: PathBuf| {
            let fp = cert_fingerprint(&path);
            (what, path, fp)
        };
        PkiSnapshot([
            entry("device-ca", paths.device_ca_cert()),
            entry("inspect-ca", paths.inspect_ca_cert()),
            entry("server-cert", paths.server_cert()),
        ])
    }

    /// One `ca_change` entry per certificate that `init` created or replaced.
    pub fn record_init(&self, audit: &Path, actor: &str, command: &str) -> Result<()> {
        let log = open(audit)?;
        for (what, path, old) in &self.0 {
            let new = cert_fingerprint(path);
            if new == *old {
                continue;
            }
            let verb = if old.is_some() { "replaced" } else { "created" };
            append(
                &log,
                AuditEvent::CaChange {
                    what: what.to_string(),
                    old_fingerprint: old.clone(),
                    new_fingerprint: new,
                    detail: format!("{} {verb} by {actor} ({command})", path.display()),
                },
            )?;
        }
        Ok(())
    }
}

/// The entry for a newly issued device certificate.
pub fn record_issue(
    audit: &Path,
    actor: &str,
    cert_path: &Path,
    device: &str,
    groups: &[String],
) -> Result<()> {
    let der = pki::load_certs(cert_path)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no certificate", cert_path.display()))?;
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow!("{}: {e}", cert_path.display()))?;
    let detail = format!(
        "device {device:?} groups {groups:?} serial {} valid until {} issued by {actor} to {}",
        pki::serial_to_hex(x.raw_serial()),
        x.validity().not_after,
        cert_path.display()
    );
    append(
        &open(audit)?,
        AuditEvent::CaChange {
            what: "device-cert".into(),
            old_fingerprint: None,
            new_fingerprint: Some(digest(der.as_ref())),
            detail,
        },
    )
}

/// The entries for certificates handed out as `.pfx` (one per
/// certificate): `to` says where they went (a file, a console download).
pub fn record_delivery(
    audit: &Path,
    actor: &str,
    records: &[pki::inventory::CertRecord],
    to: &str,
) -> Result<()> {
    let log = open(audit)?;
    for r in records {
        append(
            &log,
            AuditEvent::CaChange {
                what: "device-cert".into(),
                old_fingerprint: None,
                new_fingerprint: None,
                detail: format!(
                    "device {:?} serial {} valid until {} issued by {actor} as PKCS#12 to {to}",
                    r.device,
                    r.serial,
                    crate::record::rfc3339(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(r.not_after.max(0) as u64)
                    )
                ),
            },
        )?;
    }
    Ok(())
}

/// What to revoke: a serial number, or the certificate file it is taken from.
pub enum RevokeTarget {
    Serial(String),
    Cert(PathBuf),
}

/// `komugate pki revoke`: adds the serial to the revoked-serials list (the
/// file `[tls] revoked_serials` names) and audits it. Returns the canonical
/// serial and whether it was new.
pub fn revoke(
    list: &Path,
    target: &RevokeTarget,
    reason: &str,
    audit: &Path,
    actor: &str,
) -> Result<(String, bool)> {
    let (serial, fingerprint) = match target {
        RevokeTarget::Serial(s) => {
            let bytes = pki::parse_serial_hex(s)
                .ok_or_else(|| anyhow!("--serial {s:?} is not a hex serial number"))?;
            (pki::serial_to_hex(&bytes), None)
        }
        RevokeTarget::Cert(path) => {
            let der = pki::load_certs(path)?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("{} holds no certificate", path.display()))?;
            let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (
                pki::serial_to_hex(x.raw_serial()),
                Some(digest(der.as_ref())),
            )
        }
    };
    if reason.contains('\n') {
        bail!("--reason must be one line");
    }
    let existing = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", list.display())),
    };
    let listed = crate::device_auth::parse_revoked_serials(&existing)
        .map_err(|e| anyhow!("{}:{e}", list.display()))?;
    let canonical = pki::parse_serial_hex(&serial).unwrap_or_default();
    if listed.contains(&canonical) {
        return Ok((serial, false));
    }
    let time = crate::record::rfc3339(std::time::SystemTime::now());
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{serial}  # {time} {actor}: {reason}\n"));
    // Write the new list next to the old one and rename it over: the
    // gateway's file watch never sees a half-written list.
    let tmp = list.with_extension("tmp");
    if let Some(dir) = list.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, list).with_context(|| format!("cannot replace {}", list.display()))?;
    append(
        &open(audit)?,
        AuditEvent::CaChange {
            what: "device-cert-revoked".into(),
            old_fingerprint: fingerprint,
            new_fingerprint: None,
            detail: format!(
                "serial {serial} added to {} by {actor}: {reason}",
                list.display()
            ),
        },
    )?;
    Ok((serial, true))
}

fn open(path: &Path) -> Result<AuditLog> {
    AuditLog::open(path).map_err(|e| anyhow!("{e} (choose another file with --audit-log)"))
}

fn append(log: &AuditLog, event: AuditEvent) -> Result<()> {
    log.append(event).map(|_| ()).map_err(|e| anyhow!("{e}"))
}
