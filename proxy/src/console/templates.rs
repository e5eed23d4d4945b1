//! The console's HTML templates (minijinja), embedded in the binary.
//! Every value is HTML-escaped (the templates' names end in `.html`);
//! `t("key")` gives the wording in the page's language.

use std::sync::OnceLock;

use minijinja::{Environment, Error, ErrorKind, State, Value};

use super::text::{lookup, Lang};

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("signin.html", include_str!("templates/signin.html")),
    ("error.html", include_str!("templates/error.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("logs.html", include_str!("templates/logs.html")),
    ("record.html", include_str!("templates/record.html")),
    ("explain.html", include_str!("templates/explain.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("report.html", include_str!("templates/report.html")),
    ("continue.html", include_str!("templates/continue.html")),
    ("devices.html", include_str!("templates/devices.html")),
    (
        "registry_preview.html",
        include_str!("templates/registry_preview.html"),
    ),
    ("certs.html", include_str!("templates/certs.html")),
    ("issued.html", include_str!("templates/issued.html")),
    ("policy.html", include_str!("templates/policy.html")),
    (
        "policy_preview.html",
        include_str!("templates/policy_preview.html"),
    ),
    (
        "policy_done.html",
        include_str!("templates/policy_done.html"),
    ),
    ("unblock.html", include_str!("templates/unblock.html")),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("the embedded templates parse (tested)");
        }
        env.add_function("t", |state: &State, key: &str| -> Result<String, Error> {
            let lang = state
                .lookup("lang")
                .and_then(|v| v.as_str().and_then(Lang::parse))
                .unwrap_or(Lang::Ja);
            lookup(lang, key).map(str::to_string).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("no wording for the text key {key:?}"),
                )
            })
        });
        env
    })
}

/// Renders `name` with `context` (a JSON object: the page's values).
pub fn render(name: &str, context: &serde_json::Value) -> Result<String, String> {
    env()
        .get_template(name)
        .and_then(|t| t.render(Value::from_serialize(context)))
        .map_err(|e| format!("template {name}: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every template renders in both languages with a full context, and
    /// values are escaped.
    #[test]
    fn every_template_renders_escaped_in_both_languages() {
        for lang in ["ja", "en"] {
            let mut ctx = serde_json::json!({
                "lang": lang, "user": "<b>x</b>", "role": "admin", "csrf": "c",
                "can_operate": true, "is_admin": true, "zone": "UTC+09:00", "version": "0",
                "signin_csrf": "s", "name": "n", "error": "<script>alert(1)</script>",
                "title": "t", "message": "m", "back": "/console/", "next": "/console/dashboard",
                "oidc_label": "Entra ID でサインイン",
            });
            let more = [
                serde_json::json!({
                    "now": "2026-01-01 00:00", "generation": 1, "builtin": true,
                    "reloads_ok": 0, "reloads_failed": 0, "connections": 0, "tunnels": 0,
                    "devices": 0, "spilled": 1, "ship_errors": 1,
                    "last_reload": {"at": "t", "ok": false, "error": "<script>alert(1)</script>"},
                    "source": {"kind": "local", "gateway_wide": false, "detail": "<d>"},
                    "store": {"requests": 1, "blocks": 1, "ips_events": 0, "threat_intel": 0,
                        "dlp_blocks": 0, "devices_day": 1, "devices_active": 1,
                        "categories": [{"id": "gambling", "ja": "ギャンブル", "en": "gambling", "blocks": 1}],
                        "hosts": [{"host": "a b&c", "blocks": 2}],
                        "sites": [{"site": "<s>", "requests": 1, "blocks": 0, "devices": 1}, {"site": "", "requests": 1, "blocks": 0, "devices": 0}],
                        "problems": ["p"]},
                    "lists": [{"category": "adult", "label": "l", "file": "f", "entries": 1, "changed": "c", "age_hours": 80, "stale": true},
                              {"category": "x", "label": "l", "file": "f", "entries": 1, "changed": "", "age_hours": null, "stale": true}],
                    "downloads": [{"path": "p", "applied": "a", "result": "ok", "entries": 1}],
                }),
                serde_json::json!({
                    "f": {"since": "", "action": "block", "type": "", "contains": ""},
                    "searched": true, "page": 2, "more": true, "query": "a=b", "can_export": true,
                    "rows": [{"time": "t", "action": "block", "n": 0, "host": "h"}, {"action": "weird"}],
                }),
                serde_json::json!({
                    "fields": [{"label": "l", "value": "v"}], "explain_query": "x=y",
                    "d": {"action": "block", "rule": "r", "rule_origin": "p:1"},
                    "verify": {"ok": false, "entries": 3, "head": "h", "problems": ["p"]},
                    "entries": [{"seq": 1, "time": "t", "kind": "k", "actor": "a", "detail": "d"}],
                    "total": 1,
                }),
            ];
            let mut more = more.to_vec();
            let row = serde_json::json!({"device": "<d>", "user": "u", "groups": "g", "line": 2});
            more.push(serde_json::json!({
                "q": "", "matching": 1, "shown_count": 1, "registry": "r.csv", "digest": "d",
                "group_names": "a; b", "notice": "<n>", "token": "t", "encoding": "cp932",
                "filename": "f.csv", "password": "p", "devices": ["a"], "count": 1,
                "can_issue": true, "can_revoke": true, "default_days": 730,
                "error": {"message": "<script>alert(1)</script>", "lines": ["l"]},
                "rows": [{"device": "d", "user": "u", "groups": "g", "last_site": "s", "last_seen": "",
                          "expiry": "2026-01-01", "expiring": true, "has_cert": true, "revoked": false, "time": "t",
                          "action": "block", "n": 0, "host": "h"}],
                "changes": {"added": [row], "moved": [{"before": row, "after": row}], "removed": [row],
                            "unchanged": 1, "empty": false},
                "expiring": [{"device": "d", "serial": "s", "not_after": "n", "revoked": false, "expired": false}],
                "pending": [{"id": 1, "time": "t", "requester": "r", "host": "h", "url": "u", "reason": "<r>",
                             "groups": ["g"], "state": "pending", "by": "", "message": ""}],
                "decided": [{"id": 2, "time": "t", "requester": "r", "host": "h", "url": "u", "reason": "r",
                             "groups": [], "state": "rejected", "by": "b", "message": "m"}],
                "all": [{"device": "d", "serial": "s", "not_after": "n", "revoked": false, "expired": false}],
            }));
            more.push(serde_json::json!({
                "file": "/p.toml", "base": "0123", "scopes": [{"value": "global", "label": "<g>"}],
                "lists": [{"scope": "global", "scope_label": "<l>", "kind": "allow",
                    "entries": [{"entry": "<e>", "until": "2026-03-31", "note": "<n>", "expired": true}]}],
                "sites": [{"name": "<s>", "cidrs": "10.0.0.0/8", "assertion": true, "beacon_key": "k"}],
                "contact": {"name": "<c>", "phone": "", "email": "", "url": ""},
                "policies": [{"name": "<p>", "categories": [{"category": "adult", "label": "アダルト", "blocked": true, "how": "<h>"}]}],
                "versions": [{"id": "000001-x", "time": "t", "actor": "<a>", "summary": "<s>", "current": false}],
                "days": 7, "failed": "site:<s>", "fv": {"name": "<x>", "cidrs": "<y>"},
                "ferr": {"cidrs": "<script>alert(1)</script>"}, "problems": ["<script>alert(1)</script>"],
                "c": {"summary": "<s>", "diff": [{"tag": "+", "text": "<script>alert(1)</script>"}, {"tag": "@", "text": "@@"}],
                    "added": 1, "removed": 0, "days": 7, "since": "s", "records": 3, "evaluated": 2, "elapsed_ms": 1,
                    "errors": ["<e>"],
                    "blocked": {"requests": 1, "devices": 1, "anonymous": 1, "hosts": [{"host": "<h>", "requests": 1}],
                        "rules": [{"old_rule": "a", "new_rule": "b", "requests": 1}],
                        "samples": [{"time": "t", "device": "d", "method": "GET", "target": "<t>"}]},
                    "allowed": {"requests": 0, "devices": 0, "hosts": [], "rules": [], "samples": []}},
                "id": "i", "fields": [{"name": "op", "value": "<v>"}],
                "ok": true, "summary": "<s>", "version": "v", "dry_run": "<d>", "diff": "<script>alert(1)</script>",
            }));
            more.push(crate::report::html::values(&crate::report::tests::sample()));
            for m in more {
                if let (Some(c), serde_json::Value::Object(m)) = (ctx.as_object_mut(), m) {
                    c.extend(m);
                }
            }
            for (name, _) in TEMPLATES {
                let html = render(name, &ctx).unwrap_or_else(|e| panic!("{lang} {name}: {e}"));
                assert!(!html.contains("<script>alert"), "{name} escapes");
            }
        }
    }
}
