//! Sign-in through an OpenID provider: `/console/oidc/start` sends the
//! browser to the provider (binding the sign-in to this browser with a
//! cookie), `/console/oidc/callback` takes it back, verifies who it is and
//! starts a session when a group maps to a role. Every sign-in, refusal
//! and failure is audited with the person's name and counted.
//!
//! The binding cookie is `SameSite=Lax` (the only console cookie that is
//! not Strict): the callback is a navigation from the provider's site, on
//! which a Strict cookie would not be sent. For the same reason the
//! callback answers with a page that moves on to the dashboard itself: a
//! redirect chain started on another site would not carry the (Strict)
//! session cookie either.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{layout, render};
use crate::console::auth::Origin;
use crate::console::form::{cookie, Params};
use crate::console::oidc_signin::OidcSignIn;
use crate::console::respond::{self, Body};
use crate::console::routes::{SESSION_COOKIE, SIGNIN_COOKIE};
use crate::console::text::{fill, lookup, Lang};
use crate::console::Console;
use crate::gateway::Gateway;
use crate::logs::audit::AuditEvent;
use crate::oidc::flow::{CodeFlow, FlowError};

pub const OIDC_COOKIE: &str = "komugate_oidc";
const USE: &str = "console";

/// The binding cookie: HttpOnly, Lax (see the module docs), only for the
/// callback's path, ten minutes.
fn binding_cookie(r: &mut Response<Body>, value: &str, secure: bool, max_age: u64) {
    let mut c = format!(
        "{OIDC_COOKIE}={value}; Path=/console/oidc/; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    );
    if secure {
        c.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn signin_error(
    console: &Console,
    lang: Lang,
    status: StatusCode,
    message: String,
) -> Response<Body> {
    super::signin::form(
        console,
        lang,
        &Params::default(),
        Some((status, message)),
        "",
    )
}

/// The configured sign-in and its flow, or the page saying why there is none.
fn configured(
    console: &Console,
    lang: Lang,
) -> Result<(&OidcSignIn, &CodeFlow), Box<Response<Body>>> {
    let Some(oidc) = &console.oidc else {
        return Err(Box::new(signin_error(
            console,
            lang,
            StatusCode::NOT_FOUND,
            fill(lang, "err_oidc_off", &[]),
        )));
    };
    match &oidc.flow {
        Ok(flow) => Ok((oidc, flow)),
        Err(e) => {
            console.oidc_metrics.refused(USE, "unavailable");
            Err(Box::new(signin_error(
                console,
                lang,
                StatusCode::SERVICE_UNAVAILABLE,
                fill(lang, "err_oidc_unavailable", &[("detail", e)]),
            )))
        }
    }
}

pub async fn start(console: &Arc<Console>, lang: Lang) -> Response<Body> {
    let (_, flow) = match configured(console, lang) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let started = flow.start().await.map_err(|e| e.to_string());
    match started {
        Ok(s) => {
            let mut r = respond::redirect(&s.authorize_url);
            binding_cookie(&mut r, &s.binding, console.secure, 600);
            r
        }
        Err(e) => {
            tracing::error!("console: OpenID Connect sign-in cannot start: {e}");
            console.oidc_metrics.refused(USE, "unavailable");
            signin_error(
                console,
                lang,
                StatusCode::SERVICE_UNAVAILABLE,
                fill(lang, "err_oidc_unavailable", &[("detail", &e)]),
            )
        }
    }
}

pub async fn callback(
    gw: &Arc<Gateway>,
    console: &Arc<Console>,
    req: Request<Incoming>,
    peer: SocketAddr,
    lang: Lang,
    query: &Params,
) -> Response<Body> {
    let (oidc, flow) = match configured(console, lang) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let client = peer.ip().to_string();
    let Some(audit) = gw.access_log.audit().cloned() else {
        return signin_error(
            console,
            lang,
            StatusCode::FORBIDDEN,
            fill(lang, "err_no_audit_signin", &[]),
        );
    };
    let record = |user: &str, action: &str, reason: String| {
        audit.append(AuditEvent::ConsoleSession {
            user: user.to_string(),
            client: client.clone(),
            action: action.into(),
            reason,
        })
    };
    let binding = cookie(req.headers(), OIDC_COOKIE);
    let outcome = async {
        let pending = flow.take(query.get("state").unwrap_or(""), binding.as_deref())?;
        // RFC 9207: the provider names itself in the response (mix-up defence).
        if let Some(iss) = query.get("iss") {
            if iss != flow.issuer() {
                return Err(FlowError::Token(crate::oidc::verify::Refusal::Issuer(
                    iss.chars().take(200).collect(),
                )));
            }
        }
        if let Some(error) = query.get("error") {
            return Err(FlowError::Provider {
                error: error.chars().take(100).collect(),
                description: query
                    .get("error_description")
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        flow.redeem(pending, query.get("code").unwrap_or("")).await
    }
    .await;
    let claims = match outcome {
        Ok(c) => c,
        Err(e) => {
            console.oidc_metrics.refused(USE, e.reason());
            tracing::warn!("console: OpenID Connect sign-in from {client} refused: {e}");
            if let Err(ae) = record(
                "(OpenID Connect)",
                "sign_in_failed",
                format!("OpenID Connect: {e}"),
            ) {
                tracing::error!("console: cannot audit a failed sign-in: {ae}");
            }
            let message = match e {
                FlowError::UnknownState | FlowError::OtherBrowser => {
                    fill(lang, "err_oidc_state", &[])
                }
                e => fill(lang, "err_oidc_failed", &[("detail", &e.to_string())]),
            };
            let mut r = signin_error(console, lang, StatusCode::UNAUTHORIZED, message);
            binding_cookie(&mut r, "", console.secure, 0);
            return r;
        }
    };
    let person = oidc.person(&claims);
    let groups = if person.groups.is_empty() {
        lookup(lang, "no_groups").unwrap_or("-").to_string()
    } else {
        person.groups.join(", ")
    };
    let Some((role, group)) = person.role.clone() else {
        console.oidc_metrics.refused(USE, "no_role");
        if let Err(e) = record(
            &person.name,
            "sign_in_refused",
            format!(
                "OpenID Connect: no group mapped to a console role (sub {}, groups: {groups})",
                person.subject
            ),
        ) {
            tracing::error!("console: cannot audit a refused sign-in: {e}");
        }
        let mut r = signin_error(
            console,
            lang,
            StatusCode::FORBIDDEN,
            fill(
                lang,
                "err_oidc_no_role",
                &[("name", &person.name), ("groups", &groups)],
            ),
        );
        binding_cookie(&mut r, "", console.secure, 0);
        return r;
    };
    if let Err(e) = record(
        &person.name,
        "sign_in",
        format!(
            "OpenID Connect {} (sub {}), role {} from group {group}",
            flow.issuer(),
            person.subject,
            role.as_str()
        ),
    ) {
        return signin_error(
            console,
            lang,
            StatusCode::INTERNAL_SERVER_ERROR,
            fill(lang, "err_audit", &[("detail", &e)]),
        );
    }
    console.oidc_metrics.accepted(USE);
    let origin = Origin::Oidc {
        issuer: flow.issuer().to_string(),
        subject: person.subject.clone(),
    };
    let (token, _) = console.sessions.create(&person.name, role, origin);
    let mut r = render(
        StatusCode::OK,
        "continue.html",
        layout(lang, console, None),
        serde_json::json!({"next": "/console/dashboard", "message": fill(lang, "oidc_signed_in", &[])}),
    );
    respond::set_cookie(&mut r, SESSION_COOKIE, &token, console.secure, None);
    respond::set_cookie(&mut r, SIGNIN_COOKIE, "", console.secure, Some(0));
    binding_cookie(&mut r, "", console.secure, 0);
    r
}
