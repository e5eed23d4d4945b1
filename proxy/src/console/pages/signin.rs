//! Sign-in and sign-out. The sign-in form carries its own CSRF token (a
//! cookie set with the form, compared with the form field), attempts are
//! rate-limited per account and per address, and every sign-in, failed
//! sign-in and sign-out is in the audit log with the account name.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{layout, render, Ctx};
use crate::console::accounts::{burn_verification, verify_password};
use crate::console::auth::{constant_time_eq, new_token, Origin};
use crate::console::form::{cookie, read_form, Params};
use crate::console::respond::{self, Body};
use crate::console::routes::{SESSION_COOKIE, SIGNIN_COOKIE};
use crate::console::text::{fill, Lang};
use crate::console::Console;
use crate::gateway::Gateway;
use crate::logs::audit::AuditEvent;

/// The sign-in page, with a fresh form token.
pub fn form(
    console: &Console,
    lang: Lang,
    query: &Params,
    error: Option<(StatusCode, String)>,
    name: &str,
) -> Response<Body> {
    let token = new_token();
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None if query.get("expired").is_some() => {
            (StatusCode::OK, Some(fill(lang, "err_session_expired", &[])))
        }
        None => (StatusCode::OK, None),
    };
    let mut r = render(
        status,
        "signin.html",
        layout(lang, console, None),
        serde_json::json!({
            "signin_csrf": token, "error": error, "name": name,
            "oidc_label": console.oidc.as_ref().map(|o| fill(lang, "oidc_signin", &[("label", &o.label)])),
        }),
    );
    respond::set_cookie(&mut r, SIGNIN_COOKIE, &token, console.secure, Some(3600));
    r
}

/// What an audit entry keeps of a name someone typed.
fn typed_name(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

pub async fn submit(
    gw: &Arc<Gateway>,
    console: &Arc<Console>,
    req: Request<Incoming>,
    peer: SocketAddr,
    lang: Lang,
) -> Response<Body> {
    let expected = cookie(req.headers(), SIGNIN_COOKIE);
    let none = Params::default();
    let f = match read_form(req.into_body()).await {
        Ok(f) => f,
        Err(key) => {
            let message = fill(lang, &key, &[]);
            return form(
                console,
                lang,
                &none,
                Some((StatusCode::BAD_REQUEST, message)),
                "",
            );
        }
    };
    let name = typed_name(f.get("user").unwrap_or(""));
    let fail = |status: StatusCode, key: &str, args: &[(&str, &str)]| {
        form(
            console,
            lang,
            &none,
            Some((status, fill(lang, key, args))),
            &name,
        )
    };
    let csrf_ok = match (f.get("csrf"), expected.as_deref()) {
        (Some(a), Some(b)) => constant_time_eq(a, b),
        _ => false,
    };
    if !csrf_ok {
        return fail(StatusCode::FORBIDDEN, "err_csrf", &[]);
    }
    let password =
        f.0.iter()
            .rev()
            .find(|(k, _)| k == "password")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
    let client = peer.ip().to_string();
    let Some(audit) = gw.access_log.audit().cloned() else {
        return fail(StatusCode::FORBIDDEN, "err_no_audit_signin", &[]);
    };
    let record = |action: &str, reason: &str| {
        audit.append(AuditEvent::ConsoleSession {
            user: name.clone(),
            client: client.clone(),
            action: action.into(),
            reason: reason.into(),
        })
    };
    if let Err(wait) = console.limiter.begin(&name, &client) {
        let _ = record("sign_in_refused", "too many failed sign-ins");
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            "err_rate_limited",
            &[("secs", &wait.as_secs().to_string())],
        );
    }
    let accounts = match console.accounts.get() {
        Ok(a) => a,
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "err_accounts",
                &[("detail", &e)],
            )
        }
    };
    let account = accounts.find(&name).cloned();
    let known = account.is_some();
    let check = account.clone();
    // Each verification costs ~20 MiB and tens of milliseconds: a few at once.
    let Ok(_slot) = console.verifications.acquire().await else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "err_busy", &[]);
    };
    let ok = tokio::task::spawn_blocking(move || match check {
        Some(a) => verify_password(&a.hash, &password),
        None => {
            burn_verification(&password);
            false
        }
    })
    .await
    .unwrap_or(false);
    let account = match (ok, account) {
        (true, Some(a)) => a,
        _ => {
            // Already counted by begin().
            let reason = if known {
                "wrong password"
            } else {
                "unknown account"
            };
            if let Err(e) = record("sign_in_failed", reason) {
                tracing::error!("console: cannot audit a failed sign-in: {e}");
            }
            return fail(StatusCode::UNAUTHORIZED, "err_signin", &[]);
        }
    };
    if let Err(e) = record("sign_in", "") {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "err_audit",
            &[("detail", &e)],
        );
    }
    console.limiter.succeeded(&name, &client);
    let origin = Origin::Local {
        password_hash: account.hash.clone(),
    };
    let (token, _) = console.sessions.create(&account.name, account.role, origin);
    let mut r = respond::redirect("/console/dashboard");
    respond::set_cookie(&mut r, SESSION_COOKIE, &token, console.secure, None);
    respond::set_cookie(&mut r, SIGNIN_COOKIE, "", console.secure, Some(0));
    r
}

pub fn signout(ctx: &Ctx, token: &str) -> Response<Body> {
    if let Err(e) = ctx.audit(AuditEvent::ConsoleSession {
        user: ctx.session.user.clone(),
        client: ctx.peer.ip().to_string(),
        action: "sign_out".into(),
        reason: String::new(),
    }) {
        tracing::error!("console: cannot audit a sign-out: {e}");
    }
    ctx.console.sessions.remove(token);
    let mut r = respond::redirect("/console/signin");
    respond::set_cookie(&mut r, SESSION_COOKIE, "", ctx.console.secure, Some(0));
    r
}
