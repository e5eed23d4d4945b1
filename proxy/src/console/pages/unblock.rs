//! Access requests from block pages: the queue, approving one (an allow
//! entry for the requested host, for the requester's group or everyone,
//! optionally until a date: through `policy_edit` — edit, validate, dry run
//! over the last 7 days' logs, versioned apply, reload, audit) or rejecting
//! it with a message the requester sees on the block page.

use http::{Response, StatusCode};

use super::Ctx;
use crate::console::respond::Body;
use crate::logs::audit::{AuditEvent, ReloadSource};
use crate::policy_edit::{self, ChangeMeta, Edit, ListKind, ListScope, PolicyStore, PrepareError};
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
                    "{entry} ({scope}{})",
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
            "state": state, "by": by, "message": message,
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

/// `POST /console/unblock/approve` (`id`, `scope` = `global` or
/// `group:NAME`, optional `until` = YYYY-MM-DD).
pub async fn approve(ctx: &Ctx<'_>) -> Response<Body> {
    let r = match request_of(ctx) {
        Ok(r) => r,
        Err(e) => return page_with(ctx, StatusCode::CONFLICT, None, Some(e)),
    };
    let fail = |status: StatusCode, e: String| page_with(ctx, status, None, Some(e));
    let generation = ctx.gw.current();
    if generation.runtime.builtin {
        return fail(StatusCode::CONFLICT, ctx.fill("err_explain_builtin", &[]));
    }
    let Some(scope) = ctx.query.get("scope").and_then(ListScope::parse) else {
        return fail(StatusCode::BAD_REQUEST, ctx.fill("err_unblock_scope", &[]));
    };
    let until = ctx.query.get("until").map(str::to_string);
    let edit = Edit::AddListEntry {
        scope: scope.clone(),
        kind: ListKind::Allow,
        entry: r.host.clone(),
        until: until.clone(),
        note: Some(format!("unblock request {} by {}", r.id, r.requester)),
    };
    let store = PolicyStore::for_policy(std::path::Path::new(&ctx.gw.config.policy.file));
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
    // The dry run: what the new allow entry changes in the last 7 days.
    let log_dir = ctx
        .gw
        .config
        .data_path(&ctx.gw.config.log.access_log)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let policy_edit::Prepared {
        base,
        new_text,
        diff,
        policy: new,
        summary,
        summary_ja,
        ..
    } = prepared;
    let old = generation.runtime.policy.clone();
    let dry = tokio::task::spawn_blocking(move || {
        policy_edit::dry_run(
            &old,
            &new,
            &log_dir,
            &policy_edit::DryRunOptions::last_days(DRY_RUN_DAYS),
        )
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    let dry_summary = match &dry {
        Ok(d) => d.summary(),
        Err(e) => format!("dry run failed: {e}"),
    };
    let meta = ChangeMeta {
        actor: ctx.actor(),
        kind: "unblock".into(),
        summary: summary.clone(),
        summary_ja,
    };
    let applied = match store.apply(&base, &new_text, &meta) {
        Ok(a) => a,
        Err(e) => return fail(StatusCode::CONFLICT, e.to_string()),
    };
    let reloaded = ctx
        .gw
        .reload(ReloadSource::Console { actor: ctx.actor() })
        .await;
    let error = reloaded
        .as_ref()
        .err()
        .map(|e| e.lines().next().unwrap_or("").to_string());
    if error.is_some() {
        // The running policy stayed; the file goes back to what it was.
        if let Err(e) = crate::atomic_file::write(store.file(), applied.previous_text.as_bytes()) {
            tracing::error!("console: cannot restore {}: {e}", store.file().display());
        }
    }
    let audit = ctx.audit(AuditEvent::PolicyChange {
        actor: ctx.actor(),
        via: "console".into(),
        action: "unblock-approve".into(),
        summary: format!("{summary} (unblock request {}: {})", r.id, r.reason),
        base_version: base.clone(),
        new_version: applied.version.token.clone(),
        version_id: applied.version.id.clone(),
        diff: diff.unified("before", "after"),
        dry_run: dry_summary.clone(),
        error: error.clone(),
    });
    if let Some(e) = error {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            ctx.fill("err_reload_after", &[("detail", &e)]),
        );
    }
    if let Err(e) = audit {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, e);
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
            ("dry_run", &dry_summary),
        ],
    );
    decided(ctx, r.id, status, notice)
}
