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
//! Every device certificate issued is also kept (certificate only) in `issued/<serial>.pem`
//! ([`inventory`]): what `pki list` and the console show, with the revocations of
//! `revoked-serials.txt`. [`delivery`] hands certificates out as PKCS#12 (`.pfx`, one or a
//! zip of many) under a one-time password.
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

mod ca;
pub mod delivery;
mod directory;
mod files;
pub mod inventory;
mod names;
mod pem;
pub mod pfx;

use time::Duration;

pub use ca::{generate_ca, CaMaterial, IssuedCert};
pub use directory::{ensure, init, issue_device, sign_device, DeviceCertOptions, PkiPaths};
pub use names::{parse_serial_hex, serial_to_hex, validate_name};
pub use pem::{load_certs, load_private_key};

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

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(all(test, unix))]
mod tests;
