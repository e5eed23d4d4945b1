//! Devices and people: the device list (registry row, last record seen by
//! this gateway, certificate expiry and revocation), search, moving a
//! device or a user to other groups, the registry CSV import with a
//! preview of what changes (added, moved, removed) before it is applied,
//! and the export (UTF-8 with BOM, or CP932 for Excel).
//!
//! Every change replaces the registry file atomically, reloads, and puts
//! the previous file back when the reload refuses the new one; the change
//! is refused when the file changed since the page the operator saw
//! (another administrator, the ID-management system's export).

use std::path::{Path, PathBuf};

use http::{Response, StatusCode};
use komugate_policy::{
    decode_csv, diff_registry, encode_csv, write_registry_csv, CsvEncoding, RegistryChanges,
    RegistryRow,
};

use super::Ctx;
use crate::console::form::Upload;
use crate::console::respond::{self, Body};
use crate::console::text_devices::{decode_error_ja, registry_problem_ja};
use crate::logs::audit::{AuditEvent, ReloadSource};

/// Largest registry CSV the import takes: a board's few thousand devices
/// are well under 1 MB; a 50 MB file is a wrong file.
pub const MAX_REGISTRY_BYTES: usize = 5 * 1024 * 1024;
/// Rows shown at most on the list.
const SHOWN: usize = 500;
/// Longest search text, in characters.
const MAX_SEARCH_CHARS: usize = 128;

/// A registry import between its preview and "apply".
pub struct RegistryImport {
    /// The decoded CSV (written back as UTF-8 with a BOM).
    text: String,
    /// Digest of the registry file the preview was computed against.
    base: String,
    changes: RegistryChanges,
    encoding: CsvEncoding,
    filename: String,
}

/// SHA-256 of a file's bytes ("" when it does not exist).
fn digest_of(path: &Path) -> Result<String, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(crate::logs::audit::digest(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The registry file of the policy in force, or the page saying there is none.
fn registry_path(ctx: &Ctx) -> Result<PathBuf, Box<Response<Body>>> {
    let generation = ctx.gw.current();
    match generation.runtime.policy.registry_path() {
        Some(p) if !generation.runtime.builtin => Ok(p.to_path_buf()),
        _ => Err(Box::new(ctx.error(
            StatusCode::CONFLICT,
            "title_error",
            ctx.fill("err_registry_none", &[]),
        ))),
    }
}

fn local_rfc3339(ctx: &Ctx, time: &str) -> String {
    crate::logs::record::parse_rfc3339_ms(time)
        .map(|ms| ctx.local_time(ms))
        .unwrap_or_else(|| time.to_string())
}

fn local_unix(ctx: &Ctx, secs: i64) -> String {
    let s = ctx.local_time(secs * 1000);
    s.get(..10).unwrap_or(&s).to_string()
}

/// `GET /console/devices[?q=TEXT]`.
pub fn page(ctx: &Ctx) -> Response<Body> {
    page_with(ctx, StatusCode::OK, None, None)
}

fn page_with(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<String>,
    error: Option<serde_json::Value>,
) -> Response<Body> {
    let q: String = ctx
        .query
        .get("q")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SEARCH_CHARS)
        .collect();
    let generation = ctx.gw.current();
    let policy = &generation.runtime.policy;
    let registry = policy.registry_path().map(|p| p.display().to_string());
    let (pki_dir, revoked_list) = crate::pki_audit::gateway_pki(&ctx.gw.config);
    let certs = crate::pki::inventory::list(&pki_dir, &revoked_list).unwrap_or_default();
    let mut rows = policy.registry_rows();
    // Devices with a certificate but no registry row are listed too.
    for c in &certs {
        if !rows.iter().any(|r| r.device == c.device) {
            rows.push(RegistryRow {
                device: c.device.clone(),
                user: String::new(),
                groups: if registry.is_some() {
                    Vec::new()
                } else {
                    c.groups.clone()
                },
                line: 0,
            });
        }
    }
    rows.sort_by(|a, b| a.device.cmp(&b.device));
    let total = rows.len();
    let needle = q.to_lowercase();
    let matching: Vec<&RegistryRow> = rows
        .iter()
        .filter(|r| {
            needle.is_empty()
                || r.device.to_lowercase().contains(&needle)
                || r.user.to_lowercase().contains(&needle)
                || r.groups.iter().any(|g| g.to_lowercase().contains(&needle))
        })
        .collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let shown: Vec<serde_json::Value> = matching
        .iter()
        .take(SHOWN)
        .map(|r| {
            let seen = ctx.gw.devices_seen.get(&r.device);
            let mine: Vec<_> = certs.iter().filter(|c| c.device == r.device).collect();
            let valid = mine
                .iter()
                .filter(|c| !c.revoked && !c.expired(now))
                .map(|c| c.not_after)
                .max();
            let revoked = !mine.is_empty() && mine.iter().all(|c| c.revoked);
            let site = seen.as_ref().and_then(|s| s.site.clone()).map(|s| {
                if s == "offsite" {
                    ctx.t("offsite").to_string()
                } else {
                    s
                }
            });
            serde_json::json!({
                "device": r.device, "user": r.user, "groups": r.groups.join("; "),
                "last_site": site.unwrap_or_default(),
                "last_seen": seen.map(|s| local_rfc3339(ctx, &s.time)).unwrap_or_default(),
                "expiry": valid.map(|t| local_unix(ctx, t)).unwrap_or_default(),
                "expiring": valid.is_some_and(|t| t <= now + 30 * 86_400),
                "has_cert": !mine.is_empty(),
                "revoked": revoked,
            })
        })
        .collect();
    let digest = policy
        .registry_path()
        .map(|p| digest_of(p).unwrap_or_default())
        .unwrap_or_default();
    ctx.page_with_status(
        status,
        "devices.html",
        serde_json::json!({
            "q": q, "rows": shown, "matching": matching.len(), "total": total,
            "shown_count": matching.len().min(SHOWN),
            "registry": registry, "digest": digest, "notice": notice, "error": error,
            "group_names": policy.groups().iter().map(|g| g.name.clone()).collect::<Vec<_>>().join("; "),
        }),
    )
}

/// An error shown above the device list: a message and the problem lines.
fn error_json(message: String, lines: Vec<String>) -> serde_json::Value {
    serde_json::json!({"message": message, "lines": lines})
}

/// Replaces the registry with `new` (UTF-8 bytes) if it still has digest
/// `base`, reloads, and restores the old file when the reload fails.
/// `Ok(generation)`, or the message to show.
async fn replace_registry(
    ctx: &Ctx<'_>,
    path: &Path,
    base: &str,
    new: &[u8],
) -> Result<u64, String> {
    let old = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ctx.fill("err_registry_write", &[("detail", &e.to_string())])),
    };
    let current = old
        .as_deref()
        .map(crate::logs::audit::digest)
        .unwrap_or_default();
    if current != base {
        return Err(ctx.fill("err_registry_changed", &[]));
    }
    crate::atomic_file::write(path, new)
        .map_err(|e| ctx.fill("err_registry_write", &[("detail", &e.to_string())]))?;
    match ctx
        .gw
        .reload(ReloadSource::Console { actor: ctx.actor() })
        .await
    {
        Ok(r) => Ok(r.generation),
        Err(e) => {
            let restored = match &old {
                Some(b) => crate::atomic_file::write(path, b),
                None => std::fs::remove_file(path),
            };
            if let Err(re) = restored {
                tracing::error!("console: cannot restore {}: {re}", path.display());
            }
            Err(ctx.fill(
                "err_registry_reload",
                &[("detail", e.lines().next().unwrap_or(""))],
            ))
        }
    }
}

fn bom_utf8(text: &str) -> Vec<u8> {
    encode_csv(text, CsvEncoding::Utf8Bom).unwrap_or_else(|_| text.as_bytes().to_vec())
}

/// `POST /console/devices/move`: `target` (a device id or a user) to
/// `groups` (`;`-separated, names or aliases).
pub async fn move_groups(ctx: &Ctx<'_>) -> Response<Body> {
    let path = match registry_path(ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let target = ctx.query.get("target").unwrap_or("").to_string();
    let groups_text = ctx.query.get("groups").unwrap_or("").to_string();
    let base = ctx.query.get("digest").unwrap_or("").to_string();
    let generation = ctx.gw.current();
    let policy = &generation.runtime.policy;
    let mut rows = policy.registry_rows();
    let hits: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| !target.is_empty() && (r.device == target || r.user == target))
        .map(|(i, _)| i)
        .collect();
    let fail = |message: String| {
        page_with(
            ctx,
            StatusCode::BAD_REQUEST,
            None,
            Some(error_json(message, Vec::new())),
        )
    };
    if hits.is_empty() {
        return fail(ctx.fill("err_move_unknown", &[("target", &target)]));
    }
    let groups: Vec<String> = groups_text
        .split(';')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    for i in &hits {
        rows[i.to_owned()].groups = groups.clone();
    }
    // Checked by the same parser as the reload (names and aliases).
    let text = write_registry_csv(&rows);
    let parsed = match policy.parse_registry_rows(&path, &text) {
        Ok(p) => p,
        Err(e) => {
            let unknown =
                e.0.iter()
                    .find(|d| d.message.starts_with("unknown group"))
                    .map(|d| d.message.split('`').nth(1).unwrap_or("").to_string())
                    .unwrap_or_default();
            let names: Vec<String> = policy.groups().iter().map(|g| g.name.clone()).collect();
            return fail(ctx.fill(
                "err_move_group",
                &[("group", &unknown), ("groups", &names.join("、"))],
            ));
        }
    };
    let changes = diff_registry(&policy.registry_rows(), &parsed);
    match replace_registry(ctx, &path, &base, &bom_utf8(&text)).await {
        Ok(generation) => {
            let detail = changes
                .moved
                .iter()
                .map(|(a, b)| format!("{}: {:?} -> {:?}", a.device, a.groups, b.groups))
                .collect::<Vec<_>>()
                .join(", ");
            if let Err(e) = ctx.audit(AuditEvent::Note {
                actor: ctx.actor(),
                message: format!(
                    "registry {}: moved {target:?} to groups {groups:?} ({detail})",
                    path.display()
                ),
            }) {
                return fail(e);
            }
            let n = changes.moved.len().to_string();
            page_with(
                ctx,
                StatusCode::OK,
                Some(ctx.fill(
                    "move_done",
                    &[("n", &n), ("generation", &generation.to_string())],
                )),
                None,
            )
        }
        Err(e) => page_with(
            ctx,
            StatusCode::CONFLICT,
            None,
            Some(error_json(e, Vec::new())),
        ),
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

/// The refusal of an upload over the limit, before anything is read.
pub fn too_large(ctx: &Ctx, declared: Option<u64>, max: usize) -> Response<Body> {
    let size = declared
        .map(size_text)
        .unwrap_or_else(|| format!("> {}", size_text(max as u64)));
    page_with(
        ctx,
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        Some(error_json(
            ctx.fill(
                "err_registry_too_large",
                &[("size", &size), ("max", &size_text(max as u64))],
            ),
            Vec::new(),
        )),
    )
}

/// `POST /console/devices/import` (multipart, field `file`): the preview.
pub fn import(ctx: &Ctx, files: &[Upload]) -> Response<Body> {
    let path = match registry_path(ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let fail = |message: String, lines: Vec<String>| {
        page_with(
            ctx,
            StatusCode::BAD_REQUEST,
            None,
            Some(error_json(message, lines)),
        )
    };
    let Some(file) = files
        .iter()
        .find(|f| f.field == "file" && !f.bytes.is_empty())
    else {
        return fail(ctx.fill("err_registry_empty_file", &[]), Vec::new());
    };
    if file.bytes.len() > MAX_REGISTRY_BYTES {
        return too_large(ctx, Some(file.bytes.len() as u64), MAX_REGISTRY_BYTES);
    }
    let (text, encoding) = match decode_csv(&file.bytes) {
        Ok(t) => t,
        Err(e) => return fail(decode_error_ja(&e), Vec::new()),
    };
    let generation = ctx.gw.current();
    let policy = &generation.runtime.policy;
    let rows = match policy.parse_registry_rows(Path::new(&file.filename), &text) {
        Ok(r) => r,
        Err(e) => {
            let lines =
                e.0.iter()
                    .take(50)
                    .map(|d| registry_problem_ja(d.line, d.column, &d.message))
                    .collect();
            return fail(ctx.fill("err_registry_lines", &[]), lines);
        }
    };
    let base = match digest_of(&path) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                ctx.fill("err_registry_write", &[("detail", &e)]),
                Vec::new(),
            )
        }
    };
    let changes = diff_registry(&policy.registry_rows(), &rows);
    let view = preview_json(&changes);
    let token = ctx.console.registry_imports.put(
        &ctx.session.user,
        RegistryImport {
            text,
            base,
            changes,
            encoding,
            filename: file.filename.clone(),
        },
    );
    ctx.page(
        "registry_preview.html",
        serde_json::json!({
            "token": token, "changes": view, "encoding": encoding.name(),
            "filename": file.filename, "registry": path.display().to_string(),
        }),
    )
}

fn preview_json(c: &RegistryChanges) -> serde_json::Value {
    let row = |r: &RegistryRow| serde_json::json!({"device": r.device, "user": r.user, "groups": r.groups.join("; "), "line": r.line});
    serde_json::json!({
        "added": c.added.iter().map(row).collect::<Vec<_>>(),
        "moved": c.moved.iter().map(|(a, b)| serde_json::json!({"before": row(a), "after": row(b)})).collect::<Vec<_>>(),
        "removed": c.removed.iter().map(row).collect::<Vec<_>>(),
        "unchanged": c.unchanged,
        "empty": c.is_empty(),
    })
}

/// `POST /console/devices/apply` (`token` of a preview).
pub async fn apply(ctx: &Ctx<'_>) -> Response<Body> {
    let path = match registry_path(ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let token = ctx.query.get("token").unwrap_or("");
    let Some(import) = ctx.console.registry_imports.take(token, &ctx.session.user) else {
        return page_with(
            ctx,
            StatusCode::GONE,
            None,
            Some(error_json(
                ctx.fill("err_registry_preview_gone", &[]),
                Vec::new(),
            )),
        );
    };
    let c = &import.changes;
    match replace_registry(ctx, &path, &import.base, &bom_utf8(&import.text)).await {
        Ok(generation) => {
            let list = |rows: &mut dyn Iterator<Item = &RegistryRow>| {
                rows.map(|r| r.device.clone()).collect::<Vec<_>>().join(",")
            };
            if let Err(e) = ctx.audit(AuditEvent::Note {
                actor: ctx.actor(),
                message: format!(
                    "registry {} replaced from {} ({}): added [{}] moved [{}] removed [{}], {} unchanged",
                    path.display(),
                    import.filename,
                    import.encoding.name(),
                    list(&mut c.added.iter()),
                    list(&mut c.moved.iter().map(|(_, b)| b)),
                    list(&mut c.removed.iter()),
                    c.unchanged
                ),
            }) {
                return page_with(ctx, StatusCode::INTERNAL_SERVER_ERROR, None, Some(error_json(e, Vec::new())));
            }
            page_with(
                ctx,
                StatusCode::OK,
                Some(ctx.fill(
                    "import_done",
                    &[
                        ("added", &c.added.len().to_string()),
                        ("moved", &c.moved.len().to_string()),
                        ("removed", &c.removed.len().to_string()),
                        ("generation", &generation.to_string()),
                    ],
                )),
                None,
            )
        }
        Err(e) => page_with(
            ctx,
            StatusCode::CONFLICT,
            None,
            Some(error_json(e, Vec::new())),
        ),
    }
}

/// `GET /console/devices/export?encoding=utf-8-bom|cp932`.
pub fn export(ctx: &Ctx) -> Response<Body> {
    if let Err(r) = registry_path(ctx) {
        return *r;
    }
    let encoding = ctx
        .query
        .get("encoding")
        .and_then(CsvEncoding::parse)
        .unwrap_or(CsvEncoding::Utf8Bom);
    let rows = ctx.gw.current().runtime.policy.registry_rows();
    let bytes = match encode_csv(&write_registry_csv(&rows), encoding) {
        Ok(b) => b,
        Err((line, c)) => {
            return page_with(
                ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(error_json(
                    ctx.fill(
                        "err_export_cp932",
                        &[("line", &line.to_string()), ("char", &c.to_string())],
                    ),
                    Vec::new(),
                )),
            )
        }
    };
    if let Err(e) = ctx.audit(AuditEvent::Note {
        actor: ctx.actor(),
        message: format!(
            "registry exported ({}, {} devices)",
            encoding.name(),
            rows.len()
        ),
    }) {
        return ctx.error(StatusCode::INTERNAL_SERVER_ERROR, "title_error", e);
    }
    let content_type = match encoding {
        CsvEncoding::Cp932 => "text/csv; charset=shift_jis",
        _ => "text/csv; charset=utf-8",
    };
    respond::download(
        content_type,
        &format!("registry-{}.csv", encoding.name()),
        respond::full(bytes),
    )
}
