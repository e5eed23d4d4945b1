//! Unreachable rules: a rule shadowed, in every policy that includes it, by
//! an earlier rule that matches everything it matches (a rule shadowed by a
//! group exception in one policy may still decide in another).

use std::collections::HashMap;

use super::cx::{Cx, Span};
use crate::pattern::HostPattern;
use crate::{GroupPolicy, Rule};

/// Reports every unreachable rule at its name.
pub(super) fn report_unreachable(
    cx: &mut Cx<'_>,
    rules: &[Rule],
    rule_spans: &[Span],
    policies: &[GroupPolicy],
    explicit_policies: bool,
) {
    let mut included: HashMap<usize, usize> = HashMap::new();
    let mut shadowed: HashMap<usize, (usize, String, Vec<usize>)> = HashMap::new();
    for p in policies {
        for (j, &rj) in p.rules.iter().enumerate() {
            *included.entry(rj).or_default() += 1;
            if let Some(&ri) = p.rules[..j].iter().find(|&&ri| {
                rules[ri].decides && rules[rj].decides && covers(&rules[ri], &rules[rj])
            }) {
                let e = shadowed
                    .entry(rj)
                    .or_insert_with(|| (ri, p.name.clone(), Vec::new()));
                e.2.push(ri);
            }
        }
    }
    let mut unreachable: Vec<(usize, usize, String)> = shadowed
        .into_iter()
        .filter(|(rj, (_, _, by))| by.len() == included[rj])
        .map(|(rj, (ri, pname, _))| (rj, ri, pname))
        .collect();
    unreachable.sort();
    for (rj, ri, pname) in unreachable {
        let (a, b) = (&rules[ri], &rules[rj]);
        let why = if has_conditions(a) {
            "matches everything it matches"
        } else {
            "has no conditions and always matches"
        };
        let inpol = if !explicit_policies {
            String::new()
        } else {
            format!(" in policy `{pname}`")
        };
        let sp = rule_spans[rj].clone();
        cx.err(
            &sp,
            format!(
                "rule `{}` is unreachable{inpol}: rule `{}` ({}) {why} and comes first",
                b.name, a.name, a.origin
            ),
        );
    }
}

fn has_conditions(r: &Rule) -> bool {
    r.groups.is_some()
        || r.devices.is_some()
        || r.locations.is_some()
        || r.categories.is_some()
        || r.apps.is_some()
        || r.app_categories.is_some()
        || r.app_tenant.is_some()
        || r.hosts.is_some()
        || r.ports.is_some()
        || r.schemes.is_some()
        || r.methods.is_some()
        || r.paths.is_some()
        || r.time.is_some()
        || r.days.is_some()
        || !r.subject.is_empty()
}

/// Does `a` match every request `b` matches? (sound, not complete)
pub(super) fn covers(a: &Rule, b: &Rule) -> bool {
    fn dim<T>(a: &Option<T>, b: &Option<T>, sub: impl Fn(&T, &T) -> bool) -> bool {
        match (a, b) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => sub(a, b),
        }
    }
    dim(&a.groups, &b.groups, |a, b| b.is_subset(a))
        && dim(&a.devices, &b.devices, |a, b| {
            b.iter().all(|x| a.contains(x))
        })
        && dim(&a.locations, &b.locations, |a, b| {
            (!b.offsite || a.offsite)
                && (!b.any_site || a.any_site)
                && b.sites.iter().all(|s| a.any_site || a.sites.contains(s))
        })
        && dim(&a.category_names, &b.category_names, |a, b| {
            b.iter().all(|x| a.contains(x))
        })
        && dim(&a.apps, &b.apps, |a, b| b.iter().all(|x| a.contains(x)))
        && dim(&a.app_categories, &b.app_categories, |a, b| b & !a == 0)
        && dim(&a.app_tenant, &b.app_tenant, |a, b| a == b)
        && dim(&a.hosts, &b.hosts, |a, b| {
            b.iter()
                .all(|x| a.contains(x) || a.contains(&HostPattern::Any))
        })
        && dim(&a.ports, &b.ports, |a, b| {
            b.iter()
                .all(|r| a.iter().any(|ar| ar.0 <= r.0 && r.1 <= ar.1))
        })
        && dim(&a.schemes, &b.schemes, |a, b| b & !a == 0)
        && dim(&a.methods, &b.methods, |a, b| {
            b.iter().all(|x| a.contains(x))
        })
        && dim(&a.paths, &b.paths, |a, b| {
            b.iter()
                .all(|x| a.iter().any(|p| x.starts_with(p.as_str())))
        })
        && dim(&a.time, &b.time, |a, b| a == b)
        && dim(&a.days, &b.days, |a, b| b.0 & !a.0 == 0)
        // User and posture conditions: only identical ones are known to cover.
        && (a.subject.is_empty() || a.subject == b.subject)
}
