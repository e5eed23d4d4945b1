//! Users signed in on devices, and the devices' posture.
//!
//! `komugate client` signs the user in at the OpenID provider and sends
//! the ID token on its mTLS link (`POST /.komugate/user/sign-in`,
//! [`endpoint`]). The gateway verifies it ([`crate::oidc::verify`]: JWKS
//! with rotation, issuer, audience, times with the configured skew) and
//! keeps one session per device: user name and groups from the claims,
//! until the token's `exp`. Every request on that device's links is then
//! decided with the user ([`Sessions::current`], a map lookup: the token is
//! not verified again per request). Sign-out, a newer sign-in or the
//! token's expiry end the session at once.
//!
//! Renewal: the client renews the ID token with its refresh token before
//! it expires and presents the new one; the provider keeps the sign-in's
//! nonce, so the renewal replaces the session without a gap.
//!
//! Ending a sign-in: sign-out from the device, or the provider's
//! back-channel logout ([`logout`]: a signed logout token naming the
//! provider session `sid` or the user `sub`), removes the sessions at once
//! (every connection of the device reads the map per request) and
//! remembers the ended sign-in, so neither the client's copy of the token
//! nor a renewal of it brings the user back: only a new sign-in does.
//!
//! Binding to the device: the client derives the authorization request's
//! `nonce` from its device id and a random salt ([`binding_nonce`]) and
//! sends the salt with the token. The gateway recomputes the nonce with
//! the device id of the certificate on the link the token arrives on, so a
//! token copied to another device's link fails the nonce check. A provider
//! that puts no nonce in the token (the device-code flow at some providers)
//! gets a first-use binding instead: the token is bound to the first device
//! that presents it until it expires, and refused on any other.
//!
//! [`posture`] holds the devices' signed posture reports.

pub mod endpoint;
pub mod logout;
pub mod posture;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use sha2::{Digest, Sha256};

use crate::config::{Config, UserOidcConfig};
use crate::oidc::http::HttpClient;
use crate::oidc::keys::{discover, HttpJwks, KeyCache};
use crate::oidc::metrics::OidcMetrics;
use crate::oidc::verify::{claim_str, claim_strings, IdTokenVerifier, Refusal};
use crate::oidc::{b64url, unix_now};

/// The `use` label of this module's `komugate_oidc_*` metrics.
pub const METRIC_USE: &str = "user";

/// The nonce a sign-in for `device_id` sends: it binds the ID token to the
/// device (see the module docs).
pub fn binding_nonce(device_id: &str, salt: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"komugate-user-binding-v1\n");
    // Length-prefixed: no other (device, salt) pair gives the same input.
    h.update((device_id.len() as u64).to_be_bytes());
    h.update(device_id.as_bytes());
    h.update(salt.as_bytes());
    b64url(&h.finalize())
}

/// A user signed in on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub groups: Vec<String>,
    /// The token's `exp`: the session ends then.
    pub expires_at: u64,
    pub signed_in_at: u64,
    /// The token's `sub` and `sid` (the provider's session, when it names
    /// one): what a back-channel logout names.
    pub sub: String,
    pub sid: Option<String>,
    /// What ties the token to this sign-in: its nonce (kept by renewals),
    /// or the token's digest when it has none.
    pub binding: String,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInRefusal {
    /// `[users.oidc]` is not configured.
    NotConfigured,
    /// The request body is not `{"id_token": ..., "binding_salt": ...}`.
    BadRequest(String),
    /// The provider cannot be used (discovery).
    Provider(String),
    /// The token was refused by the verifier.
    Token(Refusal),
    /// The token is bound to another device (nonce, or first use elsewhere).
    OtherDevice,
    /// The sign-in the token belongs to was ended (sign-out or the
    /// provider's logout): the user must sign in again.
    Ended,
}

impl SignInRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            SignInRefusal::NotConfigured => "not_configured",
            SignInRefusal::BadRequest(_) => "bad_request",
            SignInRefusal::Provider(_) => "provider",
            SignInRefusal::Token(Refusal::Nonce) | SignInRefusal::OtherDevice => "other_device",
            SignInRefusal::Token(r) => r.reason(),
            SignInRefusal::Ended => "signed_out",
        }
    }
}

impl std::fmt::Display for SignInRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignInRefusal::NotConfigured => write!(
                f,
                "user sign-in is not enabled on this gateway (no [users.oidc] in its configuration)"
            ),
            SignInRefusal::BadRequest(m) => write!(f, "bad sign-in request: {m}"),
            SignInRefusal::Provider(m) => write!(f, "the OpenID provider cannot be used: {m}"),
            SignInRefusal::Token(Refusal::Nonce) | SignInRefusal::OtherDevice => write!(
                f,
                "the token was issued for a sign-in on another device; sign in on this device"
            ),
            SignInRefusal::Token(r) => write!(f, "the ID token was refused: {r}"),
            SignInRefusal::Ended => write!(
                f,
                "this sign-in was ended (signed out, or logged out at the provider); sign in again"
            ),
        }
    }
}

struct Provider {
    verifier: IdTokenVerifier,
}

/// The gateway's user sessions, one per device.
pub struct Sessions {
    oidc: Option<UserOidcConfig>,
    http: Option<HttpClient>,
    provider: tokio::sync::OnceCell<Provider>,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Tokens without a nonce: SHA-256 of the token → (device, exp).
    first_use: std::sync::Mutex<HashMap<[u8; 32], (String, u64)>>,
    /// Sign-ins ended by sign-out or logout, and logout tokens seen.
    ended_sign_ins: std::sync::Mutex<logout::Ended>,
    pub metrics: OidcMetrics,
    ended: IntCounterVec,
    active: IntGauge,
}

impl Sessions {
    pub fn new(config: &Config, registry: &Registry) -> anyhow::Result<Sessions> {
        let oidc = config.users.oidc.clone();
        let http = match &oidc {
            Some(o) => {
                let ca = match &o.ca_file {
                    Some(p) => {
                        let p = config.data_path(p);
                        Some(std::fs::read(&p).map_err(|e| {
                            anyhow::anyhow!("[users.oidc] ca_file {}: {e}", p.display())
                        })?)
                    }
                    None => None,
                };
                Some(
                    HttpClient::new(ca.as_deref(), Duration::from_secs(10))
                        .map_err(|e| anyhow::anyhow!("[users.oidc] ca_file: {e}"))?,
                )
            }
            None => None,
        };
        let metrics = OidcMetrics::default();
        metrics.register(registry);
        let ended = IntCounterVec::new(
            Opts::new(
                "komugate_user_sessions_ended_total",
                "User sessions on devices ended or renewed, by why (expired, sign_out, logout, replaced, renewed)",
            ),
            &["reason"],
        )
        .expect("metric");
        let active = IntGauge::new(
            "komugate_user_sessions",
            "Devices with a signed-in user now",
        )
        .expect("metric");
        let _ = registry.register(Box::new(ended.clone()));
        let _ = registry.register(Box::new(active.clone()));
        Ok(Sessions {
            oidc,
            http,
            provider: tokio::sync::OnceCell::new(),
            sessions: RwLock::new(HashMap::new()),
            first_use: std::sync::Mutex::new(HashMap::new()),
            ended_sign_ins: Default::default(),
            metrics,
            ended,
            active,
        })
    }

    /// `[users.oidc]`, if user sign-in is enabled.
    pub fn oidc(&self) -> Option<&UserOidcConfig> {
        self.oidc.as_ref()
    }

    async fn provider(&self) -> Result<&Provider, SignInRefusal> {
        let (Some(o), Some(http)) = (&self.oidc, &self.http) else {
            return Err(SignInRefusal::NotConfigured);
        };
        self.provider
            .get_or_try_init(|| async {
                let metadata = discover(http, &o.issuer)
                    .await
                    .map_err(SignInRefusal::Provider)?;
                Ok(Provider {
                    verifier: IdTokenVerifier {
                        issuer: o.issuer.clone(),
                        audience: o.client_id.clone(),
                        skew: Duration::from_secs(o.clock_skew_secs),
                        max_age: None,
                        keys: KeyCache::new(
                            Box::new(HttpJwks {
                                http: http.clone(),
                                url: metadata.jwks_uri,
                            }),
                            Duration::from_secs(o.jwks_min_refetch_secs),
                        ),
                    },
                })
            })
            .await
    }

    /// Verifies `id_token` for `device_id` and starts (or replaces) the
    /// device's session. Refusals are counted and logged.
    pub async fn sign_in(
        &self,
        device_id: &str,
        id_token: &str,
        binding_salt: &str,
    ) -> Result<Arc<Session>, SignInRefusal> {
        let r = self.sign_in_inner(device_id, id_token, binding_salt).await;
        match &r {
            Ok(s) => {
                self.metrics.accepted(METRIC_USE);
                tracing::info!(device = device_id, user = %s.user, groups = ?s.groups, expires_in = s.expires_at.saturating_sub(unix_now()), "user signed in on the device");
            }
            Err(e) => {
                self.metrics.refused(METRIC_USE, e.reason());
                tracing::warn!(
                    device = device_id,
                    reason = e.reason(),
                    "user sign-in refused: {e}"
                );
            }
        }
        r
    }

    async fn sign_in_inner(
        &self,
        device_id: &str,
        id_token: &str,
        binding_salt: &str,
    ) -> Result<Arc<Session>, SignInRefusal> {
        let o = self.oidc.as_ref().ok_or(SignInRefusal::NotConfigured)?;
        let provider = self.provider().await?;
        let now = unix_now();
        // With a salt, the nonce must bind the token to this device.
        let expected = (!binding_salt.is_empty()).then(|| binding_nonce(device_id, binding_salt));
        let claims = provider
            .verifier
            .verify_at(id_token, expected.as_deref(), now)
            .await
            .map_err(SignInRefusal::Token)?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(now);
        if expected.is_none() {
            if claims.contains_key("nonce") {
                // A nonce was sent, so the salt must come with it.
                return Err(SignInRefusal::OtherDevice);
            }
            self.bind_first_use(id_token, device_id, exp, now)?;
        }
        let binding = match claim_str(&claims, "nonce") {
            Some(n) => format!("nonce:{n}"),
            None => format!("token:{}", b64url(&Sha256::digest(id_token.as_bytes()))),
        };
        let sub = claim_str(&claims, "sub").unwrap_or_default().to_string();
        let sid = claim_str(&claims, "sid").map(str::to_string);
        let iat = claims
            .get("iat")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(now);
        if self
            .ended_lock()
            .refuses(&binding, &sub, sid.as_deref(), iat, now)
        {
            return Err(SignInRefusal::Ended);
        }
        let user = o
            .user_claims
            .iter()
            .filter_map(|c| claim_str(&claims, c))
            .map(str::trim)
            .find(|u| !u.is_empty())
            .ok_or_else(|| {
                SignInRefusal::Token(Refusal::Malformed(format!(
                    "none of the user claims {:?} is in the token",
                    o.user_claims
                )))
            })?
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect::<String>();
        let groups = claim_strings(&claims, &o.groups_claim)
            .into_iter()
            .map(|g| g.chars().filter(|c| !c.is_control()).take(256).collect())
            .take(500)
            .collect();
        let session = Arc::new(Session {
            user,
            groups,
            expires_at: exp,
            signed_in_at: now,
            sub,
            sid,
            binding,
        });
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        match map.insert(device_id.to_string(), session.clone()) {
            // The same sign-in renewed (the provider keeps its nonce).
            Some(old) if old.binding == session.binding => {
                self.ended.with_label_values(&["renewed"]).inc()
            }
            Some(_) => self.ended.with_label_values(&["replaced"]).inc(),
            None => {}
        }
        self.active.set(map.len() as i64);
        Ok(session)
    }

    fn bind_first_use(
        &self,
        token: &str,
        device_id: &str,
        exp: u64,
        now: u64,
    ) -> Result<(), SignInRefusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut seen = self.first_use.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (_, e)| *e >= now);
        }
        match seen.get(&key) {
            Some((d, _)) if d != device_id => Err(SignInRefusal::OtherDevice),
            Some(_) => Ok(()),
            None => {
                seen.insert(key, (device_id.to_string(), exp));
                Ok(())
            }
        }
    }

    /// Ends the device's session; `true` if there was one. The sign-in
    /// stays ended: its token and renewals of it are refused after.
    pub fn sign_out(&self, device_id: &str) -> bool {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let had = map.remove(device_id);
        self.active.set(map.len() as i64);
        drop(map);
        if let Some(s) = &had {
            self.ended_lock().end_binding(&s.binding, unix_now());
            self.ended.with_label_values(&["sign_out"]).inc();
            tracing::info!(device = device_id, user = %s.user, "user signed out of the device");
        }
        had.is_some()
    }

    fn ended_lock(&self) -> std::sync::MutexGuard<'_, logout::Ended> {
        self.ended_sign_ins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The user signed in on `device_id` now, if any: the per-request path
    /// (one read-locked map lookup and a time comparison). An expired
    /// session is removed here.
    pub fn current(&self, device_id: &str) -> Option<Arc<Session>> {
        self.current_at(device_id, unix_now())
    }

    pub fn current_at(&self, device_id: &str, now: u64) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned()?;
        if now < s.expires_at {
            return Some(s);
        }
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if map.get(device_id).is_some_and(|c| Arc::ptr_eq(c, &s)) {
            map.remove(device_id);
            self.active.set(map.len() as i64);
            self.ended.with_label_values(&["expired"]).inc();
            tracing::info!(device = device_id, user = %s.user, "user session on the device expired (the ID token's exp)");
        }
        None
    }

    /// Sessions started without a provider, for benches and unit tests.
    pub fn insert_for_test(&self, device_id: &str, session: Session) {
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device_id.to_string(), Arc::new(session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_binds_the_device_and_the_salt() {
        let a = binding_nonce("PC-1", "s1");
        assert_eq!(a, binding_nonce("PC-1", "s1"));
        assert_ne!(a, binding_nonce("PC-2", "s1"));
        assert_ne!(a, binding_nonce("PC-1", "s2"));
        // No ambiguity between the parts.
        assert_ne!(binding_nonce("PC-1\ns", "1"), binding_nonce("PC-1", "s\n1"));
    }

    #[test]
    fn sessions_end_at_expiry_and_sign_out() {
        let s = Sessions::new(&Config::embedded_default(), &Registry::new()).unwrap();
        s.insert_for_test(
            "PC-1",
            Session {
                user: "hanako".into(),
                groups: vec!["teachers".into()],
                expires_at: 1000,
                signed_in_at: 900,
                ..Default::default()
            },
        );
        assert_eq!(s.current_at("PC-1", 999).unwrap().user, "hanako");
        assert!(s.current_at("PC-2", 999).is_none());
        assert!(s.current_at("PC-1", 1000).is_none(), "expired at exp");
        assert!(s.current_at("PC-1", 10).is_none(), "removed once expired");
        assert_eq!(s.ended.with_label_values(&["expired"]).get(), 1);
        s.insert_for_test(
            "PC-1",
            Session {
                user: "hanako".into(),
                groups: vec![],
                expires_at: u64::MAX,
                signed_in_at: 0,
                ..Default::default()
            },
        );
        assert!(s.sign_out("PC-1"));
        assert!(s.current("PC-1").is_none());
        assert!(!s.sign_out("PC-1"));
    }

    #[test]
    fn a_token_without_nonce_is_bound_to_its_first_device() {
        let s = Sessions::new(&Config::embedded_default(), &Registry::new()).unwrap();
        assert!(s.bind_first_use("t", "PC-1", 100, 1).is_ok());
        assert!(s.bind_first_use("t", "PC-1", 100, 2).is_ok());
        assert_eq!(
            s.bind_first_use("t", "PC-2", 100, 3),
            Err(SignInRefusal::OtherDevice)
        );
    }
}
