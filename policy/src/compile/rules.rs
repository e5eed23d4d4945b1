//! `[[rule]]` and `[[ruleset]]`: web rules with their conditions, action,
//! message, tunnel mode, egress pool and CASB / firewall hooks.

use std::collections::HashMap;

use toml_edit::TableLike;

use super::conditions::{parse_conds, Conds, Names, COND_KEYS};
use super::cx::{Cx, Span};
use crate::subject::SubjectConds;
use crate::*;

const RULE_KEYS: &[&str] = &[
    "name", "when", "action", "message", "tunnel", "egress", "casb", "firewall",
];

/// Every rule (top-level and in rulesets, in document order) with the span
/// of its name, the top-level ones, and the rulesets by name.
pub(super) struct Rules {
    pub rules: Vec<Rule>,
    pub spans: Vec<Span>,
    pub top: Vec<usize>,
    /// Span of the first top-level `[[rule]]`, if any.
    pub first_top: Option<Span>,
    pub rulesets: HashMap<String, Vec<usize>>,
    pub ruleset_order: Vec<String>,
}

pub(super) fn section(cx: &mut Cx<'_>, root: &dyn TableLike, names: &Names<'_>) -> Rules {
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_spans: Vec<Span> = Vec::new();
    let mut rule_names: HashMap<String, String> = HashMap::new();
    let mut push_rule = |cx: &mut Cx<'_>, r: Rule, sp: Span, rules: &mut Vec<Rule>| -> usize {
        if let Some(first) = rule_names.get(&r.name) {
            cx.err(
                &sp,
                format!(
                    "duplicate rule name `{}` (first defined at {first})",
                    r.name
                ),
            );
        } else {
            rule_names.insert(r.name.clone(), r.origin.clone());
        }
        rules.push(r);
        rule_spans.push(sp);
        rules.len() - 1
    };
    let mut top_rules = Vec::new();
    let top_tables = cx.tables(root, "rule", "rule");
    for (t, tsp) in &top_tables {
        if let Some((r, sp)) = parse_rule(cx, *t, tsp, names) {
            top_rules.push(push_rule(cx, r, sp, &mut rules));
        }
    }
    let mut rulesets: HashMap<String, Vec<usize>> = HashMap::new();
    let mut ruleset_order: Vec<String> = Vec::new();
    for (t, tsp) in cx.tables(root, "ruleset", "ruleset") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[ruleset]]", &tsp) else {
            continue;
        };
        let what = format!("ruleset `{name}`");
        cx.keys(t, &what, &["name", "description", "rule"]);
        let mut ids = Vec::new();
        for (rt, rsp) in cx.tables(t, "rule", "ruleset.rule") {
            if let Some((r, sp)) = parse_rule(cx, rt, &rsp, names) {
                ids.push(push_rule(cx, r, sp, &mut rules));
            }
        }
        if rulesets.contains_key(&name) {
            cx.err(&nsp, format!("duplicate ruleset `{name}`"));
            continue;
        }
        ruleset_order.push(name.clone());
        rulesets.insert(name, ids);
    }
    Rules {
        rules,
        spans: rule_spans,
        top: top_rules,
        first_top: top_tables.first().map(|(_, sp)| sp.clone()),
        rulesets,
        ruleset_order,
    }
}

fn parse_rule(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    tspan: &Span,
    n: &Names<'_>,
) -> Option<(Rule, Span)> {
    let mut allowed: Vec<&str> = RULE_KEYS.to_vec();
    allowed.extend_from_slice(COND_KEYS);
    allowed.extend_from_slice(super::subject::SUBJECT_KEYS);
    let name = cx.req_str(t, "name", "[[rule]]", tspan);
    let what = match &name {
        Some((n, _)) => format!("rule `{n}`"),
        None => "[[rule]]".to_string(),
    };
    cx.keys(t, &what, &allowed);
    let mut c = Conds::default();
    parse_conds(cx, t, &what, n, &mut c);
    let mut subject = SubjectConds::default();
    super::subject::parse(cx, t, &what, &mut subject);
    if let Some((w, _)) = cx.table(t, "when") {
        let mut when_keys = COND_KEYS.to_vec();
        when_keys.extend_from_slice(super::subject::SUBJECT_KEYS);
        cx.keys(w, &format!("`when` of {what}"), &when_keys);
        parse_conds(cx, w, &what, n, &mut c);
        super::subject::parse(cx, w, &what, &mut subject);
    }
    let decides = t.contains_key("action") || !t.contains_key("casb");
    let action = if t.contains_key("action") {
        cx.action(t, "action", &what).unwrap_or(Action::Block)
    } else if !decides {
        Action::Allow
    } else {
        cx.err(
            tspan,
            format!("missing `action` in {what} (\"allow\" or \"block\")"),
        );
        Action::Block
    };
    let message = cx.str(t, "message", &what).map(|(m, _)| m);
    let tunnel = cx.tunnel(t, &what);
    let egress = match cx.str(t, "egress", &what) {
        Some((e, sp)) => cx.resolve("egress pool", &e, &sp, &n.egress, &n.egress_names),
        None => None,
    };
    let casb = match cx.table(t, "casb") {
        Some((ct, _)) => {
            let w = format!("`casb` of {what}");
            cx.keys(ct, &w, &["tenant_restriction", "upload", "download", "dlp"]);
            Some(CasbHook {
                tenant_restriction: cx.bool(ct, "tenant_restriction", &w),
                upload: cx.action(ct, "upload", &w),
                download: cx.action(ct, "download", &w),
                dlp: cx.bool(ct, "dlp", &w),
            })
        }
        None => None,
    };
    let firewall = match cx.table(t, "firewall") {
        Some((ft, _)) => {
            let w = format!("`firewall` of {what}");
            cx.keys(ft, &w, &["ips"]);
            Some(FirewallHook {
                ips: cx.bool(ft, "ips", &w),
            })
        }
        None => None,
    };
    let (name, nspan) = name?;
    let origin = cx.s.at(&nspan);
    let (categories, category_names) = match c.categories {
        Some((s, names)) => (Some(s), Some(names)),
        None => (None, None),
    };
    Some((
        Rule {
            name,
            origin,
            groups: c.groups,
            devices: c.devices,
            locations: c.locations,
            categories,
            category_names,
            apps: c.apps,
            app_categories: c.app_categories,
            app_tenant: c.app_tenant,
            hosts: c.hosts,
            ports: c.ports,
            schemes: c.schemes,
            methods: c.methods,
            paths: c.paths,
            time: c.time,
            days: c.days,
            subject,
            action,
            message,
            tunnel,
            egress,
            casb,
            firewall,
            decides,
        },
        nspan,
    ))
}
