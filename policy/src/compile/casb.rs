//! `[casb]`: upload threshold, inspection cap, DLP patterns, and the
//! tenant-restriction headers of the catalog filled from `[tenant]`.

use toml_edit::TableLike;

use super::cx::{int, Cx, Span};
use super::tenant::is_guid;
use crate::pattern::HostPattern;
use crate::{Action, Tenants};

/// `[casb]`: thresholds, DLP patterns; tenant-restriction headers from the
/// catalog filled with the `[tenant]` settings.
pub(super) fn section(
    cx: &mut Cx<'_>,
    table: Option<(&dyn TableLike, Span)>,
    catalog: Option<&crate::casb::CatalogFile>,
    tenants: &Tenants,
) -> crate::casb::CasbSettings {
    let mut out = crate::casb::CasbSettings::default();
    if let Some(c) = catalog {
        out.catalog_version = c.version.clone();
        let first_guid = tenants.microsoft.iter().find(|v| is_guid(v)).cloned();
        let join = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
        let vars = [
            ("microsoft", join(&tenants.microsoft)),
            (
                "microsoft_context",
                tenants.microsoft_context.clone().or(first_guid),
            ),
            (
                "tenant_restrictions_v2",
                tenants.tenant_restrictions_v2.clone(),
            ),
            ("google", join(&tenants.google)),
            ("youtube_restrict", tenants.youtube_restrict.clone()),
        ];
        for tr in &c.tenant_restriction {
            let patterns = tr
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect();
            out.tenant_restrictions
                .push(crate::casb::TenantRestriction {
                    name: tr.name.clone(),
                    patterns,
                    header_names: tr.headers.iter().map(|(n, _)| n.clone()).collect(),
                    headers: tr
                        .headers
                        .iter()
                        .filter_map(|(n, v)| {
                            crate::casb::fill_template(v, &vars).map(|v| (n.clone(), v))
                        })
                        .collect(),
                });
        }
    }
    let Some((t, _)) = table else { return out };
    let what = "[casb]";
    cx.keys(
        t,
        what,
        &[
            "catalog",
            "upload_threshold",
            "inspect_max_bytes",
            "over_cap",
            "dlp",
        ],
    );
    if let Some(v) = int(cx, t, "upload_threshold", what, 0) {
        out.upload_threshold = v;
    }
    if let Some(v) = int(cx, t, "inspect_max_bytes", what, 1024) {
        out.inspect_max_bytes = v;
    }
    if out.upload_threshold > out.inspect_max_bytes {
        let sp = t.get("upload_threshold").and_then(|i| i.span());
        cx.err(
            &sp,
            format!(
                "upload_threshold ({}) must not exceed inspect_max_bytes ({})",
                out.upload_threshold, out.inspect_max_bytes
            ),
        );
    }
    if let Some(a) = cx.action(t, "over_cap", what) {
        out.over_cap = a;
    }
    let mut patterns = Vec::new();
    let mut keywords = Vec::new();
    for (dt, dsp) in cx.tables(t, "dlp", "casb.dlp") {
        let Some((name, nsp)) = cx.req_str(dt, "name", "[[casb.dlp]]", &dsp) else {
            continue;
        };
        let w = format!("DLP pattern `{name}`");
        cx.keys(
            dt,
            &w,
            &[
                "name",
                "action",
                "my_number",
                "keywords",
                "regex",
                "description",
            ],
        );
        if patterns
            .iter()
            .any(|p: &crate::casb::DlpPattern| p.name == name)
        {
            cx.err(&nsp, format!("duplicate DLP pattern `{name}`"));
            continue;
        }
        let action = if dt.contains_key("action") {
            cx.action(dt, "action", &w).unwrap_or(Action::Block)
        } else {
            cx.err(
                &dsp,
                format!("missing `action` in {w} (\"block\" or \"allow\" = log only)"),
            );
            Action::Block
        };
        let kinds = ["my_number", "keywords", "regex"]
            .iter()
            .filter(|k| dt.contains_key(k))
            .count();
        if kinds != 1 {
            cx.err(&dsp, format!("{w} needs exactly one of `my_number = true`, `keywords = [..]`, `regex = \"..\"`"));
            continue;
        }
        if let Some(b) = cx.bool(dt, "my_number", &w) {
            if !b {
                let sp = dt.get("my_number").and_then(|i| i.span());
                cx.err(
                    &sp,
                    format!("`my_number` in {w} must be true (remove the pattern to turn it off)"),
                );
                continue;
            }
            patterns.push(crate::casb::dlp_my_number(name, action));
        } else if let Some(v) = cx.strs(dt, "keywords", &w) {
            let idx = patterns.len();
            if v.is_empty() {
                let sp = dt.get("keywords").and_then(|i| i.span());
                cx.err(
                    &sp,
                    format!("`keywords` in {w} is empty and would never match"),
                );
            }
            for (k, sp) in v {
                if k.trim().is_empty() {
                    cx.err(&sp, "an empty keyword would match everything");
                } else {
                    keywords.push((idx, k));
                }
            }
            patterns.push(crate::casb::dlp_keywords(name, action));
        } else if let Some((re, sp)) = cx.str(dt, "regex", &w) {
            match crate::casb::dlp_regex(name, action, &re) {
                Ok(p) => patterns.push(p),
                Err(e) => cx.err(&sp, format!("{e} in {w}")),
            }
        }
    }
    match crate::casb::Dlp::build(patterns, keywords) {
        Ok(d) => out.dlp = d,
        Err(e) => cx.err(&None, e),
    }
    out
}
