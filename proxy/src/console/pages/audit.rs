//! The audit log: the latest entries (filter by type and by text), and
//! "verify the chain" (the same check as `komugate audit verify`), itself
//! audited.

use std::collections::VecDeque;
use std::io::BufRead;

use http::{Response, StatusCode};

use super::Ctx;
use crate::console::respond::Body;
use crate::logs::audit::{AuditEntry, AuditEvent, VerifyReport};

/// Entries shown at most (the latest).
const SHOWN: usize = 200;
/// Longest filter value, in characters.
const MAX_FILTER_CHARS: usize = 256;

struct Listing {
    entries: Vec<serde_json::Value>,
    total: u64,
}

/// The actor (or user) and the rest of the event, for the table.
fn summarise(e: &AuditEntry, offset_min: i32) -> serde_json::Value {
    let mut event = e.event.clone();
    let kind = event
        .get("type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let actor = ["actor", "user"]
        .iter()
        .find_map(|k| event.get(*k).and_then(|v| v.as_str()).map(str::to_string))
        .or_else(|| {
            event
                .pointer("/source/token_name")
                .and_then(|v| v.as_str())
                .map(|n| format!("token {n}"))
        })
        .unwrap_or_default();
    if let Some(o) = event.as_object_mut() {
        o.remove("type");
        o.remove("actor");
    }
    let time = crate::logs::record::parse_rfc3339_ms(&e.time)
        .map(|ms| super::local_time(ms, offset_min))
        .unwrap_or_else(|| e.time.clone());
    serde_json::json!({
        "seq": e.seq, "time": time, "kind": kind, "actor": actor,
        "detail": event.to_string(),
    })
}

fn list(
    path: &std::path::Path,
    kind: Option<&str>,
    contains: Option<&str>,
    offset_min: i32,
) -> Result<Listing, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Listing {
                entries: Vec::new(),
                total: 0,
            })
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut last: VecDeque<AuditEntry> = VecDeque::with_capacity(SHOWN);
    let mut total = 0u64;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if contains.is_some_and(|c| !line.contains(c)) {
            continue;
        }
        let Ok(e) = serde_json::from_str::<AuditEntry>(&line) else {
            continue;
        };
        if kind.is_some_and(|k| e.event.get("type").and_then(|v| v.as_str()) != Some(k)) {
            continue;
        }
        total += 1;
        if last.len() == SHOWN {
            last.pop_front();
        }
        last.push_back(e);
    }
    Ok(Listing {
        entries: last
            .iter()
            .rev()
            .map(|e| summarise(e, offset_min))
            .collect(),
        total,
    })
}

/// The audit log's file, or the page saying there is none.
fn audit_path(ctx: &Ctx) -> Result<std::path::PathBuf, Box<Response<Body>>> {
    match ctx.gw.access_log.audit() {
        Some(a) => Ok(a.path().to_path_buf()),
        None => Err(Box::new(ctx.error(
            StatusCode::CONFLICT,
            "title_error",
            ctx.fill("err_no_audit", &[]),
        ))),
    }
}

pub async fn page(ctx: &Ctx<'_>, verify: Option<VerifyReport>) -> Response<Body> {
    let path = match audit_path(ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    // Filters are plain text: too long or with control characters is a
    // clear error, not a silently changed filter.
    for (name, key) in [("type", "audit_type"), ("contains", "audit_contains")] {
        if let Some(v) = ctx.query.get(name) {
            if v.chars().count() > MAX_FILTER_CHARS || v.chars().any(char::is_control) {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "title_error",
                    ctx.fill(
                        "err_field",
                        &[
                            ("field", ctx.t(key)),
                            ("max", &MAX_FILTER_CHARS.to_string()),
                        ],
                    ),
                );
            }
        }
    }
    let (kind, contains) = (
        ctx.query.get("type").map(str::to_string),
        ctx.query.get("contains").map(str::to_string),
    );
    let f = serde_json::json!({"type": kind.clone().unwrap_or_default(), "contains": contains.clone().unwrap_or_default()});
    let offset = ctx.console.offset_min;
    let permit = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ctx.console.searches.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(p)) => p,
        _ => {
            return ctx.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "title_error",
                ctx.fill("err_busy", &[]),
            )
        }
    };
    let listing = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        list(&path, kind.as_deref(), contains.as_deref(), offset)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let verify = verify.map(|v| {
        serde_json::json!({"ok": v.problems.is_empty(), "entries": v.entries, "head": v.head, "problems": v.problems})
    });
    match listing {
        Ok(l) => ctx.page(
            "audit.html",
            serde_json::json!({"f": f, "entries": l.entries, "total": l.total, "verify": verify}),
        ),
        Err(e) => ctx.page_with_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit.html",
            serde_json::json!({"f": f, "entries": [], "total": 0, "verify": verify,
                "error": ctx.fill("err_audit_read", &[("detail", &e)])}),
        ),
    }
}

/// `POST /console/audit/verify`: checks the whole chain, records that it
/// was checked (and the outcome), shows the result above the listing.
pub async fn verify(ctx: &Ctx<'_>) -> Response<Body> {
    let path = match audit_path(ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let report = tokio::task::spawn_blocking(move || crate::logs::audit::verify(&path))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            return ctx.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "title_error",
                ctx.fill("err_audit_read", &[("detail", &e)]),
            )
        }
    };
    if let Err(e) = ctx.audit(AuditEvent::Note {
        actor: ctx.actor(),
        message: format!(
            "verified the audit log chain: {} entries, {} problem(s), head {}",
            report.entries,
            report.problems.len(),
            report.head
        ),
    }) {
        return ctx.error(StatusCode::INTERNAL_SERVER_ERROR, "title_error", e);
    }
    page(ctx, Some(report)).await
}
