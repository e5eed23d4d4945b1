//! Posture reports: facts about the device (OS and version, disk
//! encryption, host firewall, client version, last OS update) that
//! `komugate client` sends on its link at setup and periodically, signed
//! with the device key (the key of the link's client certificate) and
//! time-stamped.
//!
//! Wire format (`POST /.komugate/posture`, JSON):
//! `{"report": base64url(JSON Report), "scheme": "<rustls scheme name>", "signature": base64url}`,
//! the signature over `"komugate-posture-v1\n" || report` (the base64url
//! text). The gateway accepts a report only when the signature verifies
//! with the public key of the certificate on the link it arrived on, the
//! report names that device, its time is within `[users]
//! posture_max_age_secs` in the past and `posture_max_future_secs` in the
//! future, and its nonce was never seen (a replay is refused). The latest
//! accepted report is the device's posture until it is older than
//! `posture_max_age_secs`; a refused report withdraws it.
//!
//! What the facts are worth: the client reports them about itself. They
//! stop an honest but out-of-date device (no BitLocker, updates not
//! installed) and they cannot be sent for another device (the signature
//! needs that device's key), but a user who controls the device can make
//! the client report anything. See docs/users-and-posture.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prometheus::{IntCounterVec, Opts, Registry};
use rustls::SignatureScheme;
use serde::{Deserialize, Serialize};

use crate::device_auth::DeviceIdentity;
use crate::oidc::{b64url, unix_now};
use komugate_policy::Posture;

/// What the signature covers, before the report.
pub const CONTEXT: &[u8] = b"komugate-posture-v1\n";

/// A signed report's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub device: String,
    /// When the client made it, seconds since the epoch.
    pub time: u64,
    /// Random, once per report.
    pub nonce: String,
    pub facts: Posture,
}

/// The wire form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signed {
    pub report: String,
    pub scheme: String,
    pub signature: String,
}

/// Signature schemes a device key may sign reports with.
pub const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// Signs `report` with the device key.
pub fn sign(report: &Report, key: &dyn rustls::sign::SigningKey) -> Result<Signed, String> {
    let signer = key
        .choose_scheme(SCHEMES)
        .ok_or("the device key supports none of the posture signature schemes")?;
    let body = b64url(&serde_json::to_vec(report).map_err(|e| e.to_string())?);
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(body.as_bytes());
    let sig = signer
        .sign(&msg)
        .map_err(|e| format!("signing the posture report with the device key: {e}"))?;
    Ok(Signed {
        report: body,
        scheme: format!("{:?}", signer.scheme()),
        signature: b64url(&sig),
    })
}

/// Checks that `key` is the key of the certificate `cert_der`, by signing a
/// random message and verifying it with the certificate.
pub fn key_matches_cert(cert_der: &[u8], key: &dyn rustls::sign::SigningKey) -> Result<(), String> {
    let signer = key
        .choose_scheme(SCHEMES)
        .ok_or("the key supports none of the accepted signature schemes")?;
    let msg = crate::oidc::random::<32>();
    let sig = signer.sign(&msg).map_err(|e| e.to_string())?;
    verify_signature(cert_der, &format!("{:?}", signer.scheme()), &msg, &sig)
        .map_err(|e| e.to_string())
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostureRefusal {
    Malformed(String),
    /// The signature does not verify with the link's device certificate.
    BadSignature,
    /// The report names another device.
    WrongDevice,
    TooOld {
        age: u64,
    },
    FromFuture {
        ahead: u64,
    },
    Replayed,
}

impl PostureRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            PostureRefusal::Malformed(_) => "malformed",
            PostureRefusal::BadSignature => "bad_signature",
            PostureRefusal::WrongDevice => "wrong_device",
            PostureRefusal::TooOld { .. } => "too_old",
            PostureRefusal::FromFuture { .. } => "from_future",
            PostureRefusal::Replayed => "replayed",
        }
    }
}

impl std::fmt::Display for PostureRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostureRefusal::Malformed(m) => write!(f, "malformed posture report: {m}"),
            PostureRefusal::BadSignature => write!(
                f,
                "the posture report's signature does not verify with this device's certificate"
            ),
            PostureRefusal::WrongDevice => write!(f, "the posture report names another device"),
            PostureRefusal::TooOld { age } => write!(
                f,
                "the posture report is {age} s old (check the device's clock)"
            ),
            PostureRefusal::FromFuture { ahead } => write!(
                f,
                "the posture report is stamped {ahead} s in the future (check the device's clock)"
            ),
            PostureRefusal::Replayed => write!(f, "the posture report was already used (replay)"),
        }
    }
}

/// Verifies `signature` over `msg` with the certificate's public key.
fn verify_signature(
    cert_der: &[u8],
    scheme: &str,
    msg: &[u8],
    signature: &[u8],
) -> Result<(), PostureRefusal> {
    use ring::signature as rs;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|_| PostureRefusal::Malformed("the link's certificate cannot be parsed".into()))?;
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let alg: &dyn rs::VerificationAlgorithm = match scheme {
        "ECDSA_NISTP256_SHA256" => &rs::ECDSA_P256_SHA256_ASN1,
        "ECDSA_NISTP384_SHA384" => &rs::ECDSA_P384_SHA384_ASN1,
        "ED25519" => &rs::ED25519,
        "RSA_PSS_SHA256" => &rs::RSA_PSS_2048_8192_SHA256,
        "RSA_PKCS1_SHA256" => &rs::RSA_PKCS1_2048_8192_SHA256,
        other => {
            return Err(PostureRefusal::Malformed(format!(
                "signature scheme {:?} is not accepted",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    rs::UnparsedPublicKey::new(alg, key)
        .verify(msg, signature)
        .map_err(|_| PostureRefusal::BadSignature)
}

/// A device's latest accepted report.
#[derive(Debug, Clone)]
pub struct DevicePosture {
    pub facts: Posture,
    pub reported_at: u64,
}

/// The gateway's posture state, one report per device.
pub struct PostureStore {
    max_age: u64,
    max_future: u64,
    devices: RwLock<HashMap<String, Arc<DevicePosture>>>,
    nonces: Mutex<HashMap<String, u64>>,
    results: IntCounterVec,
}

impl PostureStore {
    pub fn new(max_age_secs: u64, max_future_secs: u64, registry: &Registry) -> PostureStore {
        let results = IntCounterVec::new(
            Opts::new(
                "komugate_posture_reports_total",
                "Device posture reports checked, by result (ok or why refused)",
            ),
            &["result"],
        )
        .expect("metric");
        let _ = registry.register(Box::new(results.clone()));
        PostureStore {
            max_age: max_age_secs,
            max_future: max_future_secs,
            devices: RwLock::new(HashMap::new()),
            nonces: Mutex::new(HashMap::new()),
            results,
        }
    }

    /// Checks a report sent on a link of `device` (certificate `cert_der`)
    /// and makes it the device's posture. Refusals are counted, logged and
    /// withdraw the device's earlier posture.
    pub fn accept(
        &self,
        device: &DeviceIdentity,
        cert_der: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), PostureRefusal> {
        let r = self.check(device, cert_der, body, unix_now());
        match &r {
            Ok(report) => {
                self.results.with_label_values(&["ok"]).inc();
                tracing::debug!(device = %device.device_id, facts = ?report.facts, "posture report accepted");
                self.devices
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        device.device_id.clone(),
                        Arc::new(DevicePosture {
                            facts: report.facts.clone(),
                            reported_at: report.time,
                        }),
                    );
            }
            Err(e) => {
                self.results.with_label_values(&[e.reason()]).inc();
                tracing::warn!(device = %device.device_id, reason = e.reason(), "posture report refused: {e}; the device's posture is withdrawn");
                self.devices
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&device.device_id);
            }
        }
        r.map(|_| ())
    }

    fn check(
        &self,
        device: &DeviceIdentity,
        cert_der: Option<&[u8]>,
        body: &[u8],
        now: u64,
    ) -> Result<Report, PostureRefusal> {
        use base64::Engine;
        let signed: Signed =
            serde_json::from_slice(body).map_err(|e| PostureRefusal::Malformed(e.to_string()))?;
        let cert = cert_der.ok_or(PostureRefusal::BadSignature)?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&signed.signature)
            .map_err(|e| PostureRefusal::Malformed(format!("signature: {e}")))?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(signed.report.as_bytes());
        verify_signature(cert, &signed.scheme, &msg, &sig)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&signed.report)
            .map_err(|e| PostureRefusal::Malformed(format!("report: {e}")))?;
        let report: Report = serde_json::from_slice(&raw)
            .map_err(|e| PostureRefusal::Malformed(format!("report: {e}")))?;
        if report.device != device.device_id {
            return Err(PostureRefusal::WrongDevice);
        }
        if report.time > now + self.max_future {
            return Err(PostureRefusal::FromFuture {
                ahead: report.time - now,
            });
        }
        if now.saturating_sub(report.time) > self.max_age {
            return Err(PostureRefusal::TooOld {
                age: now - report.time,
            });
        }
        if report.nonce.len() < 16 {
            return Err(PostureRefusal::Malformed("nonce too short".into()));
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.len() > 200_000 {
            let horizon = now.saturating_sub(self.max_age);
            nonces.retain(|_, t| *t >= horizon);
        }
        if nonces.contains_key(&report.nonce) {
            return Err(PostureRefusal::Replayed);
        }
        nonces.insert(report.nonce.clone(), report.time.max(now));
        Ok(report)
    }

    /// The device's posture now: its latest accepted report, unless older
    /// than `posture_max_age_secs`.
    pub fn current(&self, device_id: &str, now: u64) -> Option<Arc<DevicePosture>> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .filter(|p| now.saturating_sub(p.reported_at) <= self.max_age)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceIdentity {
        DeviceIdentity {
            device_id: id.into(),
            cert_groups: vec![],
            serial_hex: String::new(),
        }
    }

    fn report(device: &str, time: u64, nonce: &str) -> Report {
        Report {
            device: device.into(),
            time,
            nonce: nonce.into(),
            facts: Posture {
                os: "linux".into(),
                os_version: "12".into(),
                disk_encryption: true,
                firewall: true,
                client_version: "0.1.0".into(),
                last_os_update: time - 86_400,
            },
        }
    }

    #[test]
    fn signed_reports_checked_for_key_device_time_and_replay() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["PC-1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let signing = |k: &rcgen::KeyPair| {
            let der = rustls_pki_types::PrivateKeyDer::try_from(k.serialize_der()).unwrap();
            rustls::crypto::ring::sign::any_supported_type(&der).unwrap()
        };
        let store = PostureStore::new(900, 60, &Registry::new());
        let now = unix_now();
        let body = |r: &Report, k: &rcgen::KeyPair| {
            serde_json::to_vec(&sign(r, signing(k).as_ref()).unwrap()).unwrap()
        };
        let d = device("PC-1");
        let der = cert.der().to_vec();
        let ok = body(&report("PC-1", now, "nonce-000000000001"), &key);
        assert!(store.check(&d, Some(&der), &ok, now).is_ok());
        assert!(
            store.current("PC-1", now).is_none(),
            "check alone stores nothing"
        );
        assert_eq!(
            store.check(&d, Some(&der), &ok, now),
            Err(PostureRefusal::Replayed)
        );
        let forged = body(&report("PC-1", now, "nonce-000000000002"), &other);
        assert_eq!(
            store.check(&d, Some(&der), &forged, now),
            Err(PostureRefusal::BadSignature)
        );
        let old = body(&report("PC-1", now - 901, "nonce-000000000003"), &key);
        assert_eq!(
            store.check(&d, Some(&der), &old, now).unwrap_err().reason(),
            "too_old"
        );
        let future = body(&report("PC-1", now + 120, "nonce-000000000004"), &key);
        assert_eq!(
            store
                .check(&d, Some(&der), &future, now)
                .unwrap_err()
                .reason(),
            "from_future"
        );
        let elsewhere = body(&report("PC-2", now, "nonce-000000000005"), &key);
        assert_eq!(
            store.check(&d, Some(&der), &elsewhere, now),
            Err(PostureRefusal::WrongDevice)
        );
        // A valid report is the posture until it is too old; a refused one withdraws it.
        let fresh = body(&report("PC-1", now, "nonce-000000000006"), &key);
        store.accept(&d, Some(&der), &fresh).unwrap();
        assert!(store.current("PC-1", now).unwrap().facts.disk_encryption);
        assert!(store.current("PC-1", now + 901).is_none());
        assert!(store.accept(&d, Some(&der), &forged).is_err());
        assert!(store.current("PC-1", now).is_none());
    }
}
