//! Device identity on the mTLS listener: client-cert verification (device CA, CRLs,
//! revoked serials) and device id / groups extraction.
//!
//! * [`server_config`] builds the rustls `ServerConfig` for the HTTPS proxy listener:
//!   TLS 1.2 + 1.3 with the ring provider, ALPN `h2`, `http/1.1`, and a client
//!   certificate that chains to the device CA is REQUIRED.
//! * Revocation: CRLs (PEM `X509 CRL` blocks or DER) are checked for the end-entity cert
//!   by webpki; a cert no CRL covers is accepted (unknown status allowed), and expired
//!   CRLs are still used (not enforced), so a stale CRL never locks every laptop out.
//!   On top of that, a plain deny list of serials (one hex serial per line, `#` comments,
//!   colons and `0x` allowed, case-insensitive, leading zeros ignored) rejects listed
//!   certs with `CertificateError::Revoked`. Both are read when the config is built.
//! * [`DeviceAuth`]: the listener's TLS state, rebuilt from the files on every
//!   reload, and the per-connection check that makes resumption safe (see there).
//! * [`identity_from_cert`] / [`identity_of`] turn the verified cert into a
//!   [`DeviceIdentity`]; [`handshake_failure_reason`] maps a failed accept to a metric label.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::pki::{self, DEVICE_URN_PREFIX, GROUP_URN_PREFIX};

/// Files the mTLS listener needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceAuthConfig {
    /// Gateway server certificate chain (PEM), e.g. `server.pem`.
    pub server_cert: PathBuf,
    /// Its private key (PEM), e.g. `server.key`.
    pub server_key: PathBuf,
    /// Device CA certificate(s) (PEM); every certificate in the file is a trust anchor.
    pub device_ca: PathBuf,
    /// CRL files (PEM or DER) issued by the device CA.
    pub crls: Vec<PathBuf>,
    /// Optional deny list of serial numbers.
    pub revoked_serials: Option<PathBuf>,
}

/// ALPN protocols offered by the proxy listener, in preference order.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Resumable sessions kept per server config (about 1 KiB each with the client cert).
pub const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// The rustls server config for the mTLS proxy listener, and its verifier.
fn build(cfg: &DeviceAuthConfig) -> Result<(Arc<rustls::ServerConfig>, Arc<DeviceCertVerifier>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = pki::load_certs(&cfg.server_cert)?;
    let key = pki::load_private_key(&cfg.server_key)?;

    let mut roots = rustls::RootCertStore::empty();
    let mut anchor_key_ids = HashSet::new();
    for (i, ca) in pki::load_certs(&cfg.device_ca)?.into_iter().enumerate() {
        if let Some(ski) = subject_key_id(&ca) {
            anchor_key_ids.insert(ski);
        }
        roots.add(ca).map_err(|e| {
            anyhow!(
                "{}: certificate #{} cannot be used as a device CA trust anchor: {e}",
                cfg.device_ca.display(),
                i + 1
            )
        })?;
    }

    let mut crls = Vec::new();
    for path in &cfg.crls {
        crls.extend(load_crls(path)?);
    }
    let n_crls = crls.len();

    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| anyhow!("building client certificate verifier: {e}"))?;

    let revoked = match &cfg.revoked_serials {
        Some(p) => load_revoked_serials(p)?,
        None => HashSet::new(),
    };
    let n_revoked = revoked.len();
    let verifier = Arc::new(DeviceCertVerifier {
        inner: webpki,
        revoked,
        anchor_key_ids,
        crl_count: n_crls,
    });

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("selecting TLS versions")?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} do not form a usable certificate/key pair",
                cfg.server_cert.display(),
                cfg.server_key.display()
            )
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Laptops open tens of connections each at the 08:00 peak: let them resume instead
    // of repeating the full ECDHE handshake every time. Sessions are kept in this
    // config's memory cache (no stateless tickets: nothing a client holds can outlive
    // the cache), so building a new config on reload ends every older session.
    // Resumption skips rustls' client-certificate verifier: DeviceAuth::admit
    // re-verifies the certificate on every connection.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    tracing::debug!(
        device_ca = %cfg.device_ca.display(),
        crls = n_crls,
        revoked_serials = n_revoked,
        "built mTLS server config"
    );
    Ok((Arc::new(config), verifier))
}

/// Build the rustls server config for the mTLS proxy listener.
pub fn server_config(cfg: &DeviceAuthConfig) -> Result<Arc<rustls::ServerConfig>> {
    build(cfg).map(|(config, _)| config)
}

/// The mTLS listener's TLS state and the device certificate check that holds
/// on every connection.
///
/// rustls verifies the client certificate during a full handshake only: a
/// resumed session (TLS 1.2 session id, TLS 1.3 PSK) carries the certificate
/// it was established with, unchecked. So an expired or revoked certificate
/// would keep working as long as the client resumes. Two measures close that:
///
/// 1. [`DeviceAuth::admit`] re-verifies the peer's certificate chain on every
///    accepted connection, full or resumed, with the verifier of the *current*
///    generation (device CA, CRLs, revoked serials) at the current time; this is
///    where the device identity is derived, so no connection gets an identity
///    from an unchecked certificate. And [`DeviceAuth::until_invalid`] ends an
///    open connection when its certificate expires or a reload no longer
///    accepts it.
/// 2. [`DeviceAuth::reload`] rebuilds the server config from the files, with a
///    new session cache, so sessions from before a reload cannot resume at all.
///
/// (1) alone is sufficient for safety; (2) makes a CA change or a revocation
/// apply without a restart and bounds what an old session could be worth. The
/// cost of (1) is one certificate-chain verification per connection
/// (tens of microseconds), against the handshake's ECDHE that resumption saves.
pub struct DeviceAuth {
    files: DeviceAuthConfig,
    current: arc_swap::ArcSwap<Generation>,
    changed: tokio::sync::watch::Sender<u64>,
}

struct Generation {
    server: Arc<rustls::ServerConfig>,
    verifier: Arc<DeviceCertVerifier>,
    number: u64,
    /// Digest of the trust files' contents (device CA, CRLs, revoked serials,
    /// server certificate), to tell the audit log when they changed.
    fingerprint: String,
}

/// What a reload changed in the files the mTLS listener trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustChange {
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// e.g. "device CA 1 certificate(s), 1 CRL file(s), 3 revoked serial(s)".
    pub detail: String,
}

/// A device admitted on a connection: who, and until when its certificate is valid.
#[derive(Debug, Clone)]
pub struct AdmittedDevice {
    pub identity: DeviceIdentity,
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: std::time::SystemTime,
}

impl DeviceAuth {
    pub fn load(files: DeviceAuthConfig) -> Result<DeviceAuth> {
        let (server, verifier) = build(&files)?;
        let fingerprint = trust_fingerprint(&files);
        Ok(DeviceAuth {
            files,
            current: arc_swap::ArcSwap::from_pointee(Generation {
                server,
                verifier,
                number: 1,
                fingerprint,
            }),
            changed: tokio::sync::watch::channel(1).0,
        })
    }

    /// The server config new connections are accepted with.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load().server.clone()
    }

    /// The files this state is built from.
    pub fn files(&self) -> &DeviceAuthConfig {
        &self.files
    }

    /// Rebuilds everything from the files; on an error the running state
    /// stays. Open connections are re-checked against the new state.
    /// Returns what changed in the trust files, if anything.
    pub fn reload(&self) -> Result<Option<TrustChange>> {
        let (server, verifier) = build(&self.files)?;
        let fingerprint = trust_fingerprint(&self.files);
        let old = self.current.load_full();
        let detail = format!(
            "device CA {} certificate(s), {} CRL(s), {} revoked serial(s)",
            verifier.anchor_key_ids.len().max(1),
            verifier.crl_count,
            verifier.revoked.len()
        );
        self.current.store(Arc::new(Generation {
            server,
            verifier,
            number: old.number + 1,
            fingerprint: fingerprint.clone(),
        }));
        self.changed.send_replace(old.number + 1);
        Ok((old.fingerprint != fingerprint).then(|| TrustChange {
            old_fingerprint: old.fingerprint.clone(),
            new_fingerprint: fingerprint,
            detail,
        }))
    }

    /// Checks the certificate of an accepted connection now, against the
    /// current CA and revocation state, and derives the device identity.
    pub fn admit(&self, conn: &rustls::ServerConnection) -> Result<AdmittedDevice, AdmitError> {
        let chain: Vec<CertificateDer<'static>> = conn
            .peer_certificates()
            .ok_or(AdmitError::Certificate(
                rustls::Error::NoCertificatesPresented,
            ))?
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        self.verify(&chain).map_err(AdmitError::Certificate)?;
        let identity = identity_from_cert(&chain[0]).map_err(AdmitError::Identity)?;
        let (_, x) = x509_parser::parse_x509_certificate(chain[0].as_ref()).map_err(|_| {
            AdmitError::Certificate(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ))
        })?;
        let not_after = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(x.validity().not_after.timestamp().max(0) as u64);
        Ok(AdmittedDevice {
            identity,
            chain,
            not_after,
        })
    }

    fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.current
            .load()
            .verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }

    /// Resolves (with the metric reason) when `device`'s certificate stops
    /// being acceptable: at its expiry, or at a reload that no longer accepts
    /// it (revoked, CA changed). The caller closes the connection.
    pub async fn until_invalid(&self, device: &AdmittedDevice) -> &'static str {
        let mut changes = self.changed.subscribe();
        // webpki accepts the certificate up to and including the not-after second.
        let end = device.not_after + std::time::Duration::from_secs(1);
        loop {
            let Ok(left) = end.duration_since(std::time::SystemTime::now()) else {
                return "expired";
            };
            // Wake at least hourly: the wall clock may have been set meanwhile.
            let nap = tokio::time::sleep(left.min(std::time::Duration::from_secs(3600)));
            tokio::select! {
                _ = nap => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The state is gone with the gateway: only expiry is left.
                        tokio::time::sleep(left).await;
                        return "expired";
                    }
                    if let Err(e) = self.verify(&device.chain) {
                        return rustls_error_reason(&e);
                    }
                }
            }
        }
    }
}

fn trust_fingerprint(files: &DeviceAuthConfig) -> String {
    let mut all = Vec::new();
    let paths = [&files.device_ca, &files.server_cert]
        .into_iter()
        .chain(files.crls.iter())
        .chain(files.revoked_serials.iter());
    for path in paths {
        all.extend_from_slice(path.as_os_str().as_encoded_bytes());
        all.push(0);
        all.extend_from_slice(&fs::read(path).unwrap_or_default());
        all.push(0);
    }
    crate::logs::audit::digest(&all)
}

/// Why [`DeviceAuth::admit`] refused a connection.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("client certificate refused: {0}")]
    Certificate(rustls::Error),
    #[error("certificate carries no device id: {0:#}")]
    Identity(anyhow::Error),
}

impl AdmitError {
    /// Metric label, as [`handshake_failure_reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            AdmitError::Certificate(e) => rustls_error_reason(e),
            AdmitError::Identity(_) => "no_device_id",
        }
    }
}

/// Who is on the other end of an accepted mTLS connection.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device_id: String,
    /// Groups carried in the certificate (the registry may add more).
    pub cert_groups: Vec<String>,
    /// Lowercase hex, no colons, leading zero bytes removed.
    pub serial_hex: String,
}

/// From the verified end-entity cert: device id from SAN URI `urn:komugate:device:ID`,
/// else the subject CN; groups from `urn:komugate:group:G` SAN URIs (URN scheme and
/// namespace matched case-insensitively, duplicates removed, order kept).
pub fn identity_from_cert(cert: &CertificateDer) -> Result<DeviceIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow!("client certificate does not parse: {e}"))?;

    let mut device_id: Option<String> = None;
    let mut groups: Vec<String> = Vec::new();
    let san = x
        .subject_alternative_name()
        .map_err(|e| anyhow!("client certificate has a bad subjectAltName: {e}"))?;
    if let Some(san) = san {
        for gn in &san.value.general_names {
            let GeneralName::URI(uri) = gn else { continue };
            if let Some(id) = strip_prefix_ci(uri, DEVICE_URN_PREFIX) {
                match &device_id {
                    None => device_id = Some(id.to_string()),
                    Some(prev) if prev == id => {}
                    Some(prev) => {
                        bail!("client certificate names two devices ({prev:?} and {id:?})")
                    }
                }
            } else if let Some(g) = strip_prefix_ci(uri, GROUP_URN_PREFIX) {
                if !g.is_empty() && !groups.iter().any(|x| x == g) {
                    groups.push(g.to_string());
                }
            }
        }
    }
    let device_id = match device_id {
        Some(id) => id,
        None => x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!("client certificate has neither a {DEVICE_URN_PREFIX}ID SAN URI nor a subject CN")
            })?,
    };
    if device_id.trim().is_empty() {
        bail!("client certificate carries an empty device id");
    }
    if let Some(bad) = device_id
        .chars()
        .chain(groups.iter().flat_map(|g| g.chars()))
        .find(|c| c.is_control())
    {
        bail!("client certificate device id / group contains control character {bad:?}");
    }
    Ok(DeviceIdentity {
        device_id,
        cert_groups: groups,
        serial_hex: pki::serial_to_hex(x.raw_serial()),
    })
}

/// From an accepted server connection: `peer_certificates()[0]` -> identity.
pub fn identity_of(conn: &rustls::ServerConnection) -> Result<DeviceIdentity> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("connection has no verified client certificate"))?;
    identity_from_cert(cert)
}

/// Map a failed TLS accept (the `io::Error` tokio-rustls returns, wrapping
/// `rustls::Error`) to a metric label: `no_client_cert`, `unknown_ca`, `expired`,
/// `not_yet_valid`, `revoked`, `bad_cert`, `protocol`, `timeout` or `io`.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    if err.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    if let Some(inner) = err.get_ref() {
        if let Some(e) = inner.downcast_ref::<rustls::Error>() {
            return rustls_error_reason(e);
        }
        if inner.is::<tokio::time::error::Elapsed>() {
            return "timeout";
        }
    }
    "io"
}

fn rustls_error_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            _ => "bad_cert",
        },
        rustls::Error::InvalidCertRevocationList(_) => "bad_cert",
        _ => "protocol",
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Load CRLs from a PEM file (any number of `X509 CRL` blocks) or a DER file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = fs::read(path).with_context(|| format!("reading CRL file {}", path.display()))?;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            let mut v = Vec::new();
            for item in CertificateRevocationListDer::pem_slice_iter(&bytes) {
                v.push(item.map_err(|e| anyhow!("{}: bad PEM: {e}", path.display()))?);
            }
            if v.is_empty() {
                bail!("{}: no PEM X509 CRL block found", path.display());
            }
            v
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
    for (i, crl) in crls.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_crl(crl.as_ref()) {
            bail!("{}: CRL #{} does not parse: {e}", path.display(), i + 1);
        }
    }
    Ok(crls)
}

/// Parse a revoked-serials file: one hex serial per line, `#` starts a comment, colons
/// and a `0x` prefix allowed, case-insensitive. Returns canonical byte strings (leading
/// zeros removed). Errors name the file and line.
pub fn load_revoked_serials(path: &Path) -> Result<HashSet<Vec<u8>>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading revoked serials file {}", path.display()))?;
    parse_revoked_serials(&text).map_err(|e| anyhow!("{}:{e}", path.display()))
}

/// Parses the text of a revoked-serials list (see [`load_revoked_serials`]).
pub fn parse_revoked_serials(text: &str) -> Result<HashSet<Vec<u8>>, String> {
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let serial = pki::parse_serial_hex(line)
            .ok_or_else(|| format!("{}: not a hex serial number: {line:?}", i + 1))?;
        out.insert(serial);
    }
    Ok(out)
}

/// WebPKI client verification plus the serial deny list.
#[derive(Debug)]
struct DeviceCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: HashSet<Vec<u8>>,
    /// Subject key identifiers of the device CA certs.
    anchor_key_ids: HashSet<Vec<u8>>,
    crl_count: usize,
}

fn subject_key_id(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let ski = x
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    ski
}

fn authority_key_id(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let aki = x
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    aki
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            // webpki builds paths by subject name only, so a cert from a *different* CA
            // with the same name (typically an old PKI after `pki init --force`) fails
            // with BadSignature. If its authority key id names none of our CAs, report it
            // as what it is: an unknown issuer.
            Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
                if intermediates.is_empty()
                    && authority_key_id(end_entity)
                        .is_some_and(|aki| !self.anchor_key_ids.contains(&aki)) =>
            {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                ));
            }
            Err(e) => return Err(e),
        };
        if !self.revoked.is_empty() {
            let (_, x) = x509_parser::parse_x509_certificate(end_entity.as_ref())
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let serial =
                pki::parse_serial_hex(&pki::serial_to_hex(x.raw_serial())).unwrap_or_default();
            if self.revoked.contains(&serial) {
                tracing::debug!(serial = %pki::serial_to_hex(x.raw_serial()), "client certificate serial is on the deny list");
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::test_support::*;
    use crate::pki::{generate_ca, init, CaMaterial, PkiPaths};
    use time::{Duration, OffsetDateTime};

    struct Fixture {
        dir: PathBuf,
        paths: PkiPaths,
        device_ca: CaMaterial,
        inspect_ca_der: CertificateDer<'static>,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let dir = tempdir(tag);
            let paths = init(&dir, &[], false).unwrap();
            let device_ca =
                CaMaterial::load(&paths.device_ca_cert(), &paths.device_ca_key()).unwrap();
            let inspect_ca_der = pki::load_certs(&paths.inspect_ca_cert()).unwrap().remove(0);
            Fixture {
                dir,
                paths,
                device_ca,
                inspect_ca_der,
            }
        }

        fn config(&self, crls: Vec<PathBuf>, revoked: Option<PathBuf>) -> DeviceAuthConfig {
            DeviceAuthConfig {
                server_cert: self.paths.server_cert(),
                server_key: self.paths.server_key(),
                device_ca: self.paths.device_ca_cert(),
                crls,
                revoked_serials: revoked,
            }
        }

        fn client(&self, cert: Option<&pki::IssuedCert>, tls12: bool) -> Arc<rustls::ClientConfig> {
            client_config(
                &self.inspect_ca_der,
                cert.map(|c| (vec![c.cert_der().unwrap()], c.key_der().unwrap())),
                tls12,
            )
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn valid_now() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::hours(1), now + Duration::days(30))
    }

    async fn expect_refused(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        want: &str,
    ) {
        let (outcome, client_res) = handshake(server, client, "localhost").await;
        match outcome {
            ServerOutcome::Refused { reason, error } => {
                assert_eq!(reason, want, "server error: {error}")
            }
            other => panic!("expected refusal {want}, got {other:?}"),
        }
        assert!(
            client_res.is_err(),
            "client must not get application data through"
        );
    }

    #[tokio::test]
    async fn good_cert_accepted_with_identity_tls13_and_tls12() {
        let f = Fixture::new("da-good");
        let groups = vec!["teachers".to_string(), "school-07".to_string()];
        let (nb, na) = valid_now();
        let cert = f
            .device_ca
            .issue_device("laptop-0815", &groups, nb, na)
            .unwrap();
        let server = server_config(&f.config(vec![], None)).unwrap();
        assert_eq!(
            server.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        for tls12 in [false, true] {
            let (outcome, client_res) =
                handshake(server.clone(), f.client(Some(&cert), tls12), "localhost").await;
            match outcome {
                ServerOutcome::Accepted {
                    identity,
                    alpn,
                    resumed,
                } => {
                    assert_eq!(identity.device_id, "laptop-0815");
                    assert!(!resumed);
                    assert_eq!(identity.cert_groups, groups);
                    let der = cert.cert_der().unwrap();
                    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
                    assert_eq!(identity.serial_hex, pki::serial_to_hex(x.raw_serial()));
                    assert_eq!(identity.serial_hex.len(), 40);
                    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
                }
                other => panic!("tls12={tls12}: {other:?}"),
            }
            client_res.unwrap();
        }
    }

    #[tokio::test]
    async fn resumed_session_keeps_identity() {
        let f = Fixture::new("da-resume");
        let groups = vec!["g1".to_string()];
        let (nb, na) = valid_now();
        let cert = f
            .device_ca
            .issue_device("resumer", &groups, nb, na)
            .unwrap();
        let server = server_config(&f.config(vec![], None)).unwrap();
        for tls12 in [false, true] {
            let client = f.client(Some(&cert), tls12);
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let (outcome, res) = handshake(server.clone(), client.clone(), "localhost").await;
                res.unwrap();
                match outcome {
                    ServerOutcome::Accepted {
                        identity, resumed, ..
                    } => {
                        assert_eq!(identity.device_id, "resumer");
                        assert_eq!(identity.cert_groups, groups);
                        kinds.push(resumed);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(kinds, vec![false, true], "tls12={tls12}");
        }
    }

    #[tokio::test]
    async fn no_client_cert_refused() {
        let f = Fixture::new("da-nocert");
        let server = server_config(&f.config(vec![], None)).unwrap();
        for tls12 in [false, true] {
            expect_refused(server.clone(), f.client(None, tls12), "no_client_cert").await;
        }
    }

    #[tokio::test]
    async fn unknown_ca_refused() {
        let f = Fixture::new("da-unknown");
        let (nb, na) = valid_now();
        let server = server_config(&f.config(vec![], None)).unwrap();
        // A differently named CA.
        let other = generate_ca("some other CA").unwrap();
        let cert = other.issue_device("intruder", &[], nb, na).unwrap();
        expect_refused(server.clone(), f.client(Some(&cert), false), "unknown_ca").await;
        // Same name, different key: e.g. a cert from the PKI before `init --force`.
        let old = generate_ca(pki::DEVICE_CA_CN).unwrap();
        let cert = old.issue_device("stale-laptop", &[], nb, na).unwrap();
        expect_refused(server.clone(), f.client(Some(&cert), false), "unknown_ca").await;
        expect_refused(server, f.client(Some(&cert), true), "unknown_ca").await;
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_refused() {
        let f = Fixture::new("da-expired");
        let now = OffsetDateTime::now_utc();
        let expired = f
            .device_ca
            .issue_device(
                "old",
                &[],
                now - Duration::days(10),
                now - Duration::days(1),
            )
            .unwrap();
        let future = f
            .device_ca
            .issue_device(
                "new",
                &[],
                now + Duration::days(1),
                now + Duration::days(10),
            )
            .unwrap();
        let server = server_config(&f.config(vec![], None)).unwrap();
        expect_refused(server.clone(), f.client(Some(&expired), false), "expired").await;
        expect_refused(server.clone(), f.client(Some(&expired), true), "expired").await;
        expect_refused(server, f.client(Some(&future), false), "not_yet_valid").await;
    }

    #[tokio::test]
    async fn revoked_serial_file_refuses_only_listed_cert() {
        let f = Fixture::new("da-serials");
        let (nb, na) = valid_now();
        let bad = f.device_ca.issue_device("stolen", &[], nb, na).unwrap();
        let good = f.device_ca.issue_device("fine", &[], nb, na).unwrap();
        let bad_serial = identity_from_cert(&bad.cert_der().unwrap())
            .unwrap()
            .serial_hex;
        // openssl-style: uppercase with colons and a leading 00, plus comments.
        let colon = bad_serial
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let list = f.dir.join("revoked.txt");
        fs::write(
            &list,
            format!("# lost on the train 2025-04-01\n\n00:{colon}   # pc stolen\n0xdeadbeef\n"),
        )
        .unwrap();
        let server = server_config(&f.config(vec![], Some(list.clone()))).unwrap();
        expect_refused(server.clone(), f.client(Some(&bad), false), "revoked").await;
        expect_refused(server.clone(), f.client(Some(&bad), true), "revoked").await;
        let (outcome, res) = handshake(server, f.client(Some(&good), false), "localhost").await;
        assert!(
            matches!(outcome, ServerOutcome::Accepted { .. }),
            "{outcome:?}"
        );
        res.unwrap();

        // A bad line is reported with file and line number.
        fs::write(&list, "abcd\nnot-hex\n").unwrap();
        let e = server_config(&f.config(vec![], Some(list)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("revoked.txt:2") && e.contains("not-hex"), "{e}");
    }

    #[tokio::test]
    async fn crl_revokes_cert() {
        let f = Fixture::new("da-crl");
        let (nb, na) = valid_now();
        let bad = f
            .device_ca
            .issue_device("revoked-by-crl", &[], nb, na)
            .unwrap();
        let good = f.device_ca.issue_device("still-fine", &[], nb, na).unwrap();
        let bad_serial = identity_from_cert(&bad.cert_der().unwrap())
            .unwrap()
            .serial_hex;

        // Signed with rcgen's CertificateRevocationListParams by the (reloaded) device CA.
        let crl_pem = f.device_ca.sign_crl(&[bad_serial], 1, 7).unwrap();
        let crl_path = f.dir.join("device.crl.pem");
        fs::write(&crl_path, &crl_pem).unwrap();
        let server = server_config(&f.config(vec![crl_path.clone()], None)).unwrap();
        expect_refused(server.clone(), f.client(Some(&bad), false), "revoked").await;
        let (outcome, res) = handshake(server, f.client(Some(&good), false), "localhost").await;
        assert!(
            matches!(outcome, ServerOutcome::Accepted { .. }),
            "{outcome:?}"
        );
        res.unwrap();

        // DER CRL works too.
        let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
        let der_path = f.dir.join("device.crl");
        fs::write(&der_path, der.as_ref()).unwrap();
        let server = server_config(&f.config(vec![der_path], None)).unwrap();
        expect_refused(server, f.client(Some(&bad), true), "revoked").await;

        // A CRL from another CA does not cover our certs: unknown status is allowed.
        let other = generate_ca("other CA").unwrap();
        let other_crl = f.dir.join("other.crl.pem");
        fs::write(&other_crl, other.sign_crl(&["01".into()], 1, 7).unwrap()).unwrap();
        let server = server_config(&f.config(vec![other_crl], None)).unwrap();
        let (outcome, res) = handshake(server, f.client(Some(&good), false), "localhost").await;
        assert!(
            matches!(outcome, ServerOutcome::Accepted { .. }),
            "{outcome:?}"
        );
        res.unwrap();
    }

    #[test]
    fn identity_falls_back_to_cn_and_dedups_groups() {
        // A cert with only a CN (issued by some other tooling).
        let ca = generate_ca("x").unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "PC-001");
        params.subject_alt_names = vec![
            rcgen::SanType::URI("URN:KOMUGATE:group:a".try_into().unwrap()),
            rcgen::SanType::URI("urn:komugate:group:a".try_into().unwrap()),
            rcgen::SanType::URI("https://example.com/".try_into().unwrap()),
        ];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params
            .signed_by(&key, ca.certificate(), ca.key_pair())
            .unwrap();
        let id = identity_from_cert(cert.der()).unwrap();
        assert_eq!(id.device_id, "PC-001");
        assert_eq!(id.cert_groups, vec!["a".to_string()]);
    }

    #[test]
    fn failure_reason_mapping() {
        use std::io::{Error, ErrorKind};
        let wrap = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        assert_eq!(
            handshake_failure_reason(&wrap(rustls::Error::NoCertificatesPresented)),
            "no_client_cert"
        );
        assert_eq!(
            handshake_failure_reason(&wrap(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))),
            "bad_cert"
        );
        assert_eq!(
            handshake_failure_reason(&wrap(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))),
            "protocol"
        );
        assert_eq!(
            handshake_failure_reason(&Error::from(ErrorKind::TimedOut)),
            "timeout"
        );
        assert_eq!(
            handshake_failure_reason(&Error::from(ErrorKind::UnexpectedEof)),
            "io"
        );
        assert_eq!(
            handshake_failure_reason(&Error::from(ErrorKind::ConnectionReset)),
            "io"
        );
    }

    #[test]
    fn server_config_errors_name_files() {
        let f = Fixture::new("da-errors");
        let mut cfg = f.config(vec![], None);
        cfg.device_ca = f.dir.join("missing-ca.pem");
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("missing-ca.pem"), "{e}");
        let mut cfg = f.config(vec![], None);
        cfg.server_key = f.paths.device_ca_key(); // wrong key for server.pem
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(
            e.contains("server.pem") && e.contains("device-ca.key"),
            "{e}"
        );
        let cfg = f.config(vec![f.paths.server_cert()], None); // a cert is not a CRL
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("server.pem"), "{e}");
    }
}
