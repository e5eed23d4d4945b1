//! Certificate authorities in memory: create or load a CA, and sign device
//! certs, the gateway's server cert, TLS-inspection leaves and CRLs with it.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use super::names::{parse_serial_hex, validate_name};
use super::pem::{load_certs, pem_encode};
use super::{
    BACKDATE, CA_VALIDITY_DAYS, DEVICE_URN_PREFIX, GROUP_URN_PREFIX, ORGANIZATION, SERVER_CN,
    SERVER_VALIDITY_DAYS,
};

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
    /// here (tests use this to mint expired or not-yet-valid certs); [`super::issue_device`]
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

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating ECDSA P-256 key")
}

fn random_serial() -> Result<SerialNumber> {
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
