//! OpenID Connect, independent of who uses it (the console's sign-in
//! today, users' tokens on the data path next):
//!
//! - [`http`]: a small HTTPS client for the provider's endpoints (rustls,
//!   the public roots plus an optional CA file; plain HTTP only to loopback)
//! - [`keys`]: the provider's discovery document and its signing keys
//!   (JWKS), fetched again when a token names a key not seen yet, at most
//!   once per interval
//! - [`verify`]: ID-token verification (alg allow-list, signature, issuer,
//!   audience, times with a bounded clock skew, nonce)
//! - [`flow`]: the authorization code flow with PKCE, state and nonce
//! - [`metrics`]: tokens and sign-ins refused, by reason

pub mod flow;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod verify;

/// `true` for an `http(s)://` URL whose host is a loopback address or
/// `localhost`: the only place plain HTTP is allowed.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks that `url` (named `what` in the error) is `https://`, or
/// `http://` to a loopback address.
pub fn check_url(what: &str, url: &str) -> Result<(), String> {
    let uri: ::http::Uri = url
        .parse()
        .map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") if uri.host().is_some() => Ok(()),
        Some("http") if is_loopback_url(url) => Ok(()),
        Some("http") => Err(format!(
            "{what} {url:?} uses plain http: use https:// (plain http is allowed only to a loopback address, for tests)"
        )),
        _ => Err(format!("{what} {url:?} must be an https:// URL")),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// URL-safe base64 without padding (JWT, PKCE).
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `N` bytes from the system's random source.
pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    b
}

/// Equality in time independent of where the first difference is.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub use crate::common::percent_encode as pct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_required_except_on_loopback() {
        assert!(check_url("issuer", "https://login.example.jp/tenant/v2.0").is_ok());
        assert!(check_url("issuer", "http://127.0.0.2:8443").is_ok());
        assert!(check_url("issuer", "http://[::1]:8443/x").is_ok());
        assert!(check_url("issuer", "http://localhost:1/").is_ok());
        let e = check_url("issuer", "http://idp.example.jp/").unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        assert!(check_url("issuer", "http://127.0.0.1.example.jp/").is_err());
        assert!(check_url("issuer", "ftp://127.0.0.1/").is_err());
        assert!(check_url("issuer", "idp.example.jp").is_err());
    }
}
