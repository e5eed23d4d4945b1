//! Policy changes from the console: allow / deny list entries (with an
//! optional expiry date), category switches per policy, sites, the block
//! page contact, and the versions of the policy file.
//!
//! Every change goes the same way (through [`crate::policy_edit`]):
//! form → edit of the file's text (comments and layout kept) → the same
//! validation as `komugate policy check`, problems next to the field →
//! preview: the diff and a dry run over the last days' access logs →
//! apply (refused if the file moved on since the form was built: the form
//! carries the version token) → reload → audit entry with who, the diff
//! and the dry run's summary. A reload that fails puts the previous text
//! back. Restoring a kept version is one action through the same path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use komugate_policy::Policy;
use toml_edit::DocumentMut;

use super::Ctx;
use crate::console::respond::Body;
use crate::console::text::Lang;
use crate::logs::audit::{AuditEvent, ReloadSource};
use crate::policy_edit::{
    self, dryrun, ApplyError, ChangeMeta, DryRunOptions, DryRunReport, Edit, EditError, ListKind,
    ListScope, PolicyStore, PrepareError, Prepared,
};

/// Days of logs a dry run reads unless the form asks otherwise.
const DEFAULT_DAYS: u32 = 7;
const MAX_DAYS: u32 = 90;
/// Longest text a field takes.
const MAX_FIELD: usize = 512;
/// A prepared change waits this long for its "apply".
const PENDING_FOR: Duration = Duration::from_secs(30 * 60);
/// Audited diffs are cut here.
const MAX_AUDIT_DIFF: usize = 64 * 1024;

/// A previewed change waiting for "apply", by id.
struct Pending {
    user: String,
    file: PathBuf,
    base: String,
    new_text: String,
    summary: String,
    summary_ja: String,
    diff: String,
    dry_run: String,
    created: Instant,
}

fn pending() -> &'static Mutex<HashMap<String, Pending>> {
    static P: OnceLock<Mutex<HashMap<String, Pending>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

/// The policy file and its store, or the page saying there is none.
pub(crate) fn store(ctx: &Ctx) -> Result<PolicyStore, Box<Response<Body>>> {
    match crate::stages::decide::policy_path(&ctx.gw.config) {
        Some(p) if !ctx.gw.current().runtime.builtin => Ok(PolicyStore::for_policy(&p)),
        _ => Err(Box::new(ctx.error(
            StatusCode::CONFLICT,
            "title_error",
            ctx.fill("err_policy_none", &[]),
        ))),
    }
}

fn msg(ctx: &Ctx, e: &EditError) -> String {
    match ctx.lang {
        Lang::Ja => e.ja.clone(),
        Lang::En => e.en.clone(),
    }
}

/// `GET /console/policy`: the policy's lists, switches, sites, contact and versions.
pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let store = match store(ctx) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    overview(ctx, &store, StatusCode::OK, serde_json::json!({}))
}

/// The overview with `extra` values (a form's values and errors).
fn overview(
    ctx: &Ctx,
    store: &PolicyStore,
    status: StatusCode,
    extra: serde_json::Value,
) -> Response<Body> {
    let (text, token) = match store.current() {
        Ok(c) => c,
        Err(e) => {
            return ctx.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "title_error",
                ctx.fill("err_policy_read", &[("detail", &e.to_string())]),
            )
        }
    };
    let doc: Option<DocumentMut> = text.parse().ok();
    let generation = ctx.gw.current();
    let policy = &generation.runtime.policy;
    let mut scopes = vec![serde_json::json!({"value": "global", "label": ctx.t("scope_global")})];
    for g in policy.groups() {
        scopes.push(serde_json::json!({"value": format!("group:{}", g.name),
            "label": ctx.fill("scope_group", &[("name", &g.name)])}));
    }
    for p in policy.policy_names() {
        scopes.push(serde_json::json!({"value": format!("policy:{p}"),
            "label": ctx.fill("scope_policy", &[("name", &p)])}));
    }
    for site in policy.sites() {
        scopes.push(serde_json::json!({"value": format!("site:{}", site.name),
            "label": ctx.fill("scope_site", &[("name", &site.name)])}));
    }
    let versions: Vec<serde_json::Value> = store
        .list()
        .unwrap_or_default()
        .iter()
        .take(30)
        .map(|v| {
            let summary = match ctx.lang {
                Lang::Ja if !v.summary_ja.is_empty() => &v.summary_ja,
                _ => &v.summary,
            };
            serde_json::json!({"id": v.id, "time": ctx.local_time(v.time_ms), "actor": v.actor,
                "kind": v.kind, "summary": summary, "token": v.token, "current": v.token == token})
        })
        .collect();
    let mut values = serde_json::json!({
        "file": store.file().display().to_string(),
        "base": token,
        "generation": generation.runtime.generation,
        "scopes": scopes,
        "lists": doc.as_ref().map(|d| lists_view(ctx, d)).unwrap_or_default(),
        "sites": doc.as_ref().map(sites_view).unwrap_or_default(),
        "contact": doc.as_ref().map(contact_view).unwrap_or_default(),
        "policies": categories_view(ctx, policy),
        "versions": versions,
        "days": DEFAULT_DAYS,
        "unparsed": doc.is_none(),
    });
    if let (Some(v), serde_json::Value::Object(e)) = (values.as_object_mut(), extra) {
        v.extend(e);
    }
    ctx.page_with_status(status, "policy.html", values)
}

pub(crate) fn scope_label(ctx: &Ctx, scope: &ListScope) -> String {
    match scope {
        ListScope::Global => ctx.t("scope_global").to_string(),
        ListScope::Group(g) => ctx.fill("scope_group", &[("name", g)]),
        ListScope::Policy(p) => ctx.fill("scope_policy", &[("name", p)]),
        ListScope::Device(d) => ctx.fill("scope_device", &[("name", d)]),
        ListScope::Site(s) => ctx.fill("scope_site", &[("name", s)]),
    }
}

/// Every allow / deny list of the document with its entries.
fn lists_view(ctx: &Ctx, doc: &DocumentMut) -> Vec<serde_json::Value> {
    let mut tables: Vec<(ListScope, &dyn toml_edit::TableLike)> = Vec::new();
    if let Some(t) = doc.get("categories").and_then(|i| i.as_table_like()) {
        tables.push((ListScope::Global, t));
    }
    for (key, make) in [
        ("group", ListScope::Group as fn(String) -> ListScope),
        ("policy", ListScope::Policy as fn(String) -> ListScope),
    ] {
        if let Some(a) = doc.get(key).and_then(|i| i.as_array_of_tables()) {
            for t in a.iter() {
                if let Some(n) = t.get("name").and_then(|n| n.as_str()) {
                    tables.push((make(n.to_string()), t));
                }
            }
        }
    }
    let today = crate::logs::record::now_ms();
    // One table per (scope, kind): the board-wide list's entries for one
    // device or one site are shown (and removed) as that device's or site's.
    let mut out: Vec<(ListScope, ListKind, Vec<serde_json::Value>)> = Vec::new();
    for (owner, t) in tables {
        for kind in [ListKind::Allow, ListKind::Deny] {
            let Some(item) = t.get(kind.key()) else {
                continue;
            };
            let values: Vec<&toml_edit::Value> = match item.as_array() {
                Some(a) => a.iter().collect(),
                None => item.as_value().into_iter().collect(),
            };
            for v in values {
                let (entry, until, note) = match v {
                    toml_edit::Value::String(s) => (s.value().clone(), None, None),
                    toml_edit::Value::InlineTable(it) => {
                        let Some(e) = it.get("entry").and_then(|e| e.as_str()) else {
                            continue;
                        };
                        (
                            e.to_string(),
                            it.get("until").and_then(|u| u.as_str()).map(str::to_string),
                            it.get("note").and_then(|u| u.as_str()).map(str::to_string),
                        )
                    }
                    _ => continue,
                };
                // Past its day (in UTC+9 at the latest): shown as expired.
                let expired = until
                    .as_deref()
                    .and_then(|u| komugate_policy::pattern::parse_date(u).ok())
                    .is_some_and(|d| (d + 1) * 86_400_000 - 9 * 3_600_000 <= today);
                // An entry with a hand-written condition (several devices,
                // a device and a site …) is shown with its list, not removable here.
                let (scope, removable) = match owner.of_element(v) {
                    Some(s) => (s, true),
                    None => (owner.clone(), false),
                };
                let x = serde_json::json!({"entry": entry, "until": until, "note": note,
                    "expired": expired, "removable": removable});
                match out.iter_mut().find(|(s, k, _)| *s == scope && *k == kind) {
                    Some((_, _, entries)) => entries.push(x),
                    None => out.push((scope, kind, vec![x])),
                }
            }
        }
    }
    out.into_iter()
        .map(|(scope, kind, entries)| {
            serde_json::json!({
                "scope": scope.as_form(), "scope_label": scope_label(ctx, &scope),
                "kind": kind.key(), "entries": entries,
            })
        })
        .collect()
}

fn sites_view(doc: &DocumentMut) -> Vec<serde_json::Value> {
    let Some(a) = doc.get("site").and_then(|i| i.as_array_of_tables()) else {
        return Vec::new();
    };
    a.iter()
        .map(|t| {
            let cidrs: Vec<String> = match t.get("cidrs") {
                Some(i) => match i.as_array() {
                    Some(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    None => i.as_str().map(str::to_string).into_iter().collect(),
                },
                None => Vec::new(),
            };
            serde_json::json!({
                "name": t.get("name").and_then(|v| v.as_str()).unwrap_or(""),
                "cidrs": cidrs.join("\n"),
                "assertion": t.get("assertion").and_then(|v| v.as_bool()).unwrap_or(false),
                "beacon_key": t.get("beacon_key").and_then(|v| v.as_str()).unwrap_or(""),
            })
        })
        .collect()
}

fn contact_view(doc: &DocumentMut) -> serde_json::Value {
    let t = doc.get("contact").and_then(|i| i.as_table_like());
    let get = |k: &str| {
        t.and_then(|t| t.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    serde_json::json!({"name": get("name"), "phone": get("phone"), "email": get("email"), "url": get("url")})
}

fn categories_view(ctx: &Ctx, policy: &Policy) -> Vec<serde_json::Value> {
    policy
        .policy_names()
        .into_iter()
        .filter_map(|name| {
            let states = policy.category_states(&name)?;
            let cats: Vec<serde_json::Value> = states
                .iter()
                .map(|s| {
                    let label = match ctx.lang {
                        Lang::Ja => komugate_categories::category_label_ja(&s.category).to_string(),
                        Lang::En => s.category.clone(),
                    };
                    let how = if s.blocked_by_policy {
                        ctx.t("cat_by_policy").to_string()
                    } else if s.ignored {
                        ctx.fill("cat_ignored", &[("rules", &s.blocking_rules.join(", "))])
                    } else if !s.blocking_rules.is_empty() {
                        ctx.fill("cat_by_rule", &[("rules", &s.blocking_rules.join(", "))])
                    } else {
                        String::new()
                    };
                    serde_json::json!({"category": s.category, "label": label, "blocked": s.blocked(), "how": how})
                })
                .collect();
            Some(serde_json::json!({"name": name, "categories": cats}))
        })
        .collect()
}

/// A field's value, refusing control characters and over-long text.
fn field(ctx: &Ctx, name: &str) -> Result<Option<String>, EditError> {
    match ctx.query.get(name) {
        None => Ok(None),
        Some(v)
            if v.chars().count() > MAX_FIELD
                || v.chars().any(|c| c.is_control() && c != '\n' && c != '\r') =>
        {
            Err(EditError::new(
                name,
                format!("入力が長すぎるか、使えない文字を含んでいます（{MAX_FIELD} 文字まで）。"),
                format!("too long or holds control characters (at most {MAX_FIELD} characters)"),
            ))
        }
        Some(v) => Ok(Some(v.to_string())),
    }
}

fn required(ctx: &Ctx, name: &str, ja: &str) -> Result<String, EditError> {
    field(ctx, name)?.ok_or_else(|| {
        EditError::new(
            name,
            format!("{ja}を入力してください。"),
            format!("`{name}` is required"),
        )
    })
}

/// The edit a submitted form asks for.
fn edit_from_form(ctx: &Ctx, policy: &Policy) -> Result<Edit, EditError> {
    let scope = |ctx: &Ctx| -> Result<ListScope, EditError> {
        let s = required(ctx, "scope", "対象")?;
        ListScope::parse(&s).ok_or_else(|| {
            EditError::new("scope", "対象のリストを選んでください。", "choose the list")
        })
    };
    let kind = |ctx: &Ctx| -> Result<ListKind, EditError> {
        let k = required(ctx, "kind", "種類")?;
        ListKind::parse(&k).ok_or_else(|| {
            EditError::new(
                "kind",
                "許可か拒否を選んでください。",
                "choose allow or deny",
            )
        })
    };
    match ctx.query.get("op").unwrap_or("") {
        "add_entry" => Ok(Edit::AddListEntry {
            scope: scope(ctx)?,
            kind: kind(ctx)?,
            entry: required(ctx, "entry", "ドメインまたは URL ")?,
            until: field(ctx, "until")?,
            note: field(ctx, "note")?,
        }),
        "remove_entry" => Ok(Edit::RemoveListEntry {
            scope: scope(ctx)?,
            kind: kind(ctx)?,
            entry: required(ctx, "entry", "ドメインまたは URL ")?,
        }),
        "set_category" => {
            let p = required(ctx, "policy", "ポリシー")?;
            let category = required(ctx, "category", "カテゴリ")?;
            let states = policy.category_states(&p).ok_or_else(|| {
                EditError::new(
                    "policy",
                    format!("ポリシー「{p}」はありません。"),
                    format!("there is no policy `{p}`"),
                )
            })?;
            let Some(state) = states.iter().find(|s| s.category == category) else {
                return Err(EditError::new(
                    "category",
                    format!("カテゴリ「{category}」はありません（ポリシーが読み込んでいるカテゴリリストにありません）。"),
                    format!("unknown category `{category}`"),
                ));
            };
            Ok(Edit::SetCategory {
                policy: p,
                category,
                blocked: ctx.query.get("blocked") == Some("1"),
                rule_blocked: !state.blocking_rules.is_empty(),
            })
        }
        "upsert_site" => Ok(Edit::UpsertSite {
            original: field(ctx, "original")?,
            name: required(ctx, "name", "拠点名")?,
            cidrs: field(ctx, "cidrs")?
                .unwrap_or_default()
                .split(|c: char| c == ',' || c == '、' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            beacon_key: field(ctx, "beacon_key")?,
            assertion: ctx.query.get("assertion") == Some("1"),
        }),
        "set_contact" => Ok(Edit::SetContact {
            name: field(ctx, "name")?,
            phone: field(ctx, "phone")?,
            email: field(ctx, "email")?,
            url: field(ctx, "url")?,
        }),
        _ => Err(EditError::new(
            "op",
            "どの変更か分かりません。ページを開き直してください。",
            "unknown change; reload the page",
        )),
    }
}

fn days(ctx: &Ctx) -> Result<u32, String> {
    match ctx.query.get("days") {
        None => Ok(DEFAULT_DAYS),
        Some(d) => match d.parse::<u32>() {
            Ok(n) if (1..=MAX_DAYS).contains(&n) => Ok(n),
            _ => Err(ctx.fill("err_policy_days", &[("max", &MAX_DAYS.to_string())])),
        },
    }
}

/// The form's fields again (for the preview's "apply" and "re-run").
fn form_fields(ctx: &Ctx) -> Vec<serde_json::Value> {
    ctx.query
        .0
        .iter()
        .filter(|(k, _)| k != "csrf" && k != "days")
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect()
}

/// The form again with its values and the problems (in the page language).
fn form_problem(
    ctx: &Ctx,
    store: &PolicyStore,
    field_errors: HashMap<String, String>,
    general: Vec<String>,
    diff: Option<String>,
) -> Response<Body> {
    let values: serde_json::Map<String, serde_json::Value> = ctx
        .query
        .0
        .iter()
        .filter(|(k, _)| k != "csrf")
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let op = ctx.query.get("op").unwrap_or("").to_string();
    // The form that failed, by op (and site), gets the values and errors.
    let form_key = match op.as_str() {
        "upsert_site" => format!("site:{}", ctx.query.get("original").unwrap_or("")),
        o => o.to_string(),
    };
    overview(
        ctx,
        store,
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({
            "failed": form_key, "fv": values, "ferr": field_errors,
            "problems": general, "problem_diff": diff,
        }),
    )
}

/// `POST /console/policy/preview`: the change, validated, with its diff and dry run.
pub async fn preview(ctx: &Ctx<'_>) -> Response<Body> {
    let store = match store(ctx) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let running = ctx.gw.current().runtime.policy.clone();
    let edit = match edit_from_form(ctx, &running) {
        Ok(e) => e,
        Err(e) => {
            let m = msg(ctx, &e);
            return form_problem(ctx, &store, HashMap::from([(e.field, m)]), vec![], None);
        }
    };
    let days = match days(ctx) {
        Ok(d) => d,
        Err(e) => {
            return form_problem(
                ctx,
                &store,
                HashMap::from([("days".into(), e)]),
                vec![],
                None,
            )
        }
    };
    let base = ctx.query.get("base").map(str::to_string);
    let prepared = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || policy_edit::prepare(&store, base.as_deref(), &[edit]))
            .await
            .map_err(|e| PrepareError::Io(e.to_string()))
            .and_then(|r| r)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return prepare_failed(ctx, &store, e),
    };
    let Prepared {
        base,
        new_text,
        diff,
        policy,
        summary,
        summary_ja,
        ..
    } = prepared;
    let report = match run_dry(ctx, running, policy, days).await {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let id = crate::console::auth::new_token();
    let diff_text = diff.unified("現在 / current", "変更後 / new");
    let shown = match ctx.lang {
        Lang::Ja => &summary_ja,
        Lang::En => &summary,
    };
    let view = change_view(ctx, shown, &diff, &report, days);
    {
        let mut p = pending().lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, v| v.created.elapsed() < PENDING_FOR);
        if p.len() >= 200 {
            p.clear();
        }
        p.insert(
            id.clone(),
            Pending {
                user: ctx.session.user.clone(),
                file: store.file().to_path_buf(),
                base: base.clone(),
                new_text,
                summary,
                summary_ja,
                diff: diff_text,
                dry_run: report.summary(),
                created: Instant::now(),
            },
        );
    }
    ctx.page(
        "policy_preview.html",
        serde_json::json!({"c": view, "id": id, "fields": form_fields(ctx), "days": days, "base": base}),
    )
}

fn prepare_failed(ctx: &Ctx, store: &PolicyStore, e: PrepareError) -> Response<Body> {
    match e {
        PrepareError::Conflict { .. } => conflict_page(ctx),
        PrepareError::Edit(e) => {
            let m = msg(ctx, &e);
            form_problem(ctx, store, HashMap::from([(e.field, m)]), vec![], None)
        }
        PrepareError::Invalid { diff, problems } => {
            let mut fields = HashMap::new();
            let mut general = Vec::new();
            for p in problems {
                let text = match ctx.lang {
                    Lang::Ja => format!("{}（{} 行目）", p.ja, p.line),
                    Lang::En => p.en.clone(),
                };
                match p.field {
                    Some(f) if !fields.contains_key(&f) => {
                        fields.insert(f, text);
                    }
                    _ => general.push(text),
                }
            }
            form_problem(
                ctx,
                store,
                fields,
                general,
                Some(diff.unified("current", "new")),
            )
        }
        PrepareError::NoChange => form_problem(
            ctx,
            store,
            HashMap::new(),
            vec![ctx.t("err_policy_nochange").to_string()],
            None,
        ),
        PrepareError::Io(e) => ctx.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "title_error",
            ctx.fill("err_policy_read", &[("detail", &e)]),
        ),
    }
}

fn conflict_page(ctx: &Ctx) -> Response<Body> {
    ctx.page_with_status(
        StatusCode::CONFLICT,
        "error.html",
        serde_json::json!({"title": ctx.t("title_conflict"), "message": ctx.t("err_policy_conflict"), "back": "/console/policy"}),
    )
}

/// The dry run on a blocking thread, one search slot.
pub(crate) async fn run_dry(
    ctx: &Ctx<'_>,
    running: Arc<Policy>,
    new: Policy,
    days: u32,
) -> Result<DryRunReport, Box<Response<Body>>> {
    let permit = match tokio::time::timeout(
        Duration::from_secs(10),
        ctx.console.searches.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(p)) => p,
        _ => {
            return Err(Box::new(ctx.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "title_error",
                ctx.fill("err_busy", &[]),
            )))
        }
    };
    let dir = crate::logs::cli::log_dir(&ctx.gw.config);
    let opts = DryRunOptions::last_days(days);
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if !dir.is_dir() {
            // No logs yet: nothing would change in them.
            return Ok(DryRunReport {
                since_ms: opts.since_ms,
                until_ms: opts.until_ms,
                ..Default::default()
            });
        }
        dryrun::dry_run(&running, &new, &dir, &opts)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    result.map_err(|e| {
        Box::new(ctx.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "title_error",
            ctx.fill("err_policy_dryrun", &[("detail", &e.to_string())]),
        ))
    })
}

fn direction_view(ctx: &Ctx, d: &dryrun::Direction) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = d
        .samples
        .iter()
        .map(|s| {
            serde_json::json!({"time": ctx.local_time(s.time_ms), "device": s.device, "client": s.client,
                "method": s.method, "target": s.target, "old_rule": s.old_rule, "new_rule": s.new_rule})
        })
        .collect();
    serde_json::json!({"requests": d.requests, "devices": d.devices, "anonymous": d.anonymous_clients,
        "hosts": d.top_hosts, "rules": d.rules, "samples": samples})
}

fn change_view(
    ctx: &Ctx,
    summary: &str,
    diff: &policy_edit::TextDiff,
    r: &DryRunReport,
    days: u32,
) -> serde_json::Value {
    serde_json::json!({
        "summary": summary,
        "diff": diff.lines,
        "added": diff.added, "removed": diff.removed,
        "days": days,
        "since": ctx.local_time(r.since_ms),
        "records": r.records, "evaluated": r.evaluated, "elapsed_ms": r.elapsed_ms,
        "errors": r.errors,
        "blocked": direction_view(ctx, &r.newly_blocked),
        "allowed": direction_view(ctx, &r.newly_allowed),
    })
}

/// `POST /console/policy/apply`: applies a previewed change.
pub async fn apply(ctx: &Ctx<'_>) -> Response<Body> {
    let store = match store(ctx) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let id = ctx.query.get("id").unwrap_or("");
    let taken = pending()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id)
        .filter(|p| {
            p.user == ctx.session.user
                && p.created.elapsed() < PENDING_FOR
                && p.file == store.file()
        });
    let Some(p) = taken else {
        return ctx.error(
            StatusCode::GONE,
            "title_error",
            ctx.fill("err_policy_expired", &[]),
        );
    };
    let change = Change {
        action: "apply",
        kind: "console",
        base: p.base,
        new_text: p.new_text,
        summary: p.summary,
        summary_ja: p.summary_ja,
        diff: p.diff,
        dry_run: p.dry_run,
    };
    commit(ctx, &store, change).await
}

/// `POST /console/policy/restore`: puts a kept version back, in one step
/// (validated, dry-run for the audit entry, applied, reloaded).
pub async fn restore(ctx: &Ctx<'_>) -> Response<Body> {
    let store = match store(ctx) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let version = ctx.query.get("version").unwrap_or("").to_string();
    let base = ctx.query.get("base").map(str::to_string);
    let text = match store.read(&version) {
        Ok(t) => t,
        Err(e) => {
            return ctx.error(
                StatusCode::NOT_FOUND,
                "title_error",
                ctx.fill("err_policy_version", &[("detail", &e.to_string())]),
            )
        }
    };
    let prepared = {
        let store = store.clone();
        let summary = format!("restore version {version}");
        let summary_ja = format!("版 {version} に戻す");
        tokio::task::spawn_blocking(move || {
            policy_edit::prepare_text(&store, base.as_deref(), text, summary, summary_ja)
        })
        .await
        .map_err(|e| PrepareError::Io(e.to_string()))
        .and_then(|r| r)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return prepare_failed(ctx, &store, e),
    };
    let running = ctx.gw.current().runtime.policy.clone();
    let Prepared {
        base,
        new_text,
        diff,
        policy,
        summary,
        summary_ja,
        ..
    } = prepared;
    let report = match run_dry(ctx, running, policy, DEFAULT_DAYS).await {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let change = Change {
        action: "restore",
        kind: "restore",
        base,
        new_text,
        summary,
        summary_ja,
        diff: diff.unified("現在 / current", "復元 / restored"),
        dry_run: report.summary(),
    };
    commit(ctx, &store, change).await
}

/// A change ready to write: what, on which version, its diff and dry run.
pub(crate) struct Change {
    /// `apply`, `restore`, `unblock-approve` … (audit), and the version's
    /// kind (`console`, `restore`, `unblock` …).
    pub action: &'static str,
    pub kind: &'static str,
    pub base: String,
    pub new_text: String,
    pub summary: String,
    pub summary_ja: String,
    pub diff: String,
    pub dry_run: String,
}

/// What [`commit_change`] wrote.
pub(crate) struct Committed {
    pub version_id: String,
    pub generation: u64,
}

/// Why [`commit_change`] did not apply a change.
pub(crate) enum CommitError {
    /// No audit log: a change cannot be recorded, so none is made.
    NoAudit,
    /// The file is no longer the version the change was made on.
    Conflict,
    /// The file could not be written; nothing changed.
    Write(String),
    /// Written, but the gateway could not load it: the previous text is
    /// back and reloaded.
    Reload(String),
    /// Applied, but the audit entry could not be written.
    Audit(String),
}

impl CommitError {
    /// The status and the message (in the page's language) to show.
    pub(crate) fn message(&self, ctx: &Ctx) -> (StatusCode, String) {
        match self {
            CommitError::NoAudit => (
                StatusCode::CONFLICT,
                ctx.fill("err_audit", &[("detail", "[log] audit_log")]),
            ),
            CommitError::Conflict => (StatusCode::CONFLICT, ctx.t("err_policy_conflict").into()),
            CommitError::Write(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ctx.fill("err_policy_write", &[("detail", e)]),
            ),
            CommitError::Reload(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.fill("err_policy_rolled_back", &[("detail", e)]),
            ),
            CommitError::Audit(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.clone()),
        }
    }
}

/// Writes, reloads (rolling back on failure) and audits a change: the one
/// way a console page changes the policy file.
pub(crate) async fn commit_change(
    ctx: &Ctx<'_>,
    store: &PolicyStore,
    change: &Change,
) -> Result<Committed, CommitError> {
    let Change {
        action,
        kind,
        base,
        new_text,
        summary,
        summary_ja,
        diff,
        dry_run,
    } = change;
    if ctx.gw.access_log.audit().is_none() {
        return Err(CommitError::NoAudit);
    }
    let actor = ctx.actor();
    let mut diff_audit = diff.clone();
    if diff_audit.len() > MAX_AUDIT_DIFF {
        let mut cut = MAX_AUDIT_DIFF;
        while !diff_audit.is_char_boundary(cut) {
            cut -= 1;
        }
        diff_audit.truncate(cut);
        diff_audit.push_str("\n…");
    }
    let event = |error: Option<String>, new_version: &str, version_id: &str, action: &str| {
        AuditEvent::PolicyChange {
            actor: actor.clone(),
            via: "console".into(),
            action: action.into(),
            summary: summary.clone(),
            base_version: base.clone(),
            new_version: new_version.into(),
            version_id: version_id.into(),
            diff: diff_audit.clone(),
            dry_run: dry_run.clone(),
            error,
        }
    };
    let meta = ChangeMeta {
        actor: actor.clone(),
        kind: (*kind).into(),
        summary: summary.clone(),
        summary_ja: summary_ja.clone(),
    };
    let applied = {
        let (store, base, text) = (store.clone(), base.clone(), new_text.clone());
        tokio::task::spawn_blocking(move || store.apply(&base, &text, &meta))
            .await
            .map_err(|e| ApplyError::Io(e.to_string()))
            .and_then(|r| r)
    };
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            let _ = ctx.audit(event(Some(e.to_string()), "", "", action));
            return Err(match e {
                ApplyError::Conflict { .. } => CommitError::Conflict,
                e => CommitError::Write(e.to_string()),
            });
        }
    };
    let source = || ReloadSource::Console {
        actor: actor.clone(),
    };
    match ctx.gw.reload(source()).await {
        Ok(r) => {
            ctx.audit(event(
                None,
                &applied.version.token,
                &applied.version.id,
                action,
            ))
            .map_err(CommitError::Audit)?;
            Ok(Committed {
                version_id: applied.version.id,
                generation: r.generation,
            })
        }
        Err(reload_error) => {
            // Put the previous text back so the file and the running policy agree.
            let meta = ChangeMeta {
                actor: actor.clone(),
                kind: "rollback".into(),
                summary: format!("rollback of: {summary}"),
                summary_ja: format!("読み込めなかったため元に戻す: {summary_ja}"),
            };
            let (s, token, text) = (
                store.clone(),
                applied.version.token.clone(),
                applied.previous_text.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || s.apply(&token, &text, &meta)).await;
            let _ = ctx.gw.reload(source()).await;
            let _ = ctx.audit(event(
                Some(reload_error.clone()),
                &applied.version.token,
                &applied.version.id,
                "rollback",
            ));
            Err(CommitError::Reload(reload_error))
        }
    }
}

/// Commits a change from the policy page and shows the outcome.
async fn commit(ctx: &Ctx<'_>, store: &PolicyStore, change: Change) -> Response<Body> {
    let summary = if ctx.lang == Lang::Ja {
        &change.summary_ja
    } else {
        &change.summary
    };
    match commit_change(ctx, store, &change).await {
        Ok(c) => ctx.page(
            "policy_done.html",
            serde_json::json!({"ok": true, "summary": summary, "version": c.version_id,
                "generation": c.generation, "dry_run": change.dry_run, "diff": change.diff}),
        ),
        Err(CommitError::Conflict) => conflict_page(ctx),
        Err(CommitError::Reload(error)) => ctx.page_with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_done.html",
            serde_json::json!({"ok": false, "summary": change.summary, "error": error, "diff": change.diff}),
        ),
        Err(e) => {
            let (status, message) = e.message(ctx);
            ctx.error(status, "title_error", message)
        }
    }
}
