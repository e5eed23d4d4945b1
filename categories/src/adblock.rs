//! Adblock network rules at domain level: what one line of an adblock /
//! AdGuard DNS list means for a gateway that sees `scheme://host/path`.
//!
//! * `||host^` (also `||host`, `||host^|`): the host and its subdomains
//!   (domain table, as squidGuard domains).
//! * `|host^`, `|host^|`, `://host^` (also with `|` after `^`): exactly that
//!   host (AdGuard DNS syntax: `|` anchors at the start of the host name).
//! * Any other pattern (`||name.` for any TLD, `.host^`, `1.2.3.4^`,
//!   `-ads1.`, `*` wildcards, `||host/path`) keeps its adblock meaning over
//!   the whole URL: plain substrings go to an Aho-Corasick automaton, the rest
//!   is translated to one regex each (`||` = start of the host or after a
//!   dot in it, `^` = separator or end, `*` = anything, `|` = start / end).
//! * `@@` makes any of these an exception for the list's category.
//! * Options: `important` (beats exceptions that are not important
//!   themselves), `badfilter` (cancels the identical rule without it),
//!   `all`, `document`/`doc` (a gateway cannot tell a page from the requests
//!   it makes, so a rule for the page blocks the host's URLs). Every other
//!   option (`third-party`, `domain=`, `script`, `dnstype`, `match-case`…),
//!   regex rules `/…/`, cosmetic rules (`##`) and hosts-syntax lines cannot be
//!   honoured at domain level: they are skipped and reported, never turned
//!   into a different rule.

use crate::normalize::normalize_host;

/// What a line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Blank, `!` comment, `[Adblock …]` header, `#` comment.
    Nothing,
    Rule(Rule),
    /// A valid rule that cannot be honoured at domain level (reason).
    Skip(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub exception: bool,
    pub important: bool,
    /// `$badfilter`: cancels the rule whose [`Rule::key`] equals this key.
    pub badfilter: bool,
    /// The rule without `badfilter`, options sorted: what `$badfilter` compares.
    pub key: String,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Normalised host: it and its subdomains.
    Subdomains(String),
    /// Normalised host: exactly it.
    Exact(String),
    /// Lowercase substring of the URL.
    Substring(String),
    /// Regex over the URL (`scheme://host/normalised-path`), and the longest
    /// literal piece of the pattern, which every matching URL contains (the
    /// automaton that picks the regexes worth running; empty: always run).
    Regex { regex: String, literal: String },
}

const HONOURED: &[&str] = &["important", "badfilter", "all", "document", "doc"];

/// Parses one line of an adblock list (already trimmed).
pub(crate) fn parse(line: &str) -> Result<Parsed, String> {
    if line.is_empty()
        || line.starts_with('!')
        || (line.starts_with('[') && line.ends_with(']'))
        || (line.starts_with('#') && !line.starts_with("##") && !line.starts_with("#@#"))
    {
        return Ok(Parsed::Nothing);
    }
    for marker in [
        "##", "#@#", "#?#", "#$#", "#%#", "#@$#", "#@%#", "$$", "$@$",
    ] {
        if line.contains(marker) {
            return Ok(Parsed::Skip(
                "cosmetic / HTML rule: applies to page content, not to a gateway".into(),
            ));
        }
    }
    let (exception, body) = match line.strip_prefix("@@") {
        Some(b) => (true, b),
        None => (false, line),
    };
    if body.split_whitespace().count() > 1 {
        return Ok(Parsed::Skip(
            "hosts-file syntax inside an adblock list (use format = \"hosts\" for such a list)"
                .into(),
        ));
    }
    if body.len() > 2 && body.starts_with('/') && body.ends_with('/') {
        return Ok(Parsed::Skip(
            "regular-expression rule /…/ is not supported".into(),
        ));
    }
    let (pattern, opts) = split_options(body);
    let mut important = false;
    let mut badfilter = false;
    let mut kept: Vec<&str> = Vec::new();
    for o in opts.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let name = o.split('=').next().unwrap_or(o);
        if !HONOURED.contains(&name) {
            return Ok(Parsed::Skip(format!(
                "option `${o}` cannot be honoured at domain level"
            )));
        }
        match name {
            "important" => important = true,
            "badfilter" => {
                badfilter = true;
                continue;
            }
            _ => {}
        }
        kept.push(o);
    }
    kept.sort_unstable();
    let key = format!(
        "{}{}{}{}",
        if exception { "@@" } else { "" },
        pattern,
        if kept.is_empty() { "" } else { "$" },
        kept.join(",")
    );
    if pattern.is_empty() || pattern == "*" || pattern == "||" || pattern == "|" {
        return Err("rule without a pattern (it would match every URL)".into());
    }
    let target = target(&pattern.to_ascii_lowercase())?;
    Ok(Parsed::Rule(Rule {
        exception,
        important,
        badfilter,
        key,
        target,
    }))
}

/// Splits `pattern$opt1,opt2` at the last `$` that starts an option list.
fn split_options(body: &str) -> (&str, Vec<&str>) {
    match body.rfind('$') {
        Some(i) if i + 1 < body.len() && !body[i + 1..].contains('/') => {
            (&body[..i], body[i + 1..].split(',').collect())
        }
        Some(i) if i + 1 == body.len() => (&body[..i], Vec::new()),
        _ => (body, Vec::new()),
    }
}

fn host_part(s: &str) -> Option<String> {
    if s.is_empty() || s.contains(['*', '^', '|', '/', '?', '=', '&', ':']) {
        return None;
    }
    if s.ends_with('.') || s.starts_with('.') {
        return None;
    }
    normalize_host(s).ok()
}

fn strip_host_end(s: &str) -> Option<&str> {
    s.strip_suffix("^|")
        .or_else(|| s.strip_suffix('^'))
        .or_else(|| s.strip_suffix('|'))
}

fn target(p: &str) -> Result<Target, String> {
    if let Some(rest) = p.strip_prefix("||") {
        // `||host` without `^` is a host too (adblock-rust matches it on
        // label boundaries), as long as it names a domain, not a prefix.
        let h = strip_host_end(rest).or(Some(rest).filter(|r| r.contains('.')));
        if let Some(h) = h.and_then(host_part) {
            return Ok(Target::Subdomains(h));
        }
        return Ok(regex_target(
            format!("^[a-z][a-z0-9+.-]*://([^/?#]*\\.)?{}", translate(rest)),
            rest,
        ));
    }
    let scheme_anchored = p
        .strip_prefix('|')
        .is_some_and(|r| r.split_once("://").is_some_and(|(s, _)| is_scheme(s)));
    if let Some(rest) = p.strip_prefix('|').filter(|_| !scheme_anchored) {
        // AdGuard DNS syntax: `|` anchors at the start of the host name.
        if let Some(h) = strip_host_end(rest).and_then(host_part) {
            return Ok(Target::Exact(h));
        }
        return Ok(regex_target(
            format!("^[a-z][a-z0-9+.-]*://{}", translate(rest)),
            rest,
        ));
    }
    if let Some(rest) = p.strip_prefix("://") {
        if let Some(h) = strip_host_end(rest)
            .filter(|_| rest.contains('^'))
            .and_then(host_part)
        {
            return Ok(Target::Exact(h));
        }
    }
    if let Some(rest) = p.strip_prefix('|') {
        return Ok(regex_target(format!("^{}", translate(rest)), rest));
    }
    let core = p.trim_matches('*');
    if !core.is_empty() && !core.contains(['*', '^', '|']) {
        return Ok(Target::Substring(core.to_string()));
    }
    Ok(regex_target(translate(p), p))
}

fn regex_target(regex: String, pattern: &str) -> Target {
    let literal = pattern
        .split(['*', '^', '|'])
        .max_by_key(|piece| piece.len())
        .unwrap_or("")
        .to_string();
    Target::Regex { regex, literal }
}

fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        })
}

/// Adblock pattern (after any start anchor) → regex source.
fn translate(p: &str) -> String {
    let (body, end) = match p.strip_suffix('|') {
        Some(b) => (b, true),
        None => (p, false),
    };
    let mut out = String::with_capacity(body.len() * 2);
    for c in body.chars() {
        match c {
            '*' => out.push_str(".*"),
            '^' => out.push_str("(?:[^a-z0-9_.%-]|$)"),
            c => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    if end {
        out.push('$');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(line: &str) -> Target {
        match parse(line).unwrap() {
            Parsed::Rule(r) => r.target,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn domain_level_forms() {
        assert_eq!(
            t("||Example.com^"),
            Target::Subdomains("example.com".into())
        );
        assert_eq!(
            t("||example.com^|"),
            Target::Subdomains("example.com".into())
        );
        assert_eq!(t("||example.com"), Target::Subdomains("example.com".into()));
        assert_eq!(t("|example.com^|"), Target::Exact("example.com".into()));
        assert_eq!(t("@@|example.com^|"), Target::Exact("example.com".into()));
        assert_eq!(t("://example.com^"), Target::Exact("example.com".into()));
        assert_eq!(t("-ads1."), Target::Substring("-ads1.".into()));
        assert_eq!(t("*banner*"), Target::Substring("banner".into()));
        assert!(matches!(t("||name."), Target::Regex { .. }));
        assert!(matches!(t(".example.com^"), Target::Regex { .. }));
        assert!(matches!(t("1.2.3.4^"), Target::Regex { .. }));
        assert!(matches!(t("||ads*.example.com^"), Target::Regex { .. }));
        assert!(matches!(t("|https://x.com^"), Target::Regex { .. }));
    }

    #[test]
    fn options() {
        let Parsed::Rule(r) = parse("||x.com^$important").unwrap() else {
            panic!()
        };
        assert!(r.important && !r.badfilter);
        let Parsed::Rule(b) = parse("||x.com^$important,badfilter").unwrap() else {
            panic!()
        };
        assert!(b.badfilter);
        assert_eq!(b.key, r.key);
        assert!(matches!(
            parse("||x.com^$third-party").unwrap(),
            Parsed::Skip(_)
        ));
        assert!(matches!(
            parse("||x.com^$dnstype=AAAA").unwrap(),
            Parsed::Skip(_)
        ));
        assert!(matches!(parse("/ads[0-9]+/").unwrap(), Parsed::Skip(_)));
        assert!(matches!(
            parse("example.com##.ad").unwrap(),
            Parsed::Skip(_)
        ));
        assert!(matches!(
            parse("0.0.0.0 ads.example").unwrap(),
            Parsed::Skip(_)
        ));
        assert_eq!(parse("! comment").unwrap(), Parsed::Nothing);
        assert_eq!(parse("[Adblock Plus 2.0]").unwrap(), Parsed::Nothing);
        assert!(parse("$important").is_err());
    }

    #[test]
    fn regexes_mean_what_adblock_means() {
        let m = |rule: &str, url: &str| {
            let Target::Regex { regex: r, .. } = t(rule) else {
                panic!("{rule}")
            };
            regex::Regex::new(&r).unwrap().is_match(url)
        };
        assert!(m("||name.", "https://name.org/"));
        assert!(m("||name.", "https://a.name.co.uk/"));
        assert!(!m("||name.", "https://xname.org/"));
        assert!(m(".example.com^", "https://a.example.com/"));
        assert!(!m(".example.com^", "https://example.com/"));
        assert!(m("1.2.3.4^", "https://1.2.3.4/"));
        assert!(m("1.2.3.4^", "https://11.2.3.4/"));
        assert!(!m("1.2.3.4^", "https://1.2.3.45/"));
        assert!(m("||ads*.example.com^", "https://ads12.example.com/"));
        assert!(m("|https://x.com^", "https://x.com/"));
        assert!(!m("|https://x.com^", "http://x.com/"));
        assert!(m("||x.com/path^", "https://x.com/path?q"));
    }
}
