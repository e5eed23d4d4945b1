//! Device certificates as PKCS#12 (`.pfx`), the file Windows' certificate
//! import wizard and Intune's "PKCS imported certificate" take: the key, the
//! device certificate and the device CA, encrypted with PBES2
//! (PBKDF2-HMAC-SHA256, AES-256-CBC) under a one-time password, with an
//! HMAC-SHA256 integrity MAC.

use anyhow::{anyhow, Context, Result};
use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::IssuedCert;

/// Characters of a generated password: no 0/O, 1/l/I, which people misread
/// when they type it from the screen.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
/// 16 characters of 57: about 93 bits.
const PASSWORD_LEN: usize = 16;
/// PBKDF2 iterations for the key encryption and the MAC (what OpenSSL 3
/// and Windows use: a bulk of hundreds of laptops stays quick).
const ITERATIONS: u32 = 10_000;

/// A fresh random password for one download, shown once.
pub fn one_time_password() -> Result<String> {
    let mut out = String::with_capacity(PASSWORD_LEN);
    let rng = ring::rand::SystemRandom::new();
    while out.len() < PASSWORD_LEN {
        let mut b = [0u8; 1];
        ring::rand::SecureRandom::fill(&rng, &mut b)
            .map_err(|_| anyhow!("system random number generator failed"))?;
        // Rejection sampling keeps the characters uniform.
        let limit = 256 - 256 % PASSWORD_ALPHABET.len();
        if usize::from(b[0]) < limit {
            out.push(PASSWORD_ALPHABET[usize::from(b[0]) % PASSWORD_ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

/// The `.pfx` bytes for `issued` (key and certificate) with `ca_der` as the
/// chain, the entry named `friendly_name` (the device id).
pub fn to_pfx(
    issued: &IssuedCert,
    ca_der: &CertificateDer<'_>,
    friendly_name: &str,
    password: &str,
) -> Result<Vec<u8>> {
    let cert_der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .map_err(|e| anyhow!("issued certificate PEM does not parse: {e}"))?;
    let key_der = match PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| anyhow!("issued key PEM does not parse: {e}"))?
    {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => anyhow::bail!("the issued key is not PKCS#8"),
    };
    let leaf =
        Certificate::from_der(cert_der.as_ref()).map_err(|e| anyhow!("device certificate: {e}"))?;
    let ca = Certificate::from_der(ca_der.as_ref()).map_err(|e| anyhow!("device CA: {e}"))?;
    let key = PrivateKey::from_der(&key_der).map_err(|e| anyhow!("device key: {e}"))?;
    // The local key id ties the key bag to its certificate bag.
    let key_id = {
        use sha2::Digest;
        sha2::Sha256::digest(cert_der.as_ref()).to_vec()
    };
    let chain = PrivateKeyChain::new(key_id, key, [leaf, ca]);
    let mut store = KeyStore::new();
    store.add_entry(friendly_name, KeyStoreEntry::PrivateKeyChain(chain));
    store
        .writer(password)
        .encryption_iterations(ITERATIONS)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(|e| anyhow!("{e}"))
        .context("writing the PKCS#12 file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_readable() {
        let a = one_time_password().unwrap();
        let b = one_time_password().unwrap();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)), "{a}");
    }

    #[test]
    fn pfx_reads_back_with_its_password_only() {
        let ca = super::super::generate_ca("test device CA").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let issued = ca
            .issue_device("PC-T-0001", &[], now, now + time::Duration::days(1))
            .unwrap();
        let pfx = to_pfx(&issued, ca.cert_der(), "PC-T-0001", "s3cret-Pass").unwrap();
        let store = KeyStore::from_pkcs12(
            &pfx,
            "s3cret-Pass",
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "PC-T-0001");
        assert_eq!(chain.certs().len(), 2);
        assert_eq!(
            chain.certs()[0].as_der(),
            issued.cert_der().unwrap().as_ref()
        );
        assert!(
            KeyStore::from_pkcs12(&pfx, "wrong", p12_keystore::Pkcs12ImportPolicy::Strict).is_err()
        );
    }
}
