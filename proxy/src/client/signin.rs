//! Signing the user in at the organisation's OpenID provider (Entra ID) and
//! handing the ID token to the gateway on the link.
//!
//! - [`browser_sign_in`]: authorization code with PKCE (S256), the browser
//!   sent back to a loopback listener on 127.0.0.1 (RFC 8252 §7.3: a
//!   native app registers `http://127.0.0.1/callback`, any port)
//! - [`device_code_sign_in`]: RFC 8628, for a device without a usable
//!   browser: the person opens the verification URL elsewhere and types
//!   the code shown
//!
//! Both send a `nonce` derived from the device id and a random salt
//! ([`crate::users::binding_nonce`]), so the token is only good on this
//! device's link. Which provider and client id to use comes from the
//! gateway (`GET /.komugate/user/config`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::oidc::http::HttpClient;
use crate::oidc::keys::{discover, Metadata};
use crate::oidc::{b64url, pct, random};
use crate::users::binding_nonce;

/// How long a person may take at the provider.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(600);

/// The provider and client the gateway accepts tokens from.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderInfo {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// An ID token for this device, with the salt that binds it.
#[derive(Debug, Clone, Default)]
pub struct UserToken {
    pub id_token: String,
    /// Empty when the provider did not echo the nonce (first-use binding).
    pub binding_salt: String,
    pub expires_at: u64,
    /// The token's `iat`.
    pub issued_at: u64,
    /// How to renew it before it expires, if the provider gave a refresh token.
    pub renewal: Option<Renewal>,
}

/// What renewing an ID token takes (see [`super::renew`]).
#[derive(Clone, Default)]
pub struct Renewal {
    pub refresh_token: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// The sign-in's nonce: the renewed token must still carry it.
    pub nonce: String,
}

impl std::fmt::Debug for Renewal {
    // Never the refresh token itself (it is a credential).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Shows the person where to sign in: the URL, and for the device-code
/// flow the code to type. The default prints it and tries to open a browser.
pub type Opener = Arc<dyn Fn(&str, Option<&str>) + Send + Sync>;

/// Prints the URL (and code) and asks the desktop to open it.
pub fn default_opener(open_browser: bool) -> Opener {
    Arc::new(move |url: &str, code: Option<&str>| {
        match code {
            Some(c) => println!("サインイン / sign in: open {url} and enter the code {c}"),
            None => println!("サインイン / sign in: {url}"),
        }
        if open_browser {
            let program = if cfg!(windows) {
                "explorer"
            } else if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            };
            if let Err(e) = std::process::Command::new(program)
                .arg(url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                tracing::warn!("cannot open a browser with {program} ({e}); open the URL above");
            }
        }
    })
}

fn claims_of(id_token: &str) -> serde_json::Value {
    use base64::Engine;
    id_token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The token with its binding: the salt only if the provider echoed our
/// nonce; with the refresh token, how to renew it.
pub(crate) fn bound(tokens: Tokens, nonce: &str, salt: String, renew: (&str, &str)) -> UserToken {
    let claims = claims_of(&tokens.id_token);
    let echoed = claims["nonce"].as_str() == Some(nonce);
    let (token_endpoint, client_id) = renew;
    UserToken {
        expires_at: claims["exp"].as_u64().unwrap_or(0),
        issued_at: claims["iat"].as_u64().unwrap_or(0),
        binding_salt: if echoed { salt } else { String::new() },
        id_token: tokens.id_token,
        renewal: tokens.refresh_token.map(|refresh_token| Renewal {
            refresh_token,
            token_endpoint: token_endpoint.to_string(),
            client_id: client_id.to_string(),
            nonce: nonce.to_string(),
        }),
    }
}

/// A token endpoint's answer: the ID token and, if the provider issues
/// one (Entra ID with the `offline_access` scope), a refresh token.
pub(crate) struct Tokens {
    pub id_token: String,
    pub refresh_token: Option<String>,
}

async fn metadata(http: &HttpClient, p: &ProviderInfo) -> Result<Metadata> {
    discover(http, &p.issuer)
        .await
        .map_err(|e| anyhow!("the OpenID provider {} cannot be used: {e}", p.issuer))
}

pub(crate) fn tokens_from(reply_status: StatusCode, body: &[u8], endpoint: &str) -> Result<Tokens> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if !reply_status.is_success() {
        bail!(
            "{endpoint} answered {reply_status}: {} {}",
            v["error"].as_str().unwrap_or("no error code"),
            v["error_description"].as_str().unwrap_or("")
        );
    }
    let id_token = v["id_token"].as_str().map(str::to_string).ok_or_else(|| {
        anyhow!("{endpoint}: the token response has no id_token (is the scope openid?)")
    })?;
    Ok(Tokens {
        id_token,
        refresh_token: v["refresh_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string),
    })
}

/// Authorization code flow with PKCE through the browser and a loopback
/// redirect listener on 127.0.0.1.
pub async fn browser_sign_in(
    http: &HttpClient,
    p: &ProviderInfo,
    device_id: &str,
    opener: &Opener,
) -> Result<UserToken> {
    let m = metadata(http, p).await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot open the loopback listener for the sign-in redirect")?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let state = b64url(&random::<32>());
    let salt = b64url(&random::<32>());
    let nonce = binding_nonce(device_id, &salt);
    let verifier = b64url(&random::<32>());
    let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
    let ep = &m.authorization_endpoint;
    let sep = if ep.contains('?') { '&' } else { '?' };
    let url = format!(
        "{ep}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        pct(&p.client_id),
        pct(&redirect_uri),
        pct(&p.scopes.join(" ")),
        pct(&state),
        pct(&nonce),
        pct(&challenge),
    );
    opener(&url, None);
    let code = tokio::time::timeout(SIGN_IN_TIMEOUT, wait_for_callback(&listener, &state))
        .await
        .map_err(|_| {
            anyhow!(
                "no sign-in within {} minutes",
                SIGN_IN_TIMEOUT.as_secs() / 60
            )
        })??;
    let reply = http
        .post_form(
            &m.token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
                ("client_id", &p.client_id),
            ],
            None,
        )
        .await
        .map_err(|e| anyhow!("the code exchange failed: {e}"))?;
    let tokens = tokens_from(reply.status, &reply.body, &m.token_endpoint)?;
    Ok(bound(
        tokens,
        &nonce,
        salt,
        (m.token_endpoint.as_str(), p.client_id.as_str()),
    ))
}

/// Serves the loopback redirect until the callback with `state` arrives:
/// its code, or the provider's error.
async fn wait_for_callback(listener: &TcpListener, state: &str) -> Result<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String>>(1);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            Some(done) = rx.recv() => return done,
        };
        let tx = tx.clone();
        let state = state.to_string();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                let state = state.clone();
                async move {
                    let (status, page, outcome) = callback_outcome(&req, &state);
                    if let Some(o) = outcome {
                        let _ = tx.send(o).await;
                    }
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/html; charset=utf-8")
                            .body(Full::new(Bytes::from(page)))
                            .expect("static response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Outcome = (StatusCode, String, Option<Result<String>>);

fn callback_outcome<B>(req: &Request<B>, state: &str) -> Outcome {
    if req.method() != Method::GET || req.uri().path() != "/callback" {
        return (StatusCode::NOT_FOUND, "not found".into(), None);
    }
    let q: std::collections::HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let d = |s: &str| {
                String::from_utf8_lossy(&crate::common::percent_decode_form(s.as_bytes()))
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect();
    if q.get("state").map(String::as_str) != Some(state) {
        // Not this sign-in's answer (another tab, a forged link): ignored.
        return (
            StatusCode::BAD_REQUEST,
            page(
                "このサインインの応答ではありません。",
                "This is not the answer to this sign-in.",
            ),
            None,
        );
    }
    if let Some(e) = q.get("error") {
        let d = q.get("error_description").cloned().unwrap_or_default();
        return (
            StatusCode::OK,
            page(
                "サインインできませんでした。",
                &format!("Sign-in failed: {e} {d}"),
            ),
            Some(Err(anyhow!("the provider answered {e}: {d}"))),
        );
    }
    match q.get("code") {
        Some(c) => (
            StatusCode::OK,
            page(
                "サインインしました。このウィンドウは閉じてかまいません。",
                "Signed in. You can close this window.",
            ),
            Some(Ok(c.clone())),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            page("応答にコードがありません。", "No code in the answer."),
            Some(Err(anyhow!("the provider's answer has no code"))),
        ),
    }
}

fn page(ja: &str, en: &str) -> String {
    format!(
        "<!doctype html><html lang=\"ja\"><meta charset=\"utf-8\"><title>komugate</title><p>{}</p><p lang=\"en\">{}</p></html>",
        crate::flow::block_page::escape(ja),
        crate::flow::block_page::escape(en)
    )
}

/// Signs the user in the way `cfg.sign_in` says (`browser` or `device`)
/// with the provider the gateway names, and hands the token to the
/// gateway on `link`: the user and groups the gateway accepted.
pub async fn sign_in(
    link: &super::Link,
    cfg: &super::ClientConfig,
    opener: &Opener,
) -> Result<serde_json::Value> {
    // The link may still be connecting.
    let deadline = Instant::now() + cfg.connect_timeout() * 4;
    while !link.is_up() && Instant::now() < deadline {
        let _ = link.sender();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let provider = link.provider_info().await?;
    let http = provider_http(cfg)?;
    let token = match cfg.sign_in.as_str() {
        "device" => device_code_sign_in(&http, &provider, link.device_id(), opener).await?,
        _ => browser_sign_in(&http, &provider, link.device_id(), opener).await?,
    };
    link.present_token(token).await
}

/// An HTTPS client for the provider (the system roots plus `oidc_ca`).
pub fn provider_http(cfg: &super::ClientConfig) -> Result<HttpClient> {
    let ca = if cfg.oidc_ca.as_os_str().is_empty() {
        None
    } else {
        Some(
            std::fs::read(&cfg.oidc_ca)
                .with_context(|| format!("oidc_ca {}", cfg.oidc_ca.display()))?,
        )
    };
    HttpClient::new(ca.as_deref(), Duration::from_secs(15))
        .map_err(|e| anyhow!("oidc_ca {}: {e}", cfg.oidc_ca.display()))
}

/// RFC 8628 device authorization grant.
pub async fn device_code_sign_in(
    http: &HttpClient,
    p: &ProviderInfo,
    device_id: &str,
    opener: &Opener,
) -> Result<UserToken> {
    let m = metadata(http, p).await?;
    let ep = m.device_authorization_endpoint.as_deref().ok_or_else(|| {
        anyhow!(
            "the provider {} offers no device code sign-in (no device_authorization_endpoint); use the browser sign-in",
            p.issuer
        )
    })?;
    crate::oidc::check_url("device_authorization_endpoint", ep).map_err(|e| anyhow!("{e}"))?;
    let salt = b64url(&random::<32>());
    let nonce = binding_nonce(device_id, &salt);
    let scope = p.scopes.join(" ");
    let reply = http
        .post_form(
            ep,
            &[
                ("client_id", &p.client_id),
                ("scope", &scope),
                ("nonce", &nonce),
            ],
            None,
        )
        .await
        .map_err(|e| anyhow!("device authorization failed: {e}"))?;
    #[derive(Deserialize)]
    struct DeviceAuth {
        device_code: String,
        user_code: String,
        verification_uri: String,
        #[serde(default)]
        verification_uri_complete: Option<String>,
        #[serde(default = "five")]
        interval: u64,
        #[serde(default = "ten_minutes")]
        expires_in: u64,
    }
    fn five() -> u64 {
        5
    }
    fn ten_minutes() -> u64 {
        600
    }
    if !reply.status.is_success() {
        bail!(
            "{ep} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let d: DeviceAuth = serde_json::from_slice(&reply.body)
        .map_err(|e| anyhow!("{ep}: not a device authorization response: {e}"))?;
    let shown = d
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&d.verification_uri);
    opener(shown, Some(&d.user_code));
    let deadline = Instant::now() + Duration::from_secs(d.expires_in.min(1800));
    let mut interval = Duration::from_secs(d.interval.clamp(1, 60));
    loop {
        if Instant::now() > deadline {
            bail!("the device code expired before the sign-in was completed; sign in again");
        }
        tokio::time::sleep(interval).await;
        let reply = http
            .post_form(
                &m.token_endpoint,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &d.device_code),
                    ("client_id", &p.client_id),
                ],
                None,
            )
            .await
            .map_err(|e| anyhow!("polling the token endpoint: {e}"))?;
        if reply.status.is_success() {
            let tokens = tokens_from(reply.status, &reply.body, &m.token_endpoint)?;
            return Ok(bound(
                tokens,
                &nonce,
                salt,
                (m.token_endpoint.as_str(), p.client_id.as_str()),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        match v["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            _ => {
                return Err(tokens_from(reply.status, &reply.body, &m.token_endpoint)
                    .err()
                    .unwrap_or_else(|| anyhow!("unexpected token endpoint answer")))
            }
        }
    }
}
