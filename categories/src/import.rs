//! [`MatcherBuilder`]: list importers.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::normalize::{normalize_host, split_url, strip_www};
use crate::set::MAX_CATEGORIES;
use crate::{CategoryError, CategoryId, CategorySet, ImportReport, ListFormat, Matcher, Usage};

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

/// Finds `base`, `base.gz`, or the split parts `base.0`, `base.1`, … (each
/// optionally `.gz`) in `dir`. Returns the part paths in order.
fn find_list(dir: &Path, base: &str) -> Vec<PathBuf> {
    for cand in [base.to_string(), format!("{base}.gz")] {
        let p = dir.join(&cand);
        if p.is_file() {
            return vec![p];
        }
    }
    let mut parts = Vec::new();
    for n in 0.. {
        let plain = dir.join(format!("{base}.{n}"));
        let gz = dir.join(format!("{base}.{n}.gz"));
        if plain.is_file() {
            parts.push(plain);
        } else if gz.is_file() {
            parts.push(gz);
        } else {
            break;
        }
    }
    parts
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
                let parts = find_list(&path, base);
                if parts.is_empty() {
                    continue;
                }
                any = true;
                let src = read_parts(&parts)?;
                report.files += parts.len();
                let r = self.import_source(&cat, &src, ListFormat::SquidGuardDir, kind);
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
        let mut off = 0;
        for (i, raw) in src.data.split(|&b| b == b'\n').enumerate() {
            let start = off;
            off += raw.len() + 1;
            let res = match std::str::from_utf8(raw) {
                Ok(line) => self.import_line(cat, line, format, kind, &mut rep, src, i + 1, start),
                Err(_) => Err("not valid UTF-8".to_string()),
            };
            if let Err(reason) = res {
                let (file, line) = src.locate(i + 1, start);
                rep.error(file, line, reason);
            }
        }
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
    ) -> Result<(), String> {
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
        let adblockish = line.starts_with("||") || line.starts_with("@@");
        match format {
            ListFormat::Adblock => return self.adblock_line(cat, line, rep),
            ListFormat::Auto if adblockish => return self.adblock_line(cat, line, rep),
            ListFormat::Auto if line.starts_with('!') || line.starts_with('[') => return Ok(()),
            _ => {}
        }
        let line = strip_comment(line);
        let mut toks = line.split_whitespace();
        let Some(first) = toks.next() else {
            return Ok(());
        };
        let rest: Vec<&str> = toks.collect();
        let first_is_ip = first.parse::<std::net::IpAddr>().is_ok();
        let hosts = match format {
            ListFormat::Hosts => true,
            ListFormat::Auto => first_is_ip && !rest.is_empty(),
            _ => false,
        };
        if hosts {
            if !first_is_ip {
                return Err(format!(
                    "hosts line must start with an IP address, found {first:?}"
                ));
            }
            if rest.is_empty() {
                return Err("hosts line without a host name".into());
            }
            for name in rest {
                if HOSTS_SKIP.contains(&name.to_ascii_lowercase().as_str()) {
                    continue;
                }
                self.push_domain(cat, name)?;
                rep.domains += 1;
            }
            return Ok(());
        }
        if !rest.is_empty() {
            return Err("unexpected text after the entry".into());
        }
        let as_url = match kind {
            Kind::Urls => true,
            Kind::Domains => false,
            _ => first.contains('/'),
        };
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
        rep: &mut ImportReport,
    ) -> Result<(), String> {
        if line.starts_with('!') || line.starts_with('[') {
            return Ok(());
        }
        let (exception, body) = match line.strip_prefix("@@") {
            Some(b) => (true, b),
            None => (false, line),
        };
        let Some(body) = body.strip_prefix("||") else {
            return Err("unsupported adblock rule (only ||domain^ and @@||domain^)".into());
        };
        let end = body.find(['^', '$', '/', '|', '*']).unwrap_or(body.len());
        let (dom, tail) = body.split_at(end);
        let tail = tail.strip_prefix('^').unwrap_or(tail);
        let tail = tail.strip_prefix('|').unwrap_or(tail);
        if !tail.is_empty() {
            return Err(format!(
                "unsupported adblock rule (options or path: {tail:?})"
            ));
        }
        let host = normalize_host(dom)?;
        if exception {
            self.exceptions.push((host, cat));
            rep.exceptions += 1;
        } else {
            self.push_normalized_domain(cat, &host);
            rep.domains += 1;
        }
        Ok(())
    }

    fn push_domain(&mut self, cat: CategoryId, raw: &str) -> Result<(), String> {
        let d = raw
            .strip_prefix("*.")
            .or_else(|| raw.strip_prefix('.'))
            .unwrap_or(raw);
        let host = normalize_host(d)?;
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
        let mut p = path.to_ascii_lowercase();
        if !p.starts_with('/') {
            p.insert(0, '/');
        }
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
