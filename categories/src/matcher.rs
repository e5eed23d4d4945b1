//! The compiled, immutable [`Matcher`].

use std::collections::HashMap;

use crate::import::{MatcherBuilder, Palette};
use crate::normalize::{fast_host, is_ip, normalize_host, normalize_path, split_url, strip_www};
use crate::table::{hash_finish, hash_key, hash_start, hash_step, Table, MAX_VALUE};
use crate::{CategoryError, CategoryId, CategorySet, Usage};

/// One url entry: a path (in `url_arena`) under a host of `url_hosts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UrlEntry {
    pub(crate) off: u32,
    pub(crate) len: u32,
    pub(crate) set: u32,
}

/// Compiled regexes, present only when expressions are enabled.
pub(crate) struct Regexes {
    pub(crate) set: regex::RegexSet,
    pub(crate) cats: Vec<CategoryId>,
}

/// Immutable compiled matcher (`Send + Sync`). See the crate docs for the
/// matching rules.
pub struct Matcher {
    pub(crate) names: Vec<String>,
    pub(crate) usage: Vec<Option<Usage>>,
    pub(crate) palette: Vec<CategorySet>,
    pub(crate) domains: Table,
    pub(crate) exceptions: Table,
    pub(crate) url_hosts: Table,
    /// `url_ranges[i]..url_ranges[i+1]` are the entries of url host `i`.
    pub(crate) url_ranges: Vec<u32>,
    pub(crate) url_entries: Vec<UrlEntry>,
    pub(crate) url_arena: Vec<u8>,
    pub(crate) expr_src: Vec<(CategoryId, String)>,
    pub(crate) expressions_enabled: bool,
    pub(crate) regexes: Option<Regexes>,
    /// One-hash Bloom filter (~8 bits per key) over the keys of `domains`,
    /// `exceptions` and `url_hosts`: a label suffix whose bit is clear is
    /// in none of the tables, so most probes of a miss never leave cache.
    pub(crate) filter: Vec<u64>,
    /// Which tagged keys exist ([`TAG_EXACT`] …): tagged probes are skipped
    /// when none do.
    pub(crate) tags: u8,
    /// Adblock URL patterns (sources, for snapshots) and their automata.
    pub(crate) pattern_src: Vec<PatternSrc>,
    pub(crate) patterns: Option<Patterns>,
}

/// Domain-table keys carry a tag byte in front of the host for the entries
/// that are not "this host and its subdomains" (hosts never start with
/// these bytes): `=host` exactly that host, `!host` an `$important` adblock
/// rule, `!=host` both.
pub(crate) const KEY_EXACT: &[u8] = b"=";
pub(crate) const KEY_IMPORTANT: &[u8] = b"!";
pub(crate) const KEY_IMPORTANT_EXACT: &[u8] = b"!=";
pub(crate) const TAG_EXACT: u8 = 1;
pub(crate) const TAG_IMPORTANT: u8 = 2;
pub(crate) const TAG_IMPORTANT_EXACT: u8 = 4;

fn key_tag(key: &[u8]) -> u8 {
    if key.starts_with(KEY_IMPORTANT_EXACT) {
        TAG_IMPORTANT_EXACT
    } else if key.starts_with(KEY_IMPORTANT) {
        TAG_IMPORTANT
    } else if key.starts_with(KEY_EXACT) {
        TAG_EXACT
    } else {
        0
    }
}

/// One adblock URL pattern of a category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PatternSrc {
    pub(crate) cat: CategoryId,
    pub(crate) exception: bool,
    pub(crate) important: bool,
    /// `false`: `text` is a plain lowercase substring; `true`: a regex.
    pub(crate) regex: bool,
    pub(crate) text: String,
    /// Regex rules: a literal every matching URL contains ("" = none).
    pub(crate) literal: String,
}

/// Compiled adblock URL patterns. Substring rules are one Aho-Corasick
/// automaton; regex rules are run only when the automaton of their
/// literals finds theirs in the URL (or when they have none), so a lookup
/// costs two automaton passes plus the few regexes that can match.
pub(crate) struct Patterns {
    substrings: Option<aho_corasick::AhoCorasick>,
    substring_rule: Vec<usize>,
    literals: Option<aho_corasick::AhoCorasick>,
    literal_rule: Vec<usize>,
    always: Vec<usize>,
    /// Per rule index: the compiled regex of a regex rule.
    regexes: Vec<Option<regex::Regex>>,
}

pub(crate) fn compile_patterns(src: &[PatternSrc]) -> Result<Option<Patterns>, CategoryError> {
    if src.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| CategoryError::InvalidInput {
        path: "<adblock patterns>".into(),
        reason,
    };
    let ac = |pats: &[(usize, &str)]| -> Result<Option<aho_corasick::AhoCorasick>, CategoryError> {
        if pats.is_empty() {
            return Ok(None);
        }
        aho_corasick::AhoCorasick::new(pats.iter().map(|(_, t)| t.as_bytes()))
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    };
    let mut subs = Vec::new();
    let mut lits = Vec::new();
    let mut always = Vec::new();
    let mut regexes = Vec::with_capacity(src.len());
    for (i, p) in src.iter().enumerate() {
        if !p.regex {
            subs.push((i, p.text.as_str()));
            regexes.push(None);
            continue;
        }
        regexes.push(Some(
            regex::Regex::new(&p.text).map_err(|e| bad(e.to_string()))?,
        ));
        if p.literal.is_empty() {
            always.push(i);
        } else {
            lits.push((i, p.literal.as_str()));
        }
    }
    Ok(Some(Patterns {
        substrings: ac(&subs)?,
        substring_rule: subs.iter().map(|(i, _)| *i).collect(),
        literals: ac(&lits)?,
        literal_rule: lits.iter().map(|(i, _)| *i).collect(),
        always,
        regexes,
    }))
}

/// Categories found for one request, by strength.
#[derive(Default)]
struct Found {
    set: CategorySet,
    excluded: CategorySet,
    important: CategorySet,
    important_excluded: CategorySet,
}

impl Found {
    fn add(&mut self, s: CategorySet, exception: bool, important: bool) {
        let t = match (exception, important) {
            (false, false) => &mut self.set,
            (true, false) => &mut self.excluded,
            (false, true) => &mut self.important,
            (true, true) => &mut self.important_excluded,
        };
        *t = t.union(s);
    }

    /// Exceptions remove a category unless an `$important` block keeps it,
    /// which only an `$important` exception removes.
    fn result(self) -> CategorySet {
        let all_excluded = self.excluded.union(self.important_excluded);
        self.set
            .difference(all_excluded)
            .union(self.important.difference(self.important_excluded))
    }
}

/// Bit of the filter for a key hash (bits independent of the table index,
/// which uses the high bits, and of the tag, which uses the low 8).
#[inline(always)]
pub(crate) fn filter_bit(filter: &[u64], h: u64) -> bool {
    let bits = filter.len() as u64 * 64;
    if bits == 0 {
        return false;
    }
    let b = (h >> 8) & (bits - 1);
    filter[(b >> 6) as usize] & (1 << (b & 63)) != 0
}

pub(crate) fn build_filter(tables: &[&Table]) -> Vec<u64> {
    let n: usize = tables.iter().map(|t| t.len).sum();
    if n == 0 {
        return Vec::new();
    }
    let bits = (n * 8).next_power_of_two().max(64);
    let mut f = vec![0u64; bits / 64];
    for t in tables {
        for &s in &t.slots {
            if s == crate::table::EMPTY {
                continue;
            }
            let off = (s & 0xffff_ffff) as usize;
            let len = t.arena[off] as usize;
            let h = hash_key(&t.arena[off + 1..off + 1 + len]);
            let b = (h >> 8) & (bits as u64 - 1);
            f[(b >> 6) as usize] |= 1 << (b & 63);
        }
    }
    f
}

fn palette_overflow() -> CategoryError {
    CategoryError::InvalidInput {
        path: "<builder>".into(),
        reason: "too many distinct category combinations".into(),
    }
}

impl Matcher {
    pub(crate) fn compile(b: MatcherBuilder) -> Result<Matcher, CategoryError> {
        let mut palette = Palette::default();
        // Domains: merge duplicates (same name in several categories). Most
        // names have one category, so keep (offset, category) per unique name
        // and a side map only for the names with several.
        let mut uniq: HashMap<&[u8], u32> = HashMap::with_capacity(b.dom_items.len());
        let mut firsts: Vec<(u32, CategoryId)> = Vec::new();
        let mut multi: HashMap<u32, CategorySet> = HashMap::new();
        for &(off, cat) in &b.dom_items {
            let key = b.domain_key(off);
            let next = firsts.len() as u32;
            let idx = *uniq.entry(key).or_insert(next);
            if idx == next {
                firsts.push((off, cat));
            } else if firsts[idx as usize].1 != cat {
                let first = firsts[idx as usize].1;
                multi
                    .entry(idx)
                    .or_insert_with(|| [first].into_iter().collect())
                    .insert(cat);
            }
        }
        drop(uniq);
        let mut vals = Vec::with_capacity(firsts.len());
        for (i, &(_, c)) in firsts.iter().enumerate() {
            let s = match multi.get(&(i as u32)) {
                Some(s) => *s,
                None => [c].into_iter().collect(),
            };
            let v = palette.intern(s);
            if v > MAX_VALUE {
                return Err(palette_overflow());
            }
            vals.push(v);
        }
        drop(multi);
        let domains = Table::build(
            firsts.len(),
            firsts
                .iter()
                .zip(&vals)
                .map(|(&(off, _), &v)| (b.domain_key(off), v)),
        );
        drop(firsts);
        drop(vals);

        // Exceptions.
        let mut exc: HashMap<&str, CategorySet> = HashMap::new();
        for (h, c) in &b.exceptions {
            exc.entry(h.as_str()).or_default().insert(*c);
        }
        let mut exc: Vec<(&str, u32)> = exc
            .into_iter()
            .map(|(h, s)| (h, palette.intern(s)))
            .collect();
        exc.sort_unstable();
        let exceptions = Table::build(exc.len(), exc.iter().map(|&(h, v)| (h.as_bytes(), v)));

        // Urls: group by host, sorted paths, merged duplicates.
        let mut urls: Vec<(&str, &str, CategoryId)> = b
            .urls
            .iter()
            .map(|(h, p, c)| (h.as_str(), p.as_str(), *c))
            .collect();
        urls.sort_unstable();
        let mut hosts: Vec<(&str, u32)> = Vec::new();
        let mut url_ranges = Vec::new();
        let mut url_entries: Vec<UrlEntry> = Vec::new();
        let mut url_arena = Vec::new();
        let mut i = 0;
        while i < urls.len() {
            let host = urls[i].0;
            hosts.push((host, hosts.len() as u32));
            url_ranges.push(url_entries.len() as u32);
            while i < urls.len() && urls[i].0 == host {
                let path = urls[i].1;
                let mut s = CategorySet::empty();
                while i < urls.len() && urls[i].0 == host && urls[i].1 == path {
                    s.insert(urls[i].2);
                    i += 1;
                }
                let off = url_arena.len() as u32;
                url_arena.extend_from_slice(path.as_bytes());
                url_entries.push(UrlEntry {
                    off,
                    len: path.len() as u32,
                    set: palette.intern(s),
                });
            }
        }
        url_ranges.push(url_entries.len() as u32);
        if palette.sets.len() as u64 > MAX_VALUE as u64 {
            return Err(palette_overflow());
        }
        let url_hosts = Table::build(hosts.len(), hosts.iter().map(|&(h, v)| (h.as_bytes(), v)));

        let expr_src: Vec<(CategoryId, String)> = b
            .expressions
            .iter()
            .map(|(c, r, _, _)| (*c, r.clone()))
            .collect();
        let regexes = if b.expressions_enabled {
            for (_, re, file, line) in &b.expressions {
                if let Err(e) = regex::Regex::new(re) {
                    return Err(CategoryError::BadRegex {
                        file: file.clone(),
                        line: *line,
                        reason: e.to_string(),
                    });
                }
            }
            Some(compile_regexes(&expr_src)?)
        } else {
            None
        };
        url_entries.shrink_to_fit();
        url_arena.shrink_to_fit();
        let mut pal = palette.sets;
        pal.shrink_to_fit();
        let filter = build_filter(&[&domains, &exceptions, &url_hosts]);
        let mut tags = 0;
        for t in [&domains, &exceptions] {
            for &slot in &t.slots {
                if slot != crate::table::EMPTY {
                    let off = (slot & 0xffff_ffff) as usize;
                    tags |= key_tag(&t.arena[off + 1..]);
                }
            }
        }
        let patterns = compile_patterns(&b.patterns)?;
        Ok(Matcher {
            tags,
            pattern_src: b.patterns,
            patterns,
            filter,
            names: b.names,
            usage: b.usage,
            palette: pal,
            domains,
            exceptions,
            url_hosts,
            url_ranges,
            url_entries,
            url_arena,
            expr_src,
            expressions_enabled: b.expressions_enabled,
            regexes,
        })
    }

    /// Category names; a [`CategoryId`] indexes this slice.
    pub fn category_names(&self) -> &[String] {
        &self.names
    }

    /// Id of a category by name.
    pub fn category_id(&self, name: &str) -> Option<CategoryId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| i as CategoryId)
    }

    /// Name of a category (`""` for an unknown id).
    pub fn category_name(&self, id: CategoryId) -> &str {
        self.names
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// `usage` metadata (UT1 `usage` file: black / white), if known.
    pub fn category_usage(&self, id: CategoryId) -> Option<Usage> {
        self.usage.get(id as usize).copied().flatten()
    }

    /// Names of the categories in `set`.
    pub fn names(&self, set: CategorySet) -> Vec<&str> {
        set.iter()
            .map(|id| self.category_name(id))
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Whether expressions are compiled and matched.
    pub fn expressions_enabled(&self) -> bool {
        self.expressions_enabled
    }

    /// Categories of a request. `host` as seen in the request (any case, may
    /// carry a port / trailing dot / be an IP literal, IPv6 in brackets ok);
    /// `path` = path + optional query, normally starting with `/` (may be
    /// empty), as it came in the request: it is normalised here
    /// ([`normalize_path`]) exactly as url entries were at import.
    ///
    /// Same as [`lookup_request`](Self::lookup_request) with scheme `http`
    /// (the scheme only matters to adblock patterns that name one).
    pub fn lookup(&self, host: &str, path: &str) -> CategorySet {
        self.lookup_request("http", host, path)
    }

    /// Categories of a request to `scheme://host/path` (`scheme` lowercase:
    /// `http`, `https`; a CONNECT tunnel is `https` with an empty path).
    pub fn lookup_request(&self, scheme: &str, host: &str, path: &str) -> CategorySet {
        let mut buf = [0u8; 256];
        match fast_host(host, &mut buf) {
            Some(n) => self.lookup_norm(scheme, &buf[..n], path),
            None => match normalize_host(host) {
                Ok(h) => self.lookup_norm(scheme, h.as_bytes(), path),
                Err(_) => CategorySet::empty(),
            },
        }
    }

    /// Whether the path or scheme of a request to `host` can change its
    /// categories: some url entry is listed under the host, or expressions
    /// or adblock URL patterns are loaded. When false, every request to the
    /// host has the categories of `lookup_request(_, host, "")` (callers
    /// that evaluate many requests, such as a policy dry run, group them).
    pub fn path_matters(&self, host: &str) -> bool {
        if self.regexes.is_some() || self.patterns.is_some() {
            return true;
        }
        if self.url_hosts.is_empty() {
            return false;
        }
        let mut buf = [0u8; 256];
        let owned;
        let h: &[u8] = match fast_host(host, &mut buf) {
            Some(n) => &buf[..n],
            None => match normalize_host(host) {
                Ok(h) => {
                    owned = h;
                    owned.as_bytes()
                }
                Err(_) => return false,
            },
        };
        let uh = if is_ip(h) { h } else { strip_www(h) };
        self.url_hosts.get(hash_key(uh), uh).is_some()
    }

    /// Convenience: full URL (`http://h:p/path?q`, `HTTPS://...`, or
    /// `host/path`, taken as `http`).
    pub fn lookup_url(&self, url: &str) -> CategorySet {
        let (host, path) = split_url(url);
        let scheme = url
            .trim()
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .filter(|s| !s.contains(['/', '.', '?']))
            .unwrap_or_else(|| "http".into());
        self.lookup_request(&scheme, host, path)
    }

    /// `host` is normalised (lowercase ASCII, no port/trailing dot).
    fn lookup_norm(&self, scheme: &str, host: &[u8], path: &str) -> CategorySet {
        let ip = is_ip(host);
        let mut found = Found::default();
        let mut set = CategorySet::empty();
        let mut excluded = CategorySet::empty();
        // Pre-finish hash states of the label suffixes (for tagged keys).
        const MAXT: usize = 24;
        let mut suffix_states = [(0usize, 0u64); MAXT];
        let mut n_states = 0;
        let mut full_state = None;
        let check_exc = !self.exceptions.is_empty();
        let mut url_hash = None;
        if ip {
            let h = hash_key(host);
            if let Some(v) = self.domains.get(h, host) {
                set = set.union(self.palette[v as usize]);
            }
            if check_exc {
                if let Some(v) = self.exceptions.get(h, host) {
                    excluded = self.palette[v as usize];
                }
            }
        } else if !self.domains.is_empty() || check_exc {
            // One right-to-left pass gives every label-suffix hash. Touch all
            // their home slots (and the url-host slot) before probing, so the
            // cache misses overlap instead of queueing one after another.
            const MAXS: usize = 24;
            let mut starts = [0usize; MAXS];
            let mut hashes = [0u64; MAXS];
            let mut n = 0;
            // The url-host key is the www-stripped host: a label suffix too.
            let url_start = host.len() - strip_www(host).len();
            let mut h = hash_start();
            let mut i = host.len();
            while i > 0 {
                i -= 1;
                h = hash_step(h, host[i]);
                if i == url_start {
                    url_hash = Some(hash_finish(h));
                }
                if i == 0 || host[i - 1] == b'.' {
                    if n_states < MAXT {
                        suffix_states[n_states] = (i, h);
                        n_states += 1;
                    }
                    if i == 0 {
                        full_state = Some(h);
                    }
                    if n == MAXS {
                        // Absurdly deep host: fall back to probing as we go.
                        let fh = hash_finish(h);
                        if let Some(v) = self.domains.get(fh, &host[i..]) {
                            set = set.union(self.palette[v as usize]);
                        }
                        if check_exc {
                            if let Some(v) = self.exceptions.get(fh, &host[i..]) {
                                excluded = excluded.union(self.palette[v as usize]);
                            }
                        }
                    } else {
                        let fh = hash_finish(h);
                        if filter_bit(&self.filter, fh) {
                            starts[n] = i;
                            hashes[n] = fh;
                            n += 1;
                        }
                    }
                }
            }
            let mut touch = 0u64;
            for &fh in &hashes[..n] {
                touch ^= self.domains.home_slot(fh);
            }
            if let Some(uhh) = url_hash {
                if filter_bit(&self.filter, uhh) {
                    touch ^= self.url_hosts.home_slot(uhh);
                }
            }
            std::hint::black_box(touch);
            for k in 0..n {
                let suffix = &host[starts[k]..];
                if let Some(v) = self.domains.get(hashes[k], suffix) {
                    set = set.union(self.palette[v as usize]);
                }
                if check_exc {
                    if let Some(v) = self.exceptions.get(hashes[k], suffix) {
                        excluded = excluded.union(self.palette[v as usize]);
                    }
                }
            }
        }
        found.add(set, false, false);
        found.add(excluded, true, false);
        if self.tags != 0 {
            let full_state = full_state.unwrap_or_else(|| {
                host.iter()
                    .rev()
                    .fold(hash_start(), |h, &b| hash_step(h, b))
            });
            if ip {
                suffix_states[0] = (0, full_state);
                n_states = 1;
            }
            if self.tags & TAG_IMPORTANT != 0 {
                for &(start, state) in &suffix_states[..n_states] {
                    self.probe_tagged(KEY_IMPORTANT, &host[start..], state, true, &mut found);
                }
            }
            if self.tags & TAG_EXACT != 0 {
                self.probe_tagged(KEY_EXACT, host, full_state, false, &mut found);
            }
            if self.tags & TAG_IMPORTANT_EXACT != 0 {
                self.probe_tagged(KEY_IMPORTANT_EXACT, host, full_state, true, &mut found);
            }
        }
        let mut set = CategorySet::empty();
        if !self.url_hosts.is_empty() {
            let uh = if ip { host } else { strip_www(host) };
            let uhh = url_hash.unwrap_or_else(|| hash_key(uh));
            if !filter_bit(&self.filter, uhh) {
                // no url entries for this host
            } else if let Some(hi) = self.url_hosts.get(uhh, uh) {
                set = set.union(self.url_lookup(hi as usize, path));
            }
        }
        if let Some(rx) = &self.regexes {
            let mut target = String::with_capacity(host.len() + path.len() + 1);
            target.push_str(std::str::from_utf8(host).unwrap_or(""));
            target.push_str(&normalize_path(path));
            for m in rx.set.matches(&target).iter() {
                set.insert(rx.cats[m]);
            }
        }
        found.add(set, false, false);
        if let Some(p) = &self.patterns {
            self.match_patterns(p, scheme, host, path, &mut found);
        }
        found.result()
    }

    /// Probes the domain and exception tables for `tag + suffix`, whose
    /// right-to-left hash state without the tag is `state`.
    fn probe_tagged(
        &self,
        tag: &[u8],
        suffix: &[u8],
        state: u64,
        important: bool,
        found: &mut Found,
    ) {
        let n = tag.len() + suffix.len();
        if n > 255 {
            return;
        }
        let h = hash_finish(tag.iter().rev().fold(state, |h, &b| hash_step(h, b)));
        if !filter_bit(&self.filter, h) {
            return;
        }
        let mut buf = [0u8; 256];
        buf[..tag.len()].copy_from_slice(tag);
        buf[tag.len()..n].copy_from_slice(suffix);
        let key = &buf[..n];
        if let Some(v) = self.domains.get(h, key) {
            found.add(self.palette[v as usize], false, important);
        }
        if let Some(v) = self.exceptions.get(h, key) {
            found.add(self.palette[v as usize], true, important);
        }
    }

    /// Adblock URL patterns against `scheme://host/normalised-path`.
    fn match_patterns(
        &self,
        p: &Patterns,
        scheme: &str,
        host: &[u8],
        path: &str,
        found: &mut Found,
    ) {
        let mut url = String::with_capacity(scheme.len() + 3 + host.len() + path.len() + 1);
        url.push_str(&scheme.to_ascii_lowercase());
        url.push_str("://");
        url.push_str(std::str::from_utf8(host).unwrap_or(""));
        url.push_str(&normalize_path(path));
        let mut hit = |i: usize| {
            let r = &self.pattern_src[i];
            let s: CategorySet = [r.cat].into_iter().collect();
            found.add(s, r.exception, r.important);
        };
        if let Some(ac) = &p.substrings {
            for m in ac.find_overlapping_iter(url.as_bytes()) {
                hit(p.substring_rule[m.pattern().as_usize()]);
            }
        }
        let mut candidates: Vec<usize> = p.always.clone();
        if let Some(ac) = &p.literals {
            candidates.extend(
                ac.find_overlapping_iter(url.as_bytes())
                    .map(|m| p.literal_rule[m.pattern().as_usize()]),
            );
        }
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            if p.regexes[i].as_ref().is_some_and(|r| r.is_match(&url)) {
                hit(i);
            }
        }
    }

    /// Union of the sets of every url entry of host `hi` that is a prefix of
    /// the normalised `path` ([`normalize_path`]).
    fn url_lookup(&self, hi: usize, path: &str) -> CategorySet {
        let lo = self.url_ranges[hi] as usize;
        let hi_end = self.url_ranges[hi + 1] as usize;
        let entries = &self.url_entries[lo..hi_end];
        let path = normalize_path(path);
        let mut q: &[u8] = path.as_bytes();
        let key = |e: &UrlEntry| &self.url_arena[e.off as usize..(e.off + e.len) as usize];
        let mut set = CategorySet::empty();
        // Find every entry that is a prefix of q: take the largest entry <= q;
        // if it is a prefix, record it and continue with q minus its last
        // byte; else continue with q cut to the common prefix. Each step
        // shortens q, so this ends after at most |q| + 1 binary searches
        // (in practice one or two).
        loop {
            let n = entries.partition_point(|e| key(e) <= q);
            if n == 0 {
                break;
            }
            let e = &entries[n - 1];
            let k = key(e);
            if q.starts_with(k) {
                set = set.union(self.palette[e.set as usize]);
                if k.is_empty() {
                    break;
                }
                q = &q[..k.len() - 1];
            } else {
                let l = k.iter().zip(q).take_while(|(a, b)| a == b).count();
                q = &q[..l];
            }
        }
        set
    }

    /// Heap bytes owned by the matcher (arenas, tables, palette, names).
    pub fn heap_bytes(&self) -> usize {
        let mut n =
            self.domains.heap_bytes() + self.exceptions.heap_bytes() + self.url_hosts.heap_bytes();
        n += self.url_ranges.capacity() * 4
            + self.url_entries.capacity() * std::mem::size_of::<UrlEntry>();
        n += self.url_arena.capacity();
        n += self.palette.capacity() * std::mem::size_of::<CategorySet>();
        n += self.names.iter().map(|s| s.capacity() + 24).sum::<usize>();
        n += self.usage.capacity() * std::mem::size_of::<Option<Usage>>();
        n += self
            .expr_src
            .iter()
            .map(|(_, s)| s.capacity() + 32)
            .sum::<usize>();
        n += self.filter.capacity() * 8;
        n
    }

    /// Number of distinct entries (domains + url entries + exceptions +
    /// expressions).
    pub fn entry_count(&self) -> usize {
        self.domains.len
            + self.url_entries.len()
            + self.exceptions.len
            + self.expr_src.len()
            + self.pattern_src.len()
    }
}

pub(crate) fn compile_regexes(src: &[(CategoryId, String)]) -> Result<Regexes, CategoryError> {
    let set = regex::RegexSetBuilder::new(src.iter().map(|(_, r)| r.as_str()))
        .size_limit(64 << 20)
        .build()
        .map_err(|e| CategoryError::BadRegex {
            file: "<expressions>".into(),
            line: 0,
            reason: e.to_string(),
        })?;
    Ok(Regexes {
        set,
        cats: src.iter().map(|(c, _)| *c).collect(),
    })
}
