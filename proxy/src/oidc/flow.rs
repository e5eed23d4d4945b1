//! The authorization code flow (OpenID Connect Core 3.1) with PKCE (S256),
//! `state` and `nonce`. Each started sign-in is kept in memory under its
//! `state`, bound to the browser that started it (a random value the caller
//! puts in a cookie; only its hash is kept), for at most ten minutes and
//! used once: a replayed or forged callback finds nothing. The code is
//! exchanged at the token endpoint with the client secret and the PKCE
//! verifier, and the ID token verified ([`super::verify`]) with the nonce.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::http::HttpClient;
use super::keys::{discover, HttpJwks, KeyCache, Metadata};
use super::verify::{Claims, IdTokenVerifier, Refusal};
use super::{b64url, pct, random};

/// How long a started sign-in may take at the provider.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Started sign-ins kept at most; beyond it the oldest goes.
const MAX_PENDING: usize = 10_000;

pub struct FlowSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Clock difference tolerated with the provider.
    pub skew: Duration,
    /// Keys are fetched again for an unknown `kid` at most this often.
    pub jwks_min_refetch: Duration,
    pub http: HttpClient,
}

/// Why a sign-in did not complete.
#[derive(Debug)]
pub enum FlowError {
    /// The provider's discovery document or endpoints are unusable.
    Discovery(String),
    /// No started sign-in under this state: replayed, expired or forged.
    UnknownState,
    /// The state was started in another browser.
    OtherBrowser,
    /// The provider sent the person back with an error (`access_denied`…).
    Provider { error: String, description: String },
    /// The code exchange failed (a replayed code gives `invalid_grant`).
    TokenEndpoint(String),
    /// The ID token was refused.
    Token(Refusal),
}

impl FlowError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FlowError::Discovery(_) => "discovery",
            FlowError::UnknownState => "unknown_state",
            FlowError::OtherBrowser => "other_browser",
            FlowError::Provider { .. } => "provider_error",
            FlowError::TokenEndpoint(_) => "token_endpoint",
            FlowError::Token(r) => r.reason(),
        }
    }
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowError::Discovery(e) => write!(f, "the OpenID provider cannot be used: {e}"),
            FlowError::UnknownState => write!(
                f,
                "no sign-in was started under this state (replayed, older than {} minutes, or forged)",
                PENDING_TTL.as_secs() / 60
            ),
            FlowError::OtherBrowser => write!(f, "the sign-in was started in another browser"),
            FlowError::Provider { error, description } => {
                write!(f, "the provider answered {error}: {description}")
            }
            FlowError::TokenEndpoint(e) => write!(f, "the code exchange failed: {e}"),
            FlowError::Token(r) => write!(f, "the ID token was refused: {r}"),
        }
    }
}

/// A sign-in started: send the browser to `authorize_url` with `binding`
/// in a cookie.
pub struct Started {
    pub authorize_url: String,
    pub binding: String,
}

/// A started sign-in, taken out of the store by its callback.
pub struct Pending {
    nonce: String,
    code_verifier: String,
}

struct Stored {
    nonce: String,
    code_verifier: String,
    binding_hash: [u8; 32],
    created: Instant,
}

struct Provider {
    metadata: Metadata,
    verifier: IdTokenVerifier,
}

pub struct CodeFlow {
    s: FlowSettings,
    provider: tokio::sync::OnceCell<Provider>,
    pending: Mutex<HashMap<String, Stored>>,
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl CodeFlow {
    pub fn new(s: FlowSettings) -> CodeFlow {
        CodeFlow {
            s,
            provider: tokio::sync::OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.s.issuer
    }

    /// The provider's metadata and verifier, discovered on first use (a
    /// failure is retried on the next sign-in).
    async fn provider(&self) -> Result<&Provider, FlowError> {
        self.provider
            .get_or_try_init(|| async {
                let metadata = discover(&self.s.http, &self.s.issuer)
                    .await
                    .map_err(FlowError::Discovery)?;
                let keys = KeyCache::new(
                    Box::new(HttpJwks {
                        http: self.s.http.clone(),
                        url: metadata.jwks_uri.clone(),
                    }),
                    self.s.jwks_min_refetch,
                );
                let verifier = IdTokenVerifier {
                    issuer: self.s.issuer.clone(),
                    audience: self.s.client_id.clone(),
                    skew: self.s.skew,
                    // An ID token from a code exchange was issued moments ago.
                    max_age: Some(PENDING_TTL),
                    keys,
                };
                Ok(Provider { metadata, verifier })
            })
            .await
    }

    /// Starts a sign-in: a fresh state, nonce and PKCE verifier.
    pub async fn start(&self) -> Result<Started, FlowError> {
        let p = self.provider().await?;
        let state = b64url(&random::<32>());
        let nonce = b64url(&random::<32>());
        let code_verifier = b64url(&random::<32>());
        let binding = b64url(&random::<32>());
        let challenge = b64url(&Sha256::digest(code_verifier.as_bytes()));
        let scope = self.s.scopes.join(" ");
        let ep = &p.metadata.authorization_endpoint;
        let sep = if ep.contains('?') { '&' } else { '?' };
        let authorize_url = format!(
            "{ep}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            pct(&self.s.client_id),
            pct(&self.s.redirect_uri),
            pct(&scope),
            pct(&state),
            pct(&nonce),
            pct(&challenge),
        );
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.created.elapsed() < PENDING_TTL);
        if map.len() >= MAX_PENDING {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            state,
            Stored {
                nonce,
                code_verifier,
                binding_hash: sha256(&binding),
                created: Instant::now(),
            },
        );
        Ok(Started {
            authorize_url,
            binding,
        })
    }

    /// Takes the sign-in started under `state` out of the store (once),
    /// checking it was started by the browser holding `binding`.
    pub fn take(&self, state: &str, binding: Option<&str>) -> Result<Pending, FlowError> {
        let stored = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .filter(|s| s.created.elapsed() < PENDING_TTL)
            .ok_or(FlowError::UnknownState)?;
        let same_browser = binding.is_some_and(|b| super::ct_eq(&sha256(b), &stored.binding_hash));
        if !same_browser {
            return Err(FlowError::OtherBrowser);
        }
        Ok(Pending {
            nonce: stored.nonce,
            code_verifier: stored.code_verifier,
        })
    }

    /// Exchanges `code` for tokens and verifies the ID token; its claims.
    pub async fn redeem(&self, pending: Pending, code: &str) -> Result<Claims, FlowError> {
        let p = self.provider().await?;
        let reply = self
            .s
            .http
            .post_form(
                &p.metadata.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.s.redirect_uri),
                    ("code_verifier", &pending.code_verifier),
                ],
                Some((&self.s.client_id, &self.s.client_secret)),
            )
            .await
            .map_err(FlowError::TokenEndpoint)?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        if !reply.status.is_success() {
            let error = body["error"].as_str().unwrap_or("no error code");
            let description = body["error_description"].as_str().unwrap_or("");
            return Err(FlowError::TokenEndpoint(format!(
                "{} answered {}: {error} {description}",
                p.metadata.token_endpoint, reply.status
            )));
        }
        let id_token = body["id_token"].as_str().ok_or_else(|| {
            FlowError::TokenEndpoint(
                "the token response has no id_token (is the scope openid?)".into(),
            )
        })?;
        p.verifier
            .verify(id_token, Some(&pending.nonce))
            .await
            .map_err(FlowError::Token)
    }
}
