//! The assertion token: the beacon's Ed25519 key (generate, PEM, key-pair
//! files), signing an assertion and decoding and verifying a token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{MAX_AGE_SECS, MAX_FUTURE_SKEW_SECS};
use crate::common::hex;

const TOKEN_PREFIX: &str = "ksa1";
const SIGNING_CONTEXT: &[u8] = b"komugate-site-assertion-v1\n";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 2048;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a beacon signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub site: String,
    pub device: String,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// 128 random bits, hex.
    pub nonce: String,
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(buf)
}

/// A beacon's signing key.
pub struct BeaconKey(SigningKey);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeaconKey(public {})", self.public_base64())
    }
}

impl BeaconKey {
    pub fn generate() -> Result<BeaconKey> {
        Ok(BeaconKey(SigningKey::from_bytes(&random_bytes::<32>()?)))
    }

    /// Parses a PKCS#8 PEM Ed25519 private key (as written by
    /// `komugate pki beacon-key` or `openssl genpkey -algorithm ed25519`).
    pub fn from_pem(text: &str, origin: &str) -> Result<BeaconKey> {
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            bail!("{origin}: no \"-----BEGIN PRIVATE KEY-----\" block; make a beacon key with `komugate pki beacon-key --out PREFIX`");
        }
        let der = STANDARD
            .decode(body.trim())
            .map_err(|e| anyhow!("{origin}: the PEM block is not valid base64: {e}"))?;
        if der.len() != 48 || der[..16] != PKCS8_ED25519_PREFIX {
            bail!("{origin}: not an Ed25519 private key (PKCS#8); make one with `komugate pki beacon-key --out PREFIX`");
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&der[16..]);
        Ok(BeaconKey(SigningKey::from_bytes(&seed)))
    }

    pub fn load(path: &Path) -> Result<BeaconKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the beacon key {}", path.display()))?;
        BeaconKey::from_pem(&text, &path.display().to_string())
    }

    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        let b64 = STANDARD.encode(der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    /// The public key as it goes into the policy (`beacon_key = "..."`).
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.0.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// A fresh assertion for `device` at `site`, issued at `iat`.
    pub fn issue(&self, site: &str, device: &str, iat: u64) -> Result<String> {
        let a = Assertion {
            site: site.to_string(),
            device: device.to_string(),
            iat,
            nonce: hex(&random_bytes::<16>()?),
        };
        Ok(self.sign(&a))
    }

    /// Signs an assertion into a token (tests use this to forge old or odd ones).
    pub fn sign(&self, a: &Assertion) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(a).unwrap_or_default());
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        let sig = self.0.sign(&msg);
        format!(
            "{TOKEN_PREFIX}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }
}

/// Writes `PREFIX.key` (PKCS#8 PEM, mode 0600) and `PREFIX.pub` (the base64
/// public key); returns their paths and the public key.
pub fn write_key_pair(prefix: &Path, force: bool) -> Result<(PathBuf, PathBuf, String)> {
    let key_path = prefix.with_extension("key");
    let pub_path = prefix.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !force {
            bail!("{} exists; pass --force to overwrite it (sites holding the old key stop being recognised)", p.display());
        }
    }
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = BeaconKey::generate()?;
    write_private(&key_path, key.to_pem().as_bytes())?;
    let public = key.public_base64();
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok((key_path, pub_path, public))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Parses a base64 Ed25519 public key (32 bytes).
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey> {
    let bytes = STANDARD
        .decode(b64.trim())
        .or_else(|_| STANDARD.decode(format!("{}=", b64.trim())))
        .map_err(|e| anyhow!("beacon public key {b64:?} is not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("beacon public key {b64:?} is not 32 bytes"))?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| anyhow!("beacon public key {b64:?} is not an Ed25519 point: {e}"))
}

/// Why an assertion was not accepted (the `reason` label of
/// `komugate_site_assertions_total`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssertionError {
    #[error("malformed site assertion: {0}")]
    Malformed(String),
    #[error("site assertion names site {0:?}, which has no beacon_key in the policy")]
    UnknownSite(String),
    #[error("site assertion for site {0:?} has an invalid signature (forged, or signed with another key)")]
    BadSignature(String),
    #[error("site assertion expired: issued {age_secs} s ago (at most {MAX_AGE_SECS} s)")]
    Expired { age_secs: u64 },
    #[error("site assertion issued {ahead_secs} s in the future (clock skew over {MAX_FUTURE_SKEW_SECS} s)")]
    FromFuture { ahead_secs: u64 },
    #[error("site assertion is for device {asserted:?}, but the client certificate is device {actual:?}")]
    WrongDevice { asserted: String, actual: String },
    #[error("site assertion was already used on another connection (replay)")]
    Replayed,
    #[error("site assertion on a connection without a device certificate")]
    NoDevice,
}

impl AssertionError {
    pub fn label(&self) -> &'static str {
        match self {
            AssertionError::Malformed(_) => "malformed",
            AssertionError::UnknownSite(_) => "unknown_site",
            AssertionError::BadSignature(_) => "bad_signature",
            AssertionError::Expired { .. } => "expired",
            AssertionError::FromFuture { .. } => "from_future",
            AssertionError::WrongDevice { .. } => "wrong_device",
            AssertionError::Replayed => "replayed",
            AssertionError::NoDevice => "no_device",
        }
    }
}

/// Splits and decodes a token without checking the signature.
pub fn decode(token: &str) -> Result<Assertion, AssertionError> {
    let bad = |m: &str| AssertionError::Malformed(m.to_string());
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let mut parts = token.trim().split('.');
    let (Some(prefix), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected ksa1.<payload>.<signature>"));
    };
    if prefix != TOKEN_PREFIX {
        return Err(bad("unknown version prefix"));
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| bad("payload is not base64url"))?;
    serde_json::from_slice(&json).map_err(|e| AssertionError::Malformed(format!("payload: {e}")))
}

/// Checks signature, device and freshness (not replay: see [`ReplayCache`]).
pub fn verify(
    token: &str,
    keys: &HashMap<String, VerifyingKey>,
    device: &str,
    now: u64,
) -> Result<Assertion, AssertionError> {
    let a = decode(token)?;
    let key = keys
        .get(&a.site)
        .ok_or_else(|| AssertionError::UnknownSite(a.site.clone()))?;
    let mut parts = token.trim().split('.');
    let (_, payload, sig) = (
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| {
            AssertionError::Malformed("signature is not 64 bytes of base64url".into())
        })?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(payload.as_bytes());
    key.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| AssertionError::BadSignature(a.site.clone()))?;
    if a.iat > now + MAX_FUTURE_SKEW_SECS {
        return Err(AssertionError::FromFuture {
            ahead_secs: a.iat - now,
        });
    }
    if now.saturating_sub(a.iat) > MAX_AGE_SECS {
        return Err(AssertionError::Expired {
            age_secs: now - a.iat,
        });
    }
    if a.device != device {
        return Err(AssertionError::WrongDevice {
            asserted: a.device.clone(),
            actual: device.to_string(),
        });
    }
    if a.nonce.len() < 16 || a.nonce.len() > 64 {
        return Err(AssertionError::Malformed(
            "nonce must be 16..64 characters".into(),
        ));
    }
    Ok(a)
}
