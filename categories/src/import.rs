//! [`MatcherBuilder`]: list importers.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::adblock;
use crate::matcher::{PatternSrc, KEY_EXACT, KEY_IMPORTANT, KEY_IMPORTANT_EXACT};
use crate::normalize::{normalize_host, normalize_path, split_url, strip_www};
use crate::set::MAX_CATEGORIES;
use crate::{
    CategoryError, CategoryId, CategorySet, HostsMatch, ImportReport, ListFormat, ListReport,
    Matcher, Usage,
};

/// What a line of a list is, when the file says so (squidGuard layout).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Domains,
    Urls,
    Expressions,
    /// Decide per line from the format.
    Any,
}

/// Collects entries; [`MatcherBuilder::build`] compiles them.
#[derive(Default)]
pub struct MatcherBuilder {
    pub(crate) names: Vec<String>,
    pub(crate) usage: Vec<Option<Usage>>,
    index: HashMap<String, CategoryId>,
    /// Domain arena: `[len][bytes]` per entry, plus (offset, category) items.
    pub(crate) dom_arena: Vec<u8>,
    pub(crate) dom_items: Vec<(u32, CategoryId)>,
    pub(crate) exceptions: Vec<(String, CategoryId)>,
    /// (www-stripped host, lowercased path starting with '/', category)
    pub(crate) urls: Vec<(String, String, CategoryId)>,
    /// (category, regex source, origin file, line)
    pub(crate) expressions: Vec<(CategoryId, String, PathBuf, usize)>,
    pub(crate) expressions_enabled: bool,
    pub(crate) too_many: Option<String>,
    /// Adblock URL patterns (see `adblock.rs`).
    pub(crate) patterns: Vec<PatternSrc>,
    hosts_match: HostsMatch,
}

/// Why a line was not imported.
enum Issue {
    /// The line is not a valid entry.
    Invalid(String),
    /// A valid rule that cannot be honoured (reported, not imported).
    Skipped(String),
}

impl From<String> for Issue {
    fn from(s: String) -> Self {
        Issue::Invalid(s)
    }
}

/// A byte buffer made of one or more files (split parts joined in order).
struct Source {
    data: Vec<u8>,
    /// (path, byte offset where the part starts, newlines before it)
    parts: Vec<(PathBuf, usize, usize)>,
}

impl Source {
    fn single(path: &Path, data: Vec<u8>) -> Self {
        Source {
            data,
            parts: vec![(path.to_path_buf(), 0, 0)],
        }
    }

    /// (file, 1-based line in that file) of the line that starts at byte
    /// `offset` and is line `global` (1-based) of the joined text.
    fn locate(&self, global: usize, offset: usize) -> (&Path, usize) {
        let k = self
            .parts
            .partition_point(|p| p.1 <= offset)
            .saturating_sub(1);
        let (p, _, nl) = &self.parts[k];
        (p, global - nl)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CategoryError> {
    let io = |source| CategoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Finds `base`, `base.gz`, or the split parts `base.<n>` (each optionally
/// `.gz`) in `dir`, returning the part paths in order. Any numeric suffix
/// is a part number (`.0`, `.00`, `.001`: `split -d`, `split -a 3`, 7-Zip);
/// the parts must run without a gap from 0 or 1, and a number may appear
/// once: a missing part would silently cut the list (and import its cut
/// last line as an entry), so it is an error naming the part.
fn find_list(dir: &Path, base: &str) -> Result<Vec<PathBuf>, CategoryError> {
    for cand in [base.to_string(), format!("{base}.gz")] {
        let p = dir.join(&cand);
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    let io = |source| CategoryError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut parts: Vec<(u64, String, PathBuf)> = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io)? {
        let ent = ent.map_err(io)?;
        let Some(name) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let digits = rest.strip_suffix(".gz").unwrap_or(rest);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(n) = digits.parse::<u64>() else {
            continue;
        };
        if ent.path().is_file() {
            parts.push((n, name, ent.path()));
        }
    }
    parts.sort();
    let invalid = |reason: String| CategoryError::InvalidInput {
        path: dir.join(base),
        reason,
    };
    if let Some(w) = parts.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(invalid(format!(
            "both {} and {} are part {} of the list; keep one",
            w[0].1, w[1].1, w[0].0
        )));
    }
    if let Some((first, name, _)) = parts.first() {
        if *first > 1 {
            return Err(invalid(format!(
                "the list starts at part {name}: the part(s) before it are missing"
            )));
        }
    }
    if let Some(w) = parts.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
        let width = w[0].1.len() - base.len() - 1 - if w[0].1.ends_with(".gz") { 3 } else { 0 };
        return Err(invalid(format!(
            "part {base}.{:0width$} is missing (found {} and then {}); later parts would be dropped and the cut last line imported",
            w[0].0 + 1,
            w[0].1,
            w[1].1,
        )));
    }
    Ok(parts.into_iter().map(|(_, _, p)| p).collect())
}

fn read_parts(parts: &[PathBuf]) -> Result<Source, CategoryError> {
    let mut src = Source {
        data: Vec::new(),
        parts: Vec::new(),
    };
    let mut newlines = 0;
    for p in parts {
        let bytes = read_file(p)?;
        src.parts.push((p.clone(), src.data.len(), newlines));
        newlines += bytes.iter().filter(|&&b| b == b'\n').count();
        src.data.extend_from_slice(&bytes);
    }
    Ok(src)
}

/// Kind implied by a squidGuard file name (`domains`, `urls.1.gz`, ...).
fn kind_from_name(path: &Path) -> Kind {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
    let base = name.split('.').next().unwrap_or("");
    match base {
        "domains" => Kind::Domains,
        "urls" => Kind::Urls,
        "expressions" | "very_restrictive_expression" => Kind::Expressions,
        _ => Kind::Any,
    }
}

/// The format of a file read with [`ListFormat::Auto`], decided once for the
/// whole file (per-line guessing turned adblock substring rules such as
/// `-ads1.` into domain names): adblock when a line starts with `||`, `@@`,
/// `|`, `!` or `[Adblock`; hosts when most entry lines are `IP name…`;
/// otherwise one domain (or `host/path` url) per line.
fn sniff_format(data: &[u8]) -> ListFormat {
    let (mut entries, mut hosts) = (0usize, 0usize);
    for raw in data.split(|&b| b == b'\n').take(20_000) {
        let Ok(line) = std::str::from_utf8(raw) else {
            continue;
        };
        let t = line.trim();
        if t.starts_with("||")
            || t.starts_with("@@")
            || t.starts_with('|')
            || t.starts_with('!')
            || t.starts_with("[Adblock")
        {
            return ListFormat::Adblock;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        entries += 1;
        let mut toks = t.split_whitespace();
        let first_is_ip = toks
            .next()
            .is_some_and(|f| f.parse::<std::net::IpAddr>().is_ok());
        if first_is_ip && toks.next().is_some() {
            hosts += 1;
        }
    }
    if hosts > 0 && hosts * 2 >= entries {
        ListFormat::Hosts
    } else {
        ListFormat::Plain
    }
}

/// Keys of the rules that `$badfilter` rules of this list cancel.
fn badfilter_keys(data: &[u8]) -> HashSet<String> {
    let mut keys = HashSet::new();
    for raw in data.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(raw) else {
            continue;
        };
        if !line.contains("badfilter") {
            continue;
        }
        if let Ok(adblock::Parsed::Rule(r)) = adblock::parse(line.trim()) {
            if r.badfilter {
                keys.insert(r.key);
            }
        }
    }
    keys
}

fn format_name(format: ListFormat, kind: Kind) -> &'static str {
    match (format, kind) {
        (_, Kind::Expressions) => "expressions",
        (ListFormat::Hosts, _) => "hosts",
        (ListFormat::Adblock, _) => "adblock",
        (_, Kind::Urls) => "urls",
        (ListFormat::SquidGuardDir, _) | (_, Kind::Domains) => "domains",
        _ => "plain",
    }
}

fn looks_like_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://") || l.starts_with("302:")
}

/// [`normalize_host`] with a message that names the real problem when the
/// text is a URL or a rule rather than a host name.
fn normalize_entry_host(name: &str, what: &str) -> Result<String, String> {
    if name.contains("://") || name.contains('/') {
        return Err(format!(
            "{name:?} is a URL, not a host name: {what} takes host names only (put URLs in a squidGuard `urls` list or a `urllist` source)"
        ));
    }
    if name.starts_with("||") || name.starts_with("@@") || name.ends_with('^') || name.contains('$')
    {
        return Err(format!(
            "{name:?} is an adblock rule: read this list with format = \"adblock\" (CLI: --format adblock)"
        ));
    }
    if name.contains('*') {
        return Err(format!(
            "{name:?}: wildcards other than a leading `*.` are not host names (an adblock list? use format = \"adblock\")"
        ));
    }
    normalize_host(name)
}

/// A list with entry lines that gave no entry at all is refused: a wrong
/// format or a broken file must not load as an empty category.
fn refuse_empty(path: &Path, r: &ImportReport) -> Result<(), CategoryError> {
    for l in &r.lists {
        if l.lines > 0 && l.entries == 0 {
            let first = r
                .first_errors
                .first()
                .map(|e| format!("; first problem: {e}"))
                .unwrap_or_default();
            return Err(CategoryError::InvalidInput {
                path: path.to_path_buf(),
                reason: format!(
                    "{} line(s) read as {} gave no entry{first}",
                    l.lines, l.format
                ),
            });
        }
    }
    Ok(())
}

const HOSTS_SKIP: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Removes a `#` comment that starts the line or follows whitespace.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line
}

impl MatcherBuilder {
    /// Empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Id of `name`, creating the category if needed.
    fn category(&mut self, name: &str) -> Result<CategoryId, String> {
        if let Some(&id) = self.index.get(name) {
            return Ok(id);
        }
        if self.names.len() >= MAX_CATEGORIES {
            self.too_many.get_or_insert_with(|| name.to_string());
            return Err(format!("too many categories (at most {MAX_CATEGORIES})"));
        }
        let id = self.names.len() as CategoryId;
        self.names.push(name.to_string());
        self.usage.push(None);
        self.index.insert(name.to_string(), id);
        Ok(id)
    }

    /// Imports every category directory under `dir` (squidGuard/UT1 layout);
    /// category name = subdirectory name. `only`: if `Some`, import just those
    /// category names. Subdirectories without any list file are ignored.
    pub fn add_squidguard_dir(
        &mut self,
        dir: &Path,
        only: Option<&[String]>,
    ) -> Result<ImportReport, CategoryError> {
        let io = |source| CategoryError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut subdirs: Vec<(String, PathBuf)> = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(io)? {
            let ent = ent.map_err(io)?;
            let path = ent.path();
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            if only.is_some_and(|o| !o.iter().any(|x| x == &name)) {
                continue;
            }
            subdirs.push((name, path));
        }
        subdirs.sort();
        let mut report = ImportReport::default();
        for (name, path) in subdirs {
            let lists: Vec<(&str, Kind, String)> = vec![
                ("domains", Kind::Domains, name.clone()),
                ("urls", Kind::Urls, name.clone()),
                ("expressions", Kind::Expressions, name.clone()),
                (
                    "very_restrictive_expression",
                    Kind::Expressions,
                    format!("{name}.very_restrictive"),
                ),
            ];
            let mut any = false;
            for (base, kind, cat) in lists {
                let parts = find_list(&path, base)?;
                if parts.is_empty() {
                    continue;
                }
                any = true;
                let src = read_parts(&parts)?;
                report.files += parts.len();
                let r = self.import_source(&cat, &src, ListFormat::SquidGuardDir, kind);
                refuse_empty(&parts[0], &r)?;
                report.merge(r);
            }
            if !any {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(path.join("usage")) {
                let usage = text.lines().find_map(|l| match l.trim() {
                    "black" => Some(Usage::Black),
                    "white" => Some(Usage::White),
                    _ => None,
                });
                if let Some(u) = usage {
                    if let Ok(id) = self.category(&name) {
                        self.usage[id as usize] = Some(u);
                        report.usage.push((name.clone(), u));
                    }
                }
            }
        }
        if let Some(name) = &self.too_many {
            return Err(CategoryError::TooManyCategories { name: name.clone() });
        }
        Ok(report)
    }

    /// Imports one list file (hosts / plain / adblock / squidGuard `domains`
    /// or `urls` file, plain or gzip) into category `category`.
    pub fn add_list_file(
        &mut self,
        category: &str,
        path: &Path,
        format: ListFormat,
    ) -> Result<ImportReport, CategoryError> {
        if path.is_dir() {
            return match format {
                ListFormat::SquidGuardDir | ListFormat::Auto => self.add_squidguard_dir(path, None),
                _ => Err(CategoryError::InvalidInput {
                    path: path.to_path_buf(),
                    reason: "is a directory".into(),
                }),
            };
        }
        let src = Source::single(path, read_file(path)?);
        let kind = kind_from_name(path);
        let mut r = self.import_source(category, &src, format, kind);
        r.files += 1;
        refuse_empty(path, &r)?;
        Ok(r)
    }

    /// Same as [`add_list_file`](Self::add_list_file) from in-memory text
    /// (`origin` is used in [`LineError::file`](crate::LineError) and, for
    /// [`ListFormat::SquidGuardDir`], to tell domains from urls).
    pub fn add_list_text(
        &mut self,
        category: &str,
        origin: &Path,
        text: &str,
        format: ListFormat,
    ) -> ImportReport {
        let src = Source::single(origin, text.as_bytes().to_vec());
        self.import_source(category, &src, format, kind_from_name(origin))
    }

    fn import_source(
        &mut self,
        category: &str,
        src: &Source,
        format: ListFormat,
        kind: Kind,
    ) -> ImportReport {
        let mut rep = ImportReport::default();
        let cat = match self.category(category) {
            Ok(c) => c,
            Err(e) => {
                rep.error(&src.parts[0].0, 0, e);
                return rep;
            }
        };
        rep.categories.push(category.to_string());
        let kind = if format == ListFormat::SquidGuardDir && kind == Kind::Any {
            Kind::Domains
        } else {
            kind
        };
        let format = if format == ListFormat::Auto && kind != Kind::Expressions {
            sniff_format(&src.data)
        } else {
            format
        };
        let badfiltered = if format == ListFormat::Adblock {
            badfilter_keys(&src.data)
        } else {
            HashSet::new()
        };
        let mut content_lines = 0;
        let patterns_before = self.patterns.len();
        let mut off = 0;
        for (i, raw) in src.data.split(|&b| b == b'\n').enumerate() {
            let start = off;
            off += raw.len() + 1;
            let res = match std::str::from_utf8(raw) {
                Ok(line) => {
                    let t = line.trim();
                    if !(t.is_empty() || t.starts_with('#') || t.starts_with('!')) {
                        content_lines += 1;
                    }
                    if format == ListFormat::Adblock && kind != Kind::Expressions {
                        self.adblock_line(cat, t, &badfiltered, &mut rep)
                    } else {
                        self.import_line(cat, line, format, kind, &mut rep, src, i + 1, start)
                    }
                }
                Err(_) => {
                    content_lines += 1;
                    Err(Issue::Invalid("not valid UTF-8".to_string()))
                }
            };
            let (file, line) = src.locate(i + 1, start);
            match res {
                Ok(()) => {}
                Err(Issue::Invalid(reason)) => rep.error(file, line, reason),
                Err(Issue::Skipped(reason)) => rep.skipped(file, line, reason),
            }
        }
        rep.lists.push(ListReport {
            path: src.parts[0].0.clone(),
            parts: src.parts.len(),
            category: category.to_string(),
            format: format_name(format, kind),
            lines: content_lines,
            entries: rep.entries() + self.patterns.len() - patterns_before,
            skipped: rep.skipped_lines,
            invalid: rep.invalid_lines,
        });
        rep
    }

    #[allow(clippy::too_many_arguments)]
    fn import_line(
        &mut self,
        cat: CategoryId,
        line: &str,
        format: ListFormat,
        kind: Kind,
        rep: &mut ImportReport,
        src: &Source,
        global_line: usize,
        start: usize,
    ) -> Result<(), Issue> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        if kind == Kind::Expressions {
            let (file, l) = src.locate(global_line, start);
            self.expressions
                .push((cat, line.to_string(), file.to_path_buf(), l));
            rep.expressions += 1;
            return Ok(());
        }
        let line = strip_comment(line);
        let mut toks = line.split_whitespace();
        let Some(first) = toks.next() else {
            return Ok(());
        };
        let rest: Vec<&str> = toks.collect();
        let first_is_ip = first.parse::<std::net::IpAddr>().is_ok();
        if format == ListFormat::Hosts {
            if !first_is_ip {
                return Err(Issue::Invalid(format!(
                    "hosts line must start with an IP address, found {first:?}"
                )));
            }
            if rest.is_empty() {
                return Err(Issue::Invalid("hosts line without a host name".into()));
            }
            let exact = self.hosts_match == HostsMatch::Exact;
            for name in rest {
                if HOSTS_SKIP.contains(&name.to_ascii_lowercase().as_str()) {
                    continue;
                }
                let host = normalize_entry_host(name, "a hosts file")?;
                if exact {
                    self.push_tagged_domain(cat, KEY_EXACT, &host);
                } else {
                    self.push_normalized_domain(cat, &host);
                }
                rep.domains += 1;
            }
            return Ok(());
        }
        let as_url = match kind {
            Kind::Urls => true,
            Kind::Domains => false,
            _ => first.contains('/'),
        };
        match rest.as_slice() {
            [] => {}
            // squidGuard: `entry redirect-url` redirects this entry.
            [target] if format == ListFormat::SquidGuardDir && looks_like_url(target) => {
                let (file, l) = src.locate(global_line, start);
                rep.redirects_ignored += 1;
                rep.note(
                    file,
                    l,
                    format!("entry imported (it blocks); its squidGuard redirect {target:?} is not used: komugate shows its block page"),
                );
            }
            _ => {
                return Err(Issue::Invalid(format!(
                    "unexpected text after the entry: {:?} (one entry per line; a squidGuard per-entry redirect is `entry http://…`)",
                    rest.join(" ")
                )))
            }
        }
        if as_url {
            self.push_url(cat, first)?;
            rep.urls += 1;
        } else {
            self.push_domain(cat, first)?;
            rep.domains += 1;
        }
        Ok(())
    }

    fn adblock_line(
        &mut self,
        cat: CategoryId,
        line: &str,
        badfiltered: &HashSet<String>,
        rep: &mut ImportReport,
    ) -> Result<(), Issue> {
        let rule = match adblock::parse(line)? {
            adblock::Parsed::Nothing => return Ok(()),
            adblock::Parsed::Skip(reason) => return Err(Issue::Skipped(reason)),
            adblock::Parsed::Rule(r) => r,
        };
        if rule.badfilter {
            return Ok(());
        }
        if badfiltered.contains(&rule.key) {
            return Err(Issue::Skipped(format!(
                "cancelled by `{}$badfilter` in the same list",
                rule.key
            )));
        }
        let (exc, imp) = (rule.exception, rule.important);
        let host_key = |tag_exact: bool, host: &str| -> String {
            let tag: &[u8] = match (imp, tag_exact) {
                (false, false) => b"",
                (false, true) => KEY_EXACT,
                (true, false) => KEY_IMPORTANT,
                (true, true) => KEY_IMPORTANT_EXACT,
            };
            let mut k = String::from_utf8_lossy(tag).into_owned();
            k.push_str(host);
            k
        };
        match rule.target {
            adblock::Target::Subdomains(h) => {
                let k = host_key(false, &h);
                self.push_key(cat, k, exc);
            }
            adblock::Target::Exact(h) => {
                let k = host_key(true, &h);
                self.push_key(cat, k, exc);
            }
            adblock::Target::Substring(text) => self.patterns.push(PatternSrc {
                cat,
                exception: exc,
                important: imp,
                regex: false,
                text,
                literal: String::new(),
            }),
            adblock::Target::Regex { regex, literal } => {
                if let Err(e) = regex::Regex::new(&regex) {
                    return Err(Issue::Invalid(format!(
                        "cannot compile the rule's pattern: {e}"
                    )));
                }
                self.patterns.push(PatternSrc {
                    cat,
                    exception: exc,
                    important: imp,
                    regex: true,
                    text: regex,
                    literal,
                })
            }
        }
        if exc {
            rep.exceptions += 1;
        } else {
            rep.domains += 1;
        }
        Ok(())
    }

    /// A (possibly tagged) domain-table key: block entry or exception.
    fn push_key(&mut self, cat: CategoryId, key: String, exception: bool) {
        if exception {
            self.exceptions.push((key, cat));
        } else {
            let off = self.dom_arena.len() as u32;
            self.dom_arena.push(key.len() as u8);
            self.dom_arena.extend_from_slice(key.as_bytes());
            self.dom_items.push((off, cat));
        }
    }

    fn push_tagged_domain(&mut self, cat: CategoryId, tag: &[u8], host: &str) {
        let mut k = String::from_utf8_lossy(tag).into_owned();
        k.push_str(host);
        self.push_key(cat, k, false);
    }

    fn push_domain(&mut self, cat: CategoryId, raw: &str) -> Result<(), String> {
        let d = raw
            .strip_prefix("*.")
            .or_else(|| raw.strip_prefix('.'))
            .unwrap_or(raw);
        let host = normalize_entry_host(d, "a domain list")?;
        self.push_normalized_domain(cat, &host);
        Ok(())
    }

    fn push_normalized_domain(&mut self, cat: CategoryId, host: &str) {
        let off = self.dom_arena.len() as u32;
        self.dom_arena.push(host.len() as u8);
        self.dom_arena.extend_from_slice(host.as_bytes());
        self.dom_items.push((off, cat));
    }

    fn push_url(&mut self, cat: CategoryId, raw: &str) -> Result<(), String> {
        let (host, path) = split_url(raw);
        let host = normalize_host(host)?;
        let key_host =
            String::from_utf8(strip_www(host.as_bytes()).to_vec()).map_err(|e| e.to_string())?;
        let p = normalize_path(path).into_owned();
        self.urls.push((key_host, p, cat));
        Ok(())
    }

    /// Adds a domain entry (matches it and its subdomains).
    pub fn add_domain(&mut self, category: &str, domain: &str) -> Result<(), String> {
        let cat = self.category(category)?;
        self.push_domain(cat, domain.trim())
    }

    /// Adds a url entry (`host/path` prefix, scheme and `www.` ignored).
    pub fn add_url(&mut self, category: &str, url: &str) -> Result<(), String> {
        let cat = self.category(category)?;
        self.push_url(cat, url.trim())
    }

    /// Adds an exception: `category` is removed from the result for `domain`
    /// and its subdomains (what `@@||domain^` does).
    pub fn add_exception(&mut self, category: &str, domain: &str) -> Result<(), String> {
        let cat = self.category(category)?;
        let host = normalize_host(domain.trim())?;
        self.exceptions.push((host, cat));
        Ok(())
    }

    /// Adds a regular expression to `category` (see the crate docs).
    pub fn add_expression(&mut self, category: &str, regex: &str) -> Result<(), String> {
        let cat = self.category(category)?;
        self.expressions
            .push((cat, regex.to_string(), PathBuf::from("<api>"), 0));
        Ok(())
    }

    /// What the names of the hosts-format lists imported next cover
    /// (default [`HostsMatch::Subdomains`]).
    pub fn set_hosts_match(&mut self, m: HostsMatch) {
        self.hosts_match = m;
    }

    /// Compile (and match) expressions. Off by default.
    pub fn enable_expressions(&mut self, yes: bool) {
        self.expressions_enabled = yes;
    }

    /// Marks a category as black/white list (metadata only).
    pub fn set_usage(&mut self, category: &str, usage: Usage) -> Result<(), String> {
        let cat = self.category(category)?;
        self.usage[cat as usize] = Some(usage);
        Ok(())
    }

    /// Compiles the matcher.
    pub fn build(self) -> Result<Matcher, CategoryError> {
        if let Some(name) = self.too_many {
            return Err(CategoryError::TooManyCategories { name });
        }
        Matcher::compile(self)
    }

    /// Interning helper used by `build`.
    pub(crate) fn domain_key(&self, off: u32) -> &[u8] {
        let off = off as usize;
        let len = self.dom_arena[off] as usize;
        &self.dom_arena[off + 1..off + 1 + len]
    }
}

/// Interns category sets into a palette.
#[derive(Default)]
pub(crate) struct Palette {
    pub(crate) sets: Vec<CategorySet>,
    index: HashMap<CategorySet, u32>,
}

impl Palette {
    pub(crate) fn intern(&mut self, s: CategorySet) -> u32 {
        if let Some(&i) = self.index.get(&s) {
            return i;
        }
        let i = self.sets.len() as u32;
        self.sets.push(s);
        self.index.insert(s, i);
        i
    }
}
