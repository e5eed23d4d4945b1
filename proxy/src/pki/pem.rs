//! Reading certificates and private keys from PEM (or DER) files, with
//! errors that name the file and the likely mistake, and PEM encoding.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
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
