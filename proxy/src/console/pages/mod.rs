//! One module per console page; [`Ctx`] is what every signed-in page gets.

pub mod audit;
pub mod certs;
pub mod dashboard;
pub mod devices;
pub mod explain;
pub mod logs;
pub mod oidc;
pub mod policy;
pub mod report;
pub mod signin;
pub mod unblock;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode};

use super::accounts::Role;
use super::auth::Session;
use super::form::Params;
use super::respond::{self, Body};
use super::text::{fill, lookup, Lang};
use super::Console;
use crate::gateway::Gateway;
use crate::logs::audit::AuditEvent;

/// A signed-in request.
pub struct Ctx<'a> {
    pub gw: &'a Arc<Gateway>,
    pub console: &'a Arc<Console>,
    pub session: &'a Session,
    pub lang: Lang,
    /// The query string (or, for a POST, the form).
    pub query: Params,
    pub peer: SocketAddr,
}

/// The values every page's layout needs.
pub fn layout(lang: Lang, console: &Console, session: Option<&Session>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "lang": lang.code(),
        "zone": console.zone_label,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(s) = session {
        v["user"] = s.user.clone().into();
        v["role"] = s.role.as_str().into();
        v["csrf"] = s.csrf.clone().into();
        v["can_operate"] = (s.role >= Role::Operator).into();
        v["is_admin"] = (s.role >= Role::Admin).into();
    }
    v
}

/// Renders `template` with the layout's values and `values` (an object).
pub fn render(
    status: StatusCode,
    template: &str,
    mut base: serde_json::Value,
    values: serde_json::Value,
) -> Response<Body> {
    if let (Some(b), serde_json::Value::Object(extra)) = (base.as_object_mut(), values) {
        b.extend(extra);
    }
    match super::templates::render(template, &base) {
        Ok(html) => respond::html(status, html),
        Err(e) => {
            tracing::error!("console: {e}");
            respond::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the page could not be built: {e}"),
            )
        }
    }
}

impl Ctx<'_> {
    pub fn t(&self, key: &str) -> &'static str {
        lookup(self.lang, key).unwrap_or("?")
    }

    pub fn fill(&self, key: &str, args: &[(&str, &str)]) -> String {
        fill(self.lang, key, args)
    }

    pub fn page(&self, template: &str, values: serde_json::Value) -> Response<Body> {
        self.page_with_status(StatusCode::OK, template, values)
    }

    pub fn page_with_status(
        &self,
        status: StatusCode,
        template: &str,
        values: serde_json::Value,
    ) -> Response<Body> {
        render(
            status,
            template,
            layout(self.lang, self.console, Some(self.session)),
            values,
        )
    }

    pub fn error(&self, status: StatusCode, title_key: &str, message: String) -> Response<Body> {
        self.page_with_status(
            status,
            "error.html",
            serde_json::json!({"title": self.t(title_key), "message": message, "back": "/console/dashboard"}),
        )
    }

    /// Who did it, for the audit log: the account name, through the console, from where.
    pub fn actor(&self) -> String {
        format!("{} (console, {})", self.session.user, self.peer.ip())
    }

    /// Writes an audit entry; `Err` is the Japanese/English message to show
    /// (an action that cannot be audited is not done).
    pub fn audit(&self, event: AuditEvent) -> Result<(), String> {
        let Some(audit) = self.gw.access_log.audit() else {
            return Err(self.fill("err_no_audit", &[]));
        };
        audit.append(event).map(|_| ()).map_err(|e| {
            tracing::error!("console: cannot write the audit log: {e}");
            self.fill("err_audit", &[("detail", &e)])
        })
    }

    /// Local time in the display zone: `2026-04-01 08:00:00`.
    pub fn local_time(&self, ms: i64) -> String {
        local_time(ms, self.console.offset_min)
    }
}

pub fn local_time(ms: i64, offset_min: i32) -> String {
    let s = crate::logs::record::format_with_offset(ms, offset_min, false).replace('T', " ");
    s.get(..19).unwrap_or(&s).to_string()
}
