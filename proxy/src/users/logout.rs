//! Ending users' sign-ins from the provider: OpenID Connect Back-Channel
//! Logout 1.0. The provider posts a signed logout token to
//! `POST /oidc/backchannel-logout` on the admin listener (register
//! `https://<gateway admin address>/oidc/backchannel-logout` as the app's
//! back-channel logout URL). The token is verified like an ID token
//! (signature by the provider's keys, issuer, audience) plus the logout
//! checks ([`crate::oidc::verify::check_logout_claims`]: the event, `sub`
//! or `sid`, no nonce, a recent `iat`) and refused when its `jti` was seen
//! before. The sessions it names end at once, and [`Ended`] keeps the
//! ended sign-ins so their tokens cannot start a session again.
//!
//! Answers: `200` when accepted (also when no session matched: the user
//! may not be on any device now), `400` with `{"error", "error_description"}`
//! otherwise, as §2.8 says. Refusals are counted in
//! `komugate_oidc_refused_total{use="logout", reason}`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{Sessions, SignInRefusal};
use crate::oidc::unix_now;
use crate::oidc::verify::{Logout, Refusal};

/// Where the provider posts logout tokens (admin listener).
pub const PATH: &str = "/oidc/backchannel-logout";
/// The `use` label of logout tokens in `komugate_oidc_*` metrics.
pub const METRIC_USE: &str = "logout";
/// A logout token older than this is refused (the provider sends it at once).
const MAX_AGE: Duration = Duration::from_secs(300);
/// How long ended sign-ins and seen `jti`s are remembered: longer than an
/// ID token lives, as long as a renewal could bring one back.
const KEEP_SECS: u64 = 30 * 86_400;
/// At most this many remembered entries of each kind (oldest dropped).
const MAX_ENTRIES: usize = 100_000;
const MAX_BODY: usize = 64 * 1024;

/// Sign-ins ended by sign-out or logout, with when, and logout tokens seen.
#[derive(Default)]
pub struct Ended {
    /// Session binding (the sign-in's nonce) → when it was ended.
    bindings: HashMap<String, u64>,
    /// Provider session id → when it was logged out.
    sids: HashMap<String, u64>,
    /// User (`sub`) → when all their sessions were logged out.
    subs: HashMap<String, u64>,
    /// Logout token ids seen → when.
    jtis: HashMap<String, u64>,
}

fn remember(map: &mut HashMap<String, u64>, key: &str, now: u64) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, t| now.saturating_sub(*t) < KEEP_SECS);
        if map.len() >= MAX_ENTRIES {
            // Still full: forget the older half rather than grow without bound.
            let mut times: Vec<u64> = map.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            map.retain(|_, t| *t > cut);
        }
    }
    map.insert(key.to_string(), now);
}

impl Ended {
    /// Whether a token of this sign-in (`binding`), user and provider
    /// session, issued at `iat`, belongs to an ended sign-in.
    pub fn refuses(&self, binding: &str, sub: &str, sid: Option<&str>, iat: u64, now: u64) -> bool {
        let recent = |t: &u64| now.saturating_sub(*t) < KEEP_SECS;
        self.bindings.get(binding).is_some_and(recent)
            || sid.is_some_and(|s| self.sids.get(s).is_some_and(recent))
            || self.subs.get(sub).is_some_and(|t| recent(t) && iat <= *t)
    }

    pub fn end_binding(&mut self, binding: &str, now: u64) {
        remember(&mut self.bindings, binding, now);
    }

    /// Records the logout; `false` if its `jti` was seen before.
    fn logout(&mut self, l: &Logout, now: u64) -> bool {
        if let Some(j) = &l.jti {
            if self
                .jtis
                .get(j)
                .is_some_and(|t| now.saturating_sub(*t) < KEEP_SECS)
            {
                return false;
            }
            remember(&mut self.jtis, j, now);
        }
        match (&l.sid, &l.sub) {
            (Some(sid), _) => remember(&mut self.sids, sid, now),
            (None, Some(sub)) => remember(&mut self.subs, sub, now),
            (None, None) => {}
        }
        true
    }
}

/// Whether a logout naming `l` ends `s`: the provider session when both
/// name one (and the user, if the token names them too), else the user.
fn names(l: &Logout, s: &super::Session) -> bool {
    match (&l.sid, &s.sid) {
        (Some(want), Some(have)) => want == have && l.sub.as_ref().is_none_or(|u| *u == s.sub),
        _ => l.sub.as_ref().is_some_and(|u| *u == s.sub),
    }
}

impl Sessions {
    /// Verifies a back-channel logout token and ends the sessions it
    /// names: how many ended. Refusals are counted and logged.
    pub async fn backchannel_logout(&self, token: &str) -> Result<usize, SignInRefusal> {
        let r = self.logout_inner(token).await;
        match &r {
            Ok(n) => {
                self.metrics.accepted(METRIC_USE);
                tracing::info!(sessions = n, "back-channel logout from the provider");
            }
            Err(e) => {
                self.metrics.refused(METRIC_USE, e.reason());
                tracing::warn!(
                    reason = e.reason(),
                    "back-channel logout refused: {}",
                    message(e)
                );
            }
        }
        r
    }

    async fn logout_inner(&self, token: &str) -> Result<usize, SignInRefusal> {
        let provider = self.provider().await?;
        let l = provider
            .verifier
            .verify_logout(token, MAX_AGE)
            .await
            .map_err(SignInRefusal::Token)?;
        let now = unix_now();
        let mut ended = self.ended_lock();
        if !ended.logout(&l, now) {
            return Err(SignInRefusal::Token(Refusal::Replayed));
        }
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = map
            .iter()
            .filter(|(_, s)| names(&l, s))
            .map(|(d, _)| d.clone())
            .collect();
        for device in &gone {
            if let Some(s) = map.remove(device) {
                ended.end_binding(&s.binding, now);
                self.ended.with_label_values(&["logout"]).inc();
                tracing::info!(device = %device, user = %s.user, "user logged out at the provider: session ended");
            }
        }
        self.active.set(map.len() as i64);
        Ok(gone.len())
    }
}

/// What the provider is told about a refusal.
fn message(e: &SignInRefusal) -> String {
    match e {
        SignInRefusal::Token(r) => format!("the logout token was refused: {r}"),
        other => other.to_string(),
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

fn invalid(description: String) -> Response<Full<Bytes>> {
    answer(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": "invalid_request", "error_description": description})
            .to_string(),
    )
}

/// Answers `POST /oidc/backchannel-logout` (form field `logout_token`).
pub async fn handle(users: &Sessions, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"invalid_request","error_description":"use POST with a logout_token"}"#
                .into(),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return invalid(format!(
                "the body cannot be read (at most {MAX_BODY} bytes): {e}"
            ))
        }
    };
    let form = crate::logs::admin_http::parse_query_string(&String::from_utf8_lossy(&body));
    let Some((_, token)) = form.iter().find(|(k, _)| k == "logout_token") else {
        let e = SignInRefusal::BadRequest("no logout_token in the form".into());
        users.metrics.refused(METRIC_USE, e.reason());
        return invalid("no logout_token field in the form body".into());
    };
    match users.backchannel_logout(token).await {
        Ok(_) => answer(StatusCode::OK, String::new()),
        Err(e) => invalid(message(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::Session;

    fn logout(sub: Option<&str>, sid: Option<&str>, jti: &str) -> Logout {
        Logout {
            sub: sub.map(str::to_string),
            sid: sid.map(str::to_string),
            jti: Some(jti.into()),
            iat: 100,
        }
    }

    #[test]
    fn a_logout_names_the_provider_session_or_the_user() {
        let s = Session {
            user: "hanako".into(),
            sub: "u-1".into(),
            sid: Some("s-1".into()),
            ..Default::default()
        };
        assert!(names(&logout(None, Some("s-1"), "j"), &s));
        assert!(names(&logout(Some("u-1"), Some("s-1"), "j"), &s));
        assert!(!names(&logout(Some("u-2"), Some("s-1"), "j"), &s));
        assert!(
            !names(&logout(Some("u-1"), Some("s-2"), "j"), &s),
            "another session of hers"
        );
        assert!(
            names(&logout(Some("u-1"), None, "j"), &s),
            "all her sessions"
        );
        let no_sid = Session { sid: None, ..s };
        assert!(names(&logout(Some("u-1"), Some("s-9"), "j"), &no_sid));
        assert!(!names(&logout(None, Some("s-9"), "j"), &no_sid));
    }

    #[test]
    fn ended_sign_ins_stay_ended_and_logout_tokens_are_used_once() {
        let mut e = Ended::default();
        assert!(e.logout(&logout(Some("u-1"), None, "j1"), 1000));
        assert!(
            !e.logout(&logout(Some("u-1"), None, "j1"), 1001),
            "replayed"
        );
        // Tokens of u-1 issued up to the logout are refused; a new sign-in is not.
        assert!(e.refuses("nonce:a", "u-1", None, 1000, 1002));
        assert!(!e.refuses("nonce:b", "u-1", None, 1003, 1004));
        assert!(!e.refuses("nonce:a", "u-2", None, 10, 1004));
        assert!(e.logout(&logout(None, Some("s-7"), "j2"), 1000));
        assert!(e.refuses("nonce:c", "u-3", Some("s-7"), 5000, 5000));
        e.end_binding("nonce:d", 2000);
        assert!(
            e.refuses("nonce:d", "u-4", None, 9000, 9000),
            "renewals of it too"
        );
        // Forgotten after KEEP_SECS.
        assert!(!e.refuses("nonce:d", "u-4", None, 9000, 2000 + KEEP_SECS));
        for i in 0..(MAX_ENTRIES + 10) as u64 {
            e.end_binding(&format!("nonce:{i}"), 3000 + i);
        }
        assert!(e.bindings.len() <= MAX_ENTRIES, "bounded");
    }
}
