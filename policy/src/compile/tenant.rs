//! `[tenant]`: the board's own Microsoft / Google / SharePoint tenants and
//! the tenant-restriction settings.

use toml_edit::TableLike;

use super::cx::Cx;
use crate::diag::suggest;
use crate::pattern::HostPattern;
use crate::Tenants;

pub(super) fn section(cx: &mut Cx<'_>, root: &dyn TableLike) -> Tenants {
    let mut tenants = Tenants::default();
    if let Some((t, _)) = cx.table(root, "tenant") {
        cx.keys(
            t,
            "[tenant]",
            &[
                "microsoft",
                "google",
                "sharepoint",
                "microsoft_context",
                "tenant_restrictions_v2",
                "youtube_restrict",
            ],
        );
        for (v, sp) in cx.strs(t, "sharepoint", "[tenant]").unwrap_or_default() {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !v.starts_with('-');
            if ok {
                tenants.sharepoint.push(v.to_ascii_lowercase());
            } else {
                cx.err(&sp, format!("invalid sharepoint tenant name `{v}` (the `azumino` of azumino.sharepoint.com)"));
            }
        }
        if let Some((v, sp)) = cx.str(t, "microsoft_context", "[tenant]") {
            if is_guid(&v) {
                tenants.microsoft_context = Some(v);
            } else {
                cx.err(
                    &sp,
                    format!(
                        "invalid microsoft_context `{v}` (expected the directory (tenant) id GUID)"
                    ),
                );
            }
        }
        if let Some((v, sp)) = cx.str(t, "tenant_restrictions_v2", "[tenant]") {
            match v.split_once(':') {
                Some((a, b)) if is_guid(a) && is_guid(b) => tenants.tenant_restrictions_v2 = Some(v),
                _ => cx.err(&sp, format!("invalid tenant_restrictions_v2 `{v}` (expected \"<tenant-id>:<policy-id>\", two GUIDs)")),
            }
        }
        if let Some((v, sp)) = cx.str(t, "youtube_restrict", "[tenant]") {
            match v.as_str() {
                "Strict" | "Moderate" => tenants.youtube_restrict = Some(v),
                _ => cx.err(
                    &sp,
                    format!(
                        "invalid youtube_restrict `{v}` (use \"Strict\" or \"Moderate\"){}",
                        suggest(&v, ["Strict", "Moderate"])
                    ),
                ),
            }
        }
        for (key, out) in [
            ("microsoft", &mut tenants.microsoft),
            ("google", &mut tenants.google),
        ] {
            for (v, sp) in cx.strs(t, key, "[tenant]").unwrap_or_default() {
                let is_guid = is_guid(&v);
                let is_domain = HostPattern::parse(&v)
                    .is_ok_and(|p| matches!(p, HostPattern::Exact(_)))
                    && v.contains('.');
                if (key == "microsoft" && !(is_guid || is_domain))
                    || (key == "google" && !is_domain)
                {
                    let want = if key == "microsoft" {
                        "a tenant GUID or a domain"
                    } else {
                        "a domain"
                    };
                    cx.err(&sp, format!("invalid {key} tenant `{v}` (expected {want})"));
                } else {
                    out.push(v);
                }
            }
        }
    }
    tenants
}

pub(super) fn is_guid(v: &str) -> bool {
    v.len() == 36
        && v.chars().enumerate().all(|(i, ch)| {
            if [8, 13, 18, 23].contains(&i) {
                ch == '-'
            } else {
                ch.is_ascii_hexdigit()
            }
        })
}
