//! The device certificates a PKI directory issued: a copy of each
//! certificate (never its key) in `DIR/issued/<serial>.pem`, written when
//! it is issued, and the revoked-serials list next to it
//! (`DIR/revoked-serials.txt` unless `[tls] revoked_serials` names another).
//! `komugate pki list`, the console's certificate page and its device list
//! read it: device, serial, expiry, revoked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::files::{create_dir, write_file, CERT_MODE};
use super::names::{parse_serial_hex, serial_to_hex};

/// One issued device certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertRecord {
    pub device: String,
    pub groups: Vec<String>,
    /// Lowercase hex, as `pki revoke --serial` takes it.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub revoked: bool,
}

impl CertRecord {
    /// Expired at `now` (Unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        self.not_after <= now
    }

    /// Valid, not revoked, and expiring within `days` of `now`.
    pub fn expiring_within(&self, days: i64, now: i64) -> bool {
        !self.revoked && !self.expired(now) && self.not_after <= now + days * 86_400
    }
}

/// `DIR/issued`.
pub fn issued_dir(dir: &Path) -> PathBuf {
    dir.join("issued")
}

/// The default revoked-serials list of a PKI directory.
pub fn default_revoked_list(dir: &Path) -> PathBuf {
    dir.join("revoked-serials.txt")
}

/// Keeps a copy of a newly issued certificate.
pub fn record(dir: &Path, cert_pem: &str) -> Result<CertRecord> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow!("issued certificate PEM does not parse: {e}"))?;
    let rec = describe(&der, &HashSet::new())?;
    let issued = issued_dir(dir);
    create_dir(&issued)?;
    write_file(
        &issued.join(format!("{}.pem", rec.serial)),
        cert_pem.as_bytes(),
        CERT_MODE,
        false,
    )?;
    Ok(rec)
}

fn describe(der: &CertificateDer<'_>, revoked: &HashSet<Vec<u8>>) -> Result<CertRecord> {
    let id = crate::device_auth::identity_from_cert(der)?;
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow!("certificate does not parse: {e}"))?;
    let serial_bytes = parse_serial_hex(&id.serial_hex).unwrap_or_default();
    Ok(CertRecord {
        device: id.device_id,
        groups: id.cert_groups,
        serial: serial_to_hex(x.raw_serial()),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        revoked: revoked.contains(&serial_bytes),
    })
}

/// The serials in a revoked-serials list (none when the file does not exist).
pub fn revoked_serials(list: &Path) -> Result<HashSet<Vec<u8>>> {
    match std::fs::read_to_string(list) {
        Ok(text) => crate::device_auth::parse_revoked_serials(&text)
            .map_err(|e| anyhow!("{}:{e}", list.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", list.display())),
    }
}

/// Every certificate on record, by device then expiry; `revoked_list` says
/// which are revoked.
pub fn list(dir: &Path, revoked_list: &Path) -> Result<Vec<CertRecord>> {
    let revoked = revoked_serials(revoked_list)?;
    let issued = issued_dir(dir);
    let entries = match std::fs::read_dir(&issued) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", issued.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", issued.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let der = super::load_certs(&path)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{} holds no certificate", path.display()))?;
        out.push(describe(&der, &revoked).with_context(|| path.display().to_string())?);
    }
    out.sort_by(|a, b| (&a.device, a.not_after).cmp(&(&b.device, b.not_after)));
    Ok(out)
}

/// The PEM of the certificate on record with `serial`.
pub fn cert_pem(dir: &Path, serial: &str) -> Result<String> {
    let bytes = parse_serial_hex(serial).ok_or_else(|| anyhow!("not a hex serial: {serial:?}"))?;
    let path = issued_dir(dir).join(format!("{}.pem", serial_to_hex(&bytes)));
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no certificate with serial {serial} on record ({})",
            path.display()
        )
    })
}

/// The device CA's CRL (DER) for the serials in `revoked_list`, signed now
/// with the key in `dir`, valid 7 days, numbered by the time it was made
/// (so a later CRL always has a higher number).
pub fn crl_der(dir: &Path, revoked_list: &Path) -> Result<Vec<u8>> {
    let paths = super::PkiPaths::new(dir);
    let ca = super::CaMaterial::load(&paths.device_ca_cert(), &paths.device_ca_key())?;
    let mut serials: Vec<String> = revoked_serials(revoked_list)?
        .iter()
        .map(|s| serial_to_hex(s))
        .collect();
    serials.sort();
    let number = time::OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
    let pem = ca.sign_crl(&serials, number, 7)?;
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow!("the signed CRL does not parse: {e}"))?;
    Ok(der.to_vec())
}
