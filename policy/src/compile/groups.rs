//! `[[group]]` (names, aliases, per-group allow/deny lists) and
//! `[registry]` (the device → user, groups CSV).

use std::collections::HashMap;

use toml_edit::TableLike;

use super::categories::{list_spec, ListSpec};
use super::cx::Cx;
use super::sites::Sites;
use crate::registry::{decode_csv, parse_registry, Registry, MAX_GROUPS};
use crate::Group;

/// The groups, their names and aliases → index, and the per-group lists
/// (added to the category matcher with the other lists).
pub(super) struct Groups {
    pub groups: Vec<Group>,
    pub index: HashMap<String, usize>,
    pub lists: Vec<(usize, Option<ListSpec>, Option<ListSpec>)>,
}

pub(super) fn section(cx: &mut Cx<'_>, root: &dyn TableLike, sites: &Sites) -> Groups {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_index: HashMap<String, usize> = HashMap::new();
    let mut group_lists_spec: Vec<(usize, Option<ListSpec>, Option<ListSpec>)> = Vec::new();
    for (t, tsp) in cx.tables(root, "group", "group") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[group]]", &tsp) else {
            continue;
        };
        let what = format!("group `{name}`");
        cx.keys(
            t,
            &what,
            &[
                "name",
                "aliases",
                "description",
                "allow",
                "deny",
                "allow_files",
                "deny_files",
            ],
        );
        if group_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate group name or alias `{name}`"));
            continue;
        }
        if groups.len() >= MAX_GROUPS {
            cx.err(&nsp, format!("too many groups (at most {MAX_GROUPS})"));
            continue;
        }
        let i = groups.len();
        group_index.insert(name.clone(), i);
        let mut aliases = Vec::new();
        for (a, sp) in cx.strs(t, "aliases", &what).unwrap_or_default() {
            if group_index.contains_key(&a) {
                cx.err(&sp, format!("duplicate group name or alias `{a}`"));
            } else {
                group_index.insert(a.clone(), i);
                aliases.push(a);
            }
        }
        let allow = list_spec(cx, t, &what, "allow", format!("@allow:{name}"), sites);
        let deny = list_spec(cx, t, &what, "deny", format!("@deny:{name}"), sites);
        if allow.is_some() || deny.is_some() {
            group_lists_spec.push((i, allow, deny));
        }
        groups.push(Group { name, aliases });
    }
    Groups {
        groups,
        index: group_index,
        lists: group_lists_spec,
    }
}

pub(super) fn registry(cx: &mut Cx<'_>, root: &dyn TableLike, groups: &Groups) -> Registry {
    let group_names: Vec<String> = groups.groups.iter().map(|g| g.name.clone()).collect();
    let mut registry = Registry::default();
    if let Some((t, tsp)) = cx.table(root, "registry") {
        registry.configured = true;
        cx.keys(t, "[registry]", &["path"]);
        if let Some((p, sp)) = cx.req_str(t, "path", "[registry]", &tsp) {
            if let Some((path, bytes)) = cx.read_bytes(&p, &sp) {
                match decode_csv(&bytes) {
                    Ok((text, _)) => {
                        registry = parse_registry(
                            &path,
                            &text,
                            &groups.index,
                            &group_names,
                            &mut cx.s.diags,
                        );
                        registry.configured = true;
                        registry.path = Some(path);
                    }
                    Err(e) => cx.err(&sp, format!("`{p}`: {e}")),
                }
            }
        }
    }
    registry
}
