//! Rule conditions (`group`, `location`, `category`, `app`, `host`, `port`,
//! `time`, ...) shared by `[[rule]]` and `[[firewall.rule]]`, and the name
//! tables they resolve against.

use std::collections::{HashMap, HashSet};

use komugate_categories::CategorySet;
use toml_edit::TableLike;

use super::cx::{key_span, port_list, Cx};
use crate::diag::suggest;
use crate::pattern::{HostPattern, PortRange, TimeWindow, Weekdays};
use crate::registry::GroupBits;
use crate::*;

pub(super) const COND_KEYS: &[&str] = &[
    "group",
    "groups",
    "device",
    "devices",
    "location",
    "locations",
    "category",
    "categories",
    "app",
    "apps",
    "app_category",
    "app_categories",
    "app_tenant",
    "host",
    "hosts",
    "port",
    "ports",
    "scheme",
    "schemes",
    "method",
    "methods",
    "path",
    "paths",
    "time",
    "days",
];

#[derive(Default)]
pub(super) struct Conds {
    pub groups: Option<GroupBits>,
    pub devices: Option<Vec<String>>,
    pub locations: Option<LocSet>,
    pub categories: Option<(CategorySet, Vec<String>)>,
    pub apps: Option<Vec<usize>>,
    pub app_categories: Option<u16>,
    pub app_tenant: Option<bool>,
    pub hosts: Option<Vec<HostPattern>>,
    pub ports: Option<Vec<PortRange>>,
    pub schemes: Option<u8>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub time: Option<TimeWindow>,
    pub days: Option<Weekdays>,
}

pub(super) struct Names<'a> {
    pub groups: &'a HashMap<String, usize>,
    pub group_names: Vec<&'a str>,
    pub sites: &'a HashMap<String, usize>,
    pub site_names: Vec<&'a str>,
    pub apps: HashMap<String, usize>,
    pub app_names: Vec<&'a str>,
    pub egress: HashMap<String, usize>,
    pub egress_names: Vec<&'a str>,
    pub categories: &'a HashSet<String>,
    pub category_names: Vec<&'a str>,
    pub matcher: &'a komugate_categories::Matcher,
}

/// The locations named by a `location(s)` condition: site names,
/// `any-site` or `offsite`; unknown names are reported.
pub(super) fn locations(
    cx: &mut Cx<'_>,
    names: Vec<(String, super::cx::Span)>,
    sites: &HashMap<String, usize>,
    site_names: &[&str],
) -> LocSet {
    let mut l = LocSet::default();
    let mut cands: Vec<&str> = vec!["any-site", "offsite"];
    cands.extend(site_names.iter().copied());
    for (s, sp) in names {
        match s.as_str() {
            "any-site" => l.any_site = true,
            "offsite" => l.offsite = true,
            _ => match sites.get(&s) {
                Some(i) => l.sites.push(*i),
                None => cx.err(
                    &sp,
                    format!(
                        "unknown site `{s}` (locations are site names, `any-site` or `offsite`){}",
                        suggest(&s, cands.iter().copied())
                    ),
                ),
            },
        }
    }
    l
}

pub(super) fn parse_conds(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    what: &str,
    n: &Names<'_>,
    c: &mut Conds,
) {
    macro_rules! set {
        ($field:ident, $key:expr, $val:expr) => {{
            let v = $val;
            if c.$field.is_some() {
                let sp = key_span(t, $key);
                cx.err(&sp, format!("condition `{}` given twice in {what}", $key));
            } else {
                c.$field = v;
            }
        }};
    }
    if let Some(v) = cx.cond_strs(t, "group", "groups", what) {
        let mut bits = GroupBits::default();
        for (g, sp) in v {
            if let Some(i) = cx.resolve("group", &g, &sp, n.groups, &n.group_names) {
                bits.insert(i);
            }
        }
        set!(groups, "groups", Some(bits));
    }
    if let Some(v) = cx.cond_strs(t, "device", "devices", what) {
        set!(
            devices,
            "devices",
            Some(v.into_iter().map(|(d, _)| d).collect())
        );
    }
    if let Some(v) = cx.cond_strs(t, "location", "locations", what) {
        let l = locations(cx, v, n.sites, &n.site_names);
        set!(locations, "location", Some(l));
    }
    if let Some(v) = cx.cond_strs(t, "category", "categories", what) {
        let mut set = CategorySet::empty();
        let mut names = Vec::new();
        for (cat, sp) in v {
            if !n.categories.contains(&cat) {
                cx.err(
                    &sp,
                    format!(
                        "unknown category `{cat}`{}",
                        suggest(&cat, n.category_names.iter().copied())
                    ),
                );
                continue;
            }
            if let Some(id) = n.matcher.category_id(&cat) {
                set.insert(id);
            }
            names.push(cat);
        }
        set!(categories, "categories", Some((set, names)));
    }
    if let Some(v) = cx.cond_strs(t, "app", "apps", what) {
        let ids = v
            .iter()
            .filter_map(|(a, sp)| cx.resolve("app", a, sp, &n.apps, &n.app_names))
            .collect();
        set!(apps, "apps", Some(ids));
    }
    if let Some(v) = cx.cond_strs(t, "app_category", "app_categories", what) {
        let mut bits = 0u16;
        for (c, sp) in v {
            match crate::casb::category_bit(&c) {
                Some(b) => bits |= b,
                None => cx.err(
                    &sp,
                    format!(
                        "unknown app category `{c}` (one of {}){}",
                        crate::casb::APP_CATEGORIES.join(", "),
                        suggest(&c, crate::casb::APP_CATEGORIES.iter().copied())
                    ),
                ),
            }
        }
        set!(app_categories, "app_category", Some(bits));
    }
    if let Some((v, sp)) = cx.str(t, "app_tenant", what) {
        match v.as_str() {
            "own" => set!(app_tenant, "app_tenant", Some(true)),
            "other" => set!(app_tenant, "app_tenant", Some(false)),
            _ => cx.err(
                &sp,
                format!(
                    "invalid app_tenant `{v}` (use \"own\" or \"other\"){}",
                    suggest(&v, ["own", "other"])
                ),
            ),
        }
    }
    if let Some(v) = cx.cond_strs(t, "host", "hosts", what) {
        let mut pats = Vec::new();
        for (h, sp) in v {
            match HostPattern::parse(&h) {
                Ok(p) => pats.push(p),
                Err(e) => cx.err(&sp, e),
            }
        }
        set!(hosts, "hosts", Some(pats));
    }
    for key in ["port", "ports"] {
        let Some(ranges) = port_list(cx, t, key) else {
            continue;
        };
        let Some(item) = t.get(key) else { continue };
        if ranges.is_empty() && item.as_array().is_some_and(|a| a.is_empty()) {
            cx.err(
                &item.span(),
                format!("`{key}` is empty and would never match"),
            );
        }
        set!(ports, key, Some(ranges));
    }
    if let Some(v) = cx.cond_strs(t, "scheme", "schemes", what) {
        let mut bits = 0u8;
        for (s, sp) in v {
            match s.to_ascii_lowercase().as_str() {
                "http" => bits |= SCHEME_HTTP,
                "https" => bits |= SCHEME_HTTPS,
                "connect" => bits |= SCHEME_CONNECT,
                _ => cx.err(
                    &sp,
                    format!(
                        "invalid scheme `{s}` (use http, https or connect){}",
                        suggest(&s, ["http", "https", "connect"])
                    ),
                ),
            }
        }
        set!(schemes, "scheme", Some(bits));
    }
    if let Some(v) = cx.cond_strs(t, "method", "methods", what) {
        let mut out = Vec::new();
        for (m, sp) in v {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                cx.err(&sp, format!("invalid HTTP method `{m}`"));
            } else {
                out.push(m.to_ascii_uppercase());
            }
        }
        set!(methods, "methods", Some(out));
    }
    if let Some(v) = cx.cond_strs(t, "path", "paths", what) {
        let mut out = Vec::new();
        for (p, sp) in v {
            if !p.starts_with('/') {
                cx.err(&sp, format!("path prefix `{p}` must start with `/`"));
            } else {
                out.push(p);
            }
        }
        set!(paths, "paths", Some(out));
    }
    if let Some((s, sp)) = cx.str(t, "time", what) {
        match TimeWindow::parse(&s) {
            Ok(w) => set!(time, "time", Some(w)),
            Err(e) => cx.err(&sp, e),
        }
    }
    if let Some(v) = cx.strs(t, "days", what) {
        let mut bits = 0u8;
        for (d, sp) in &v {
            match Weekdays::parse_item(d) {
                Ok(w) => bits |= w.0,
                Err(e) => cx.err(sp, e),
            }
        }
        if v.is_empty() {
            let sp = t.get("days").and_then(|i| i.span());
            cx.err(&sp, "`days` is empty and would never match");
        }
        set!(days, "days", Some(Weekdays(bits)));
    }
}
