//! A rule's conditions on the signed-in user and the device's posture:
//! `users`, `user_groups`, `signed_in` and `posture = { ... }` (see
//! [`crate::subject`]).

use toml_edit::TableLike;

use super::cx::Cx;
use crate::subject::{parse_version, PostureReq, SubjectConds};

pub(super) const SUBJECT_KEYS: &[&str] = &[
    "user",
    "users",
    "user_group",
    "user_groups",
    "signed_in",
    "posture",
];

const POSTURE_KEYS: &[&str] = &[
    "disk_encryption",
    "firewall",
    "os_updated_within_days",
    "os",
    "min_os_version",
    "min_client_version",
];

pub(super) fn parse(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str, c: &mut SubjectConds) {
    if let Some(v) = cx.cond_strs(t, "user", "users", what) {
        c.users = Some(v.into_iter().map(|(u, _)| u.to_lowercase()).collect());
    }
    if let Some(v) = cx.cond_strs(t, "user_group", "user_groups", what) {
        c.user_groups = Some(v.into_iter().map(|(g, _)| g).collect());
    }
    if let Some(b) = cx.bool(t, "signed_in", what) {
        c.signed_in = Some(b);
    }
    if let Some((p, _)) = cx.table(t, "posture") {
        let w = format!("`posture` of {what}");
        cx.keys(p, &w, POSTURE_KEYS);
        let mut req = PostureReq {
            disk_encryption: cx.bool(p, "disk_encryption", &w),
            firewall: cx.bool(p, "firewall", &w),
            ..Default::default()
        };
        if let Some(item) = p.get("os_updated_within_days") {
            match item.as_integer() {
                Some(d) if d >= 1 => req.os_updated_within_days = Some(d as u64),
                _ => cx.err(
                    &item.span(),
                    format!("`os_updated_within_days` in {w} must be a number of days ≥ 1"),
                ),
            }
        }
        if let Some(v) = cx.strs(p, "os", &w) {
            req.os = Some(v.into_iter().map(|(o, _)| o.to_lowercase()).collect());
        }
        for (key, slot) in [
            ("min_os_version", &mut req.min_os_version),
            ("min_client_version", &mut req.min_client_version),
        ] {
            if let Some((v, sp)) = cx.str(p, key, &w) {
                match parse_version(&v) {
                    Some(parts) => *slot = Some(parts),
                    None => cx.err(
                        &sp,
                        format!("`{key}` in {w} must be a dotted version like \"10.0.19045\""),
                    ),
                }
            }
        }
        c.posture = Some(req);
    }
    if c.signed_in == Some(false) && (c.users.is_some() || c.user_groups.is_some()) {
        let sp = t.get("signed_in").and_then(|i| i.span());
        cx.err(
            &sp,
            format!("{what} has `signed_in = false` with `users` or `user_groups`: it would never match"),
        );
    }
}
