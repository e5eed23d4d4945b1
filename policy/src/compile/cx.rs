//! The compile context: the diagnostics sink, the files read, and typed
//! readers for TOML values that report every problem at its span.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use crate::diag::{suggest, Sink};
use crate::pattern::{HostPattern, PortRange};
use crate::{Action, TunnelMode};

pub(super) type Span = Option<Range<usize>>;

pub(super) fn key_span(t: &dyn TableLike, k: &str) -> Span {
    t.get_key_value(k).and_then(|(k, _)| k.span())
}

pub(super) fn first_key_span(t: &dyn TableLike) -> Span {
    t.iter().next().and_then(|(k, _)| key_span(t, k))
}

pub(super) struct Cx<'t> {
    pub s: Sink<'t>,
    /// Directory of the policy file: relative paths are resolved against it.
    pub base: PathBuf,
    /// The policy file and every file read while compiling it (for the digest).
    pub files: Vec<PathBuf>,
    /// The document's `timezone` (seconds east of UTC), once read: list
    /// entries' `until` dates end at its midnight.
    pub tz_offset: i32,
}

impl<'t> Cx<'t> {
    pub(super) fn err(&mut self, span: &Span, msg: impl Into<String>) {
        self.s.err(span, msg)
    }

    pub(super) fn warn(&mut self, span: &Span, msg: impl Into<String>) {
        self.s.warn(span, msg)
    }

    pub(super) fn keys(&mut self, t: &dyn TableLike, what: &str, allowed: &[&str]) {
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

    pub(super) fn str(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        what: &str,
    ) -> Option<(String, Span)> {
        let item = t.get(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), item.span())),
            None => {
                self.err(&item.span(), format!("`{key}` in {what} must be a string"));
                None
            }
        }
    }

    pub(super) fn req_str(
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

    pub(super) fn bool(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<bool> {
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
    pub(super) fn strs(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        what: &str,
    ) -> Option<Vec<(String, Span)>> {
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
    pub(super) fn cond_strs(
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
    pub(super) fn tables<'d>(
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

    pub(super) fn table<'d>(
        &mut self,
        t: &'d dyn TableLike,
        key: &str,
    ) -> Option<(&'d dyn TableLike, Span)> {
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

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Reads an included UTF-8 file, reporting a missing one at `span`.
    pub(super) fn read(&mut self, rel: &str, span: &Span) -> Option<(PathBuf, String)> {
        let (p, bytes) = self.read_bytes(rel, span)?;
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

    /// Reads an included file as bytes, reporting a missing one at `span`.
    pub(super) fn read_bytes(&mut self, rel: &str, span: &Span) -> Option<(PathBuf, Vec<u8>)> {
        let p = self.path(rel);
        match std::fs::read(&p) {
            Ok(bytes) => {
                self.files.push(p.clone());
                Some((p, bytes))
            }
            Err(e) => {
                self.err(span, format!("cannot read `{rel}` ({}): {e}", p.display()));
                None
            }
        }
    }

    pub(super) fn action(&mut self, t: &dyn TableLike, key: &str, what: &str) -> Option<Action> {
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

    pub(super) fn tunnel(&mut self, t: &dyn TableLike, what: &str) -> Option<TunnelMode> {
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
    pub(super) fn resolve(
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

pub(super) fn host_list(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    what: &str,
) -> (Vec<String>, Vec<HostPattern>) {
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

pub(super) fn int(
    cx: &mut Cx<'_>,
    t: &dyn TableLike,
    key: &str,
    what: &str,
    min: i64,
) -> Option<u64> {
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

/// One port, a "low-high" string, or an array of them.
pub(super) fn port_list(cx: &mut Cx<'_>, t: &dyn TableLike, key: &str) -> Option<Vec<PortRange>> {
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
