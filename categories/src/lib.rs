//! Blocklist import and a compiled URL-category matcher for komugate.
//!
//! Pure library: no async runtime, no network; I/O only to read list files
//! and snapshots.
//!
//! # Import formats
//!
//! * **squidGuard / UT1 directory** ([`MatcherBuilder::add_squidguard_dir`]):
//!   one subdirectory per category holding `domains`, `urls`, and optionally
//!   `expressions` and `very_restrictive_expression`, plus a `usage` file
//!   (`black` / `white`, kept as metadata: [`Matcher::category_usage`]).
//!   Each list may be plain, gzip (`domains.gz`), or split into parts with
//!   any numeric suffix — `domains.0`, `domains.00`, `domains.001`, … (each
//!   optionally `.gz`), numbered from 0 or 1. Upstream splits **by bytes**
//!   (`split -b 50M`), so the parts are concatenated in order before the
//!   text is split into lines; errors still name the part file and its
//!   line. A gap in the numbering (or one number twice) is an error naming
//!   the missing part: the later parts would be lost and the cut last line
//!   imported as an entry. A squidGuard per-entry redirect (`entry
//!   http://…`) imports the entry (it blocks) and reports that the redirect
//!   is not used (the block page is shown instead).
//!   `very_restrictive_expression` goes to a separate category named
//!   `<category>.very_restrictive`, so a policy can opt into it.
//! * **hosts files**: `0.0.0.0 name…`, `127.0.0.1 name…`, `::1 name`, with
//!   `#` comments; `localhost`-style names are skipped. A name covers
//!   itself **and its subdomains** by default ([`HostsMatch::Subdomains`],
//!   like a squidGuard domain, so a school filter is not escaped by adding a
//!   label); [`MatcherBuilder::set_hosts_match`] with [`HostsMatch::Exact`]
//!   (policy: `match = "exact"`) gives the resolver meaning: that name only.
//! * **plain lists**: one domain per line (`#` comments; a leading `*.` or
//!   `.` is dropped; a line containing `/` is taken as a url entry).
//! * **adblock** (network rules at domain level; see `adblock.rs` for the
//!   full table): `||host^` host + subdomains, `|host^|` / `://host^`
//!   exactly that host (AdGuard DNS syntax), every other pattern (`||name.`
//!   any TLD, `.host^`, `IP^`, substrings such as `-ads1.`, `*` wildcards,
//!   paths) with its adblock meaning over `scheme://host/path` (substrings
//!   through an Aho-Corasick automaton, the others as regexes picked by a
//!   literal automaton); `@@` exceptions of every form; `$important`,
//!   `$badfilter` (within the same list), `$all`, `$document`. Rules a
//!   gateway cannot honour (type, party or page options, regex rules `/…/`,
//!   cosmetic rules) are reported with file:line and counted in
//!   [`ImportReport::skipped_lines`]; none is turned into another rule.
//! * [`ListFormat::Auto`]: a directory is a squidGuard tree; a file is
//!   sniffed **once, as a whole** (any line starting with `||`, `@@`, `|`,
//!   `!` or `[Adblock` → adblock; mostly `IP name` lines → hosts; else
//!   domains / urls), never line by line.
//!
//! Every entry is normalised: lowercase, trailing dot and port stripped,
//! IDN → punycode (UTS #46), IPv4 / IPv6 literals kept as (canonical) IPs.
//! Unreadable or invalid lines are counted in [`ImportReport::invalid_lines`];
//! the first [`MAX_REPORTED_ERRORS`] (with the skipped ones) are kept with
//! file, line and reason; the rest of the file is imported. A list with
//! entry lines that gives no entry at all is an error, not an empty
//! category. [`ImportReport::lists`] has the counts of every list file.
//!
//! # Matching semantics (squidGuard-compatible)
//!
//! * A **domain entry** matches that host and every subdomain, on label
//!   boundaries only: `amex.com` matches `amex.com` and `www.amex.com`, never
//!   `aamex.com`. Domain entries are not www-stripped (`www.x.com` does not
//!   match `x.com`).
//! * A **url entry** `host/path` matches by plain byte prefix on the string
//!   `host + path` (what squidGuard's url database does), after stripping
//!   from both the entry and the request: the scheme, userinfo, port, the
//!   fragment, and one leading `www`/`web`/`ftp` label with optional digits
//!   (`www2.`, `ftp1.`). The host must be equal (url entries do not cover
//!   subdomains); an entry without a path (`example.com`) is stored as
//!   `example.com/` and covers that whole host. The path compare is a plain
//!   prefix, *not* per segment: `example.com/foo` matches `/foo`, `/foo/bar`
//!   and also `/foobar` (as in squidGuard). Both the entry's path and the
//!   request's go through the same [`normalize_path`]: escapes of printable
//!   ASCII decoded (except `%2F`, `%3F`, `%23`, `%25`), repeated slashes
//!   collapsed, dot segments removed, lowercased (as squidGuard compares),
//!   so `/%76kdating`, `//vkdating` and `/x/../vkdating` are all
//!   `/vkdating`. The query string is part of the compared path (only its
//!   unreserved escapes are decoded).
//! * **IP-literal hosts** match IP entries exactly (no suffix walk); IPv6 in
//!   canonical form, brackets optional.
//! * **Expressions** (`expressions` files) are regexes (the `regex` crate's
//!   syntax, close to POSIX ERE), matched against `host + path` (normalised
//!   host without port, [`normalize_path`] of path+query). They are kept as text and only
//!   compiled when [`MatcherBuilder::enable_expressions`] is on (the setting
//!   is stored in snapshots); otherwise they never touch the lookup path.
//! * **Adblock exceptions** (`@@` rules) imported into category `C` remove
//!   `C` (only `C`) from the result for what they match, whatever matched it
//!   (domain, url or expression entries of `C`), except `$important` blocks,
//!   which only `$important` exceptions remove.
//! * A lookup returns a [`CategorySet`] (bitset of every matching category),
//!   not a boolean.
//!
//! # Representation
//!
//! Domain names live in one contiguous byte arena; an open-addressing table
//! of packed `u64` slots (arena offset, category-set palette index, hash
//! tag) is probed once per label suffix, using a right-to-left hash so all
//! suffix hashes come out of one pass over the host. Url entries are a
//! second table keyed by (www-stripped) host pointing to a sorted run of
//! paths searched by binary search. A one-hash Bloom filter (~8 bits per
//! key, ~1 MiB for UT1) sits in front of both tables so that suffixes that
//! are in no list rarely touch the big table; the remaining probes are
//! issued together so their cache misses overlap. Distinct category sets are interned in
//! a palette. [`Matcher::write_snapshot`] dumps these arrays behind a
//! versioned, CRC-32-checked header so they load with a few `memcpy`s.

mod adblock;
mod import;
mod labels;
mod matcher;
mod normalize;
mod set;
mod snapshot;
mod table;

use std::fmt;
use std::path::{Path, PathBuf};

pub use import::MatcherBuilder;
pub use labels::{category_label, category_label_ja, labelled_categories, CategoryLabel};
pub use matcher::Matcher;
pub use normalize::{normalize_host, normalize_path};
pub use set::{CategorySet, MAX_CATEGORIES};

/// Index into a matcher's category list.
pub type CategoryId = u16;

/// How many invalid lines an [`ImportReport`] keeps with their location.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Format of a list file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    /// squidGuard / UT1 layout. For a directory: every category below it. For
    /// a single file: `domains*` → domains, `urls*` → urls, `expressions` /
    /// `very_restrictive_expression` → expressions (by file name).
    SquidGuardDir,
    /// hosts file (`0.0.0.0 name`); what a name covers: [`HostsMatch`].
    Hosts,
    /// One domain per line (lines with `/` are url entries).
    Plain,
    /// Adblock / AdGuard DNS network rules (see the crate docs).
    Adblock,
    /// Directory → squidGuard; file → format detected once for the file.
    Auto,
}

/// `usage` metadata of a UT1 category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Meant as a block list.
    Black,
    /// Meant as an allow list.
    White,
}

/// One invalid line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Files read (each split part counts).
    pub files: usize,
    /// Domain (and IP) entries added (before de-duplication).
    pub domains: usize,
    /// Url entries added.
    pub urls: usize,
    /// Expression lines added.
    pub expressions: usize,
    /// Adblock exception entries added.
    pub exceptions: usize,
    /// Lines that could not be imported.
    pub invalid_lines: usize,
    /// Valid rules that cannot be honoured here (adblock options and forms
    /// that only make sense in a browser), reported and not imported.
    pub skipped_lines: usize,
    /// squidGuard entries imported with a per-entry redirect URL that
    /// komugate does not use (it shows its block page).
    pub redirects_ignored: usize,
    /// One line per list file (split parts joined count as one list).
    pub lists: Vec<ListReport>,
    /// The first [`MAX_REPORTED_ERRORS`] invalid lines.
    pub first_errors: Vec<LineError>,
    /// Categories touched, in import order.
    pub categories: Vec<String>,
    /// `usage` metadata found (UT1 dirs).
    pub usage: Vec<(String, Usage)>,
}

impl ImportReport {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: ImportReport) {
        self.files += other.files;
        self.domains += other.domains;
        self.urls += other.urls;
        self.expressions += other.expressions;
        self.exceptions += other.exceptions;
        self.invalid_lines += other.invalid_lines;
        self.skipped_lines += other.skipped_lines;
        self.redirects_ignored += other.redirects_ignored;
        self.lists.extend(other.lists);
        for e in other.first_errors {
            if self.first_errors.len() < MAX_REPORTED_ERRORS {
                self.first_errors.push(e);
            }
        }
        for c in other.categories {
            if !self.categories.contains(&c) {
                self.categories.push(c);
            }
        }
        self.usage.extend(other.usage);
    }

    /// Entries this report added.
    pub fn entries(&self) -> usize {
        self.domains + self.urls + self.expressions + self.exceptions
    }

    pub(crate) fn skipped(&mut self, file: &Path, line: usize, reason: String) {
        self.skipped_lines += 1;
        self.note(file, line, format!("skipped: {reason}"));
    }

    pub(crate) fn error(&mut self, file: &Path, line: usize, reason: String) {
        self.invalid_lines += 1;
        self.note(file, line, reason);
    }

    pub(crate) fn note(&mut self, file: &Path, line: usize, reason: String) {
        if self.first_errors.len() < MAX_REPORTED_ERRORS {
            self.first_errors.push(LineError {
                file: file.to_path_buf(),
                line,
                reason,
            });
        }
    }
}

/// What one list file (or one list split into parts) gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReport {
    /// The list (first part for a split list).
    pub path: PathBuf,
    /// Parts joined (1 for a plain file).
    pub parts: usize,
    /// Lines that are neither blank nor comments.
    pub lines: usize,
    pub category: String,
    /// Format the lines were read as (after auto-detection).
    pub format: &'static str,
    /// Entries imported (domains, urls, expressions, exceptions, patterns).
    pub entries: usize,
    /// Valid rules not honoured (see [`ImportReport::skipped_lines`]).
    pub skipped: usize,
    /// Lines that could not be read as an entry.
    pub invalid: usize,
}

/// What a hosts-format line's name covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostsMatch {
    /// The name and every subdomain, like a squidGuard `domains` entry
    /// (default: a block list for a school should not be escaped by
    /// prefixing a label).
    #[default]
    Subdomains,
    /// Exactly the name, which is what a hosts file means to a resolver.
    Exact,
}

/// Errors of this crate.
#[derive(thiserror::Error, Debug)]
pub enum CategoryError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad category snapshot: {reason}", path.display())]
    BadSnapshot { path: PathBuf, reason: String },
    #[error("too many categories (at most {MAX_CATEGORIES}); cannot add {name:?}")]
    TooManyCategories { name: String },
    #[error("{}:{line}: invalid regular expression: {reason}", file.display())]
    BadRegex {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    InvalidInput { path: PathBuf, reason: String },
}

/// Loads a UT1/squidGuard directory, a snapshot file (sniffed by its magic),
/// or a single list file (format detected once per file; category = file stem).
/// Expressions are not compiled (use [`MatcherBuilder`] for that), except
/// for snapshots written with expressions enabled.
pub fn load_path(path: &Path) -> Result<(Matcher, ImportReport), CategoryError> {
    let io = |source| CategoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut b = MatcherBuilder::new();
        let rep = b.add_squidguard_dir(path, None)?;
        return Ok((b.build()?, rep));
    }
    if snapshot::file_has_magic(path)? {
        let m = Matcher::read_snapshot(path)?;
        let rep = ImportReport {
            files: 1,
            categories: m.category_names().to_vec(),
            ..Default::default()
        };
        return Ok((m, rep));
    }
    let cat = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("list")
        .to_string();
    let mut b = MatcherBuilder::new();
    let rep = b.add_list_file(&cat, path, ListFormat::Auto)?;
    Ok((b.build()?, rep))
}
