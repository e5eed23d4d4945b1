//! ID-token verification. A token is accepted only when:
//! its `alg` is on the allow-list (asymmetric only: never `none`, never
//! HMAC, whose "secret" an attacker could take from the public key); the
//! signing key is in the provider's key set (by `kid`; an unknown one
//! makes the set be fetched again, rate-limited), of the family the `alg`
//! names and not marked for another algorithm or for encryption; the
//! signature verifies; `iss` is the configured issuer exactly; `aud` holds
//! the client id (and `azp` is the client when there are several
//! audiences); `exp`, `nbf` and `iat` hold within a bounded clock skew;
//! `nonce` is the one this sign-in sent.
//!
//! Logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.6) share the
//! signature and issuer / audience checks; [`check_logout_claims`] adds
//! theirs: the back-channel logout event, `sub` or `sid`, no `nonce`, a
//! recent `iat`.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::keys::KeyCache;

/// A token's claims.
pub type Claims = serde_json::Map<String, Value>;

/// Signature algorithms accepted.
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    Algorithm(String),
    UnknownKey(String),
    Signature,
    Issuer(String),
    Audience(String),
    Expired {
        exp: u64,
        now: u64,
    },
    NotYetValid {
        nbf: u64,
        now: u64,
    },
    IssuedInFuture {
        iat: u64,
        now: u64,
    },
    TooOld {
        iat: u64,
        now: u64,
    },
    Nonce,
    KeysUnavailable(String),
    /// Not a logout token (no back-channel logout event, a nonce, no sub or sid).
    NotLogout(String),
    /// A logout token seen before (its `jti`).
    Replayed,
}

impl Refusal {
    /// A short label for metrics (`komugate_oidc_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Algorithm(_) => "algorithm",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Issuer(_) => "issuer",
            Refusal::Audience(_) => "audience",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::IssuedInFuture { .. } => "issued_in_future",
            Refusal::TooOld { .. } => "too_old",
            Refusal::Nonce => "nonce",
            Refusal::KeysUnavailable(_) => "keys_unavailable",
            Refusal::NotLogout(_) => "not_logout_token",
            Refusal::Replayed => "replayed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(m) => write!(f, "malformed token: {m}"),
            Refusal::Algorithm(a) => write!(f, "signature algorithm {a} is not accepted"),
            Refusal::UnknownKey(k) => {
                write!(f, "signed with a key the provider does not publish ({k})")
            }
            Refusal::Signature => write!(f, "the signature does not verify"),
            Refusal::Issuer(i) => write!(f, "issued by {i:?}, not the configured issuer"),
            Refusal::Audience(a) => write!(f, "meant for {a}, not this client"),
            Refusal::Expired { exp, now } => {
                write!(f, "expired {} s ago", now.saturating_sub(*exp))
            }
            Refusal::NotYetValid { nbf, now } => {
                write!(f, "not valid for another {} s", nbf.saturating_sub(*now))
            }
            Refusal::IssuedInFuture { iat, now } => write!(
                f,
                "issued {} s in the future (clock skew?)",
                iat.saturating_sub(*now)
            ),
            Refusal::TooOld { iat, now } => {
                write!(f, "issued {} s ago, too long ago", now.saturating_sub(*iat))
            }
            Refusal::Nonce => write!(f, "the nonce is not the one this sign-in sent"),
            Refusal::KeysUnavailable(e) => write!(f, "the provider's keys cannot be fetched: {e}"),
            Refusal::NotLogout(m) => write!(f, "not a back-channel logout token: {m}"),
            Refusal::Replayed => write!(f, "this logout token (jti) was received before"),
        }
    }
}

/// What a token must hold.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// The nonce sent with the authorization request, if any.
    pub nonce: Option<&'a str>,
    /// Clock difference tolerated with the provider, in seconds.
    pub skew_secs: u64,
    /// A token issued longer ago than this (plus the skew) is refused.
    pub max_age_secs: Option<u64>,
    /// Now, in seconds since the epoch.
    pub now: u64,
}

/// Verifies `token` against `keys`; the claims if it is accepted.
pub fn verify_with(token: &str, keys: &JwkSet, e: &Expect) -> Result<Claims, Refusal> {
    check_claims(verify_signature(token, keys)?, e)
}

/// The claims of `token` if its algorithm is allowed and its signature
/// verifies with a fitting key of `keys`; no claim is checked yet.
pub fn verify_signature(token: &str, keys: &JwkSet) -> Result<Claims, Refusal> {
    let alg = header_alg(token)?;
    let header =
        jsonwebtoken::decode_header(token).map_err(|err| Refusal::Malformed(err.to_string()))?;
    debug_assert_eq!(header.alg, alg);
    let jwk = pick_key(keys, header.kid.as_deref(), alg)?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|err| Refusal::UnknownKey(format!("unusable key: {err}")))?;
    let mut v = Validation::new(alg);
    // Claims are checked below with komugate's clock and skew.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|err| {
        use jsonwebtoken::errors::ErrorKind;
        match err.kind() {
            ErrorKind::InvalidSignature => Refusal::Signature,
            ErrorKind::InvalidAlgorithm => Refusal::Algorithm(format!("{alg:?} with this key")),
            _ => Refusal::Malformed(err.to_string()),
        }
    })?;
    Ok(data.claims)
}

/// The header's `alg`, refused unless allowed (read before anything else,
/// so `none` or `HS256` is named as such).
fn header_alg(token: &str) -> Result<Algorithm, Refusal> {
    use base64::Engine;
    let head = token
        .split('.')
        .next()
        .ok_or_else(|| Refusal::Malformed("empty".into()))?;
    if token.split('.').count() != 3 {
        return Err(Refusal::Malformed("not three dot-separated parts".into()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|err| Refusal::Malformed(format!("header: {err}")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|err| Refusal::Malformed(format!("header: {err}")))?;
    let name = v
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::Malformed("no alg in the header".into()))?;
    ALLOWED_ALGORITHMS
        .iter()
        .find(|a| format!("{a:?}") == name)
        .copied()
        .ok_or_else(|| Refusal::Algorithm(name.chars().take(20).collect()))
}

fn pick_key<'k>(keys: &'k JwkSet, kid: Option<&str>, alg: Algorithm) -> Result<&'k Jwk, Refusal> {
    let family_ok = |k: &Jwk| {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        matches!(
            (&k.algorithm, alg),
            (
                P::RSA(_),
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
                | (P::OctetKeyPair(_), Algorithm::EdDSA)
        )
    };
    let key = match kid {
        Some(kid) => keys
            .keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .ok_or_else(|| {
                Refusal::UnknownKey(format!(
                    "kid {:?}",
                    kid.chars().take(64).collect::<String>()
                ))
            })?,
        None => {
            let mut fitting = keys.keys.iter().filter(|k| family_ok(k));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => k,
                (None, _) => return Err(Refusal::UnknownKey("no kid, no key of that type".into())),
                (Some(_), Some(_)) => {
                    return Err(Refusal::Malformed(
                        "no kid and several keys could fit".into(),
                    ))
                }
            }
        }
    };
    if !family_ok(key) {
        return Err(Refusal::Algorithm(format!(
            "{alg:?} with a key of another type"
        )));
    }
    if matches!(key.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err(Refusal::Algorithm("the key is not for signatures".into()));
    }
    if let Some(ka) = key.common.key_algorithm {
        if format!("{ka:?}") != format!("{alg:?}") {
            return Err(Refusal::Algorithm(format!("{alg:?} with a key for {ka:?}")));
        }
    }
    Ok(key)
}

fn number(c: &Claims, name: &str) -> Result<Option<u64>, Refusal> {
    match c.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| Refusal::Malformed(format!("{name} is not a number of seconds"))),
    }
}

/// `iss` is the issuer; `aud` holds the client (the authorized party when
/// there are several audiences).
fn check_issuer_audience(c: &Claims, e: &Expect) -> Result<(), Refusal> {
    let iss = c.get("iss").and_then(Value::as_str).unwrap_or_default();
    if iss != e.issuer {
        return Err(Refusal::Issuer(iss.chars().take(200).collect()));
    }
    let auds: Vec<&str> = match c.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !auds.contains(&e.audience) {
        return Err(Refusal::Audience(format!("{auds:?}")));
    }
    if auds.len() > 1 && c.get("azp").and_then(Value::as_str) != Some(e.audience) {
        return Err(Refusal::Audience(format!(
            "{auds:?} with another authorized party"
        )));
    }
    Ok(())
}

fn check_claims(c: Claims, e: &Expect) -> Result<Claims, Refusal> {
    check_issuer_audience(&c, e)?;
    if c.get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(Refusal::Malformed("no sub".into()));
    }
    let now = e.now;
    let skew = e.skew_secs;
    let exp = number(&c, "exp")?.ok_or_else(|| Refusal::Malformed("no exp".into()))?;
    if now > exp.saturating_add(skew) {
        return Err(Refusal::Expired { exp, now });
    }
    if let Some(nbf) = number(&c, "nbf")? {
        if nbf > now.saturating_add(skew) {
            return Err(Refusal::NotYetValid { nbf, now });
        }
    }
    let iat = number(&c, "iat")?.ok_or_else(|| Refusal::Malformed("no iat".into()))?;
    if iat > now.saturating_add(skew) {
        return Err(Refusal::IssuedInFuture { iat, now });
    }
    if let Some(max) = e.max_age_secs {
        if now.saturating_sub(iat) > max.saturating_add(skew) {
            return Err(Refusal::TooOld { iat, now });
        }
    }
    if let Some(want) = e.nonce {
        let got = c.get("nonce").and_then(Value::as_str).unwrap_or_default();
        if !super::ct_eq(got.as_bytes(), want.as_bytes()) {
            return Err(Refusal::Nonce);
        }
    }
    Ok(c)
}

/// The back-channel logout event a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a valid logout token asks to end: the provider session `sid`, or
/// every session of `sub` (both: that session of that user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: Option<String>,
    pub iat: u64,
}

/// The checks of Back-Channel Logout 1.0 §2.6 after the signature:
/// issuer and audience, `iat` within the skew and not older than
/// `max_age_secs`, `exp` if present, the logout event, `sub` or `sid`, and
/// no `nonce` (so an ID token can never pass as a logout token).
pub fn check_logout_claims(c: &Claims, e: &Expect) -> Result<Logout, Refusal> {
    check_issuer_audience(c, e)?;
    let is_event = c
        .get("events")
        .and_then(Value::as_object)
        .and_then(|ev| ev.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !is_event {
        return Err(Refusal::NotLogout(format!(
            "no {BACKCHANNEL_LOGOUT_EVENT} event"
        )));
    }
    if c.contains_key("nonce") {
        return Err(Refusal::NotLogout("it carries a nonce".into()));
    }
    let text = |name: &str| {
        claim_str(c, name)
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(256).collect::<String>())
    };
    let (sub, sid) = (text("sub"), text("sid"));
    if sub.is_none() && sid.is_none() {
        return Err(Refusal::NotLogout("neither sub nor sid".into()));
    }
    let now = e.now;
    let skew = e.skew_secs;
    if let Some(exp) = number(c, "exp")? {
        if now > exp.saturating_add(skew) {
            return Err(Refusal::Expired { exp, now });
        }
    }
    let iat = number(c, "iat")?.ok_or_else(|| Refusal::Malformed("no iat".into()))?;
    if iat > now.saturating_add(skew) {
        return Err(Refusal::IssuedInFuture { iat, now });
    }
    if let Some(max) = e.max_age_secs {
        if now.saturating_sub(iat) > max.saturating_add(skew) {
            return Err(Refusal::TooOld { iat, now });
        }
    }
    Ok(Logout {
        sub,
        sid,
        jti: text("jti"),
        iat,
    })
}

/// Verifies ID tokens of one provider for one client, with the provider's
/// keys fetched as needed.
pub struct IdTokenVerifier {
    pub issuer: String,
    pub audience: String,
    pub skew: Duration,
    pub max_age: Option<Duration>,
    pub keys: KeyCache,
}

impl IdTokenVerifier {
    /// Verifies `token` now; with `nonce`, it must carry that nonce.
    pub async fn verify(&self, token: &str, nonce: Option<&str>) -> Result<Claims, Refusal> {
        self.verify_at(token, nonce, super::unix_now()).await
    }

    pub async fn verify_at(
        &self,
        token: &str,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<Claims, Refusal> {
        let e = Expect {
            issuer: &self.issuer,
            audience: &self.audience,
            nonce,
            skew_secs: self.skew.as_secs(),
            max_age_secs: self.max_age.map(|d| d.as_secs()),
            now,
        };
        let claims = self.signed_claims(token).await?;
        check_claims(claims, &e)
    }

    /// Verifies a back-channel logout token now: at most `max_age` old.
    pub async fn verify_logout(&self, token: &str, max_age: Duration) -> Result<Logout, Refusal> {
        let e = Expect {
            issuer: &self.issuer,
            audience: &self.audience,
            nonce: None,
            skew_secs: self.skew.as_secs(),
            max_age_secs: Some(max_age.as_secs()),
            now: super::unix_now(),
        };
        let claims = self.signed_claims(token).await?;
        check_logout_claims(&claims, &e)
    }

    /// The claims of a token signed by one of the provider's keys: a key
    /// not seen yet makes the set be fetched again (rate-limited).
    async fn signed_claims(&self, token: &str) -> Result<Claims, Refusal> {
        let keys = self
            .keys
            .current()
            .await
            .map_err(Refusal::KeysUnavailable)?;
        match verify_signature(token, &keys) {
            Err(Refusal::UnknownKey(k)) => match self.keys.refetch().await {
                Ok(Some(fresh)) => verify_signature(token, &fresh),
                Ok(None) => Err(Refusal::UnknownKey(k)),
                Err(err) => Err(Refusal::KeysUnavailable(err)),
            },
            other => other,
        }
    }
}

/// A claim's text, if it is a string.
pub fn claim_str<'c>(c: &'c Claims, name: &str) -> Option<&'c str> {
    c.get(name).and_then(Value::as_str)
}

/// A claim's strings: an array of strings, or one string.
pub fn claim_strings(c: &Claims, name: &str) -> Vec<String> {
    match c.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::b64url;
    use crate::oidc::keys::JwksSource;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::KeyPair;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    const ISS: &str = "https://idp.test/tenant";
    const AUD: &str = "komugate-console";
    const NOW: u64 = 1_790_000_000;

    /// A freshly generated P-256 key: its signing key and its public JWK.
    fn ec_key(kid: &str) -> (EncodingKey, Jwk) {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        });
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            serde_json::from_value(jwk).unwrap(),
        )
    }

    /// A freshly generated Ed25519 key.
    fn ed_key(kid: &str) -> (EncodingKey, Jwk) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(pair.public_key().as_ref()),
        });
        (
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            serde_json::from_value(jwk).unwrap(),
        )
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "u-1", "iat": NOW - 5, "exp": NOW + 300,
            "nonce": "n-123", "name": "山田 花子", "groups": ["komugate-admins"],
        })
    }

    fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            audience: AUD,
            nonce: Some("n-123"),
            skew_secs: 60,
            max_age_secs: Some(600),
            now: NOW,
        }
    }

    fn set(keys: &[&Jwk]) -> JwkSet {
        JwkSet {
            keys: keys.iter().map(|k| (*k).clone()).collect(),
        }
    }

    #[test]
    fn a_good_token_is_accepted_with_its_claims() {
        let (k, jwk) = ec_key("k1");
        let t = sign(&k, Algorithm::ES256, "k1", &claims());
        let c = verify_with(&t, &set(&[&jwk]), &expect()).unwrap();
        assert_eq!(claim_str(&c, "name"), Some("山田 花子"));
        assert_eq!(claim_strings(&c, "groups"), ["komugate-admins"]);
        let (ek, ejwk) = ed_key("e1");
        let t = sign(&ek, Algorithm::EdDSA, "e1", &claims());
        assert!(verify_with(&t, &set(&[&jwk, &ejwk]), &expect()).is_ok());
    }

    #[test]
    fn forged_and_mismatched_tokens_are_refused() {
        let (k, jwk) = ec_key("k1");
        let (other, _) = ec_key("k1");
        let keys = set(&[&jwk]);
        // Signed by another key under the same kid.
        let t = sign(&other, Algorithm::ES256, "k1", &claims());
        assert_eq!(verify_with(&t, &keys, &expect()), Err(Refusal::Signature));
        // A claim changed after signing.
        let good = sign(&k, Algorithm::ES256, "k1", &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["groups"] = serde_json::json!(["komugate-admins", "x"]);
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64url(c.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            verify_with(&tampered, &keys, &expect()),
            Err(Refusal::Signature)
        );
        // Unknown kid.
        let t = sign(&k, Algorithm::ES256, "k9", &claims());
        assert_eq!(
            verify_with(&t, &keys, &expect()).unwrap_err().reason(),
            "unknown_key"
        );
        for (field, value, reason) in [
            (
                "iss",
                serde_json::json!("https://evil.test/tenant"),
                "issuer",
            ),
            ("aud", serde_json::json!("another-client"), "audience"),
            (
                "aud",
                serde_json::json!([AUD, "another-client"]),
                "audience",
            ),
            ("exp", serde_json::json!(NOW - 61), "expired"),
            ("nbf", serde_json::json!(NOW + 61), "not_yet_valid"),
            ("iat", serde_json::json!(NOW + 61), "issued_in_future"),
            ("iat", serde_json::json!(NOW - 661), "too_old"),
            ("nonce", serde_json::json!("n-124"), "nonce"),
            ("sub", serde_json::json!(""), "malformed"),
            ("exp", serde_json::json!("soon"), "malformed"),
        ] {
            let mut c = claims();
            c[field] = value;
            let t = sign(&k, Algorithm::ES256, "k1", &c);
            let r = verify_with(&t, &keys, &expect()).unwrap_err();
            assert_eq!(r.reason(), reason, "{field}: {r}");
        }
        // Within the skew: accepted.
        let mut c = claims();
        c["exp"] = serde_json::json!(NOW - 59);
        c["iat"] = serde_json::json!(NOW + 59);
        assert!(verify_with(&sign(&k, Algorithm::ES256, "k1", &c), &keys, &expect()).is_ok());
        // Several audiences with this client as the authorized party.
        let mut c = claims();
        c["aud"] = serde_json::json!([AUD, "api"]);
        c["azp"] = serde_json::json!(AUD);
        assert!(verify_with(&sign(&k, Algorithm::ES256, "k1", &c), &keys, &expect()).is_ok());
        // No nonce in the token while one was sent.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        let r = verify_with(&sign(&k, Algorithm::ES256, "k1", &c), &keys, &expect());
        assert_eq!(r, Err(Refusal::Nonce));
    }

    fn logout_claims() -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "u-1", "sid": "s-1", "iat": NOW - 2, "exp": NOW + 120,
            "jti": "j-1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        })
    }

    #[test]
    fn logout_tokens_are_checked_as_back_channel_logout_says() {
        let (k, jwk) = ec_key("k1");
        let keys = set(&[&jwk]);
        let e = Expect {
            nonce: None,
            max_age_secs: Some(300),
            ..expect()
        };
        let check = |c: &serde_json::Value| {
            let t = sign(&k, Algorithm::ES256, "k1", c);
            check_logout_claims(&verify_signature(&t, &keys)?, &e)
        };
        let l = check(&logout_claims()).unwrap();
        assert_eq!(
            (l.sub.as_deref(), l.sid.as_deref(), l.jti.as_deref()),
            (Some("u-1"), Some("s-1"), Some("j-1"))
        );
        // sid alone, or sub alone, is enough.
        let mut c = logout_claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(check(&c).unwrap().sid.as_deref(), Some("s-1"));
        let mut c = logout_claims();
        c.as_object_mut().unwrap().remove("exp");
        c.as_object_mut().unwrap().remove("sid");
        assert_eq!(check(&c).unwrap().sub.as_deref(), Some("u-1"));
        // An ID token (a nonce, no event) is no logout token.
        assert_eq!(check(&claims()).unwrap_err().reason(), "not_logout_token");
        for (field, value, reason) in [
            ("nonce", serde_json::json!("n-1"), "not_logout_token"),
            (
                "events",
                serde_json::json!({"other": {}}),
                "not_logout_token",
            ),
            (
                "events",
                serde_json::json!({BACKCHANNEL_LOGOUT_EVENT: "yes"}),
                "not_logout_token",
            ),
            ("aud", serde_json::json!("another-client"), "audience"),
            ("iss", serde_json::json!("https://evil.test/"), "issuer"),
            ("iat", serde_json::json!(NOW - 400), "too_old"),
            ("iat", serde_json::json!(NOW + 61), "issued_in_future"),
            ("exp", serde_json::json!(NOW - 61), "expired"),
        ] {
            let mut c = logout_claims();
            c[field] = value;
            assert_eq!(check(&c).unwrap_err().reason(), reason, "{field}");
        }
        let mut c = logout_claims();
        c.as_object_mut().unwrap().remove("sub");
        c.as_object_mut().unwrap().remove("sid");
        assert_eq!(check(&c).unwrap_err().reason(), "not_logout_token");
        // Signed by another key: refused before any claim is read.
        let (other, _) = ec_key("k1");
        let t = sign(&other, Algorithm::ES256, "k1", &logout_claims());
        assert_eq!(verify_signature(&t, &keys), Err(Refusal::Signature));
    }

    #[test]
    fn none_and_hmac_are_refused_whatever_the_key() {
        let (_, jwk) = ec_key("k1");
        let keys = set(&[&jwk]);
        let body = b64url(claims().to_string().as_bytes());
        let none = format!("{}.{body}.", b64url(br#"{"alg":"none","kid":"k1"}"#));
        assert_eq!(
            verify_with(&none, &keys, &expect()),
            Err(Refusal::Algorithm("none".into()))
        );
        // HS256 "signed" with the public key's bytes as the secret.
        let secret = serde_json::to_vec(&jwk).unwrap();
        let t = sign(
            &EncodingKey::from_secret(&secret),
            Algorithm::HS256,
            "k1",
            &claims(),
        );
        assert_eq!(
            verify_with(&t, &keys, &expect()).unwrap_err().reason(),
            "algorithm"
        );
        // An EC key named by a token claiming RS256.
        let head = b64url(br#"{"alg":"RS256","kid":"k1"}"#);
        let t = format!("{head}.{body}.{}", b64url(&[0u8; 256]));
        assert_eq!(
            verify_with(&t, &keys, &expect()).unwrap_err().reason(),
            "algorithm"
        );
        assert_eq!(
            verify_with("a.b", &keys, &expect()).unwrap_err().reason(),
            "malformed"
        );
    }

    #[test]
    fn an_rsa_key_from_openssl_verifies_rs256_and_ps256() {
        let dir = tempfile::tempdir().unwrap();
        let der = dir.path().join("k.der");
        let st = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(dir.path().join("k.pem"))
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (Debian package openssl)");
        assert!(st.success());
        let st = std::process::Command::new("openssl")
            .args(["rsa", "-traditional", "-outform", "DER", "-in"])
            .arg(dir.path().join("k.pem"))
            .arg("-out")
            .arg(&der)
            .status()
            .unwrap();
        assert!(st.success());
        let der = std::fs::read(&der).unwrap();
        let pair = ring::signature::RsaKeyPair::from_der(&der).unwrap();
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r1",
            "n": b64url(&public.n),
            "e": b64url(&public.e),
        }))
        .unwrap();
        let key = EncodingKey::from_rsa_der(&der);
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            let t = sign(&key, alg, "r1", &claims());
            assert!(verify_with(&t, &set(&[&jwk]), &expect()).is_ok(), "{alg:?}");
        }
        // HS256 with the modulus as the secret: refused.
        let secret = public.n.clone();
        let t = sign(
            &EncodingKey::from_secret(&secret),
            Algorithm::HS256,
            "r1",
            &claims(),
        );
        assert_eq!(
            verify_with(&t, &set(&[&jwk]), &expect())
                .unwrap_err()
                .reason(),
            "algorithm"
        );
    }

    /// A key set that changes under the verifier, counting fetches.
    struct Rotating(Arc<Mutex<JwkSet>>);

    impl JwksSource for Rotating {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send + '_>> {
            let s = self.0.lock().unwrap().clone();
            Box::pin(async move { Ok(s) })
        }
    }

    #[tokio::test]
    async fn rotated_keys_are_fetched_again_at_most_once_per_interval() {
        let (k1, j1) = ec_key("k1");
        let (k2, j2) = ec_key("k2");
        let published = Arc::new(Mutex::new(set(&[&j1])));
        let verifier = IdTokenVerifier {
            issuer: ISS.into(),
            audience: AUD.into(),
            skew: Duration::from_secs(60),
            max_age: Some(Duration::from_secs(600)),
            keys: KeyCache::new(
                Box::new(Rotating(published.clone())),
                Duration::from_millis(300),
            ),
        };
        let t1 = sign(&k1, Algorithm::ES256, "k1", &claims());
        assert!(verifier.verify_at(&t1, Some("n-123"), NOW).await.is_ok());
        assert!(verifier.verify_at(&t1, Some("n-123"), NOW).await.is_ok());
        assert_eq!(verifier.keys.fetches().await, 1, "kept between tokens");
        // The provider rotates to k2 (k1 gone).
        *published.lock().unwrap() = set(&[&j2]);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let t2 = sign(&k2, Algorithm::ES256, "k2", &claims());
        assert!(verifier.verify_at(&t2, Some("n-123"), NOW).await.is_ok());
        assert_eq!(
            verifier.keys.fetches().await,
            2,
            "unknown kid: fetched again"
        );
        // A flood of unknown kids right after: no further fetch.
        for i in 0..20 {
            let t = sign(&k2, Algorithm::ES256, &format!("forged-{i}"), &claims());
            let r = verifier.verify_at(&t, Some("n-123"), NOW).await;
            assert_eq!(r.unwrap_err().reason(), "unknown_key");
        }
        assert_eq!(verifier.keys.fetches().await, 2, "rate-limited");
        // The retired key no longer verifies.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let r = verifier.verify_at(&t1, Some("n-123"), NOW).await;
        assert_eq!(r.unwrap_err().reason(), "unknown_key");
        assert_eq!(verifier.keys.fetches().await, 3);
    }
}
