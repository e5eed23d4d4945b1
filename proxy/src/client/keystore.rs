//! Where the device key of the link lives. One interface (a rustls
//! [`SigningKey`]) for the TLS client certificate and the posture reports:
//!
//! - `pem`: a PEM file (the key can be copied with the file)
//! - `pkcs11`: a key inside a PKCS#11 token (smart card, HSM, TPM through
//!   a PKCS#11 module; SoftHSM in the tests) that signs without the key
//!   ever leaving it ([`super::pkcs11`])
//!
//! Windows' CNG / TPM-backed certificate store is described in
//! docs/users-and-posture.md.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::sign::SigningKey;

use super::config::ClientConfig;

/// The device key named by the client configuration, and whether it is
/// held by hardware (then TLS sessions are not resumed: every connection
/// proves the key is still there).
pub fn load(cfg: &ClientConfig) -> Result<(Arc<dyn SigningKey>, bool)> {
    match cfg.key_store.as_str() {
        "pem" | "" => {
            let key = crate::pki::load_private_key(&cfg.key).context("--key")?;
            let k = rustls::crypto::ring::sign::any_supported_type(&key)
                .map_err(|e| anyhow!("{}: unusable device key: {e}", cfg.key.display()))?;
            Ok((k, false))
        }
        "pkcs11" => Ok((super::pkcs11::Pkcs11Key::open(&cfg.pkcs11)?, true)),
        other => Err(anyhow!(
            "key_store = {other:?}: use \"pem\" (a key file) or \"pkcs11\" (a key in a token)"
        )),
    }
}

/// Presents one certificate chain with one key.
#[derive(Debug)]
pub struct DeviceCert(pub Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for DeviceCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
