//! Which path is which page, and the checks every console request passes:
//! the session (idle expiry, account still there with the same password),
//! the role the page needs, the CSRF token on every POST.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::accounts::Role;
use super::auth::{constant_time_eq, Origin, Session};
use super::form::{cookie, read_form, read_multipart, Params, UploadError};
use super::pages::{self, Ctx};
use super::respond::{self, Body};
use super::text::{fill, Lang};
use super::Console;
use crate::gateway::Gateway;

pub const SESSION_COOKIE: &str = "komugate_session";
pub const SIGNIN_COOKIE: &str = "komugate_signin";
pub const LANG_COOKIE: &str = "komugate_lang";

/// Serves `/console` and everything under `/console/`.
pub async fn handle(
    gw: Arc<Gateway>,
    console: Arc<Console>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/console/") else {
        return respond::redirect("/console/");
    };
    if let Some(name) = rest.strip_prefix("assets/") {
        if req.method() == Method::GET {
            if let Some(r) = super::assets::get(name) {
                return r;
            }
        }
    }
    let query = Params::parse(req.uri().query().unwrap_or(""));
    let chosen_lang = query.get("lang").and_then(Lang::parse);
    let lang = chosen_lang
        .or_else(|| cookie(req.headers(), LANG_COOKIE).and_then(|c| Lang::parse(&c)))
        .unwrap_or(Lang::Ja);
    let mut resp = route(&gw, &console, req, peer, rest, query, lang).await;
    if let Some(l) = chosen_lang {
        respond::set_cookie(
            &mut resp,
            LANG_COOKIE,
            l.code(),
            console.secure,
            Some(365 * 86_400),
        );
    }
    resp
}

/// Pages whose form is `multipart/form-data` (a file).
const UPLOAD_PAGES: &[&str] = &["devices/import", "certs/bulk"];

/// Which role a page needs; `None` for a path that is no page.
fn required_role(method: &Method, page: &str) -> Option<Role> {
    Some(match (method.as_str(), page) {
        ("GET", "" | "dashboard" | "dashboard/data" | "logs" | "logs/record" | "report") => {
            Role::Viewer
        }
        ("POST", "signout") => Role::Viewer,
        ("GET", "logs/export" | "explain") => Role::Operator,
        ("GET", "devices" | "devices/export" | "certs" | "certs/download")
        | ("POST", "devices/move" | "devices/import" | "devices/apply" | "certs/revoke") => {
            Role::Operator
        }
        ("POST", "certs/issue" | "certs/bulk") => Role::Admin,
        ("GET", "policy") | ("POST", "policy/preview" | "policy/apply" | "policy/restore") => {
            Role::Operator
        }
        ("GET", "unblock") | ("POST", "unblock/approve" | "unblock/reject") => Role::Operator,
        ("GET", "audit") | ("POST", "audit/verify") => Role::Admin,
        _ => return None,
    })
}

async fn route(
    gw: &Arc<Gateway>,
    console: &Arc<Console>,
    req: Request<Incoming>,
    peer: SocketAddr,
    page: &str,
    query: Params,
    lang: Lang,
) -> Response<Body> {
    let method = req.method().clone();
    match (page, &method) {
        ("oidc/start", &Method::GET) => return pages::oidc::start(console, lang).await,
        ("oidc/callback", &Method::GET) => {
            return pages::oidc::callback(gw, console, req, peer, lang, &query).await
        }
        _ => {}
    }
    if page == "signin" {
        return match method {
            Method::GET => pages::signin::form(console, lang, &query, None, ""),
            Method::POST => pages::signin::submit(gw, console, req, peer, lang).await,
            _ => respond::text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
        };
    }
    let token = cookie(req.headers(), SESSION_COOKIE);
    let session = token.as_deref().and_then(|t| current_session(console, t));
    let Some(session) = session else {
        // No session, or one that expired: back to the sign-in page.
        let mut r = if token.is_some() {
            respond::redirect("/console/signin?expired=1")
        } else {
            respond::redirect("/console/signin")
        };
        if token.is_some() {
            respond::set_cookie(&mut r, SESSION_COOKIE, "", console.secure, Some(0));
        }
        return r;
    };
    let token = token.unwrap_or_default();
    let mut ctx = Ctx {
        gw,
        console,
        session: &session,
        lang,
        query,
        peer,
    };
    let Some(role) = required_role(&method, page) else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "title_not_found",
            fill(
                lang,
                "err_not_found",
                &[("path", &format!("/console/{page}"))],
            ),
        );
    };
    if session.role < role {
        let role_name =
            super::text::lookup(lang, &format!("role_{}", role.as_str())).unwrap_or(role.as_str());
        return ctx.error(
            StatusCode::FORBIDDEN,
            "title_forbidden",
            fill(lang, "err_forbidden", &[("role", role_name)]),
        );
    }
    let mut files = Vec::new();
    let form = if method == Method::POST {
        let read = if UPLOAD_PAGES.contains(&page) {
            let max = if page == "certs/bulk" {
                crate::pki::delivery::MAX_BULK_CSV_BYTES
            } else {
                pages::devices::MAX_REGISTRY_BYTES
            };
            let (parts, body) = req.into_parts();
            match read_multipart(&parts.headers, body, max).await {
                Ok((params, uploads)) => {
                    files = uploads;
                    Ok(params)
                }
                // Refused before the CSRF check: nothing was read, nothing done.
                Err(UploadError::TooLarge(declared)) => {
                    return pages::devices::too_large(&ctx, declared, max)
                }
                Err(UploadError::Unreadable) => Err("err_form_read".to_string()),
            }
        } else {
            read_form(req.into_body()).await
        };
        let form = match read {
            Ok(f) => f,
            Err(key) => {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "title_error",
                    fill(lang, &key, &[]),
                )
            }
        };
        if !form
            .get("csrf")
            .is_some_and(|c| constant_time_eq(c, &session.csrf))
        {
            return ctx.error(
                StatusCode::FORBIDDEN,
                "title_forbidden",
                fill(lang, "err_csrf", &[]),
            );
        }
        Some(form)
    } else {
        None
    };
    match page {
        "" => respond::redirect("/console/dashboard"),
        "signout" => pages::signin::signout(&ctx, &token),
        "dashboard" => pages::dashboard::page(&ctx).await,
        "dashboard/data" => pages::dashboard::data(&ctx).await,
        "logs" => pages::logs::search_page(&ctx).await,
        "logs/record" => pages::logs::record_page(&ctx).await,
        "logs/export" => pages::logs::export(&ctx).await,
        "report" => pages::report::page(&ctx).await,
        "explain" => pages::explain::page(&ctx),
        "audit" => pages::audit::page(&ctx, None).await,
        "policy" => pages::policy::page(&ctx).await,
        "policy/preview" | "policy/apply" | "policy/restore" => {
            ctx.query = form.unwrap_or_default();
            match page {
                "policy/preview" => pages::policy::preview(&ctx).await,
                "policy/apply" => pages::policy::apply(&ctx).await,
                _ => pages::policy::restore(&ctx).await,
            }
        }
        "audit/verify" => {
            ctx.query = form.unwrap_or_default();
            pages::audit::verify(&ctx).await
        }
        "devices" => pages::devices::page(&ctx),
        "devices/export" => pages::devices::export(&ctx),
        "certs" => pages::certs::page(&ctx),
        "certs/download" => pages::certs::download(&ctx),
        "unblock" => pages::unblock::page(&ctx),
        "devices/move" | "devices/import" | "devices/apply" | "certs/issue" | "certs/bulk"
        | "certs/revoke" | "unblock/approve" | "unblock/reject" => {
            ctx.query = form.unwrap_or_default();
            match page {
                "devices/move" => pages::devices::move_groups(&ctx).await,
                "devices/import" => pages::devices::import(&ctx, &files),
                "devices/apply" => pages::devices::apply(&ctx).await,
                "certs/issue" => pages::certs::issue(&ctx).await,
                "certs/bulk" => pages::certs::bulk(&ctx, &files).await,
                "unblock/approve" => pages::unblock::approve(&ctx).await,
                "unblock/reject" => pages::unblock::reject(&ctx),
                _ => pages::certs::revoke(&ctx).await,
            }
        }
        _ => unreachable!("required_role lists every page"),
    }
}

/// The session behind a cookie, if it is still valid: not idle too long;
/// for a local account, the account still there, with the same password
/// and role.
fn current_session(console: &Console, token: &str) -> Option<Session> {
    let session = console.sessions.touch(token)?;
    let Origin::Local { password_hash } = &session.origin else {
        return Some(session);
    };
    let accounts = console.accounts.get().ok()?;
    match accounts.find(&session.user) {
        Some(a) if a.hash == *password_hash && a.role == session.role => Some(session),
        _ => {
            console.sessions.remove(token);
            None
        }
    }
}
