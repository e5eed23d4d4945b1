//! Diagnostics: `file:line:column: message`, collected (never just the first).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a policy file or a file it includes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (e.g. an unreadable file).
    pub line: usize,
    /// 1-based, counted in characters (not bytes); 0 when unknown.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// All the problems found; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct PolicyErrors(pub Vec<Diagnostic>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Maps byte offsets of one source text to 1-based line:column.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                starts.push(i + 1);
            }
        }
        LineIndex { starts }
    }
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        let col = text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, col + 1)
    }
}

/// Collects diagnostics for one source file.
pub(crate) struct Sink<'t> {
    pub file: PathBuf,
    pub text: &'t str,
    index: LineIndex,
    pub diags: Vec<Diagnostic>,
    /// Problems that do not stop the policy from loading (e.g. a rule that
    /// can never apply); `komugate policy check` prints them.
    pub warnings: Vec<Diagnostic>,
}

impl<'t> Sink<'t> {
    pub fn new(file: &Path, text: &'t str) -> Self {
        Sink {
            file: file.to_path_buf(),
            text,
            index: LineIndex::new(text),
            diags: Vec::new(),
            warnings: Vec::new(),
        }
    }
    pub fn pos(&self, span: &Option<Range<usize>>) -> (usize, usize) {
        match span {
            Some(r) => self.index.line_col(self.text, r.start),
            None => (0, 0),
        }
    }
    fn diagnostic(&self, span: &Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.pos(span);
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
    pub fn err(&mut self, span: &Option<Range<usize>>, message: impl Into<String>) {
        let d = self.diagnostic(span, message);
        self.diags.push(d);
    }
    pub fn warn(&mut self, span: &Option<Range<usize>>, message: impl Into<String>) {
        let d = self.diagnostic(span, message);
        self.warnings.push(d);
    }
    /// `file:line` of a span, for cross references in messages.
    pub fn at(&self, span: &Option<Range<usize>>) -> String {
        let (l, _) = self.pos(span);
        format!("{}:{}", self.file.display(), l)
    }
}

/// Levenshtein distance (on chars).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = if ca == *cb { 0 } else { 1 };
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// "; did you mean `x`?" for the closest candidate within a small distance.
pub(crate) fn suggest<'a, I: IntoIterator<Item = &'a str>>(word: &str, candidates: I) -> String {
    let n = word.chars().count();
    let max = match n {
        0..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_lowercase(), &c.to_lowercase());
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn distance_and_suggestion() {
        assert_eq!(edit_distance("gamblin", "gambling"), 1);
        assert_eq!(
            suggest("gamblin", ["adult", "gambling"]),
            "; did you mean `gambling`?"
        );
        assert_eq!(suggest("zzz", ["adult", "gambling"]), "");
    }
    #[test]
    fn line_columns_count_chars() {
        let t = "a = 1\nname = \"豊科\" x\n";
        let idx = LineIndex::new(t);
        let off = t.find(" x").unwrap() + 1;
        assert_eq!(idx.line_col(t, off), (2, 13));
        assert_eq!(idx.line_col(t, 0), (1, 1));
    }
}
