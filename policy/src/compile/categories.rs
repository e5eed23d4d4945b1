//! `[categories]` and `[[categories.source]]`: blocklist sources (local or
//! downloaded), the global and per-group allow/deny lists, and the category
//! matcher built from all of them.

use std::collections::HashSet;
use std::path::PathBuf;

use komugate_categories::{CategorySet, ListFormat, Matcher, MatcherBuilder};
use toml_edit::TableLike;

use super::cx::{key_span, Cx, Span};
use super::groups::Groups;
use super::sites::Sites;
use crate::diag::{suggest, Diagnostic};
use crate::*;

/// The matcher and what the policy knows about categories.
pub(super) struct Categories {
    /// Every category name rules may use.
    pub declared: HashSet<String>,
    pub import: ImportSummary,
    pub remote_sources: Vec<RemoteSource>,
    pub matcher: Matcher,
    pub visible: CategorySet,
    pub allow_global: ListMasks,
    pub deny_global: ListMasks,
    pub group_lists: Vec<(usize, ListMasks, ListMasks)>,
    /// (policy name, allow, deny) of the `[[policy]]` lists.
    pub policy_lists: Vec<(String, ListMasks, ListMasks)>,
}

/// `None` when the matcher cannot be built (reported).
pub(super) fn section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
    groups: &Groups,
    sites: &Sites,
) -> Option<Categories> {
    let mut builder = MatcherBuilder::new();
    let mut declared: HashSet<String> = HashSet::new();
    let mut import = ImportSummary::default();
    let (mut global_allow, mut global_deny) = (None, None);
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
                    "match",
                ],
            );
            let format = cx.req_str(t, "format", what, &tsp);
            let hosts_match = match cx.str(t, "match", what) {
                None => komugate_categories::HostsMatch::Subdomains,
                Some((m, _)) if m == "subdomains" => komugate_categories::HostsMatch::Subdomains,
                Some((m, _)) if m == "exact" => komugate_categories::HostsMatch::Exact,
                Some((m, sp)) => {
                    cx.err(&sp, format!("unknown `match = \"{m}\"` (use \"subdomains\" or \"exact\": what a hosts-file name covers)"));
                    komugate_categories::HostsMatch::Subdomains
                }
            };
            let path = cx.req_str(t, "path", what, &tsp);
            let only = cx.strs(t, "only", what);
            let category = cx.str(t, "category", what);
            let remote = remote_source(cx, t, what);
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
                            if rep.domains + rep.urls == 0 && rep.invalid_lines > 0 {
                                let first = rep.first_errors.first().cloned().unwrap_or_default();
                                cx.err(&psp, format!("`{rel}`: {} line(s) read as {format} gave no entry; first problem: {first}", rep.invalid_lines));
                            }
                            rep.lists.push(crate::ListCounts {
                                path: p.clone(),
                                category: cat.clone(),
                                format: format.clone(),
                                entries: rep.domains + rep.urls,
                                skipped: 0,
                                invalid: rep.invalid_lines,
                            });
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
                            builder.set_hosts_match(hosts_match);
                            let imported = builder.add_list_file(&cat, &abs, lf);
                            builder.set_hosts_match(Default::default());
                            match imported {
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
        global_allow = list_spec(cx, ct, "[categories]", "allow", "@allow".into(), sites);
        global_deny = list_spec(cx, ct, "[categories]", "deny", "@deny".into(), sites);
    }
    for s in [&global_allow, &global_deny].into_iter().flatten() {
        add_lists(cx, &mut builder, s);
    }
    // `[[policy]]` allow / deny lists (the rest of a policy is read later,
    // once the matcher exists; its shape errors are reported there).
    let mut policy_specs: Vec<(String, Option<ListSpec>, Option<ListSpec>)> = Vec::new();
    if let Some(toml_edit::Item::ArrayOfTables(a)) = root.get("policy") {
        for t in a.iter() {
            let Some(name) = t.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            let what = format!("policy `{name}`");
            let allow = list_spec(cx, t, &what, "allow", format!("@allow#{name}"), sites);
            let deny = list_spec(cx, t, &what, "deny", format!("@deny#{name}"), sites);
            for s in [&allow, &deny].into_iter().flatten() {
                add_lists(cx, &mut builder, s);
            }
            if allow.is_some() || deny.is_some() {
                policy_specs.push((name.to_string(), allow, deny));
            }
        }
    }
    for (_, a, d) in &groups.lists {
        for s in [a, d].into_iter().flatten() {
            add_lists(cx, &mut builder, s);
        }
    }
    let matcher = match builder.build() {
        Ok(m) => m,
        Err(e) => {
            cx.err(&None, format!("cannot build the category matcher: {e}"));
            return None;
        }
    };
    let mut visible = CategorySet::empty();
    for (i, n) in matcher.category_names().iter().enumerate() {
        if !n.starts_with('@') {
            visible.insert(i as komugate_categories::CategoryId);
            declared.insert(n.clone());
        }
    }
    let allow_global = masks_of(global_allow.as_ref(), &matcher);
    let deny_global = masks_of(global_deny.as_ref(), &matcher);
    let group_lists: Vec<(usize, ListMasks, ListMasks)> = groups
        .lists
        .iter()
        .map(|(g, a, d)| {
            (
                *g,
                masks_of(a.as_ref(), &matcher),
                masks_of(d.as_ref(), &matcher),
            )
        })
        .collect();
    let policy_lists = policy_specs
        .iter()
        .map(|(name, a, d)| {
            (
                name.clone(),
                masks_of(a.as_ref(), &matcher),
                masks_of(d.as_ref(), &matcher),
            )
        })
        .collect();
    Some(Categories {
        declared,
        import,
        remote_sources,
        matcher,
        visible,
        allow_global,
        deny_global,
        group_lists,
        policy_lists,
    })
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

pub(super) struct ListSpec {
    cat: String,
    entries: Vec<(String, Span)>,
    files: Vec<(String, Span)>,
    /// Entries with `until`: (entry, span, date) — each date is its own
    /// internal category `<cat>~<date>` so it can stop applying at the
    /// request's time without a reload.
    expiring: Vec<(String, Span, String)>,
    /// Distinct dates of `expiring` with the time (ms) each stops applying.
    until: Vec<(String, i64)>,
    /// Entries with `devices` / `locations` (matched outside the matcher).
    scoped: Vec<ScopedEntry>,
}

/// The internal category names and expiry times of one allow or deny list.
impl ListSpec {
    fn masks(&self, matcher: &Matcher) -> ListMasks {
        let mask = |name: &str| {
            let mut s = CategorySet::empty();
            if let Some(id) = matcher.category_id(name) {
                s.insert(id);
            }
            s
        };
        ListMasks {
            permanent: mask(&self.cat),
            expiring: self
                .until
                .iter()
                .map(|(date, ms)| (*ms, mask(&format!("{}~{date}", self.cat))))
                .collect(),
            scoped: self.scoped.clone(),
        }
    }
}

/// The masks of an optional list (empty when the list is absent).
pub(super) fn masks_of(spec: Option<&ListSpec>, matcher: &Matcher) -> ListMasks {
    spec.map(|s| s.masks(matcher)).unwrap_or_default()
}

/// Adds inline entries and list files to the builder; problems are errors
/// (these are the board's own lists, unlike third-party blocklists).
fn add_lists(cx: &mut Cx<'_>, b: &mut MatcherBuilder, spec: &ListSpec) {
    for (e, sp) in &spec.entries {
        if let Err(msg) = add_entry(b, &spec.cat, e) {
            cx.err(sp, format!("invalid list entry `{e}`: {msg}"));
        }
    }
    for (e, sp, date) in &spec.expiring {
        if let Err(msg) = add_entry(b, &format!("{}~{date}", spec.cat), e) {
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

pub(super) fn list_spec(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    what: &str,
    kind: &str,
    cat: String,
    sites: &Sites,
) -> Option<ListSpec> {
    let Entries {
        plain: entries,
        expiring,
        scoped,
    } = list_entries(cx, t, kind, what, sites);
    let files = cx
        .strs(t, &format!("{kind}_files"), what)
        .unwrap_or_default();
    if entries.is_empty() && files.is_empty() && expiring.is_empty() && scoped.is_empty() {
        return None;
    }
    let mut until: Vec<(String, i64)> = Vec::new();
    for (_, _, date) in &expiring {
        if !until.iter().any(|(d, _)| d == date) {
            let day = crate::pattern::parse_date(date).unwrap_or(0);
            until.push((
                date.clone(),
                crate::pattern::end_of_local_day_ms(day, cx.tz_offset),
            ));
        }
    }
    Some(ListSpec {
        cat,
        entries,
        files,
        expiring,
        until,
        scoped,
    })
}

/// The entries of one allow or deny list, by kind.
#[derive(Default)]
struct Entries {
    plain: Vec<(String, Span)>,
    /// With their `until` date.
    expiring: Vec<(String, Span, String)>,
    scoped: Vec<ScopedEntry>,
}

/// The entries of an allow or deny list: strings, or inline tables
/// `{ entry = "example.com", until = "2026-03-31", note = "…" }` whose
/// entry applies through `until` (inclusive, in the policy's timezone),
/// and, with `devices = [..]` and / or `locations = [..]` (the rule
/// conditions of the same names), only for those devices / locations.
fn list_entries(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    kind: &str,
    what: &str,
    sites: &Sites,
) -> Entries {
    let mut out = Entries::default();
    let Some(item) = t.get(kind) else {
        return out;
    };
    if let Some(s) = item.as_str() {
        out.plain.push((s.to_string(), item.span()));
        return out;
    }
    let Some(arr) = item.as_array() else {
        cx.err(
            &item.span(),
            format!("`{kind}` in {what} must be an array of entries (strings, or {{ entry = \"…\", until = \"YYYY-MM-DD\" }})"),
        );
        return out;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for v in arr.iter() {
        if let Some(s) = v.as_str() {
            out.plain.push((s.to_string(), v.span()));
            continue;
        }
        let Some(it) = v.as_inline_table() else {
            cx.err(
                &v.span(),
                format!("`{kind}` in {what} must contain strings or {{ entry = \"…\", until = \"YYYY-MM-DD\" }} tables"),
            );
            continue;
        };
        let ewhat = format!("an entry of `{kind}` in {what}");
        cx.keys(
            it,
            &ewhat,
            &[
                "entry",
                "until",
                "note",
                "device",
                "devices",
                "location",
                "locations",
            ],
        );
        let entry = cx.req_str(it, "entry", &ewhat, &v.span());
        let _ = cx.str(it, "note", &ewhat);
        let until = match it.get("until") {
            None => None,
            Some(u) => {
                let text = u
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| u.as_datetime().and_then(|d| d.date).map(|d| d.to_string()));
                match text.as_deref().map(|d| (d, crate::pattern::parse_date(d))) {
                    Some((d, Ok(day))) => {
                        let end = crate::pattern::end_of_local_day_ms(day, cx.tz_offset);
                        if end <= now_ms {
                            cx.warn(
                                &u.span(),
                                format!(
                                    "the entry expired after {d} and no longer applies; remove it"
                                ),
                            );
                        }
                        Some(d.to_string())
                    }
                    Some((_, Err(e))) => {
                        cx.err(&u.span(), format!("`until` of {ewhat}: {e}"));
                        None
                    }
                    None => {
                        cx.err(
                            &u.span(),
                            format!("`until` of {ewhat} must be a date like \"2026-03-31\""),
                        );
                        None
                    }
                }
            }
        };
        let devices = cx.cond_strs(it, "device", "devices", &ewhat).map(|v| {
            let mut ids = Vec::new();
            for (d, sp) in v {
                if d.trim().is_empty() {
                    cx.err(&sp, format!("empty device id in {ewhat}"));
                } else {
                    ids.push(d);
                }
            }
            ids
        });
        let locations = cx.cond_strs(it, "location", "locations", &ewhat).map(|v| {
            let names: Vec<&str> = sites.sites.iter().map(|s| s.name.as_str()).collect();
            super::conditions::locations(cx, v, &sites.index, &names)
        });
        let (Some((e, sp)), until) = (entry, until) else {
            continue;
        };
        if it.contains_key("until") && until.is_none() {
            continue;
        }
        if devices.is_none() && locations.is_none() {
            match until {
                Some(d) => out.expiring.push((e, sp, d)),
                None => out.plain.push((e, sp)),
            }
            continue;
        }
        match scoped_domain(&e) {
            Ok(domain) => out.scoped.push(ScopedEntry {
                domain,
                until: until.map(|d| {
                    let day = crate::pattern::parse_date(&d).unwrap_or(0);
                    crate::pattern::end_of_local_day_ms(day, cx.tz_offset)
                }),
                devices,
                locations,
            }),
            Err(msg) => cx.err(&sp, format!("invalid entry `{e}` in {ewhat}: {msg}")),
        }
    }
    out
}

/// The normalised domain of an entry with `devices` / `locations`: a
/// domain (`example.com`, `*.example.com` or `.example.com`: the domain
/// and its subdomains), not a URL.
fn scoped_domain(entry: &str) -> Result<String, String> {
    let e = entry.trim();
    let e = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .unwrap_or(e);
    let e = e.strip_suffix('/').unwrap_or(e);
    if e.contains('/') {
        return Err("an entry with `devices` or `locations` must be a domain such as example.com (a URL with a path cannot be scoped; list it for everyone or use a [[rule]] with `devices` and `paths`)".into());
    }
    let d = e
        .strip_prefix("*.")
        .or_else(|| e.strip_prefix('.'))
        .unwrap_or(e);
    if d.contains('*') {
        return Err("wildcards other than a leading `*.` are not allowed".into());
    }
    komugate_categories::normalize_host(d)
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
    rep.domains = r.domains + r.exceptions;
    rep.urls = r.urls;
    rep.expressions = r.expressions;
    rep.invalid_lines = r.invalid_lines;
    rep.skipped_lines = r.skipped_lines;
    rep.first_errors = r.first_errors.iter().map(|e| e.to_string()).collect();
    rep.lists = r
        .lists
        .iter()
        .map(|l| crate::ListCounts {
            path: l.path.clone(),
            category: l.category.clone(),
            format: l.format.to_string(),
            entries: l.entries,
            skipped: l.skipped,
            invalid: l.invalid,
        })
        .collect();
}
