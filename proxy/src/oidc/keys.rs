//! What komugate learns from the provider: its discovery document
//! (`/.well-known/openid-configuration`) and its signing keys (JWKS).
//! Keys are kept in memory; a token signed with a key not seen yet (the
//! provider rotated its keys) makes the set be fetched again, at most once
//! per `min_refetch` so forged `kid`s cannot make komugate hammer the
//! provider.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use super::http::HttpClient;

/// The parts of a discovery document komugate uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// RFC 8628 device authorization (sign-in on a device without a browser).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

/// Fetches and checks `{issuer}/.well-known/openid-configuration`: its
/// `issuer` must be exactly the configured one (OpenID Connect Discovery
/// 4.3) and every endpoint https (or loopback).
pub async fn discover(http: &HttpClient, issuer: &str) -> Result<Metadata, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let reply = http.get(&url).await?;
    if !reply.status.is_success() {
        return Err(format!("{url} answered {}", reply.status));
    }
    let m: Metadata = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
    if m.issuer != issuer {
        return Err(format!(
            "{url} names the issuer {:?}, not the configured {issuer:?} (check [admin.oidc] issuer, trailing slash included)",
            m.issuer
        ));
    }
    for (what, u) in [
        ("authorization_endpoint", &m.authorization_endpoint),
        ("token_endpoint", &m.token_endpoint),
        ("jwks_uri", &m.jwks_uri),
    ] {
        super::check_url(what, u).map_err(|e| format!("{url}: {e}"))?;
    }
    Ok(m)
}

/// Where a key set comes from (the provider's `jwks_uri`; a fixed set in
/// unit tests).
pub trait JwksSource: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send + '_>>;
}

/// The key set at `jwks_uri`.
pub struct HttpJwks {
    pub http: HttpClient,
    pub url: String,
}

impl JwksSource for HttpJwks {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send + '_>> {
        Box::pin(async move {
            let reply = self.http.get(&self.url).await?;
            if !reply.status.is_success() {
                return Err(format!("{} answered {}", self.url, reply.status));
            }
            parse_jwks(&reply.body).map_err(|e| format!("{}: {e}", self.url))
        })
    }
}

/// A key set, keeping the keys komugate can use (a provider may also
/// publish encryption keys or key types this version does not know).
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    #[derive(Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let total = raw.keys.len();
    let keys: Vec<_> = raw
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value(k).ok())
        .collect();
    if keys.is_empty() {
        return Err(format!("none of its {total} keys is usable"));
    }
    Ok(JwkSet { keys })
}

/// The provider's keys, fetched on first use and again for an unknown key.
pub struct KeyCache {
    source: Box<dyn JwksSource>,
    min_refetch: Duration,
    state: tokio::sync::Mutex<KeyState>,
}

#[derive(Default)]
struct KeyState {
    keys: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    fetches: u64,
}

impl KeyCache {
    pub fn new(source: Box<dyn JwksSource>, min_refetch: Duration) -> KeyCache {
        KeyCache {
            source,
            min_refetch,
            state: Default::default(),
        }
    }

    /// The keys, fetched if there are none yet.
    pub async fn current(&self) -> Result<Arc<JwkSet>, String> {
        let mut st = self.state.lock().await;
        if let Some(k) = &st.keys {
            return Ok(k.clone());
        }
        self.fetch_into(&mut st).await
    }

    /// Fetches the keys again because a token named a key not in the set:
    /// `Ok(None)` when the last fetch is more recent than `min_refetch`.
    pub async fn refetch(&self) -> Result<Option<Arc<JwkSet>>, String> {
        let mut st = self.state.lock().await;
        if st.fetched.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return Ok(None);
        }
        self.fetch_into(&mut st).await.map(Some)
    }

    async fn fetch_into(&self, st: &mut KeyState) -> Result<Arc<JwkSet>, String> {
        // A failed fetch counts for the rate limit too.
        st.fetched = Some(Instant::now());
        st.fetches += 1;
        let keys = Arc::new(self.source.fetch().await?);
        st.keys = Some(keys.clone());
        Ok(keys)
    }

    /// Fetches done so far (tests, diagnostics).
    pub async fn fetches(&self) -> u64 {
        self.state.lock().await.fetches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_and_an_empty_set_is_an_error() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ", "kid": "future"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "x": "AAAA", "y": "AAAA"},
        ]});
        let set = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert!(set
            .keys
            .iter()
            .any(|k| k.common.key_id.as_deref() == Some("sig")));
        assert!(!set
            .keys
            .iter()
            .any(|k| k.common.key_id.as_deref() == Some("future")));
        let e = parse_jwks(br#"{"keys": [{"kty": "XYZ"}]}"#).unwrap_err();
        assert!(e.contains("none of its 1 keys"), "{e}");
        assert!(parse_jwks(b"<html>").unwrap_err().contains("not a JWK set"));
    }
}
