//! `[[policy]]`: which rulesets apply to which groups (or, without any
//! `[[policy]]`, the top-level rules to everyone).

use std::collections::HashSet;

use toml_edit::TableLike;

use super::conditions::Names;
use super::cx::{key_span, Cx};
use super::rules::Rules;
use crate::diag::suggest;
use crate::registry::GroupBits;
use crate::{GroupPolicy, ListMasks};
use komugate_categories::CategorySet;

/// The policies in document order; `explicit` is false when the document
/// has no `[[policy]]` (one implicit policy `main` holds the top-level rules).
pub(super) struct Policies {
    pub policies: Vec<GroupPolicy>,
    pub explicit: bool,
}

pub(super) fn section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
    names: &Names<'_>,
    rules: &Rules,
    lists: &[(String, ListMasks, ListMasks)],
) -> Policies {
    let mut policies: Vec<GroupPolicy> = Vec::new();
    let policy_tables = cx.tables(root, "policy", "policy");
    if let (false, Some(sp)) = (policy_tables.is_empty(), &rules.first_top) {
        cx.err(sp, "top-level [[rule]] cannot be combined with [[policy]]: put the rules in a [[ruleset]] and list it in the policies");
    }
    let rs_names: Vec<&str> = rules.ruleset_order.iter().map(|s| s.as_str()).collect();
    let mut catch_all: Option<String> = None;
    for (t, tsp) in &policy_tables {
        let Some((name, nsp)) = cx.req_str(*t, "name", "[[policy]]", tsp) else {
            continue;
        };
        let what = format!("policy `{name}`");
        cx.keys(
            *t,
            &what,
            &[
                "name",
                "groups",
                "rulesets",
                "default",
                "description",
                "allow",
                "deny",
                "allow_files",
                "deny_files",
                "block_categories",
                "ignore_categories",
            ],
        );
        let category_set = |key: &str, cx: &mut Cx<'_>| {
            let mut set = CategorySet::empty();
            for (c, sp) in cx.strs(*t, key, &what).unwrap_or_default() {
                if !names.categories.contains(&c) || c.starts_with('@') {
                    cx.err(
                        &sp,
                        format!(
                            "unknown category `{c}` in `{key}` of {what}{}",
                            suggest(&c, names.category_names.iter().copied())
                        ),
                    );
                } else if let Some(id) = names.matcher.category_id(&c) {
                    set.insert(id);
                }
            }
            set
        };
        let block_categories = category_set("block_categories", cx);
        let ignore_categories = category_set("ignore_categories", cx);
        if block_categories.intersects(&ignore_categories) {
            let sp = key_span(*t, "ignore_categories");
            cx.err(
                &sp,
                format!("a category is in both `block_categories` and `ignore_categories` of {what}; keep it in one"),
            );
        }
        let (allow, deny) = lists
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, a, d)| (a.clone(), d.clone()))
            .unwrap_or_default();
        let groups_bits = cx.cond_strs(*t, "group", "groups", &what).map(|v| {
            let mut b = GroupBits::default();
            for (g, sp) in v {
                if let Some(i) = cx.resolve("group", &g, &sp, names.groups, &names.group_names) {
                    b.insert(i);
                }
            }
            b
        });
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        match cx.strs(*t, "rulesets", &what) {
            Some(v) => {
                for (rs, sp) in v {
                    if !seen.insert(rs.clone()) {
                        cx.err(&sp, format!("ruleset `{rs}` listed twice in {what}"));
                        continue;
                    }
                    match rules.rulesets.get(&rs) {
                        Some(r) => ids.extend_from_slice(r),
                        None => cx.err(
                            &sp,
                            format!(
                                "unknown ruleset `{rs}`{}",
                                suggest(&rs, rs_names.iter().copied())
                            ),
                        ),
                    }
                }
            }
            None => cx.err(tsp, format!("missing `rulesets` in {what}")),
        }
        let default = cx.action(*t, "default", &what);
        if let Some(c) = &catch_all {
            cx.err(&nsp, format!("{what} is never selected: policy `{c}` has no `groups` and applies to everyone before it"));
        }
        if groups_bits.is_none() && catch_all.is_none() {
            catch_all = Some(name.clone());
        }
        if policies.iter().any(|p| p.name == name) {
            cx.err(&nsp, format!("duplicate policy `{name}`"));
        }
        policies.push(GroupPolicy {
            name,
            groups: groups_bits,
            rules: ids,
            default_action: default,
            allow,
            deny,
            block_categories,
            ignore_categories,
        });
    }
    if policy_tables.is_empty() {
        if !rules.rulesets.is_empty() {
            let sp = key_span(root, "ruleset");
            cx.err(&sp, "[[ruleset]] is only used through [[policy]]: add a [[policy]] listing it in `rulesets`");
        }
        policies.push(GroupPolicy {
            name: "main".into(),
            groups: None,
            rules: rules.top.clone(),
            default_action: None,
            allow: ListMasks::default(),
            deny: ListMasks::default(),
            block_categories: CategorySet::empty(),
            ignore_categories: CategorySet::empty(),
        });
    }
    Policies {
        policies,
        explicit: !policy_tables.is_empty(),
    }
}
