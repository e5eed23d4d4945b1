//! The device key inside a PKCS#11 token, as a rustls [`SigningKey`]: every
//! signature (TLS client authentication, posture reports) is made by the
//! token through its module; the key never leaves it.
//!
//! The session is opened on first use and again after the token failed
//! (removed and put back). While the token is gone every signature fails
//! with a clear error, counted in [`Pkcs11Key::failures`]: the TLS handshake
//! fails (the link stays down, so no traffic passes as this device) and
//! posture reports stop. Supported keys: EC P-256 / P-384 (ECDSA) and RSA
//! (PSS, PKCS#1 v1.5), SHA-256 / SHA-384.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::config::Pkcs11Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    P256,
    P384,
    Rsa,
}

struct Inner {
    ctx: Pkcs11,
    settings: Pkcs11Config,
    pin: String,
    kind: Kind,
    session: Mutex<Option<(Session, ObjectHandle)>>,
    failures: AtomicU64,
}

/// A device key in a PKCS#11 token.
#[derive(Clone)]
pub struct Pkcs11Key(Arc<Inner>);

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pkcs11Key({:?} in {:?})",
            self.0.settings.key_label, self.0.settings.token_label
        )
    }
}

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn open_session(ctx: &Pkcs11, s: &Pkcs11Config, pin: &str) -> Result<(Session, ObjectHandle)> {
    let mut found = None;
    for slot in ctx
        .get_slots_with_token()
        .context("listing the PKCS#11 slots")?
    {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim_end() == s.token_label {
                found = Some(slot);
                break;
            }
        }
    }
    let slot = found.ok_or_else(|| {
        anyhow!(
            "no PKCS#11 token labelled {:?} is present (is the smart card / token inserted?)",
            s.token_label
        )
    })?;
    let session = ctx
        .open_ro_session(slot)
        .with_context(|| format!("opening a session with token {:?}", s.token_label))?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.to_string()))) {
        // Login is per application: another session of this process did it.
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _))
        | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
    .with_context(|| {
        format!(
            "logging in to token {:?} (is the PIN in {} right?)",
            s.token_label,
            s.pin_file.display()
        )
    })?;
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(s.key_label.as_bytes().to_vec()),
        ])
        .context("searching the token for the device key")?;
    let key = *keys.first().ok_or_else(|| {
        anyhow!(
            "token {:?} holds no private key labelled {:?}",
            s.token_label,
            s.key_label
        )
    })?;
    Ok((session, key))
}

fn key_kind(session: &Session, key: ObjectHandle) -> Result<Kind> {
    let attrs = session
        .get_attributes(key, &[AttributeType::KeyType])
        .context("reading the key type")?;
    let kt = attrs.iter().find_map(|a| match a {
        Attribute::KeyType(k) => Some(*k),
        _ => None,
    });
    match kt {
        Some(k) if k == KeyType::RSA => Ok(Kind::Rsa),
        Some(k) if k == KeyType::EC => {
            let params = session
                .get_attributes(key, &[AttributeType::EcParams])
                .context("reading the EC key's curve")?;
            let oid = params.iter().find_map(|a| match a {
                Attribute::EcParams(p) => Some(p.clone()),
                _ => None,
            });
            match oid.as_deref() {
                Some(o) if o == P256_OID => Ok(Kind::P256),
                Some(o) if o == P384_OID => Ok(Kind::P384),
                _ => bail!("the device key is on an EC curve other than P-256 or P-384"),
            }
        }
        _ => bail!("the device key is neither RSA nor EC"),
    }
}

impl Pkcs11Key {
    /// Loads the module, logs in and finds the key.
    pub fn open(s: &Pkcs11Config) -> Result<Arc<dyn SigningKey>> {
        Ok(Arc::new(Pkcs11Key::open_key(s)?))
    }

    pub fn open_key(s: &Pkcs11Config) -> Result<Pkcs11Key> {
        let pin = read_pin(&s.pin_file)?;
        let ctx = Pkcs11::new(&s.module)
            .with_context(|| format!("loading the PKCS#11 module {}", s.module.display()))?;
        match ctx.initialize(CInitializeArgs::OsThreads) {
            // Another key of this process initialised the module already.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            ))
            | Ok(()) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("initialising the PKCS#11 module {}", s.module.display())
                })
            }
        }
        let (session, key) = open_session(&ctx, s, &pin)?;
        let kind = key_kind(&session, key)?;
        Ok(Pkcs11Key(Arc::new(Inner {
            ctx,
            settings: s.clone(),
            pin,
            kind,
            session: Mutex::new(Some((session, key))),
            failures: AtomicU64::new(0),
        })))
    }

    /// Signatures refused because the token failed or was removed.
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    fn sign_with(&self, mech: &Mechanism, data: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut guard = self.0.session.lock().unwrap_or_else(|e| e.into_inner());
        // Two tries: the open session, then a new one (the token came back).
        for attempt in 0..2 {
            if guard.is_none() {
                match open_session(&self.0.ctx, &self.0.settings, &self.0.pin) {
                    Ok(s) => *guard = Some(s),
                    Err(e) => return Err(self.failed(format!("{e:#}"))),
                }
            }
            let (session, key) = guard.as_ref().expect("opened above");
            match session.sign(mech, *key, data) {
                Ok(sig) => return Ok(sig),
                Err(e) => {
                    *guard = None;
                    if attempt == 1 {
                        return Err(self.failed(e.to_string()));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn failed(&self, why: String) -> rustls::Error {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "the device key {:?} in PKCS#11 token {:?} cannot sign (token removed?): {why}",
            self.0.settings.key_label, self.0.settings.token_label
        );
        tracing::error!("{msg}");
        rustls::Error::General(msg)
    }
}

fn read_pin(path: &Path) -> Result<String> {
    let pin = std::fs::read_to_string(path)
        .with_context(|| format!("[pkcs11] pin_file {}: cannot read the PIN", path.display()))?;
    let pin = pin.trim().to_string();
    if pin.is_empty() {
        bail!("[pkcs11] pin_file {} is empty", path.display());
    }
    Ok(pin)
}

/// `r || s` (each `n` bytes) as a DER `ECDSA-Sig-Value`, as TLS wants it.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn int(x: &[u8]) -> Vec<u8> {
        let x = match x.iter().position(|b| *b != 0) {
            Some(i) => &x[i..],
            None => &[0u8][..],
        };
        let mut v = vec![0x02];
        let pad = x[0] & 0x80 != 0;
        v.push((x.len() + usize::from(pad)) as u8);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    out
}

#[derive(Debug)]
struct TokenSigner {
    key: Pkcs11Key,
    scheme: SignatureScheme,
}

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use ring::digest;
        match self.scheme {
            SignatureScheme::ECDSA_NISTP256_SHA256 => {
                let h = digest::digest(&digest::SHA256, message);
                self.key
                    .sign_with(&Mechanism::Ecdsa, h.as_ref())
                    .map(|raw| ecdsa_der(&raw))
            }
            SignatureScheme::ECDSA_NISTP384_SHA384 => {
                let h = digest::digest(&digest::SHA384, message);
                self.key
                    .sign_with(&Mechanism::Ecdsa, h.as_ref())
                    .map(|raw| ecdsa_der(&raw))
            }
            SignatureScheme::RSA_PSS_SHA256 => self.key.sign_with(
                &Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                }),
                message,
            ),
            SignatureScheme::RSA_PKCS1_SHA256 => {
                self.key.sign_with(&Mechanism::Sha256RsaPkcs, message)
            }
            other => Err(rustls::Error::General(format!(
                "signature scheme {other:?} is not offered by the PKCS#11 key"
            ))),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl SigningKey for Pkcs11Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let mine: &[SignatureScheme] = match self.0.kind {
            Kind::P256 => &[SignatureScheme::ECDSA_NISTP256_SHA256],
            Kind::P384 => &[SignatureScheme::ECDSA_NISTP384_SHA384],
            Kind::Rsa => &[
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::RSA_PKCS1_SHA256,
            ],
        };
        let scheme = mine.iter().find(|s| offered.contains(s))?;
        Some(Box::new(TokenSigner {
            key: self.clone(),
            scheme: *scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.kind {
            Kind::P256 | Kind::P384 => SignatureAlgorithm::ECDSA,
            Kind::Rsa => SignatureAlgorithm::RSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        // High bit set: a zero byte is prepended; leading zeros are dropped.
        let mut raw = vec![0x80; 32];
        raw.extend(std::iter::once(0).chain(std::iter::repeat_n(0x01, 31)));
        let der = ecdsa_der(&raw);
        assert_eq!(&der[..4], &[0x30, 68, 0x02, 33]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[37..39], &[0x02, 31]);
        assert_eq!(der.len(), 2 + 68);
    }
}
