//! Parsing (toml_edit, keeping spans), validation (all errors collected) and
//! compilation of the policy document.
//!
//! Document outline (see `examples/policy.toml` for a commented example):
//!
//! ```toml
//! version = 1
//! timezone = "+09:00"                  # fixed offset for time windows
//! [contact]   name, phone, email, url  # shown on the block page
//! [defaults]  action = "allow"|"block", message, tunnel = "inspect"|"bypass"
//! [tenant]    microsoft = [guid, domain], google = [domain]
//! [registry]  path = "registry.csv"    # device_id,user,groups
//! [[site]]    name, cidrs = [..], assertion = true|false,
//!             beacon_key = "base64 Ed25519 public key", pac_direct = [..]
//! [pac]       direct = [host patterns, IPs, CIDRs], proxy = "HTTPS host:port"
//! [[group]]   name, aliases = [..], allow/deny = [entries], allow_files/deny_files = [paths]
//! [categories] allow, deny, allow_files, deny_files, expressions = bool
//! [[categories.source]] format = squidguard|hosts|plain|adblock|auto|domainlist|urllist,
//!                       path, only = [..] (squidguard), category (other formats),
//!                       url (downloaded into `path` by the gateway), refresh = "6h",
//!                       sha256 | sha256_url, max_bytes, max_invalid_ratio, max_shrink
//! [[egress]]  name, source = IP, hosts = [patterns]
//! [[app]]     name, hosts = [patterns], title, vendor, category, certifications,
//!             tenant_provider, tenant_hosts, own, upload_paths, download_paths,
//!             download_params, sync_paths, sync_user_agents (a built-in catalog
//!             app of the same name is overridden key by key)
//! [casb]      catalog = true|false, upload_threshold, inspect_max_bytes,
//!             over_cap = "allow"|"block", [[casb.dlp]] name, action,
//!             my_number = true | keywords = [..] | regex = ".."
//! [[rule]]    name, <conditions>, action, message, tunnel, egress, casb, firewall
//!             (conditions include app, app_category, app_tenant = "own"|"other";
//!             a rule with `casb` and no `action` only sets CASB controls)
//! [[ruleset]] name, [[ruleset.rule]] ...
//! [[policy]]  name, groups = [..] (omit = everyone), rulesets = [..], default
//! ```
//!
//! Evaluation order: deny lists → allow lists → the rules of the first
//! `[[policy]]` whose groups include one of the user's groups (or the
//! top-level `[[rule]]`s when there is no `[[policy]]`), first match wins →
//! the policy's `default` or `[defaults] action`.

use crate::diag::{suggest, Diagnostic, PolicyErrors, Sink};
use crate::pattern::{parse_offset, HostPattern, PortRange, TimeWindow, Weekdays};
use crate::registry::{parse_registry, GroupBits, Registry, MAX_GROUPS};
use crate::*;
use komugate_categories::{CategorySet, ListFormat, MatcherBuilder};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use toml_edit::{ImDocument, Item, TableLike, Value};

type Span = Option<Range<usize>>;

/// What `check` reports for a valid policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub file: PathBuf,
    pub sites: usize,
    pub groups: usize,
    pub devices: usize,
    pub apps: usize,
    pub egress_pools: usize,
    pub rules: usize,
    pub policies: Vec<String>,
    pub categories: Vec<String>,
    pub list_entries: usize,
    pub import: ImportSummary,
    pub source_files: Vec<PathBuf>,
    pub digest: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: OK (generation {})",
            self.file.display(),
            self.digest
        )?;
        writeln!(
            f,
            "  {} sites, {} groups, {} devices, {} apps, {} egress pools, {} rules",
            self.sites, self.groups, self.devices, self.apps, self.egress_pools, self.rules
        )?;
        if !self.policies.is_empty() {
            writeln!(f, "  policies: {}", self.policies.join(", "))?;
        }
        writeln!(f, "  categories: {}", self.categories.join(", "))?;
        writeln!(
            f,
            "  lists: {} files, {} domains, {} urls, {} invalid lines skipped",
            self.import.files, self.import.domains, self.import.urls, self.import.invalid_lines
        )?;
        for s in &self.import.sources {
            for e in &s.first_errors {
                writeln!(f, "  warning: {e}")?;
            }
        }
        Ok(())
    }
}

/// Validates a policy file and everything it includes; `Err` lists every problem.
pub fn check(path: &Path) -> Result<Summary, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![Diagnostic::new(
            path,
            0,
            0,
            format!("cannot read policy file: {e}"),
        )])
    })?;
    compile(&text, path).map(|(_, s)| s)
}

const TOP_KEYS: &[&str] = &[
    "version",
    "timezone",
    "contact",
    "defaults",
    "tenant",
    "registry",
    "site",
    "pac",
    "group",
    "categories",
    "egress",
    "app",
    "rule",
    "ruleset",
    "policy",
    "casb",
    "firewall",
];
const COND_KEYS: &[&str] = &[
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
const RULE_KEYS: &[&str] = &[
    "name", "when", "action", "message", "tunnel", "egress", "casb", "firewall",
];

fn key_span(t: &dyn TableLike, k: &str) -> Span {
    t.get_key_value(k).and_then(|(k, _)| k.span())
}

fn first_key_span(t: &dyn TableLike) -> Span {
    t.iter().next().and_then(|(k, _)| key_span(t, k))
}

struct Cx<'t> {
    s: Sink<'t>,
    base: PathBuf,
    files: Vec<PathBuf>,
}

impl<'t> Cx<'t> {
    fn err(&mut self, span: &Span, msg: impl Into<String>) {
        self.s.err(span, msg)
    }

    fn keys(&mut self, t: &dyn TableLike, what: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k) {
                let sp = key_span(t, k);
                self.err(
                    &sp,
                    format!(
                        "unknown key `{k}` in {what}{}",
                        suggest(k, allowed.iter().copied())
                    ),
                );
            }
        }
    }

    fn str(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<(String, Span)> {
        let item = t.get(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), item.span())),
            None => {
                self.err(&item.span(), format!("`{key}` in {what} must be a string"));
                None
            }
        }
    }

    fn req_str(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        what: &str,
        tspan: &Span,
    ) -> Option<(String, Span)> {
        if t.get(key).is_none() {
            self.err(tspan, format!("missing `{key}` in {what}"));
            return None;
        }
        self.str(t, key, what)
    }

    fn bool(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<bool> {
        let item = t.get(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(
                    &item.span(),
                    format!("`{key}` in {what} must be true or false"),
                );
                None
            }
        }
    }

    /// A string or an array of strings.
    fn strs(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<Vec<(String, Span)>> {
        let item = t.get(key)?;
        if let Some(s) = item.as_str() {
            return Some(vec![(s.to_string(), item.span())]);
        }
        let Some(arr) = item.as_array() else {
            self.err(
                &item.span(),
                format!("`{key}` in {what} must be a string or an array of strings"),
            );
            return None;
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            match v.as_str() {
                Some(s) => out.push((s.to_string(), v.span())),
                None => self.err(
                    &v.span(),
                    format!("`{key}` in {what} must contain only strings"),
                ),
            }
        }
        Some(out)
    }

    /// `singular` or `plural` (not both), non-empty.
    fn cond_strs(
        &mut self,
        t: &dyn TableLike,
        singular: &str,
        plural: &str,
        what: &str,
    ) -> Option<Vec<(String, Span)>> {
        let a = self.strs(t, singular, what);
        let b = self.strs(t, plural, what);
        if a.is_some() && b.is_some() {
            let sp = key_span(t, plural);
            self.err(
                &sp,
                format!("use either `{singular}` or `{plural}` in {what}, not both"),
            );
        }
        let v = a.or(b)?;
        if v.is_empty() {
            let k = if t.contains_key(singular) {
                singular
            } else {
                plural
            };
            let sp = t.get(k).and_then(|i| i.span());
            self.err(
                &sp,
                format!(
                    "`{k}` in {what} is empty and would never match; remove it to match anything"
                ),
            );
            return None;
        }
        Some(v)
    }

    /// Array of tables (`[[x]]` or `x = [{..}]`).
    fn tables<'d>(
        &mut self,
        t: &'d dyn TableLike,
        key: &str,
        what: &str,
    ) -> Vec<(&'d dyn TableLike, Span)> {
        let Some(item) = t.get(key) else {
            return vec![];
        };
        match item {
            Item::ArrayOfTables(a) => a
                .iter()
                .map(|tb| {
                    let sp = tb.span().or_else(|| first_key_span(tb));
                    (tb as &dyn TableLike, sp)
                })
                .collect(),
            Item::Value(Value::Array(arr)) => {
                let mut out = Vec::new();
                for v in arr.iter() {
                    match v.as_inline_table() {
                        Some(it) => out.push((it as &dyn TableLike, v.span())),
                        None => self.err(
                            &v.span(),
                            format!("`{key}` must be an array of tables ([[{what}]])"),
                        ),
                    }
                }
                out
            }
            other => {
                self.err(
                    &other.span().or_else(|| key_span(t, key)),
                    format!("`{key}` must be an array of tables ([[{what}]])"),
                );
                vec![]
            }
        }
    }

    fn table<'d>(&mut self, t: &'d dyn TableLike, key: &str) -> Option<(&'d dyn TableLike, Span)> {
        let item = t.get(key)?;
        match item.as_table_like() {
            Some(tl) => Some((tl, item.span().or_else(|| key_span(t, key)))),
            None => {
                self.err(
                    &item.span().or_else(|| key_span(t, key)),
                    format!("`{key}` must be a table"),
                );
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Reads an included file, reporting a missing one at `span`.
    fn read(&mut self, rel: &str, span: &Span) -> Option<(PathBuf, String)> {
        let p = self.path(rel);
        match std::fs::read(&p) {
            Ok(bytes) => {
                self.files.push(p.clone());
                match String::from_utf8(bytes) {
                    Ok(s) => Some((p, s)),
                    Err(e) => {
                        self.err(
                            span,
                            format!("`{rel}` is not valid UTF-8 ({})", e.utf8_error()),
                        );
                        None
                    }
                }
            }
            Err(e) => {
                self.err(span, format!("cannot read `{rel}` ({}): {e}", p.display()));
                None
            }
        }
    }

    fn action(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<Action> {
        let (s, sp) = self.str(t, key, what)?;
        match s.as_str() {
            "allow" => Some(Action::Allow),
            "block" | "deny" => Some(Action::Block),
            _ => {
                self.err(
                    &sp,
                    format!(
                        "invalid {key} `{s}` in {what} (use \"allow\" or \"block\"){}",
                        suggest(&s, ["allow", "block"])
                    ),
                );
                None
            }
        }
    }

    fn tunnel(&mut self, t: &dyn TableLike, what: &str) -> Option<TunnelMode> {
        let (s, sp) = self.str(t, "tunnel", what)?;
        match s.as_str() {
            "inspect" => Some(TunnelMode::Inspect),
            "bypass" => Some(TunnelMode::Bypass),
            _ => {
                self.err(
                    &sp,
                    format!(
                        "invalid tunnel `{s}` in {what} (use \"inspect\" or \"bypass\"){}",
                        suggest(&s, ["inspect", "bypass"])
                    ),
                );
                None
            }
        }
    }

    /// Resolve a name against a list, reporting near misses.
    fn resolve(
        &mut self,
        kind: &str,
        name: &str,
        span: &Span,
        names: &HashMap<String, usize>,
        candidates: &[&str],
    ) -> Option<usize> {
        match names.get(name) {
            Some(i) => Some(*i),
            None => {
                self.err(
                    span,
                    format!(
                        "unknown {kind} `{name}`{}",
                        suggest(name, candidates.iter().copied())
                    ),
                );
                None
            }
        }
    }
}

fn add_entry(b: &mut MatcherBuilder, cat: &str, entry: &str) -> Result<(), String> {
    let e = entry.trim();
    let e = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .unwrap_or(e);
    let e = e
        .strip_prefix("*.")
        .or_else(|| e.strip_prefix('.'))
        .unwrap_or(e);
    if e.contains('/') {
        b.add_url(cat, e)
    } else {
        b.add_domain(cat, e)
    }
}

struct ListSpec {
    cat: String,
    entries: Vec<(String, Span)>,
    files: Vec<(String, Span)>,
}

/// Adds inline entries and list files to the builder; problems are errors
/// (these are the board's own lists, unlike third-party blocklists).
fn add_lists(cx: &mut Cx<'_>, b: &mut MatcherBuilder, spec: &ListSpec) {
    for (e, sp) in &spec.entries {
        if let Err(msg) = add_entry(b, &spec.cat, e) {
            cx.err(sp, format!("invalid list entry `{e}`: {msg}"));
        }
    }
    for (f, sp) in &spec.files {
        if let Some((p, text)) = cx.read(f, sp) {
            let rep = b.add_list_text(&spec.cat, &p, &text, ListFormat::Auto);
            for le in rep.first_errors.iter() {
                cx.s.diags
                    .push(Diagnostic::new(&le.file, le.line, 1, le.reason.clone()));
            }
            if rep.invalid_lines > rep.first_errors.len() {
                let more = rep.invalid_lines - rep.first_errors.len();
                cx.err(sp, format!("`{f}`: {more} more invalid lines"));
            }
        }
    }
}

fn list_spec(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    what: &str,
    kind: &str,
    cat: String,
) -> Option<ListSpec> {
    let entries = cx.strs(t, kind, what).unwrap_or_default();
    let files = cx
        .strs(t, &format!("{kind}_files"), what)
        .unwrap_or_default();
    if entries.is_empty() && files.is_empty() {
        return None;
    }
    Some(ListSpec {
        cat,
        entries,
        files,
    })
}

#[derive(Default)]
struct Conds {
    groups: Option<GroupBits>,
    devices: Option<Vec<String>>,
    locations: Option<LocSet>,
    categories: Option<(CategorySet, Vec<String>)>,
    apps: Option<Vec<usize>>,
    app_categories: Option<u16>,
    app_tenant: Option<bool>,
    hosts: Option<Vec<HostPattern>>,
    ports: Option<Vec<PortRange>>,
    schemes: Option<u8>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    time: Option<TimeWindow>,
    days: Option<Weekdays>,
}

struct Names<'a> {
    groups: &'a HashMap<String, usize>,
    group_names: Vec<&'a str>,
    sites: &'a HashMap<String, usize>,
    site_names: Vec<&'a str>,
    apps: HashMap<String, usize>,
    app_names: Vec<&'a str>,
    egress: HashMap<String, usize>,
    egress_names: Vec<&'a str>,
    categories: &'a HashSet<String>,
    category_names: Vec<&'a str>,
    matcher: &'a komugate_categories::Matcher,
}

fn parse_conds(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str, n: &Names<'_>, c: &mut Conds) {
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
        let mut l = LocSet::default();
        let mut cands: Vec<&str> = vec!["any-site", "offsite"];
        cands.extend(n.site_names.iter().copied());
        for (s, sp) in v {
            match s.as_str() {
                "any-site" => l.any_site = true,
                "offsite" => l.offsite = true,
                _ => match n.sites.get(&s) {
                    Some(i) => l.sites.push(*i),
                    None => cx.err(&sp, format!("unknown site `{s}` (locations are site names, `any-site` or `offsite`){}", suggest(&s, cands.iter().copied()))),
                },
            }
        }
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

fn parse_rule(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    tspan: &Span,
    n: &Names<'_>,
) -> Option<(Rule, Span)> {
    let mut allowed: Vec<&str> = RULE_KEYS.to_vec();
    allowed.extend_from_slice(COND_KEYS);
    let name = cx.req_str(t, "name", "[[rule]]", tspan);
    let what = match &name {
        Some((n, _)) => format!("rule `{n}`"),
        None => "[[rule]]".to_string(),
    };
    cx.keys(t, &what, &allowed);
    let mut c = Conds::default();
    parse_conds(cx, t, &what, n, &mut c);
    if let Some((w, _)) = cx.table(t, "when") {
        cx.keys(w, &format!("`when` of {what}"), COND_KEYS);
        parse_conds(cx, w, &what, n, &mut c);
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

const FIREWALL_KEYS: &[&str] = &["web_ports", "default", "log", "rule"];
const FIREWALL_RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "cidr",
    "cidrs",
    "host",
    "hosts",
    "port",
    "ports",
    "protocol",
    "group",
    "groups",
    "device",
    "devices",
    "location",
    "locations",
    "time",
    "days",
    "action",
    "log",
];

/// One port, a "low-high" string, or an array of them.
fn port_list(cx: &mut Cx<'_>, t: &dyn TableLike, key: &str) -> Option<Vec<PortRange>> {
    let item = t.get(key)?;
    let vals: Vec<(Option<Value>, Span)> = match item.as_array() {
        Some(a) => a.iter().map(|v| (Some(v.clone()), v.span())).collect(),
        None => vec![(item.as_value().cloned(), item.span())],
    };
    let mut ranges = Vec::new();
    for (v, sp) in vals {
        let r = match &v {
            Some(Value::Integer(i)) => {
                let i = *i.value();
                if (1..=65535).contains(&i) {
                    Ok(PortRange(i as u16, i as u16))
                } else {
                    Err(format!("invalid port {i} (1-65535)"))
                }
            }
            Some(Value::String(s)) => PortRange::parse(s.value()),
            _ => Err(format!(
                "`{key}` must be a port number, a \"low-high\" range, or an array of them"
            )),
        };
        match r {
            Ok(r) => ranges.push(r),
            Err(e) => cx.err(&sp, e),
        }
    }
    Some(ranges)
}

/// `[firewall]`: web ports, default for non-web ports, ordered `[[firewall.rule]]`.
fn firewall_section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
    n: &Names<'_>,
) -> Option<FirewallSettings> {
    let (ft, _) = cx.table(root, "firewall")?;
    cx.keys(ft, "[firewall]", FIREWALL_KEYS);
    let web_ports = port_list(cx, ft, "web_ports").unwrap_or_else(|| {
        FIREWALL_WEB_PORTS
            .iter()
            .map(|p| PortRange(*p, *p))
            .collect()
    });
    let default_allow = match cx.str(ft, "default", "[firewall]") {
        None => false,
        Some((s, sp)) => match s.as_str() {
            "allow" => true,
            "deny" | "block" => false,
            _ => {
                cx.err(
                    &sp,
                    format!(
                        "invalid default `{s}` in [firewall] (use \"allow\" or \"deny\"){}",
                        suggest(&s, ["allow", "deny"])
                    ),
                );
                false
            }
        },
    };
    let default_log = cx.bool(ft, "log", "[firewall]").unwrap_or(true);
    let mut rules = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (t, tsp) in cx.tables(ft, "rule", "firewall.rule") {
        let name = cx.req_str(t, "name", "[[firewall.rule]]", &tsp);
        let what = match &name {
            Some((n, _)) => format!("firewall rule `{n}`"),
            None => "[[firewall.rule]]".to_string(),
        };
        cx.keys(t, &what, FIREWALL_RULE_KEYS);
        let mut c = Conds::default();
        parse_conds(cx, t, &what, n, &mut c);
        let cidrs = match cx.cond_strs(t, "cidr", "cidrs", &what) {
            Some(v) => {
                let mut nets = Vec::new();
                for (c, sp) in v {
                    let parsed = c
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
                    match parsed {
                        Ok(net) => nets.push(net.trunc()),
                        Err(_) => cx.err(
                            &sp,
                            format!("invalid CIDR `{c}` in {what} (e.g. \"10.0.0.0/8\" or \"2001:db8::/32\")"),
                        ),
                    }
                }
                Some(nets)
            }
            None => None,
        };
        if let Some((p, sp)) = cx.str(t, "protocol", &what) {
            match p.to_ascii_lowercase().as_str() {
                "tcp" | "any" => {}
                "udp" | "icmp" | "sctp" => cx.err(
                    &sp,
                    format!("protocol `{p}` in {what} is not carried by komugate (only TCP flows are tunnelled); use \"tcp\" or \"any\""),
                ),
                _ => cx.err(
                    &sp,
                    format!(
                        "invalid protocol `{p}` in {what} (use \"tcp\" or \"any\"){}",
                        suggest(&p, ["tcp", "any"])
                    ),
                ),
            }
        }
        let allow = if t.contains_key("action") {
            match cx.str(t, "action", &what) {
                Some((a, sp)) => match a.as_str() {
                    "allow" => true,
                    "deny" | "block" => false,
                    _ => {
                        cx.err(
                            &sp,
                            format!(
                                "invalid action `{a}` in {what} (use \"allow\" or \"deny\"){}",
                                suggest(&a, ["allow", "deny"])
                            ),
                        );
                        false
                    }
                },
                None => false,
            }
        } else {
            cx.err(
                &tsp,
                format!("missing `action` in {what} (\"allow\" or \"deny\")"),
            );
            false
        };
        let log = cx.bool(t, "log", &what).unwrap_or(default_log);
        let Some((name, nspan)) = name else { continue };
        let origin = cx.s.at(&nspan);
        if let Some(first) = seen.get(&name) {
            cx.err(
                &nspan,
                format!("duplicate firewall rule name `{name}` (first defined at {first})"),
            );
            continue;
        }
        seen.insert(name.clone(), origin.clone());
        rules.push(FirewallRule {
            cond: Rule {
                name,
                origin,
                groups: c.groups,
                devices: c.devices,
                locations: c.locations,
                categories: None,
                category_names: None,
                apps: None,
                app_categories: None,
                app_tenant: None,
                hosts: c.hosts,
                ports: c.ports,
                schemes: None,
                methods: None,
                paths: None,
                time: c.time,
                days: c.days,
                action: if allow { Action::Allow } else { Action::Block },
                message: None,
                tunnel: None,
                egress: None,
                casb: None,
                firewall: None,
                decides: true,
            },
            cidrs,
            allow,
            log,
        });
    }
    Some(FirewallSettings {
        web_ports,
        default_allow,
        default_log,
        rules,
    })
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
}

/// Does `a` match every request `b` matches? (sound, not complete)
fn covers(a: &Rule, b: &Rule) -> bool {
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
}

pub(crate) fn compile(text: &str, file: &Path) -> Result<(Policy, Summary), PolicyErrors> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Cx {
        s: Sink::new(file, text),
        base,
        files: vec![file.to_path_buf()],
    };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.message().trim().to_string();
            cx.err(&e.span(), format!("TOML syntax error: {msg}"));
            return Err(PolicyErrors(cx.s.diags));
        }
    };
    let root: &dyn TableLike = doc.as_table();
    cx.keys(root, "the policy document", TOP_KEYS);

    if let Some(item) = root.get("version") {
        if item.as_integer() != Some(1) {
            cx.err(
                &item.span(),
                "unsupported `version` (this komugate understands version = 1)",
            );
        }
    }
    let mut tz_offset = 9 * 3600;
    if let Some((tz, sp)) = cx.str(root, "timezone", "the policy document") {
        match parse_offset(&tz) {
            Ok(o) => tz_offset = o,
            Err(e) => cx.err(&sp, e),
        }
    }

    // [contact]
    let mut contact = Contact::default();
    if let Some((t, _)) = cx.table(root, "contact") {
        cx.keys(t, "[contact]", &["name", "phone", "email", "url"]);
        contact.name = cx.str(t, "name", "[contact]").map(|x| x.0);
        contact.phone = cx.str(t, "phone", "[contact]").map(|x| x.0);
        contact.email = cx.str(t, "email", "[contact]").map(|x| x.0);
        contact.url = cx.str(t, "url", "[contact]").map(|x| x.0);
    }

    // [defaults]
    let (mut default_action, mut default_message, mut default_tunnel) = (Action::Allow, None, None);
    if let Some((t, _)) = cx.table(root, "defaults") {
        cx.keys(t, "[defaults]", &["action", "message", "tunnel"]);
        if let Some(a) = cx.action(t, "action", "[defaults]") {
            default_action = a;
        }
        default_message = cx.str(t, "message", "[defaults]").map(|x| x.0);
        default_tunnel = cx.tunnel(t, "[defaults]");
    }

    // [tenant]
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
                let is_guid = v.len() == 36
                    && v.chars().enumerate().all(|(i, ch)| {
                        if [8, 13, 18, 23].contains(&i) {
                            ch == '-'
                        } else {
                            ch.is_ascii_hexdigit()
                        }
                    });
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

    // [[site]]
    let mut sites: Vec<Site> = Vec::new();
    let mut site_index: HashMap<String, usize> = HashMap::new();
    let mut site_nets = Vec::new();
    let mut seen_nets: HashMap<ipnet::IpNet, String> = HashMap::new();
    for (t, tsp) in cx.tables(root, "site", "site") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[site]]", &tsp) else {
            continue;
        };
        let what = format!("site `{name}`");
        cx.keys(
            t,
            &what,
            &[
                "name",
                "cidrs",
                "assertion",
                "description",
                "beacon_key",
                "pac_direct",
            ],
        );
        let assertion = cx.bool(t, "assertion", &what).unwrap_or(false);
        let beacon_key = match cx.str(t, "beacon_key", &what) {
            Some((k, sp)) => match decode_key32(&k) {
                Some(key) => Some(key),
                None => {
                    cx.err(
                        &sp,
                        format!(
                            "`beacon_key` of {what} is not a base64 Ed25519 public key (32 bytes); \
                             paste the line printed by `komugate pki beacon-key`"
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let mut pac_direct = Vec::new();
        for (d, sp) in cx.strs(t, "pac_direct", &what).unwrap_or_default() {
            match check_pac_direct(&d) {
                Ok(()) => pac_direct.push(d),
                Err(e) => cx.err(&sp, format!("`pac_direct` of {what}: {e}")),
            }
        }
        let mut cidrs = Vec::new();
        for (c, sp) in cx.strs(t, "cidrs", &what).unwrap_or_default() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) if n.trunc() != n => cx.err(
                    &sp,
                    format!(
                        "CIDR `{c}` has host bits set (did you mean `{}`?)",
                        n.trunc()
                    ),
                ),
                Ok(n) => {
                    if let Some(other) = seen_nets.get(&n) {
                        cx.err(&sp, format!("CIDR `{c}` is already used by site `{other}`"));
                    }
                    seen_nets.insert(n, name.clone());
                    cidrs.push(n);
                }
                Err(_) => cx.err(
                    &sp,
                    format!("invalid CIDR `{c}` in {what} (e.g. \"203.0.113.16/29\")"),
                ),
            }
        }
        if cidrs.is_empty() && !assertion && !t.contains_key("cidrs") {
            cx.err(
                &tsp,
                format!(
                    "{what} has no `cidrs`; give its address ranges or mark it `assertion = true`"
                ),
            );
        }
        if site_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate site name `{name}`"));
            continue;
        }
        let i = sites.len();
        site_index.insert(name.clone(), i);
        site_nets.extend(cidrs.iter().map(|n| (*n, i)));
        sites.push(Site {
            name,
            cidrs,
            assertion,
            beacon_key,
            pac_direct,
        });
    }

    // [pac]
    let mut pac = Pac::default();
    if let Some((t, _)) = cx.table(root, "pac") {
        cx.keys(t, "[pac]", &["direct", "proxy"]);
        for (d, sp) in cx.strs(t, "direct", "[pac]").unwrap_or_default() {
            match check_pac_direct(&d) {
                Ok(()) => pac.direct.push(d),
                Err(e) => cx.err(&sp, format!("`direct` in [pac]: {e}")),
            }
        }
        if let Some((p, sp)) = cx.str(t, "proxy", "[pac]") {
            match check_pac_proxy(&p) {
                Ok(()) => pac.proxy = Some(p),
                Err(e) => cx.err(&sp, format!("`proxy` in [pac]: {e}")),
            }
        }
    }

    // [[group]]
    let mut builder = MatcherBuilder::new();
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
        let allow = list_spec(&mut cx, t, &what, "allow", format!("@allow:{name}"));
        let deny = list_spec(&mut cx, t, &what, "deny", format!("@deny:{name}"));
        if allow.is_some() || deny.is_some() {
            group_lists_spec.push((i, allow, deny));
        }
        groups.push(Group { name, aliases });
    }
    let group_names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();

    // [registry]
    let mut registry = Registry::default();
    if let Some((t, tsp)) = cx.table(root, "registry") {
        cx.keys(t, "[registry]", &["path"]);
        if let Some((p, sp)) = cx.req_str(t, "path", "[registry]", &tsp) {
            if let Some((path, text)) = cx.read(&p, &sp) {
                registry =
                    parse_registry(&path, &text, &group_index, &group_names, &mut cx.s.diags);
            }
        }
    }

    // [[egress]]
    let mut egress: Vec<EgressPool> = Vec::new();
    let mut egress_index = HashMap::new();
    for (t, tsp) in cx.tables(root, "egress", "egress") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[egress]]", &tsp) else {
            continue;
        };
        let what = format!("egress pool `{name}`");
        cx.keys(t, &what, &["name", "source", "hosts", "description"]);
        let source = match cx.req_str(t, "source", &what, &tsp) {
            Some((s, sp)) => match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    cx.err(&sp, format!("invalid IP address `{s}` in {what}"));
                    None
                }
            },
            None => None,
        };
        let (hosts, patterns) = host_list(&mut cx, t, &what);
        if egress_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate egress pool `{name}`"));
            continue;
        }
        if let Some(source) = source {
            egress_index.insert(name.clone(), egress.len());
            egress.push(EgressPool {
                name,
                source,
                hosts,
                patterns,
            });
        }
    }

    // [casb] (the catalog switch is needed before [[app]])
    let casb_table = cx.table(root, "casb");
    let use_catalog = match casb_table {
        Some((ct, _)) => cx.bool(ct, "catalog", "[casb]").unwrap_or(true),
        None => true,
    };
    let mut catalog_apps: Vec<App> = Vec::new();
    let mut catalog = None;
    if use_catalog {
        match crate::casb::parse_catalog(crate::casb::BUILTIN_CATALOG).and_then(|c| {
            let apps = c
                .app
                .iter()
                .map(catalog_app)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((c, apps))
        }) {
            Ok((c, a)) => {
                catalog_apps = a;
                catalog = Some(c);
            }
            Err(e) => cx.err(&None, e),
        }
    }

    // [[app]]: policy apps first (document order), then the remaining catalog apps.
    let mut apps: Vec<App> = Vec::new();
    let mut app_index = HashMap::new();
    for (t, tsp) in cx.tables(root, "app", "app") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[app]]", &tsp) else {
            continue;
        };
        let what = format!("app `{name}`");
        cx.keys(t, &what, APP_KEYS);
        let base = catalog_apps
            .iter()
            .position(|a| a.name == name)
            .map(|i| catalog_apps.remove(i));
        let from_catalog = base.is_some();
        let mut app = base.unwrap_or_else(|| App {
            name: name.clone(),
            ..Default::default()
        });
        if t.contains_key("hosts") {
            let (hosts, patterns) = host_list(&mut cx, t, &what);
            app.hosts = hosts;
            app.patterns = patterns;
        } else if !from_catalog {
            cx.err(&tsp, format!("{what} has no `hosts`"));
        }
        override_app(&mut cx, t, &what, &mut app);
        if !from_catalog && app.category.is_empty() {
            app.category = "other".into();
        }
        if app_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate app `{name}`"));
            continue;
        }
        app_index.insert(name.clone(), apps.len());
        apps.push(app);
    }
    for app in catalog_apps {
        app_index.insert(app.name.clone(), apps.len());
        apps.push(app);
    }
    for app in &mut apps {
        app.own_patterns = app
            .tenant_hosts
            .iter()
            .flat_map(|t| {
                tenants
                    .sharepoint
                    .iter()
                    .map(move |n| t.replace("{tenant}", n))
            })
            .filter_map(|h| HostPattern::parse(&h).ok())
            .collect();
    }
    let casb_settings = casb_section(&mut cx, casb_table, catalog.as_ref(), &tenants);

    // [categories]
    let mut declared: HashSet<String> = HashSet::new();
    let mut import = ImportSummary::default();
    let mut global_lists: Vec<ListSpec> = Vec::new();
    let mut remote_sources: Vec<RemoteSource> = Vec::new();
    if let Some((ct, _)) = cx.table(root, "categories") {
        cx.keys(
            ct,
            "[categories]",
            &[
                "source",
                "allow",
                "deny",
                "allow_files",
                "deny_files",
                "expressions",
            ],
        );
        if let Some(e) = cx.bool(ct, "expressions", "[categories]") {
            builder.enable_expressions(e);
        }
        for (t, tsp) in cx.tables(ct, "source", "categories.source") {
            let what = "[[categories.source]]";
            cx.keys(
                t,
                what,
                &[
                    "format",
                    "path",
                    "only",
                    "category",
                    "url",
                    "refresh",
                    "sha256",
                    "sha256_url",
                    "max_bytes",
                    "max_invalid_ratio",
                    "max_shrink",
                ],
            );
            let format = cx.req_str(t, "format", what, &tsp);
            let path = cx.req_str(t, "path", what, &tsp);
            let only = cx.strs(t, "only", what);
            let category = cx.str(t, "category", what);
            let remote = remote_source(&mut cx, t, what);
            let (Some((format, fsp)), Some((rel, psp))) = (format, path) else {
                continue;
            };
            let abs = cx.path(&rel);
            let mut rep = SourceReport {
                path: abs.clone(),
                format: format.clone(),
                ..Default::default()
            };
            let mut remote = remote.map(|mut r| {
                r.path = abs.clone();
                r.format = format.clone();
                r.only = only
                    .as_ref()
                    .map(|o| o.iter().map(|(s, _)| s.clone()).collect());
                r.category = category.as_ref().map(|(c, _)| c.clone());
                r.present = abs.exists();
                r
            });
            if let Some(r) = remote.as_mut().filter(|r| !r.present) {
                // Not downloaded yet: the source is empty (its categories are
                // declared so rules naming them validate) until the gateway's
                // first download, which it starts at once.
                let names: Vec<String> = if format == "squidguard" {
                    r.only.clone().unwrap_or_default()
                } else {
                    r.category.clone().into_iter().collect()
                };
                declared.extend(names.iter().cloned());
                rep.categories = names;
                rep.first_errors.push(format!(
                    "`{rel}` ({}) does not exist yet: the source is empty until it is downloaded from {}",
                    abs.display(),
                    r.url
                ));
                remote_sources.push(r.clone());
                import.sources.push(rep);
                continue;
            }
            match format.as_str() {
                "squidguard" => {
                    if let Some((_, sp)) = &category {
                        cx.err(sp, "`category` is not used with format = \"squidguard\" (categories are the directory names; use `only` to pick some)");
                    }
                    let mut dirs: Vec<String> = match std::fs::read_dir(&abs) {
                        Ok(rd) => rd
                            .flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect(),
                        Err(e) => {
                            cx.err(
                                &psp,
                                format!("cannot read directory `{rel}` ({}): {e}", abs.display()),
                            );
                            continue;
                        }
                    };
                    dirs.sort();
                    let mut selected = Vec::new();
                    if let Some(only) = &only {
                        for (o, sp) in only {
                            if dirs.contains(o) {
                                selected.push(o.clone());
                            } else {
                                cx.err(
                                    sp,
                                    format!(
                                        "unknown category `{o}` in `{rel}`{}",
                                        suggest(o, dirs.iter().map(|s| s.as_str()))
                                    ),
                                );
                            }
                        }
                    } else {
                        selected = dirs.clone();
                    }
                    for c in &selected {
                        for f in ["domains", "urls", "expressions"] {
                            let p = abs.join(c).join(f);
                            if p.is_file() {
                                cx.files.push(p);
                            }
                        }
                        declared.insert(c.clone());
                    }
                    let only_names: Option<Vec<String>> = only.as_ref().map(|_| selected.clone());
                    match builder.add_squidguard_dir(&abs, only_names.as_deref()) {
                        Ok(r) => fill_report(&mut rep, &r),
                        Err(e) => cx.err(&psp, format!("cannot import `{rel}`: {e}")),
                    }
                    rep.categories = selected;
                }
                "hosts" | "plain" | "adblock" | "auto" | "domainlist" | "urllist" => {
                    if only.is_some() {
                        let sp = key_span(t, "only");
                        cx.err(&sp, format!("`only` is for format = \"squidguard\"; a {format} list is one category"));
                    }
                    let Some((cat, csp)) = category.clone() else {
                        cx.err(&tsp, format!("missing `category` in {what} (format = \"{format}\" needs the category name)"));
                        continue;
                    };
                    if cat.starts_with('@') || cat.is_empty() {
                        cx.err(&csp, format!("invalid category name `{cat}`"));
                        continue;
                    }
                    declared.insert(cat.clone());
                    rep.categories = vec![cat.clone()];
                    if format == "domainlist" || format == "urllist" {
                        if let Some((p, text)) = cx.read(&rel, &psp) {
                            rep.files = 1;
                            for (i, line) in text.lines().enumerate() {
                                let l = line.trim();
                                if l.is_empty() || l.starts_with('#') {
                                    continue;
                                }
                                let r = if format == "urllist" {
                                    builder.add_url(&cat, l)
                                } else {
                                    builder.add_domain(&cat, l)
                                };
                                match r {
                                    Ok(()) if format == "urllist" => rep.urls += 1,
                                    Ok(()) => rep.domains += 1,
                                    Err(e) => {
                                        rep.invalid_lines += 1;
                                        if rep.first_errors.len() < 10 {
                                            rep.first_errors.push(format!(
                                                "{}:{}: {e}",
                                                p.display(),
                                                i + 1
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                    } else {
                        let lf = match format.as_str() {
                            "hosts" => ListFormat::Hosts,
                            "plain" => ListFormat::Plain,
                            "adblock" => ListFormat::Adblock,
                            _ => ListFormat::Auto,
                        };
                        if abs.is_file() {
                            cx.files.push(abs.clone());
                            match builder.add_list_file(&cat, &abs, lf) {
                                Ok(r) => fill_report(&mut rep, &r),
                                Err(e) => cx.err(&psp, format!("cannot import `{rel}`: {e}")),
                            }
                        } else {
                            cx.err(
                                &psp,
                                format!("cannot read `{rel}` ({}): no such file", abs.display()),
                            );
                        }
                    }
                }
                _ => {
                    cx.err(&fsp, format!(
                        "unknown list format `{format}` (use squidguard, hosts, plain, adblock, auto, domainlist or urllist){}",
                        suggest(&format, ["squidguard", "hosts", "plain", "adblock", "auto", "domainlist", "urllist"])
                    ));
                    continue;
                }
            }
            if let Some(mut r) = remote {
                r.entries = rep.domains + rep.urls + rep.expressions;
                remote_sources.push(r);
            }
            import.files += rep.files;
            import.domains += rep.domains;
            import.urls += rep.urls;
            import.expressions += rep.expressions;
            import.invalid_lines += rep.invalid_lines;
            import.sources.push(rep);
        }
        if let Some(s) = list_spec(&mut cx, ct, "[categories]", "allow", "@allow".into()) {
            global_lists.push(s);
        }
        if let Some(s) = list_spec(&mut cx, ct, "[categories]", "deny", "@deny".into()) {
            global_lists.push(s);
        }
    }
    for s in &global_lists {
        add_lists(&mut cx, &mut builder, s);
    }
    for (_, a, d) in &group_lists_spec {
        for s in [a, d].into_iter().flatten() {
            add_lists(&mut cx, &mut builder, s);
        }
    }
    let matcher = match builder.build() {
        Ok(m) => m,
        Err(e) => {
            cx.err(&None, format!("cannot build the category matcher: {e}"));
            return Err(PolicyErrors(cx.s.diags));
        }
    };
    let mask = |name: &str| {
        let mut s = CategorySet::empty();
        if let Some(id) = matcher.category_id(name) {
            s.insert(id);
        }
        s
    };
    let mut visible = CategorySet::empty();
    for (i, n) in matcher.category_names().iter().enumerate() {
        if !n.starts_with('@') {
            visible.insert(i as komugate_categories::CategoryId);
            declared.insert(n.clone());
        }
    }
    let allow_global = mask("@allow");
    let deny_global = mask("@deny");
    let group_lists: Vec<(usize, CategorySet, CategorySet)> = group_lists_spec
        .iter()
        .map(|(g, _, _)| {
            let n = &groups[*g].name;
            (
                *g,
                mask(&format!("@allow:{n}")),
                mask(&format!("@deny:{n}")),
            )
        })
        .collect();

    // Rules
    let mut cat_sorted: Vec<&String> = declared.iter().collect();
    cat_sorted.sort();
    let names = Names {
        groups: &group_index,
        group_names: group_index.keys().map(|s| s.as_str()).collect(),
        sites: &site_index,
        site_names: sites.iter().map(|s| s.name.as_str()).collect(),
        app_names: apps.iter().map(|s| s.name.as_str()).collect(),
        apps: app_index,
        egress_names: egress.iter().map(|s| s.name.as_str()).collect(),
        egress: egress_index,
        categories: &declared,
        category_names: cat_sorted.iter().map(|s| s.as_str()).collect(),
        matcher: &matcher,
    };
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
        if let Some((r, sp)) = parse_rule(&mut cx, *t, tsp, &names) {
            top_rules.push(push_rule(&mut cx, r, sp, &mut rules));
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
            if let Some((r, sp)) = parse_rule(&mut cx, rt, &rsp, &names) {
                ids.push(push_rule(&mut cx, r, sp, &mut rules));
            }
        }
        if rulesets.contains_key(&name) {
            cx.err(&nsp, format!("duplicate ruleset `{name}`"));
            continue;
        }
        ruleset_order.push(name.clone());
        rulesets.insert(name, ids);
    }

    // [[policy]]
    let mut policies: Vec<GroupPolicy> = Vec::new();
    let mut policy_spans: Vec<Span> = Vec::new();
    let policy_tables = cx.tables(root, "policy", "policy");
    if !policy_tables.is_empty() && !top_tables.is_empty() {
        let sp = top_tables[0].1.clone();
        cx.err(&sp, "top-level [[rule]] cannot be combined with [[policy]]: put the rules in a [[ruleset]] and list it in the policies");
    }
    let rs_names: Vec<&str> = ruleset_order.iter().map(|s| s.as_str()).collect();
    let mut catch_all: Option<String> = None;
    for (t, tsp) in &policy_tables {
        let Some((name, nsp)) = cx.req_str(*t, "name", "[[policy]]", tsp) else {
            continue;
        };
        let what = format!("policy `{name}`");
        cx.keys(
            *t,
            &what,
            &["name", "groups", "rulesets", "default", "description"],
        );
        let groups_bits = cx.cond_strs(*t, "group", "groups", &what).map(|v| {
            let mut b = GroupBits::default();
            for (g, sp) in v {
                if let Some(i) = cx.resolve("group", &g, &sp, &group_index, &names.group_names) {
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
                    match rulesets.get(&rs) {
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
        });
        policy_spans.push(nsp);
    }
    if policy_tables.is_empty() {
        if !rulesets.is_empty() {
            let sp = key_span(root, "ruleset");
            cx.err(&sp, "[[ruleset]] is only used through [[policy]]: add a [[policy]] listing it in `rulesets`");
        }
        policies.push(GroupPolicy {
            name: "main".into(),
            groups: None,
            rules: top_rules,
            default_action: None,
        });
    }

    // Unreachable rules: shadowed in every policy that includes them (a rule
    // shadowed by a group exception in one policy may still decide in another).
    let mut included: HashMap<usize, usize> = HashMap::new();
    let mut shadowed: HashMap<usize, (usize, String, Vec<usize>)> = HashMap::new();
    for p in &policies {
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
        let inpol = if policy_tables.is_empty() {
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

    // [firewall]
    let firewall = firewall_section(&mut cx, root, &names);

    if !cx.s.diags.is_empty() {
        let mut d = cx.s.diags;
        d.sort_by(|a, b| {
            (a.file == *file)
                .cmp(&(b.file == *file))
                .reverse()
                .then(a.file.cmp(&b.file))
                .then(a.line.cmp(&b.line))
                .then(a.column.cmp(&b.column))
        });
        return Err(PolicyErrors(d));
    }

    // Digest over the policy and every file read.
    let mut h = Fnv::new();
    h.write(text.as_bytes());
    let mut files = cx.files;
    files.dedup();
    for f in &files[1..] {
        h.write(f.to_string_lossy().as_bytes());
        if let Ok(b) = std::fs::read(f) {
            h.write(&b);
        }
    }
    let digest = h.hex();
    let mut categories: Vec<String> = declared.into_iter().collect();
    categories.sort();
    let summary = Summary {
        file: file.to_path_buf(),
        sites: sites.len(),
        groups: groups.len(),
        devices: registry.devices.len(),
        apps: apps.len(),
        egress_pools: egress.len(),
        rules: rules.len(),
        policies: if policy_tables.is_empty() {
            vec![]
        } else {
            policies.iter().map(|p| p.name.clone()).collect()
        },
        categories,
        list_entries: matcher.entry_count(),
        import: import.clone(),
        source_files: files.clone(),
        digest: digest.clone(),
    };
    let has_casb_rules = rules.iter().any(|r| r.casb.is_some());
    let policy = Policy {
        file: file.to_path_buf(),
        tz_offset,
        default_action,
        default_message,
        default_tunnel,
        contact,
        tenants,
        sites,
        pac,
        site_index,
        site_nets,
        groups,
        group_index,
        registry,
        apps,
        egress,
        rules,
        policies,
        matcher,
        visible,
        allow_global,
        deny_global,
        group_lists,
        source_files: files,
        digest,
        import,
        remote_sources,
        has_casb_rules,
        casb: casb_settings,
        firewall,
    };
    Ok((policy, summary))
}

/// Standard base64 (padding optional) of exactly 32 bytes.
fn decode_key32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().trim_end_matches('=');
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out.try_into().ok()
}

/// A PAC `DIRECT` entry: an IP, a CIDR or a host pattern. Only characters
/// that are safe inside a generated JavaScript string literal.
fn check_pac_direct(d: &str) -> Result<(), String> {
    if d.parse::<ipnet::IpNet>().is_ok() || d.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if !d
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
    {
        return Err(format!(
            "`{d}` is not an IP, a CIDR or a host pattern like \"*.school.local\" (ASCII / punycode only)"
        ));
    }
    HostPattern::parse(d)
        .map(|_| ())
        .map_err(|e| format!("`{d}`: {e}"))
}

/// `HTTPS host:port` or `PROXY host:port`.
fn check_pac_proxy(p: &str) -> Result<(), String> {
    let bad = || format!("`{p}` is not like \"HTTPS gw.example.jp:8443\" or \"PROXY host:port\"");
    let (kind, hostport) = p.trim().split_once(' ').ok_or_else(bad)?;
    let (host, port) = hostport.trim().rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !matches!(kind, "HTTPS" | "PROXY") || !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// The download keys of a `[[categories.source]]` (None without `url`;
/// the other keys are then errors). `path`, `format`, `only`, `category`,
/// `entries` and `present` are filled in by the caller.
fn remote_source(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str) -> Option<RemoteSource> {
    const KEYS: &[&str] = &[
        "refresh",
        "sha256",
        "sha256_url",
        "max_bytes",
        "max_invalid_ratio",
        "max_shrink",
    ];
    let Some((url, usp)) = cx.str(t, "url", what) else {
        for k in KEYS {
            if t.contains_key(k) {
                let sp = key_span(t, k);
                cx.err(&sp, format!("`{k}` in {what} is only used with `url` (a list downloaded by the gateway)"));
            }
        }
        return None;
    };
    let mut bad = false;
    if let Err(e) = check_http_url(&url) {
        cx.err(&usp, format!("`url` in {what}: {e}"));
        bad = true;
    }
    let mut refresh = REMOTE_DEFAULT_REFRESH;
    if let Some((r, sp)) = cx.str(t, "refresh", what) {
        match parse_duration(&r) {
            Ok(d) if d < REMOTE_MIN_REFRESH => {
                cx.err(&sp, format!("`refresh` in {what} is too short: `{r}` (at least 5m; lists are large and their servers shared)"));
                bad = true;
            }
            Ok(d) => refresh = d,
            Err(e) => {
                cx.err(&sp, format!("`refresh` in {what}: {e}"));
                bad = true;
            }
        }
    }
    let sha256 = cx.str(t, "sha256", what).and_then(|(h, sp)| {
        let h = h.trim().to_ascii_lowercase();
        if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(h)
        } else {
            cx.err(&sp, format!("`sha256` in {what} must be 64 hex digits"));
            bad = true;
            None
        }
    });
    let sha256_url = cx.str(t, "sha256_url", what).and_then(|(u, sp)| {
        if sha256.is_some() {
            cx.err(
                &sp,
                format!("use either `sha256` or `sha256_url` in {what}, not both"),
            );
            bad = true;
        }
        match check_http_url(&u) {
            Ok(()) => Some(u),
            Err(e) => {
                cx.err(&sp, format!("`sha256_url` in {what}: {e}"));
                bad = true;
                None
            }
        }
    });
    let mut max_bytes = REMOTE_DEFAULT_MAX_BYTES;
    if let Some(item) = t.get("max_bytes") {
        match item.as_integer() {
            Some(n) if n > 0 => max_bytes = n as u64,
            _ => {
                cx.err(
                    &item.span(),
                    format!("`max_bytes` in {what} must be a positive integer (bytes)"),
                );
                bad = true;
            }
        }
    }
    let mut ratio = |key: &str, default: f64, cx: &mut Cx<'_>| -> f64 {
        let Some(item) = t.get(key) else {
            return default;
        };
        let v = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        match v {
            Some(v) if (0.0..=1.0).contains(&v) => v,
            _ => {
                cx.err(
                    &item.span(),
                    format!("`{key}` in {what} must be a number from 0 to 1"),
                );
                bad = true;
                default
            }
        }
    };
    let max_invalid_ratio = ratio("max_invalid_ratio", REMOTE_DEFAULT_MAX_INVALID_RATIO, cx);
    let max_shrink = ratio("max_shrink", REMOTE_DEFAULT_MAX_SHRINK, cx);
    if bad {
        return None;
    }
    Some(RemoteSource {
        url,
        path: PathBuf::new(),
        format: String::new(),
        only: None,
        category: None,
        refresh,
        sha256,
        sha256_url,
        max_bytes,
        max_invalid_ratio,
        max_shrink,
        entries: 0,
        present: false,
    })
}

/// `http://host[:port]/...` or `https://...`.
fn check_http_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("`{u}` is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || authority.chars().any(|c| c.is_whitespace())
    {
        return Err(format!(
            "`{u}` has no usable host (user:password@ is not supported)"
        ));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{u}` contains spaces or control characters"));
    }
    Ok(())
}

/// `90s`, `30m`, `6h`, `1d` (one number and a unit).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 30m, 6h, 1d)"))?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` is not a duration (use e.g. 30m, 6h, 1d)")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

fn fill_report(rep: &mut SourceReport, r: &komugate_categories::ImportReport) {
    rep.files = r.files;
    rep.domains = r.domains;
    rep.urls = r.urls;
    rep.expressions = r.expressions;
    rep.invalid_lines = r.invalid_lines;
    rep.first_errors = r.first_errors.iter().map(|e| e.to_string()).collect();
}

fn host_list(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str) -> (Vec<String>, Vec<HostPattern>) {
    let mut hosts = Vec::new();
    let mut pats = Vec::new();
    for (h, sp) in cx.strs(t, "hosts", what).unwrap_or_default() {
        match HostPattern::parse(&h) {
            Ok(p) => {
                hosts.push(h);
                pats.push(p);
            }
            Err(e) => cx.err(&sp, e),
        }
    }
    (hosts, pats)
}

const APP_KEYS: &[&str] = &[
    "name",
    "hosts",
    "description",
    "title",
    "vendor",
    "category",
    "certifications",
    "tenant_provider",
    "tenant_hosts",
    "own",
    "upload_paths",
    "download_paths",
    "download_params",
    "sync_paths",
    "sync_user_agents",
];

fn is_guid(v: &str) -> bool {
    v.len() == 36
        && v.chars().enumerate().all(|(i, ch)| {
            if [8, 13, 18, 23].contains(&i) {
                ch == '-'
            } else {
                ch.is_ascii_hexdigit()
            }
        })
}

/// A catalog entry as an [`App`] (host patterns parsed).
fn catalog_app(a: &crate::casb::CatalogApp) -> Result<App, String> {
    let bad = |e: String| format!("built-in app catalog, app `{}`: {e}", a.name);
    let patterns = a
        .hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    for t in &a.tenant_hosts {
        crate::casb::check_tenant_host(t).map_err(bad)?;
    }
    for p in a
        .upload_paths
        .iter()
        .chain(&a.download_paths)
        .chain(&a.sync_paths)
    {
        crate::casb::check_path_pattern(p).map_err(bad)?;
    }
    for p in &a.download_params {
        crate::casb::check_param(p).map_err(bad)?;
    }
    Ok(App {
        name: a.name.clone(),
        hosts: a.hosts.clone(),
        patterns,
        title: a.title.clone(),
        vendor: a.vendor.clone(),
        category: a.category.clone(),
        certifications: a.certifications.clone(),
        tenant_provider: a.tenant_provider.clone(),
        tenant_hosts: a.tenant_hosts.clone(),
        own_patterns: Vec::new(),
        own: a.own,
        upload_paths: a.upload_paths.clone(),
        download_paths: a.download_paths.clone(),
        download_params: a.download_params.clone(),
        sync_paths: a.sync_paths.clone(),
        sync_user_agents: a.sync_user_agents.clone(),
        builtin: true,
    })
}

/// The built-in catalog's apps (for reports without a policy).
pub fn builtin_apps() -> Result<Vec<App>, String> {
    let c = crate::casb::parse_catalog(crate::casb::BUILTIN_CATALOG)?;
    c.app.iter().map(catalog_app).collect()
}

/// Applies the keys of a policy `[[app]]` (other than name/hosts) to `app`.
fn override_app(cx: &mut Cx<'_>, t: &dyn TableLike, what: &str, app: &mut App) {
    if let Some((v, _)) = cx.str(t, "title", what) {
        app.title = v;
    }
    if let Some((v, _)) = cx.str(t, "vendor", what) {
        app.vendor = v;
    }
    if let Some((v, sp)) = cx.str(t, "category", what) {
        if crate::casb::category_bit(&v).is_some() {
            app.category = v;
        } else {
            cx.err(
                &sp,
                format!(
                    "unknown app category `{v}` (one of {}){}",
                    crate::casb::APP_CATEGORIES.join(", "),
                    suggest(&v, crate::casb::APP_CATEGORIES.iter().copied())
                ),
            );
        }
    }
    if let Some(v) = cx.strs(t, "certifications", what) {
        app.certifications.clear();
        for (c, sp) in v {
            if crate::casb::CERTIFICATIONS.contains(&c.as_str()) {
                app.certifications.push(c);
            } else {
                cx.err(
                    &sp,
                    format!(
                        "unknown certification `{c}` (one of {}){}",
                        crate::casb::CERTIFICATIONS.join(", "),
                        suggest(&c, crate::casb::CERTIFICATIONS.iter().copied())
                    ),
                );
            }
        }
    }
    if let Some((v, sp)) = cx.str(t, "tenant_provider", what) {
        match v.as_str() {
            "microsoft" | "google" => app.tenant_provider = Some(v),
            "" | "none" => app.tenant_provider = None,
            _ => cx.err(
                &sp,
                format!(
                    "invalid tenant_provider `{v}` (use \"microsoft\", \"google\" or \"none\")"
                ),
            ),
        }
    }
    if let Some(b) = cx.bool(t, "own", what) {
        app.own = b;
    }
    if let Some(v) = cx.strs(t, "tenant_hosts", what) {
        app.tenant_hosts.clear();
        for (h, sp) in v {
            match crate::casb::check_tenant_host(&h) {
                Ok(()) => app.tenant_hosts.push(h.to_ascii_lowercase()),
                Err(e) => cx.err(&sp, e),
            }
        }
    }
    for (key, out) in [
        ("upload_paths", &mut app.upload_paths),
        ("download_paths", &mut app.download_paths),
        ("sync_paths", &mut app.sync_paths),
    ] {
        if let Some(v) = cx.strs(t, key, what) {
            out.clear();
            for (p, sp) in v {
                match crate::casb::check_path_pattern(&p) {
                    Ok(()) => out.push(p),
                    Err(e) => cx.err(&sp, e),
                }
            }
        }
    }
    if let Some(v) = cx.strs(t, "download_params", what) {
        app.download_params.clear();
        for (p, sp) in v {
            match crate::casb::check_param(&p) {
                Ok(()) => app.download_params.push(p),
                Err(e) => cx.err(&sp, e),
            }
        }
    }
    if let Some(v) = cx.strs(t, "sync_user_agents", what) {
        app.sync_user_agents = v.into_iter().map(|(s, _)| s).collect();
    }
}

fn int(cx: &mut Cx<'_>, t: &dyn TableLike, key: &str, what: &str, min: i64) -> Option<u64> {
    let item = t.get(key)?;
    match item.as_integer() {
        Some(i) if i >= min => Some(i as u64),
        _ => {
            cx.err(
                &item.span(),
                format!("`{key}` in {what} must be an integer ≥ {min} (bytes)"),
            );
            None
        }
    }
}

/// `[casb]`: thresholds, DLP patterns; tenant-restriction headers from the
/// catalog filled with the `[tenant]` settings.
fn casb_section(
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
