//! Access requests from block pages: the queue, approving one (an allow
//! entry for the requested host, for the requester's device, one of its
//! groups, its site or everyone, optionally until a date: through the
//! policy page's path — edit, validate, dry run over the last 7 days'
//! logs, versioned apply, reload with rollback, audit) or rejecting it
//! with a message the requester sees on the block page.

use http::{Response, StatusCode};
use komugate_policy::{Location, Policy};

use super::policy::{self as policy_page, Change};
use super::Ctx;
use crate::console::respond::Body;
use crate::logs::audit::AuditEvent;
use crate::policy_edit::{self, Edit, ListKind, ListScope, PrepareError};
use crate::unblock::{Status, UnblockRequest};

/// Days of logs the approval's dry run reads.
const DRY_RUN_DAYS: u32 = 7;

fn queue<'a>(ctx: &'a Ctx) -> Option<&'a crate::unblock::UnblockRequests> {
    ctx.gw.unblock.as_deref()
}

/// `GET /console/unblock`.
pub fn page(ctx: &Ctx) -> Response<Body> {
    page_with(ctx, StatusCode::OK, None, None)
}

fn page_with(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let generation = ctx.gw.current();
    let policy = &generation.runtime.policy;
    let requests = queue(ctx).map(|q| q.list()).unwrap_or_default();
    let row = |r: &UnblockRequest| {
        let groups: Vec<String> = r
            .device
            .as_deref()
            .and_then(|d| policy.device(d))
            .map(|(_, g)| g.into_iter().map(str::to_string).collect())
            .unwrap_or_default();
        let scopes: Vec<serde_json::Value> = scopes_of(ctx, policy, r)
            .iter()
            .map(|s| serde_json::json!({"value": s.as_form(), "label": policy_page::scope_label(ctx, s)}))
            .collect();
        let (state, by, message) = match &r.status {
            Status::Pending => ("pending", String::new(), String::new()),
            Status::Approved {
                by,
                entry,
                scope,
                until,
            } => (
                "approved",
                by.clone(),
                format!(
                    "{entry} ({}{})",
                    ListScope::parse(scope)
                        .map(|s| policy_page::scope_label(ctx, &s))
                        .unwrap_or_else(|| scope.clone()),
                    until
                        .as_deref()
                        .map(|u| format!(", 〜{u}"))
                        .unwrap_or_default()
                ),
            ),
            Status::Rejected { by, message } => ("rejected", by.clone(), message.clone()),
        };
        serde_json::json!({
            "id": r.id, "time": ctx.local_time(r.time_ms), "requester": r.requester,
            "host": r.host, "url": r.url, "reason": r.reason, "groups": groups,
            "state": state, "by": by, "message": message, "scopes": scopes,
        })
    };
    let pending: Vec<_> = requests
        .iter()
        .filter(|r| r.status == Status::Pending)
        .map(row)
        .collect();
    let decided: Vec<_> = requests
        .iter()
        .filter(|r| r.status != Status::Pending)
        .take(200)
        .map(row)
        .collect();
    ctx.page_with_status(
        status,
        "unblock.html",
        serde_json::json!({"pending": pending, "decided": decided, "notice": notice, "error": error}),
    )
}

fn request_of(ctx: &Ctx) -> Result<UnblockRequest, String> {
    let id = ctx
        .query
        .get("id")
        .and_then(|i| i.parse::<u64>().ok())
        .unwrap_or(0);
    match queue(ctx).and_then(|q| q.get(id)) {
        Some(r) if r.status == Status::Pending => Ok(r),
        _ => Err(ctx.fill("err_unblock_gone", &[("id", &id.to_string())])),
    }
}

/// `POST /console/unblock/reject` (`id`, `message`).
pub fn reject(ctx: &Ctx) -> Response<Body> {
    let r = match request_of(ctx) {
        Ok(r) => r,
        Err(e) => return page_with(ctx, StatusCode::CONFLICT, None, Some(e)),
    };
    let message: String = ctx
        .query
        .get("message")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    if let Err(e) = ctx.audit(AuditEvent::Note {
        actor: ctx.actor(),
        message: format!(
            "unblock request {} ({} for {}) rejected: {message}",
            r.id, r.requester, r.host
        ),
    }) {
        return page_with(ctx, StatusCode::INTERNAL_SERVER_ERROR, None, Some(e));
    }
    let status = Status::Rejected {
        by: ctx.session.user.clone(),
        message,
    };
    let notice = ctx.fill("unblock_rejected", &[("id", &r.id.to_string())]);
    decided(ctx, r.id, status, notice)
}

/// Records the decision and shows the queue with `notice`.
fn decided(ctx: &Ctx, id: u64, status: Status, notice: String) -> Response<Body> {
    let result = match queue(ctx) {
        Some(q) => q.decide(id, status),
        None => Err(ctx.fill("err_unblock_gone", &[("id", &id.to_string())])),
    };
    match result {
        Ok(()) => page_with(ctx, StatusCode::OK, Some(notice), None),
        Err(e) => page_with(ctx, StatusCode::CONFLICT, None, Some(e)),
    }
}

/// The scopes an approval of `r` may take, narrowest first: the
/// requester's device, its groups (the registry's), its site, everyone.
fn scopes_of(ctx: &Ctx, policy: &Policy, r: &UnblockRequest) -> Vec<ListScope> {
    let mut out = Vec::new();
    if let Some(d) = &r.device {
        out.push(ListScope::Device(d.clone()));
        if let Some((_, groups)) = policy.device(d) {
            out.extend(groups.into_iter().map(|g| ListScope::Group(g.to_string())));
        }
    }
    if let Some(site) = requester_site(ctx, policy, r) {
        out.push(ListScope::Site(site));
    }
    out.push(ListScope::Global);
    out
}

/// The site the requester was at: the one its address belongs to, else
/// (a site recognised by beacon assertion) the device's last seen site.
fn requester_site(ctx: &Ctx, policy: &Policy, r: &UnblockRequest) -> Option<String> {
    let by_address = r
        .client
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| policy.locate(ip));
    if let Some(Location::Site(s)) = by_address {
        return Some(s);
    }
    let seen = r
        .device
        .as_deref()
        .and_then(|d| ctx.gw.devices_seen.get(d))?;
    seen.site
        .filter(|s| policy.sites().iter().any(|x| &x.name == s))
}

/// `POST /console/unblock/approve` (`id`, `scope` = `device:ID`,
/// `group:NAME`, `site:NAME` or `global`, one the request offers;
/// optional `until` = YYYY-MM-DD): the allow entry goes through the policy
/// page's path (edit, validation, dry run, versioned apply, reload with
/// rollback, audit).
pub async fn approve(ctx: &Ctx<'_>) -> Response<Body> {
    let r = match request_of(ctx) {
        Ok(r) => r,
        Err(e) => return page_with(ctx, StatusCode::CONFLICT, None, Some(e)),
    };
    let fail = |status: StatusCode, e: String| page_with(ctx, status, None, Some(e));
    let store = match policy_page::store(ctx) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let running = ctx.gw.current().runtime.policy.clone();
    let scope = ctx.query.get("scope").and_then(ListScope::parse);
    let Some(scope) = scope.filter(|s| scopes_of(ctx, &running, &r).contains(s)) else {
        return fail(StatusCode::BAD_REQUEST, ctx.fill("err_unblock_scope", &[]));
    };
    let until = ctx
        .query
        .get("until")
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let edit = Edit::AddListEntry {
        scope: scope.clone(),
        kind: ListKind::Allow,
        entry: r.host.clone(),
        until: until.clone(),
        note: Some(format!("unblock request {} by {}", r.id, r.requester)),
    };
    let prepared = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || policy_edit::prepare(&store, None, &[edit]))
            .await
            .map_err(|e| PrepareError::Io(e.to_string()))
            .and_then(|p| p)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(PrepareError::Edit(e)) => return fail(StatusCode::BAD_REQUEST, e.ja),
        Err(PrepareError::Invalid { problems, .. }) => {
            let lines: Vec<String> = problems.iter().map(|p| p.ja.clone()).collect();
            return fail(StatusCode::BAD_REQUEST, lines.join(" / "));
        }
        Err(e) => return fail(StatusCode::CONFLICT, e.to_string()),
    };
    let policy_edit::Prepared {
        base,
        new_text,
        diff,
        policy: new,
        summary,
        summary_ja,
        ..
    } = prepared;
    // What the new allow entry changes in the last days' logs.
    let dry = match policy_page::run_dry(ctx, running, new, DRY_RUN_DAYS).await {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    let change = Change {
        action: "unblock-approve",
        kind: "unblock",
        base,
        new_text,
        summary: format!("{summary} (unblock request {}: {})", r.id, r.reason),
        summary_ja: format!("{summary_ja}（許可申請 {}）", r.id),
        diff: diff.unified("before", "after"),
        dry_run: dry.summary(),
    };
    if let Err(e) = policy_page::commit_change(ctx, &store, &change).await {
        let (status, message) = e.message(ctx);
        return fail(status, message);
    }
    let status = Status::Approved {
        by: ctx.session.user.clone(),
        entry: r.host.clone(),
        scope: scope.as_form(),
        until,
    };
    let notice = ctx.fill(
        "unblock_approved",
        &[
            ("id", &r.id.to_string()),
            ("host", &r.host),
            ("scope", &policy_page::scope_label(ctx, &scope)),
            ("dry_run", &change.dry_run),
        ],
    );
    decided(ctx, r.id, status, notice)
}
