//! Search filters: parsing of the command line / URL values and matching
//! against records, sidecar indexes and decoded blocks.

use komugate_policy::pattern::{wildcard_match, QuestionMark};

use super::record::{days_from_civil, now_ms, parse_rfc3339_ms, LogRecord};
use super::segment::{Block, IndexField, SegmentIndex, StrCol};

/// A host pattern: `*` matches any run of characters, `?` one character;
/// case-insensitive. `example.com` matches only that host; use
/// `*.example.com` for its subdomains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Glob {
    Exact(String),
    /// `*.suffix` style: the host ends with the text after `*`.
    Suffix(String),
    Any(Vec<u8>),
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        if !p.contains(['*', '?']) {
            Glob::Exact(p)
        } else if let Some(rest) = p.strip_prefix('*').filter(|r| !r.contains(['*', '?'])) {
            Glob::Suffix(rest.to_string())
        } else {
            Glob::Any(p.into_bytes())
        }
    }

    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            Glob::Exact(e) => host.eq_ignore_ascii_case(e.as_bytes()),
            Glob::Suffix(s) => {
                host.len() >= s.len()
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            Glob::Any(p) => wildcard_match(p, host, QuestionMark::AnyByte),
        }
    }
}

/// What to look for. Empty fields do not filter. `until_ms` is exclusive.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub device: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub site: Option<String>,
    pub host: Option<Glob>,
    pub url_contains: Option<String>,
    pub action: Option<String>,
    pub rule: Option<String>,
    pub category: Option<String>,
    pub app: Option<String>,
    pub ips: Option<String>,
    /// Matches passed over before the first one returned (paging).
    pub skip: u64,
    pub limit: Option<u64>,
}

const SEP: char = '\u{1f}';

impl Query {
    fn exact_fields(&self) -> [(Option<&String>, StrCol, IndexField, bool); 8] {
        [
            (
                self.device.as_ref(),
                StrCol::Device,
                IndexField::Device,
                false,
            ),
            (self.user.as_ref(), StrCol::User, IndexField::User, false),
            (self.group.as_ref(), StrCol::Groups, IndexField::Group, true),
            (self.site.as_ref(), StrCol::Site, IndexField::Site, false),
            (
                self.action.as_ref(),
                StrCol::Action,
                IndexField::Action,
                false,
            ),
            (self.rule.as_ref(), StrCol::Rule, IndexField::Rule, false),
            (
                self.category.as_ref(),
                StrCol::Categories,
                IndexField::Category,
                true,
            ),
            (self.app.as_ref(), StrCol::App, IndexField::App, false),
        ]
    }

    fn time_ok(&self, t: i64) -> bool {
        self.since_ms.is_none_or(|s| t >= s) && self.until_ms.is_none_or(|u| t < u)
    }

    /// Can a file with this time range contain matches?
    pub fn time_overlaps(&self, min_ms: i64, max_ms: i64) -> bool {
        self.since_ms.is_none_or(|s| max_ms >= s) && self.until_ms.is_none_or(|u| min_ms < u)
    }

    /// Can the segment behind this index contain a match?
    pub fn may_match_index(&self, idx: &SegmentIndex) -> bool {
        self.plan(idx).is_some()
    }

    /// What the index says about this query: `None` when no record of the
    /// segment can match, else which values to look for in each block.
    pub fn plan(&self, idx: &SegmentIndex) -> Option<IndexPlan> {
        if idx.count == 0 || !self.time_overlaps(idx.min_ms, idx.max_ms) {
            return None;
        }
        let mut wanted = Vec::new();
        let mut want = |field: IndexField, positions: Vec<u32>| {
            if positions.is_empty() {
                return false;
            }
            wanted.push((field, positions));
            true
        };
        for (w, _, field, _) in self.exact_fields() {
            if let Some(w) = w {
                if !want(field, idx.positions(field, |v| v == w.as_bytes())) {
                    return None;
                }
            }
        }
        if let Some(ips) = &self.ips {
            if !want(
                IndexField::Ips,
                idx.positions(IndexField::Ips, |v| ips_match(v, ips)),
            ) {
                return None;
            }
        }
        if let Some(g) = &self.host {
            if !want(
                IndexField::Host,
                idx.positions(IndexField::Host, |v| g.matches(v)),
            ) {
                return None;
            }
        }
        Some(IndexPlan { wanted })
    }

    /// What a JSON line must contain to be worth parsing (see [`LineFilter`]).
    pub fn line_filter(&self) -> LineFilter {
        let mut values: Vec<&str> = self
            .exact_fields()
            .into_iter()
            .filter_map(|(w, ..)| w.map(String::as_str))
            .collect();
        values.extend(self.ips.as_deref());
        values.extend(self.url_contains.as_deref());
        let verbatim = values
            .into_iter()
            .filter(|v| json_verbatim(v))
            .map(|v| memchr::memmem::Finder::new(v.as_bytes()).into_owned())
            .collect();
        // The longest literal run of the (lower-case) host pattern.
        let host_text = self.host.as_ref().and_then(|g| {
            let text: &[u8] = match g {
                Glob::Exact(e) => e.as_bytes(),
                Glob::Suffix(s) => s.as_bytes(),
                Glob::Any(p) => p
                    .split(|&b| b == b'*' || b == b'?')
                    .max_by_key(|run| run.len())
                    .unwrap_or_default(),
            };
            std::str::from_utf8(text).ok().filter(|t| json_verbatim(t))
        });
        LineFilter {
            verbatim,
            folded: host_text.map(|t| memchr::memmem::Finder::new(t.as_bytes()).into_owned()),
        }
    }

    pub fn matches(&self, r: &LogRecord) -> bool {
        if !self.time_ok(r.time_ms) {
            return false;
        }
        let eq = |w: &Option<String>, v: &str| w.as_ref().is_none_or(|w| w == v);
        let has =
            |w: &Option<String>, v: &[String]| w.as_ref().is_none_or(|w| v.iter().any(|x| x == w));
        eq(&self.device, &r.device)
            && eq(&self.user, &r.user)
            && has(&self.group, &r.groups)
            && eq(&self.site, &r.site)
            && eq(&self.action, &r.action)
            && eq(&self.rule, &r.rule)
            && has(&self.category, &r.categories)
            && eq(&self.app, &r.app)
            && self
                .ips
                .as_ref()
                .is_none_or(|w| ips_match(r.ips.as_bytes(), w))
            && self
                .host
                .as_ref()
                .is_none_or(|g| g.matches(r.host.as_bytes()))
            && self
                .url_contains
                .as_ref()
                .is_none_or(|u| r.target.contains(u.as_str()))
    }

    /// Rows of a decoded block that match, in order.
    pub fn matching_rows(&self, b: &Block) -> Vec<usize> {
        // One verdict per dictionary entry, not per row.
        let mut masks: Vec<(usize, Vec<bool>)> = Vec::new();
        for (want, col, _, multi) in self.exact_fields() {
            if let Some(w) = want {
                let d = b.col(col);
                let mask: Vec<bool> = (0..d.len() as u32)
                    .map(|id| {
                        let v = d.value(id);
                        if multi {
                            v.split(SEP).any(|x| x == w)
                        } else {
                            v == w
                        }
                    })
                    .collect();
                if !mask.iter().any(|&m| m) {
                    return Vec::new();
                }
                masks.push((col as usize, mask));
            }
        }
        if let Some(ips) = &self.ips {
            let d = b.col(StrCol::Ips);
            let mask: Vec<bool> = (0..d.len() as u32)
                .map(|id| ips_match(d.value(id).as_bytes(), ips))
                .collect();
            if !mask.iter().any(|&m| m) {
                return Vec::new();
            }
            masks.push((StrCol::Ips as usize, mask));
        }
        if let Some(g) = &self.host {
            let d = b.col(StrCol::Host);
            let mask: Vec<bool> = (0..d.len() as u32)
                .map(|id| g.matches(d.value(id).as_bytes()))
                .collect();
            if !mask.iter().any(|&m| m) {
                return Vec::new();
            }
            masks.push((StrCol::Host as usize, mask));
        }
        let time_filter = self.since_ms.is_some() || self.until_ms.is_some();
        let mut out = Vec::new();
        let mut target = String::new();
        'rows: for row in 0..b.rows {
            if time_filter && !self.time_ok(b.time[row]) {
                continue;
            }
            for (col, mask) in &masks {
                if !mask[b.cols[*col].ids[row] as usize] {
                    continue 'rows;
                }
            }
            if let Some(u) = &self.url_contains {
                let rest = b.col(StrCol::TargetRest).row(row);
                if !rest.contains(u.as_str()) {
                    target.clear();
                    target.push_str(&b.target(row));
                    if !target.contains(u.as_str()) {
                        continue;
                    }
                }
            }
            out.push(row);
        }
        out
    }
}

/// A test on a JSON line before it is parsed (parsing is most of the cost
/// of reading the live file): text that every matching record's line
/// contains. serde_json writes strings verbatim except `"`, `\` and
/// control characters, so a value without those appears as it is; the host
/// is compared without ASCII case (the target keeps the host's case).
/// Values that would be escaped are not tested.
#[derive(Debug, Clone, Default)]
pub struct LineFilter {
    verbatim: Vec<memchr::memmem::Finder<'static>>,
    folded: Option<memchr::memmem::Finder<'static>>,
}

fn json_verbatim(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

impl LineFilter {
    /// False only if no record on this line can match the query.
    pub fn may_match(&self, line: &[u8], scratch: &mut Vec<u8>) -> bool {
        if !self.verbatim.iter().all(|f| f.find(line).is_some()) {
            return false;
        }
        match &self.folded {
            None => true,
            Some(f) => {
                scratch.clear();
                scratch.extend(line.iter().map(u8::to_ascii_lowercase));
                f.find(scratch).is_some()
            }
        }
    }
}

/// The values a query needs, as positions in one segment's index, to
/// pass over blocks that hold none of them (see [`SegmentIndex::block_may_hold`]).
#[derive(Debug, Clone)]
pub struct IndexPlan {
    wanted: Vec<(IndexField, Vec<u32>)>,
}

impl IndexPlan {
    /// Can block number `block` (with `rows` rows) hold a match? Each
    /// filtered field must have one of its wanted values in the block; the
    /// rows themselves are checked after decompression.
    pub fn may_match_block(&self, idx: &SegmentIndex, block: usize, rows: u32) -> bool {
        self.wanted
            .iter()
            .all(|(field, positions)| idx.block_may_hold(block, rows, *field, positions))
    }
}

/// `--ips 2001` matches a record whose comma-separated IPS ids include 2001.
fn ips_match(v: &[u8], want: &str) -> bool {
    v.split(|&c| c == b',' || c == b' ')
        .any(|x| x == want.as_bytes())
}

/// Parses a UTC offset like `+09:00`, `-05:30`, `Z`, `UTC`.
pub fn parse_offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    let b = t.as_bytes();
    let bad = || format!("UTC offset {s:?} is not like +09:00");
    if b.len() != 6 || !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' {
        return Err(bad());
    }
    let h: i32 = t[1..3].parse().map_err(|_| bad())?;
    let m: i32 = t[4..6].parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok((h * 60 + m) * if b[0] == b'-' { -1 } else { 1 })
}

/// Parses a time argument: ISO 8601 (`2025-04-01T08:00:00+09:00`; without
/// a zone it is local time at `offset_min`), a date (`2025-04-01`, local
/// midnight), `now`, `today`, `yesterday`, or a relative `-7d`, `-12h`,
/// `-30m`, `-90s`.
pub fn parse_time(s: &str, now: i64, offset_min: i32) -> Result<i64, String> {
    let t = s.trim();
    let off_ms = offset_min as i64 * 60_000;
    let local_midnight = |ms: i64| (ms + off_ms).div_euclid(86_400_000) * 86_400_000 - off_ms;
    match t.to_ascii_lowercase().as_str() {
        "now" => return Ok(now),
        "today" => return Ok(local_midnight(now)),
        "yesterday" => return Ok(local_midnight(now) - 86_400_000),
        _ => {}
    }
    if let Some(rel) = t.strip_prefix('-') {
        let (num, unit) =
            rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num
            .parse()
            .map_err(|_| format!("time {s:?}: expected a number like -7d"))?;
        let unit_ms = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" | "min" => 60_000,
            "s" => 1000,
            "w" => 7 * 86_400_000,
            _ => {
                return Err(format!(
                    "time {s:?}: unit must be d, h, m, s or w (like -7d)"
                ))
            }
        };
        return Ok(now - n * unit_ms);
    }
    let b = t.as_bytes();
    let has_zone = b.len() > 10
        && (t.ends_with(['Z', 'z'])
            || (b.len() >= 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':'));
    match parse_rfc3339_ms(t) {
        Some(ms) if has_zone => Ok(ms),
        Some(ms) => Ok(ms - off_ms),
        None => Err(format!(
            "time {s:?} is not understood; use ISO 8601 (2025-04-01, 2025-04-01T08:00, 2025-04-01T08:00:00+09:00), now, today, yesterday or -7d / -12h / -30m"
        )),
    }
}

/// Convenience for tests: midnight UTC of a date.
pub fn utc_midnight(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d) * 86_400_000
}

/// Current time, overridable in tests through `KOMUGATE_NOW` (RFC 3339).
pub fn current_ms() -> i64 {
    std::env::var("KOMUGATE_NOW")
        .ok()
        .and_then(|s| parse_rfc3339_ms(&s))
        .unwrap_or_else(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Glob::new("Example.COM").matches(b"example.com"));
        assert!(!Glob::new("example.com").matches(b"www.example.com"));
        assert!(Glob::new("*.example.com").matches(b"a.b.example.com"));
        assert!(!Glob::new("*.example.com").matches(b"example.com"));
        assert!(Glob::new("ad?.*.net").matches(b"ads.tracker.net"));
        assert!(Glob::new("*evil*").matches(b"very-evil-host.io"));
        assert!(!Glob::new("a*b*c").matches(b"acb"));
    }

    #[test]
    fn times() {
        let now = parse_rfc3339_ms("2025-04-10T03:00:00Z").unwrap(); // 12:00 JST
        assert_eq!(
            parse_time("today", now, 540).unwrap(),
            parse_rfc3339_ms("2025-04-09T15:00:00Z").unwrap()
        );
        assert_eq!(parse_time("-7d", now, 540).unwrap(), now - 7 * 86_400_000);
        assert_eq!(
            parse_time("2025-04-01", now, 540).unwrap(),
            parse_rfc3339_ms("2025-03-31T15:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2025-04-01T08:00:00Z", now, 540).unwrap(),
            parse_rfc3339_ms("2025-04-01T08:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2025-04-01T17:00", now, 540).unwrap(),
            parse_rfc3339_ms("2025-04-01T08:00:00Z").unwrap()
        );
        assert!(parse_time("last tuesday", now, 540)
            .unwrap_err()
            .contains("ISO 8601"));
        assert!(parse_time("-7y", now, 540).is_err());
        assert_eq!(parse_offset("+09:00"), Ok(540));
        assert!(parse_offset("9").is_err());
    }

    /// Property: a line the filter turns away never holds a match, over
    /// values JSON escapes, non-ASCII values, host case and every glob shape.
    #[test]
    fn line_filter_never_turns_away_a_match() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const HOSTS: [&str; 5] = [
            "Www.Example.JP",
            "a.b.ed.jp",
            "cdn.x-y.com",
            "例え.jp",
            "q\"uote.jp",
        ];
        const DEVICES: [&str; 4] = ["T-0001", "教員PC-3", "tab\\x", "T-0002"];
        let (mut turned_away, mut matched) = (0, 0);
        let mut scratch = Vec::new();
        for _ in 0..3000 {
            let host = HOSTS[below(5) as usize];
            let r = LogRecord {
                time_ms: 1_700_000_000_000,
                device: DEVICES[below(4) as usize].into(),
                groups: vec!["teachers".into(), format!("school-{}", below(3))],
                target: match below(3) {
                    0 => format!("{host}:443"),
                    1 => format!("https://{host}/p?q=\"{}\"", below(9)),
                    _ => format!("http://{host}/x"),
                },
                // The data path leaves the host empty for some records.
                host: if below(2) == 0 {
                    String::new()
                } else {
                    host.to_ascii_lowercase()
                },
                action: ["allow", "block"][below(2) as usize].into(),
                ips: ["", "2001", "2001,3005"][below(3) as usize].into(),
                ..Default::default()
            };
            let line = serde_json::to_vec(&r).unwrap();
            let parsed = LogRecord::from_json_line(&line).unwrap();
            let other = HOSTS[below(5) as usize].to_ascii_lowercase();
            let cut = 1 + below(other.len() as u64 - 1) as usize;
            let floor = |mut i: usize| {
                while !other.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let pattern = match below(5) {
                0 => other.clone(),
                1 => format!("*{}", &other[other.find('.').unwrap()..]),
                2 => format!("{}*", &other[..floor(cut)]),
                3 => format!("*{}*", &other[floor(cut / 2)..floor(cut)]),
                _ => format!("?{}", &other[other.chars().next().unwrap().len_utf8()..]),
            };
            let q = Query {
                host: Some(Glob::new(&pattern)),
                device: (below(2) == 0).then(|| DEVICES[below(4) as usize].to_string()),
                group: (below(3) == 0).then(|| format!("school-{}", below(4))),
                ips: (below(4) == 0).then(|| "3005".to_string()),
                url_contains: (below(4) == 0)
                    .then(|| ["q=\"1", "/x", "/p"][below(3) as usize].to_string()),
                ..Query::default()
            };
            let admitted = q.line_filter().may_match(&line, &mut scratch);
            if q.matches(&parsed) {
                matched += 1;
                assert!(
                    admitted,
                    "{pattern} {q:?} {}",
                    String::from_utf8_lossy(&line)
                );
            } else if !admitted {
                turned_away += 1;
            }
        }
        assert!(
            matched > 50 && turned_away > 500,
            "{matched} matched, {turned_away} turned away"
        );
    }
}
