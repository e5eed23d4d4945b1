//! PKI helpers (rcgen): device CA, inspection CA, gateway server cert, device certs.
//!
//! Layout of a PKI directory (`komugate pki init --dir DIR`):
//!
//! | file              | what                                                          | mode |
//! |-------------------|---------------------------------------------------------------|------|
//! | `device-ca.pem`   | CA that signs device (client) certificates; the mTLS listener trusts it | 0644 |
//! | `device-ca.key`   | its private key (PKCS#8, ECDSA P-256)                          | 0600 |
//! | `inspect-ca.pem`  | CA the laptops trust; signs TLS-inspection leaves and the gateway's own server cert | 0644 |
//! | `inspect-ca.key`  | its private key                                               | 0600 |
//! | `server.pem`      | gateway TLS server cert (leaf only), signed by inspect-ca     | 0644 |
//! | `server.key`      | its private key                                               | 0600 |
//!
//! Certificates:
//! * all keys are ECDSA P-256, signatures ECDSA-SHA256;
//! * serials are 20 random bytes with the top bit cleared (positive, at most 20 octets as
//!   RFC 5280 requires);
//! * `not_before` is backdated by one hour to tolerate laptop clock skew;
//! * CAs: 10 years, `basicConstraints CA:true, pathlen:0`, `keyUsage keyCertSign, cRLSign`,
//!   subject `O=komugate, CN=komugate device CA` / `CN=komugate inspection CA`;
//! * server cert: at most 825 days (Apple's limit for TLS server certs), EKU serverAuth,
//!   SANs from `--san` (IP literals become IP SANs, everything else DNS SANs);
//! * device certs: 2 years by default, EKU clientAuth, `CN=<device id>`, SAN URI
//!   `urn:komugate:device:<id>` plus one SAN URI `urn:komugate:group:<group>` per group.
//!
//! `issue-device` writes `PREFIX.pem` containing the **leaf only** (the device CA cert is
//! not appended: the gateway already has it as its trust anchor and the chain is one level
//! deep), and `PREFIX.key`.
//!
//! Device ids and group names are restricted to a safe set so they can travel inside a
//! URN, a CN, log lines and CSV exports unescaped: 1 to 64 characters from ASCII letters,
//! digits and `-`, `_`, `.`, `@`. Anything else (whitespace, `:`, `/`, non-ASCII such as
//! Japanese group names) is rejected; map such names to ASCII ids in the device registry
//! instead (groups normally come from the registry, cert groups are optional).
//!
//! Nothing here overwrites an existing key or certificate unless `force` is set. Keys are
//! created with mode 0600 from the start (never chmod-ed afterwards), certs with 0644, and a
//! missing directory is created with mode 0700. (On non-Unix platforms modes are not set.)

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Subject CN of the device CA created by [`init`].
pub const DEVICE_CA_CN: &str = "komugate device CA";
/// Subject CN of the inspection CA created by [`init`].
pub const INSPECT_CA_CN: &str = "komugate inspection CA";
/// Subject CN of the gateway server certificate.
pub const SERVER_CN: &str = "komugate gateway";
/// Organisation put in every subject we create.
pub const ORGANIZATION: &str = "komugate";
/// SAN URI prefix carrying the device id.
pub const DEVICE_URN_PREFIX: &str = "urn:komugate:device:";
/// SAN URI prefix carrying a group name.
pub const GROUP_URN_PREFIX: &str = "urn:komugate:group:";
/// Default SANs of the server cert when none are given.
pub const DEFAULT_SERVER_SANS: &[&str] = &["localhost", "127.0.0.1"];

/// CA lifetime.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Server cert lifetime (not_before..not_after, including the backdate).
pub const SERVER_VALIDITY_DAYS: i64 = 825;
/// Default device cert lifetime.
pub const DEFAULT_DEVICE_DAYS: u32 = 730;
/// Longest device cert lifetime `issue_device` accepts.
pub const MAX_DEVICE_DAYS: u32 = 3650;
/// How far `not_before` is backdated.
pub const BACKDATE: Duration = Duration::hours(1);
/// Maximum length of a device id / group name (X.509 ub-common-name).
pub const MAX_NAME_LEN: usize = 64;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

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

/// A certificate and its private key, PEM encoded, not written anywhere.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// The certificate as DER (for rustls).
    pub fn cert_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| anyhow!("issued certificate PEM does not parse: {e}"))
    }
    /// The private key as DER (for rustls).
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| anyhow!("issued private key PEM does not parse: {e}"))
    }
}

/// A CA certificate plus its key, able to sign leaves and CRLs.
///
/// For a CA loaded from disk, `certificate()` is a re-self-signed copy of the original
/// (rcgen cannot sign with a parsed certificate directly): same subject, key, key
/// identifier and extensions, different signature. That is all an issuer needs; the
/// original bytes are kept and returned by [`CaMaterial::cert_pem`] / [`CaMaterial::cert_der`].
pub struct CaMaterial {
    cert: Certificate,
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("subject", &self.cert.params().distinguished_name)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Create a new self-signed CA (ECDSA P-256, 10 years, pathlen 0) in memory.
pub fn generate_ca(common_name: &str) -> Result<CaMaterial> {
    if common_name.trim().is_empty() {
        bail!("CA common name must not be empty");
    }
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params.key_identifier_method = KeyIdMethod::Sha256;
    let key = new_key()?;
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("self-signing CA {common_name:?}"))?;
    let not_after = cert.params().not_after;
    let cert_der = cert.der().clone();
    Ok(CaMaterial {
        cert,
        key,
        cert_der,
        not_after,
    })
}

impl CaMaterial {
    /// Load a CA certificate (first certificate in the PEM file) and its private key.
    /// Checks that the certificate is a CA and that the key matches it.
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<Self> {
        let certs = load_certs(cert_pem_path)?;
        let cert_der = certs
            .into_iter()
            .next()
            .expect("load_certs never returns empty");
        let key_pem = fs::read_to_string(key_pem_path)
            .with_context(|| format!("reading CA private key {}", key_pem_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "{}: not a usable PEM private key ({e}); expected a PKCS#8 ECDSA P-256 key as written by `komugate pki init`",
                key_pem_path.display()
            )
        })?;
        let params = CertificateParams::from_ca_cert_der(&cert_der).map_err(|e| {
            anyhow!(
                "{}: cannot use this certificate as an issuer: {e}",
                cert_pem_path.display()
            )
        })?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            bail!(
                "{}: certificate is not a CA (basicConstraints CA:true missing)",
                cert_pem_path.display()
            );
        }
        // The key must belong to the certificate.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| anyhow!("{}: bad certificate: {e}", cert_pem_path.display()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            bail!(
                "{} does not match {}: the private key belongs to a different certificate",
                key_pem_path.display(),
                cert_pem_path.display()
            );
        }
        let not_after = params.not_after;
        let cert = params.self_signed(&key).map_err(|e| {
            anyhow!(
                "{}: cannot sign with this key ({e})",
                key_pem_path.display()
            )
        })?;
        Ok(CaMaterial {
            cert,
            key,
            cert_der,
            not_after,
        })
    }

    /// The CA certificate, PEM (the original bytes for a loaded CA).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA certificate, DER (the original bytes for a loaded CA).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// When the CA expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The rcgen issuer certificate (for signing leaves elsewhere, e.g. TLS inspection).
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The CA key pair (for signing leaves elsewhere, e.g. TLS inspection).
    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    /// Issue a device (client) certificate with explicit validity. No clamping is done
    /// here (tests use this to mint expired or not-yet-valid certs); [`issue_device`]
    /// (the CLI path) applies the defaults and limits.
    pub fn issue_device(
        &self,
        device_id: &str,
        groups: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert> {
        validate_name("device id", device_id)?;
        for g in groups {
            validate_name("group", g)?;
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(device_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![uri_san(&format!("{DEVICE_URN_PREFIX}{device_id}"))?];
        let mut seen = std::collections::HashSet::new();
        for g in groups {
            if seen.insert(g.as_str()) {
                sans.push(uri_san(&format!("{GROUP_URN_PREFIX}{g}"))?);
            }
        }
        params.subject_alt_names = sans;
        self.sign_leaf(params, &format!("device {device_id:?}"))
    }

    /// Issue a TLS server certificate (825 days, serverAuth) for the given SANs.
    /// IP literals become IP SANs, anything else a DNS SAN.
    pub fn issue_server(&self, sans: &[String]) -> Result<IssuedCert> {
        if sans.is_empty() {
            bail!("a server certificate needs at least one SAN (--san NAME)");
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(SERVER_CN);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        // Total validity period (including the backdate) stays within 825 days.
        params.not_after =
            params.not_before + Duration::days(SERVER_VALIDITY_DAYS) - Duration::minutes(1);
        if params.not_after > self.not_after {
            params.not_after = self.not_after;
        }
        params.use_authority_key_identifier_extension = true;
        let mut out = Vec::new();
        for s in sans {
            let san = server_san(s)?;
            if !out.contains(&san) {
                out.push(san);
            }
        }
        params.subject_alt_names = out;
        self.sign_leaf(params, "server certificate")
    }

    /// Sign a CRL revoking the given serials (hex, colons allowed, as printed by
    /// `openssl x509 -serial` or [`crate::device_auth::DeviceIdentity::serial_hex`]).
    /// Returns PEM (`X509 CRL`).
    pub fn sign_crl(
        &self,
        revoked_serials_hex: &[String],
        crl_number: u64,
        valid_days: u32,
    ) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked_serials_hex
            .iter()
            .map(|s| {
                let bytes =
                    parse_serial_hex(s).ok_or_else(|| anyhow!("not a hex serial number: {s:?}"))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(i64::from(valid_days.max(1))),
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.cert.params().key_identifier_method.clone(),
        };
        let crl = params
            .signed_by(&self.cert, &self.key)
            .context("signing CRL")?;
        crl.pem().context("encoding CRL")
    }

    /// Mint a TLS-inspection leaf for `host` (DNS name or IP literal): a fresh
    /// ECDSA P-256 key, a random serial, serverAuth, valid for `validity`
    /// after a one-hour backdate (clock skew), never beyond the CA's expiry.
    /// Returned as DER, ready for rustls.
    pub fn mint_inspection_leaf(
        &self,
        host: &str,
        validity: Duration,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = (now + validity).min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![server_san(host)?];
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("minting an inspection certificate for {host}"))?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((cert.der().clone(), key_der))
    }

    fn sign_leaf(&self, params: CertificateParams, what: &str) -> Result<IssuedCert> {
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing {what}"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Options for [`issue_device`].
#[derive(Clone, Debug)]
pub struct DeviceCertOptions<'a> {
    pub device_id: &'a str,
    pub groups: &'a [String],
    /// Validity in days from now; the CLI default is [`DEFAULT_DEVICE_DAYS`].
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
/// `PREFIX.pem` (leaf only) and `PREFIX.key`. Returns `(cert_path, key_path)`.
pub fn issue_device(
    dir: &Path,
    opts: &DeviceCertOptions,
    out_prefix: &Path,
    force: bool,
) -> Result<(PathBuf, PathBuf)> {
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
    if let Some(parent) = cert_path.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir(parent)?;
        }
    }
    write_file(&key_path, issued.key_pem.as_bytes(), KEY_MODE, force)?;
    write_file(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE, force)?;
    tracing::info!(device = opts.device_id, groups = ?opts.groups, cert = %cert_path.display(), "issued device certificate");
    Ok((cert_path, key_path))
}

/// Load all certificates from a PEM file (DER files holding one certificate are accepted
/// too). Errors name the file and say what is wrong.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes =
        fs::read(path).with_context(|| format!("reading certificate file {}", path.display()))?;
    if !contains(&bytes, b"-----BEGIN") {
        // Maybe DER.
        if x509_parser::parse_x509_certificate(&bytes).is_ok() {
            return Ok(vec![CertificateDer::from(bytes)]);
        }
        bail!(
            "{}: neither PEM (no -----BEGIN line) nor a DER certificate",
            path.display()
        );
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let cert = item.map_err(|e| anyhow!("{}: bad PEM: {e}", path.display()))?;
        if let Err(e) = x509_parser::parse_x509_certificate(&cert) {
            bail!(
                "{}: certificate #{} is not valid X.509: {e}",
                path.display(),
                out.len() + 1
            );
        }
        out.push(cert);
    }
    if out.is_empty() {
        if contains(&bytes, b"PRIVATE KEY-----") {
            bail!(
                "{}: contains a private key but no CERTIFICATE block (swapped cert and key paths?)",
                path.display()
            );
        }
        bail!("{}: no PEM CERTIFICATE block found", path.display());
    }
    Ok(out)
}

/// Load the first private key (PKCS#8, SEC1 EC or PKCS#1 RSA PEM) from a file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes =
        fs::read(path).with_context(|| format!("reading private key file {}", path.display()))?;
    warn_if_key_readable(path);
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok(k),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            if contains(&bytes, b"ENCRYPTED PRIVATE KEY") {
                bail!(
                    "{}: encrypted private keys are not supported; decrypt it (openssl pkey -in ... -out ...)",
                    path.display()
                );
            }
            if contains(&bytes, b"BEGIN CERTIFICATE") {
                bail!(
                    "{}: contains a certificate but no private key (swapped cert and key paths?)",
                    path.display()
                );
            }
            bail!(
                "{}: no PEM private key found (expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
                path.display()
            )
        }
        Err(e) => bail!("{}: bad PEM: {e}", path.display()),
    }
}

/// Check a device id or group name against the documented safe set.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("{what} must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        bail!(
            "{what} {name:?} is too long ({} bytes, at most {MAX_NAME_LEN})",
            name.len()
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        let why = if c == ':' {
            "':' is reserved as the URN separator".to_string()
        } else if c.is_whitespace() {
            "whitespace is not allowed".to_string()
        } else if !c.is_ascii() {
            format!("non-ASCII character {c:?} is not allowed")
        } else {
            format!("character {c:?} is not allowed")
        };
        bail!("invalid {what} {name:?}: {why}; use ASCII letters, digits and - _ . @");
    }
    Ok(())
}

/// Parse a hex serial ("0A:1b:..", "0x0a1b", "0a1b") into big-endian bytes with leading
/// zero bytes removed (so "00:ab" and "ab" compare equal). `None` if not hex.
pub fn parse_serial_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("checked hex"))
        .collect();
    let first_nonzero = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes.drain(..first_nonzero);
    Some(bytes)
}

/// Canonical lowercase hex of a serial (leading zero bytes removed, no colons).
pub fn serial_to_hex(raw: &[u8]) -> String {
    let first_nonzero = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first_nonzero..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating ECDSA P-256 key")
}

pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut buf = [0u8; 20];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| anyhow!("system random number generator failed"))?;
    buf[0] &= 0x7f; // positive
    if buf[0] == 0 {
        buf[0] = 0x01; // keep it 20 octets and non-zero
    }
    Ok(SerialNumber::from_slice(&buf))
}

fn uri_san(uri: &str) -> Result<SanType> {
    Ok(SanType::URI(
        uri.try_into()
            .map_err(|e| anyhow!("invalid SAN URI {uri:?}: {e}"))?,
    ))
}

fn server_san(s: &str) -> Result<SanType> {
    let s = s.trim();
    if s.is_empty() {
        bail!("empty --san value");
    }
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = s.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (label == "*" && i == 0)
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        });
    if !ok {
        bail!(
            "invalid --san {s:?}: expected an IP address or a DNS name (ASCII; use punycode for IDNs)"
        );
    }
    Ok(SanType::DnsName(
        name.as_str()
            .try_into()
            .map_err(|e| anyhow!("invalid --san {s:?}: {e}"))?,
    ))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        b64.push(B64[(v >> 18) as usize & 63] as char);
        b64.push(B64[(v >> 12) as usize & 63] as char);
        b64.push(if n > 1 {
            B64[(v >> 6) as usize & 63] as char
        } else {
            '='
        });
        b64.push(if n > 2 {
            B64[v as usize & 63] as char
        } else {
            '='
        });
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn with_suffix(prefix: &Path, suffix: &str) -> Result<PathBuf> {
    if prefix.as_os_str().is_empty() || prefix.file_name().is_none() {
        bail!(
            "--out must be a file prefix such as certs/laptop-001, got {:?}",
            prefix
        );
    }
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    Ok(PathBuf::from(s))
}

/// Does `out` name one of `files` (compared after canonicalising the parent directories)?
fn same_file_name(out: &Path, files: &[PathBuf]) -> bool {
    fn canon(p: &Path) -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(x) if !x.as_os_str().is_empty() => x,
            _ => Path::new("."),
        };
        Some(fs::canonicalize(parent).ok()?.join(p.file_name()?))
    }
    match canon(out) {
        Some(o) => files.iter().any(|f| canon(f).as_ref() == Some(&o)),
        None => false,
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    #[cfg(not(unix))]
    let _ = DIR_MODE;
    b.create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

fn open_new(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.open(path)
}

/// Write a file created with `mode` from the start. Without `force`, fails if the file
/// exists (atomically, via O_EXCL). With `force`, writes a temp file next to it (same
/// mode) and renames it over the target, so the old file's permissions never leak onto
/// the new content and a crash leaves either the old or the new file.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<()> {
    let write_into = |f: &mut fs::File, p: &Path| -> Result<()> {
        f.write_all(contents)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", p.display()))
    };
    if !force {
        let mut f = match open_new(path, mode) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        return write_into(&mut f, path);
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = open_new(&tmp, mode).with_context(|| format!("creating {}", tmp.display()))?;
    let res = write_into(&mut f, &tmp).and_then(|_| {
        drop(f);
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(unix)]
fn warn_if_key_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = fs::metadata(path) {
        if md.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", md.permissions().mode() & 0o777),
                "private key file is readable by group/others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_key_readable(_path: &Path) {}

// ---------------------------------------------------------------------------------------

/// Helpers shared by the pki and device_auth tests: real TLS over loopback.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub fn tempdir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "komugate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Client config trusting `ca_pem` and presenting `client` (if any).
    pub fn client_config(
        ca_der: &CertificateDer<'static>,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        tls12_only: bool,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone()).unwrap();
        let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let mut cfg = match client {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    /// What the server saw.
    #[derive(Debug)]
    pub enum ServerOutcome {
        Accepted {
            identity: crate::device_auth::DeviceIdentity,
            alpn: Option<Vec<u8>>,
            resumed: bool,
        },
        Refused {
            reason: &'static str,
            error: String,
        },
    }

    /// One real handshake over loopback TCP: server with `server_cfg`, client with
    /// `client_cfg` connecting to `server_name`. Returns the server-side outcome and
    /// whether the client managed to exchange application data.
    pub async fn handshake(
        server_cfg: Arc<rustls::ServerConfig>,
        client_cfg: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> (ServerOutcome, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let (_, conn) = tls.get_ref();
                    let identity = crate::device_auth::identity_of(conn).unwrap();
                    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
                    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    let mut buf = [0u8; 4];
                    tls.read_exact(&mut buf).await.unwrap();
                    tls.write_all(b"pong").await.unwrap();
                    tls.shutdown().await.ok();
                    ServerOutcome::Accepted {
                        identity,
                        alpn,
                        resumed,
                    }
                }
                Err(e) => ServerOutcome::Refused {
                    reason: crate::device_auth::handshake_failure_reason(&e),
                    error: format!("{e}"),
                },
            }
        });
        let connector = tokio_rustls::TlsConnector::from(client_cfg);
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let client = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"pong" {
                return Err("bad reply".to_string());
            }
            Ok(())
        };
        let client_res = tokio::time::timeout(std::time::Duration::from_secs(10), client)
            .await
            .unwrap_or_else(|_| Err("client timed out".into()));
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("server timed out")
            .expect("server task panicked");
        (outcome, client_res)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::device_auth::{server_config, DeviceAuthConfig};

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn sans_of(cert_pem_path: &Path) -> Vec<String> {
        let der = load_certs(cert_pem_path).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = x.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                x509_parser::extensions::GeneralName::URI(u) => format!("uri:{u}"),
                x509_parser::extensions::GeneralName::IPAddress(b) => format!("ip:{b:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn init_writes_six_files_with_modes_and_refuses_overwrite() {
        let dir = tempdir("pki-init").join("nested");
        let paths = init(&dir, &[], false).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        for k in [
            paths.device_ca_key(),
            paths.inspect_ca_key(),
            paths.server_key(),
        ] {
            assert_eq!(mode_of(&k), 0o600, "{}", k.display());
            load_private_key(&k).unwrap();
        }
        for c in [
            paths.device_ca_cert(),
            paths.inspect_ca_cert(),
            paths.server_cert(),
        ] {
            assert_eq!(mode_of(&c), 0o644, "{}", c.display());
            assert_eq!(load_certs(&c).unwrap().len(), 1);
        }
        assert_eq!(
            sans_of(&paths.server_cert()),
            vec!["dns:localhost".to_string(), "ip:[127, 0, 0, 1]".to_string()]
        );

        // CA properties.
        for (p, cn) in [
            (paths.device_ca_cert(), DEVICE_CA_CN),
            (paths.inspect_ca_cert(), INSPECT_CA_CN),
        ] {
            let der = load_certs(&p).unwrap().remove(0);
            let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
            let got_cn = x
                .subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap();
            assert_eq!(got_cn, cn);
            let bc = x.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            assert_eq!(bc.path_len_constraint, Some(0));
            let ku = x.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert!(x.raw_serial().len() <= 20 && x.raw_serial()[0] & 0x80 == 0);
            let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
            assert!(life > 3650 * 86400);
        }
        let der = load_certs(&paths.server_cert()).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert!(life <= 825 * 86400, "server cert lives {life}s");
        assert!(x.extended_key_usage().unwrap().unwrap().value.server_auth);

        // Refuses to overwrite, names the file and the flag, and leaves files untouched.
        let before = fs::read(paths.device_ca_key()).unwrap();
        let err = init(&dir, &[], false).unwrap_err().to_string();
        assert!(
            err.contains("device-ca.key") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(fs::read(paths.device_ca_key()).unwrap(), before);
        // ensure() sees a complete PKI.
        assert!(!ensure(&dir, &[]).unwrap());

        // With force: new CA, modes still right.
        fs::set_permissions(
            paths.server_key(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        init(
            &dir,
            &["gw.example.jp".into(), "10.1.2.3".into(), "::1".into()],
            true,
        )
        .unwrap();
        assert_ne!(fs::read(paths.device_ca_key()).unwrap(), before);
        assert_eq!(mode_of(&paths.server_key()), 0o600);
        assert_eq!(
            sans_of(&paths.server_cert()),
            vec![
                "dns:gw.example.jp".to_string(),
                "ip:[10, 1, 2, 3]".to_string(),
                "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]".to_string()
            ]
        );
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(dir.parent().unwrap()).ok();
    }

    #[test]
    fn ensure_creates_once_and_rejects_partial() {
        let dir = tempdir("pki-ensure");
        assert!(ensure(&dir, &[]).unwrap());
        assert!(!ensure(&dir, &[]).unwrap());
        fs::remove_file(PkiPaths::new(&dir).inspect_ca_key()).unwrap();
        let err = ensure(&dir, &[]).unwrap_err().to_string();
        assert!(
            err.contains("inspect-ca.key") && err.contains("incomplete"),
            "{err}"
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn init_rejects_bad_san_without_writing() {
        let dir = tempdir("pki-badsan");
        let err = init(&dir, &["bad name".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad name"), "{err}");
        assert!(PkiPaths::new(&dir).all().iter().all(|p| !p.exists()));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn validate_names() {
        for ok in ["laptop-001", "a", "t.yamada@school.example", "X_9"] {
            validate_name("device id", ok).unwrap();
        }
        for (bad, needle) in [
            ("", "empty"),
            ("a:b", "':'"),
            ("a b", "whitespace"),
            ("tab\there", "whitespace"),
            ("教員", "non-ASCII"),
            ("a/b", "'/'"),
        ] {
            let e = validate_name("device id", bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        assert!(validate_name("group", &"x".repeat(65)).is_err());
    }

    #[test]
    fn serial_hex_parsing() {
        assert_eq!(parse_serial_hex("00:AB:cd"), Some(vec![0xab, 0xcd]));
        assert_eq!(parse_serial_hex("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(parse_serial_hex("zz"), None);
        assert_eq!(parse_serial_hex(""), None);
        assert_eq!(serial_to_hex(&[0, 0x0a, 0xbc]), "0abc");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempdir("pki-load");
        init(&dir, &[], false).unwrap();
        let p = PkiPaths::new(&dir);
        let e = load_certs(&p.server_key()).unwrap_err().to_string();
        assert!(e.contains("server.key") && e.contains("private key"), "{e}");
        let e = load_private_key(&p.server_cert()).unwrap_err().to_string();
        assert!(e.contains("server.pem") && e.contains("certificate"), "{e}");
        let e = load_certs(&dir.join("nope.pem")).unwrap_err();
        assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
        // Mismatched CA key.
        let e = CaMaterial::load(&p.device_ca_cert(), &p.inspect_ca_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
        // Not a CA.
        let e = CaMaterial::load(&p.server_cert(), &p.server_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CA"), "{e}");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn issue_device_writes_files_and_rejects_bad_input() {
        let dir = tempdir("pki-issue");
        init(&dir, &[], false).unwrap();
        let out = dir.join("out").join("laptop.001");
        let groups = vec!["teachers".to_string(), "school-03".to_string()];
        let opts = DeviceCertOptions {
            device_id: "laptop.001",
            groups: &groups,
            days: DEFAULT_DEVICE_DAYS,
        };
        let (cert, key) = issue_device(&dir, &opts, &out, false).unwrap();
        assert_eq!(cert, dir.join("out").join("laptop.001.pem"));
        assert_eq!(key, dir.join("out").join("laptop.001.key"));
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(mode_of(&cert), 0o644);
        assert_eq!(load_certs(&cert).unwrap().len(), 1, "leaf only");
        assert_eq!(
            sans_of(&cert),
            vec![
                "uri:urn:komugate:device:laptop.001".to_string(),
                "uri:urn:komugate:group:teachers".to_string(),
                "uri:urn:komugate:group:school-03".to_string(),
            ]
        );
        let der = load_certs(&cert).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(x.extended_key_usage().unwrap().unwrap().value.client_auth);
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert!((730 * 86400..=731 * 86400).contains(&life), "{life}");

        // No overwrite without force; force works.
        let e = issue_device(&dir, &opts, &out, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("laptop.001.pem") && e.contains("--force"), "{e}");
        let before = fs::read(&cert).unwrap();
        issue_device(&dir, &opts, &out, true).unwrap();
        assert_ne!(fs::read(&cert).unwrap(), before);

        // Bad ids / groups / days.
        for (id, g) in [
            ("", "ok"),
            ("a:b", "ok"),
            ("a b", "ok"),
            ("ok", "x:y"),
            ("ok", ""),
        ] {
            let groups = vec![g.to_string()];
            let o = DeviceCertOptions {
                device_id: id,
                groups: &groups,
                days: 30,
            };
            let e = issue_device(&dir, &o, &dir.join("bad"), false).unwrap_err();
            assert!(!dir.join("bad.pem").exists(), "{e}");
        }
        let o = DeviceCertOptions {
            device_id: "ok",
            groups: &[],
            days: 0,
        };
        assert!(issue_device(&dir, &o, &dir.join("bad"), false).is_err());
        // Longer than the CA lives: clamped to the CA's expiry.
        let o = DeviceCertOptions {
            device_id: "long",
            groups: &[],
            days: 3650,
        };
        let (long, _) = issue_device(&dir, &o, &dir.join("long"), false).unwrap();
        let ca = load_certs(&PkiPaths::new(&dir).device_ca_cert())
            .unwrap()
            .remove(0);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let der = load_certs(&long).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x.validity().not_after, ca.validity().not_after);
        // Never clobbers the PKI itself, even with force.
        let o = DeviceCertOptions {
            device_id: "ok",
            groups: &[],
            days: 30,
        };
        let e = issue_device(&dir, &o, &dir.join("device-ca"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PKI file"), "{e}");
        fs::remove_dir_all(&dir).ok();
    }

    /// The whole file-based flow with a real mTLS handshake: server.pem (signed by
    /// inspect-ca) validates at a client trusting inspect-ca.pem, and a device cert signed
    /// by the *reloaded* device CA validates at a server trusting device-ca.pem.
    #[tokio::test]
    async fn files_chain_in_real_handshake() {
        let dir = tempdir("pki-tls");
        let paths = init(&dir, &[], false).unwrap();
        let groups = vec!["staff".to_string()];
        let opts = DeviceCertOptions {
            device_id: "pc-42",
            groups: &groups,
            days: 30,
        };
        let (cert, key) = issue_device(&dir, &opts, &dir.join("pc-42"), false).unwrap();

        let server_cfg = server_config(&DeviceAuthConfig {
            server_cert: paths.server_cert(),
            server_key: paths.server_key(),
            device_ca: paths.device_ca_cert(),
            crls: vec![],
            revoked_serials: None,
        })
        .unwrap();
        let inspect_ca = load_certs(&paths.inspect_ca_cert()).unwrap().remove(0);
        for (name, tls12) in [("localhost", false), ("127.0.0.1", true)] {
            let client_cfg = client_config(
                &inspect_ca,
                Some((load_certs(&cert).unwrap(), load_private_key(&key).unwrap())),
                tls12,
            );
            let (outcome, client) = handshake(server_cfg.clone(), client_cfg, name).await;
            match outcome {
                ServerOutcome::Accepted { identity, .. } => {
                    assert_eq!(identity.device_id, "pc-42");
                    assert_eq!(identity.cert_groups, vec!["staff".to_string()]);
                }
                other => panic!("{other:?}"),
            }
            client.unwrap();
        }

        // The server cert does NOT validate against the device CA (CAs are distinct).
        let device_ca = load_certs(&paths.device_ca_cert()).unwrap().remove(0);
        let client_cfg = client_config(
            &device_ca,
            Some((load_certs(&cert).unwrap(), load_private_key(&key).unwrap())),
            false,
        );
        let (outcome, client) = handshake(server_cfg, client_cfg, "localhost").await;
        assert!(client.unwrap_err().contains("UnknownIssuer"));
        assert!(matches!(outcome, ServerOutcome::Refused { .. }));
        fs::remove_dir_all(&dir).ok();
    }
}
