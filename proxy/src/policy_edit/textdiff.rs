//! A line diff of two policy texts in unified form (3 lines of context),
//! for the console's preview, the audit log and `komugate policy diff`.
//!
//! Common leading and trailing lines are set aside first (an edit from the
//! console touches a few lines), then the middle is aligned by a longest
//! common subsequence; a middle too large for that (two unrelated files)
//! is shown as removed and added whole.

/// One line of the diff.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiffLine {
    /// ' ' context, '-' removed, '+' added, '@' hunk header.
    pub tag: char,
    pub text: String,
    /// Line number in the new text (context and added lines).
    pub new_line: Option<usize>,
}

/// The whole diff: hunks of changed lines with context.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TextDiff {
    pub lines: Vec<DiffLine>,
    pub added: usize,
    pub removed: usize,
}

const CONTEXT: usize = 3;
/// Largest middle (lines × lines) aligned by LCS.
const MAX_CELLS: usize = 4_000_000;

impl TextDiff {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0
    }

    /// 1-based lines of the new text that were added or changed.
    pub fn changed_new_lines(&self) -> Vec<usize> {
        self.lines
            .iter()
            .filter(|l| l.tag == '+')
            .filter_map(|l| l.new_line)
            .collect()
    }

    /// Unified-diff text (`--- old`, `+++ new`, `@@` hunks).
    pub fn unified(&self, old_name: &str, new_name: &str) -> String {
        let mut s = format!("--- {old_name}\n+++ {new_name}\n");
        for l in &self.lines {
            if l.tag == '@' {
                s.push_str(&l.text);
            } else {
                s.push(l.tag);
                s.push_str(&l.text);
            }
            s.push('\n');
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Same(usize, usize),
    Del(usize),
    Add(usize),
}

/// The diff from `old` to `new`.
pub fn diff(old: &str, new: &str) -> TextDiff {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut pre = 0;
    while pre < a.len() && pre < b.len() && a[pre] == b[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < a.len() - pre && suf < b.len() - pre && a[a.len() - 1 - suf] == b[b.len() - 1 - suf]
    {
        suf += 1;
    }
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops: Vec<Op> = (0..pre).map(|i| Op::Same(i, i)).collect();
    ops.extend(middle(am, bm).into_iter().map(|op| match op {
        Op::Same(i, j) => Op::Same(i + pre, j + pre),
        Op::Del(i) => Op::Del(i + pre),
        Op::Add(j) => Op::Add(j + pre),
    }));
    ops.extend((0..suf).map(|k| Op::Same(a.len() - suf + k, b.len() - suf + k)));
    hunks(&ops, &a, &b)
}

fn middle(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let mut v: Vec<Op> = (0..n).map(Op::Del).collect();
        v.extend((0..m).map(Op::Add));
        return v;
    }
    // lcs[i][j] = LCS length of a[i..] and b[j..].
    let w = m + 1;
    let mut lcs = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(i, j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
            ops.push(Op::Add(j));
            j += 1;
        } else {
            ops.push(Op::Del(i));
            i += 1;
        }
    }
    // Deletions before additions within a change reads better.
    let mut k = 0;
    while k < ops.len() {
        if matches!(ops[k], Op::Same(..)) {
            k += 1;
            continue;
        }
        let start = k;
        while k < ops.len() && !matches!(ops[k], Op::Same(..)) {
            k += 1;
        }
        ops[start..k].sort_by_key(|op| matches!(op, Op::Add(_)));
    }
    ops
}

fn hunks(ops: &[Op], a: &[&str], b: &[&str]) -> TextDiff {
    let mut out = TextDiff::default();
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return out;
    }
    // Group changes whose context overlaps.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &c in &changed {
        match groups.last_mut() {
            Some((_, end)) if c <= *end + 2 * CONTEXT + 1 => *end = c,
            _ => groups.push((c, c)),
        }
    }
    for (first, last) in groups {
        let from = first.saturating_sub(CONTEXT);
        let to = (last + CONTEXT + 1).min(ops.len());
        let old_start = ops[from..to].iter().find_map(|op| match op {
            Op::Same(i, _) | Op::Del(i) => Some(*i + 1),
            Op::Add(_) => None,
        });
        let new_start = ops[from..to].iter().find_map(|op| match op {
            Op::Same(_, j) | Op::Add(j) => Some(*j + 1),
            Op::Del(_) => None,
        });
        let old_len = ops[from..to]
            .iter()
            .filter(|op| !matches!(op, Op::Add(_)))
            .count();
        let new_len = ops[from..to]
            .iter()
            .filter(|op| !matches!(op, Op::Del(_)))
            .count();
        out.lines.push(DiffLine {
            tag: '@',
            text: format!(
                "@@ -{},{old_len} +{},{new_len} @@",
                old_start.unwrap_or(0),
                new_start.unwrap_or(0)
            ),
            new_line: None,
        });
        for op in &ops[from..to] {
            out.lines.push(match *op {
                Op::Same(i, j) => DiffLine {
                    tag: ' ',
                    text: a[i].to_string(),
                    new_line: Some(j + 1),
                },
                Op::Del(i) => {
                    out.removed += 1;
                    DiffLine {
                        tag: '-',
                        text: a[i].to_string(),
                        new_line: None,
                    }
                }
                Op::Add(j) => {
                    out.added += 1;
                    DiffLine {
                        tag: '+',
                        text: b[j].to_string(),
                        new_line: Some(j + 1),
                    }
                }
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_changed_line_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let d = diff(old, new);
        assert_eq!((d.added, d.removed), (1, 1));
        assert_eq!(
            d.unified("old", "new"),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(d.changed_new_lines(), vec![5]);
        assert!(diff(old, old).is_empty());
    }

    #[test]
    fn insertions_and_separate_hunks() {
        let old: String = (1..=30).map(|i| format!("{i}\n")).collect();
        let mut lines: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
        lines.remove(24); // "25"
        lines.insert(3, "x".into());
        let new: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let d = diff(&old, &new);
        assert_eq!((d.added, d.removed), (1, 1));
        assert_eq!(d.lines.iter().filter(|l| l.tag == '@').count(), 2);
        assert_eq!(d.changed_new_lines(), vec![4]);
    }
}
