//! The PKI directory: its file names, creating it (`komugate pki init`, and
//! once for the embedded default) and issuing device certs from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use time::{Duration, OffsetDateTime};

use super::ca::{generate_ca, CaMaterial, IssuedCert};
use super::files::{create_dir, same_file_name, with_suffix, write_file, CERT_MODE, KEY_MODE};
use super::names::validate_name;
use super::{BACKDATE, DEFAULT_SERVER_SANS, DEVICE_CA_CN, INSPECT_CA_CN, MAX_DEVICE_DAYS};

/// Paths of the files in a PKI directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiPaths { dir: dir.into() }
    }
    pub fn device_ca_cert(&self) -> PathBuf {
        self.dir.join("device-ca.pem")
    }
    pub fn device_ca_key(&self) -> PathBuf {
        self.dir.join("device-ca.key")
    }
    pub fn inspect_ca_cert(&self) -> PathBuf {
        self.dir.join("inspect-ca.pem")
    }
    pub fn inspect_ca_key(&self) -> PathBuf {
        self.dir.join("inspect-ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// All six files, keys and certs.
    pub fn all(&self) -> [PathBuf; 6] {
        [
            self.device_ca_cert(),
            self.device_ca_key(),
            self.inspect_ca_cert(),
            self.inspect_ca_key(),
            self.server_cert(),
            self.server_key(),
        ]
    }
}

/// Options for [`issue_device`].
#[derive(Clone, Debug)]
pub struct DeviceCertOptions<'a> {
    pub device_id: &'a str,
    pub groups: &'a [String],
    /// Validity in days from now; the CLI default is [`super::DEFAULT_DEVICE_DAYS`].
    pub days: u32,
}

/// `komugate pki init`: create the device CA, the inspection CA and the server cert in `dir`.
///
/// Refuses (before writing anything) if any of the six files exists, unless `force`.
/// Note that `--force` replaces the CAs: every device cert issued so far stops
/// validating and laptops must trust the new inspection CA.
pub fn init(dir: &Path, sans: &[String], force: bool) -> Result<PkiPaths> {
    let paths = PkiPaths::new(dir);
    create_dir(dir)?;
    if !force {
        let existing: Vec<String> = paths
            .all()
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite existing PKI file(s): {} (pass --force to replace them; this invalidates all issued device certs)",
                existing.join(", ")
            );
        }
    }
    let sans: Vec<String> = if sans.is_empty() {
        DEFAULT_SERVER_SANS.iter().map(|s| s.to_string()).collect()
    } else {
        sans.to_vec()
    };
    // Build everything in memory first so a bad SAN does not leave half a PKI behind.
    let device_ca = generate_ca(DEVICE_CA_CN)?;
    let inspect_ca = generate_ca(INSPECT_CA_CN)?;
    let server = inspect_ca.issue_server(&sans)?;

    write_file(
        &paths.device_ca_key(),
        device_ca.key_pem().as_bytes(),
        KEY_MODE,
        force,
    )?;
    write_file(
        &paths.device_ca_cert(),
        device_ca.cert_pem().as_bytes(),
        CERT_MODE,
        force,
    )?;
    write_file(
        &paths.inspect_ca_key(),
        inspect_ca.key_pem().as_bytes(),
        KEY_MODE,
        force,
    )?;
    write_file(
        &paths.inspect_ca_cert(),
        inspect_ca.cert_pem().as_bytes(),
        CERT_MODE,
        force,
    )?;
    write_file(
        &paths.server_key(),
        server.key_pem.as_bytes(),
        KEY_MODE,
        force,
    )?;
    write_file(
        &paths.server_cert(),
        server.cert_pem.as_bytes(),
        CERT_MODE,
        force,
    )?;
    tracing::info!(dir = %dir.display(), sans = ?sans, "created komugate PKI");
    Ok(paths)
}

/// For the embedded default: create the PKI if (and only if) none of its files exist yet;
/// `Ok(true)` if created, `Ok(false)` if it was complete already. A partially present PKI
/// is an error naming the missing files (we never silently replace a CA).
pub fn ensure(dir: &Path, sans: &[String]) -> Result<bool> {
    let paths = PkiPaths::new(dir);
    let all = paths.all();
    let missing: Vec<&PathBuf> = all.iter().filter(|p| !p.exists()).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if missing.len() == all.len() {
        init(dir, sans, false)?;
        return Ok(true);
    }
    bail!(
        "PKI directory {} is incomplete, missing: {}; restore the files or re-create it with `komugate pki init --dir {} --force` (which invalidates issued device certs)",
        dir.display(),
        missing
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    )
}

/// `komugate pki issue-device`: sign a device cert with the device CA in `dir` and write
/// `PREFIX.pem` (leaf only) and `PREFIX.key`; a copy of the certificate goes
/// to the inventory (`DIR/issued/`). Returns `(cert_path, key_path)`.
pub fn issue_device(
    dir: &Path,
    opts: &DeviceCertOptions,
    out_prefix: &Path,
    force: bool,
) -> Result<(PathBuf, PathBuf)> {
    let cert_path = with_suffix(out_prefix, ".pem")?;
    let key_path = with_suffix(out_prefix, ".key")?;

    let paths = PkiPaths::new(dir);
    for out in [&cert_path, &key_path] {
        if same_file_name(out, &paths.all()) {
            bail!(
                "output {} would overwrite a PKI file; choose another --out prefix",
                out.display()
            );
        }
    }
    if !force {
        for out in [&cert_path, &key_path] {
            if out.exists() {
                bail!(
                    "{} already exists; pass --force to overwrite it",
                    out.display()
                );
            }
        }
    }
    let (_, issued) = sign_device(dir, opts)?;
    if let Some(parent) = cert_path.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir(parent)?;
        }
    }
    write_file(&key_path, issued.key_pem.as_bytes(), KEY_MODE, force)?;
    write_file(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE, force)?;
    super::inventory::record(dir, &issued.cert_pem)?;
    tracing::info!(device = opts.device_id, groups = ?opts.groups, cert = %cert_path.display(), "issued device certificate");
    Ok((cert_path, key_path))
}

/// Signs a device certificate with the device CA in `dir` (validity
/// checked, clamped to the CA's life), in memory; returns the CA too.
pub fn sign_device(dir: &Path, opts: &DeviceCertOptions) -> Result<(CaMaterial, IssuedCert)> {
    validate_name("device id", opts.device_id)?;
    for g in opts.groups {
        validate_name("group", g)?;
    }
    if opts.days == 0 || opts.days > MAX_DEVICE_DAYS {
        bail!(
            "--days must be between 1 and {MAX_DEVICE_DAYS}, got {}",
            opts.days
        );
    }
    let paths = PkiPaths::new(dir);
    let ca = CaMaterial::load(&paths.device_ca_cert(), &paths.device_ca_key())?;
    let now = OffsetDateTime::now_utc();
    let mut not_after = now + Duration::days(i64::from(opts.days));
    if not_after > ca.not_after() {
        // A cert cannot usefully outlive its CA; clamp rather than fail, so the embedded
        // default (which issues a demo device cert at startup) keeps working late in the
        // CA's life.
        tracing::warn!(
            days = opts.days,
            ca_not_after = %ca.not_after(),
            "device cert would outlive the device CA; shortening it to the CA's expiry"
        );
        not_after = ca.not_after();
    }
    if not_after <= now {
        bail!(
            "the device CA {} expired on {}; re-create the PKI (komugate pki init --force)",
            paths.device_ca_cert().display(),
            ca.not_after()
        );
    }
    let issued = ca.issue_device(opts.device_id, opts.groups, now - BACKDATE, not_after)?;
    Ok((ca, issued))
}
