//! Small matchers used by rules, apps and egress pools: host patterns,
//! port ranges, time-of-day windows and weekdays; and the one wildcard
//! matcher (`*`, optionally `?`) shared with the gateway's log search.

use std::fmt;

/// `example.com` = exactly that host; `*.example.com` = strict subdomains;
/// `.example.com` = the domain and all subdomains; `*` = any host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// stored with the leading dot: ".example.com"
    Subdomains(String),
    /// stored without the dot: "example.com"
    DomainAndSubdomains(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let t = s.trim();
        if t == "*" {
            return Ok(HostPattern::Any);
        }
        let (kind, rest) = if let Some(r) = t.strip_prefix("*.") {
            (1, r)
        } else if let Some(r) = t.strip_prefix('.') {
            (2, r)
        } else {
            (0, t)
        };
        let rest = rest.trim_end_matches('.').to_ascii_lowercase();
        if rest.is_empty()
            || rest.contains(|c: char| {
                c.is_whitespace() || matches!(c, '*' | '/' | ':' | '?' | '#' | '@' | ',')
            })
            || rest.starts_with('.')
            || rest.contains("..")
        {
            return Err(format!(
                "invalid host pattern `{s}` (use `example.com`, `*.example.com` or `.example.com`)"
            ));
        }
        Ok(match kind {
            1 => HostPattern::Subdomains(format!(".{rest}")),
            2 => HostPattern::DomainAndSubdomains(rest),
            _ => HostPattern::Exact(rest),
        })
    }

    /// `host` must already be lowercase without a trailing dot.
    #[inline]
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => host == h,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostPattern::DomainAndSubdomains(d) => {
                host == d
                    || (host.len() > d.len()
                        && host.ends_with(d.as_str())
                        && host.as_bytes()[host.len() - d.len() - 1] == b'.')
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => write!(f, "*"),
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Subdomains(s) => write!(f, "*{s}"),
            HostPattern::DomainAndSubdomains(d) => write!(f, ".{d}"),
        }
    }
}

/// Inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad = || format!("invalid port range `{s}` (use e.g. 443 or \"8000-8080\")");
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let a: u16 = a.parse().map_err(|_| bad())?;
        let b: u16 = b.parse().map_err(|_| bad())?;
        if a > b || a == 0 {
            return Err(bad());
        }
        Ok(PortRange(a, b))
    }
    #[inline]
    pub fn contains(&self, p: u16) -> bool {
        self.0 <= p && p <= self.1
    }
}

/// Minutes since local midnight, `[start, end)`; `end < start` = overnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeWindow {
    pub start: u16,
    pub end: u16,
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if (h < 24 && m < 60) || (h == 24 && m == 0) {
        Some(h * 60 + m)
    } else {
        None
    }
}

impl TimeWindow {
    pub fn parse(s: &str) -> Result<TimeWindow, String> {
        let bad = |why: &str| {
            format!("invalid time window `{s}`: {why} (use \"HH:MM-HH:MM\", e.g. \"08:00-17:00\" or overnight \"22:00-06:00\")")
        };
        let (a, b) = s.split_once('-').ok_or_else(|| bad("missing `-`"))?;
        let start = parse_hhmm(a).ok_or_else(|| bad("bad start time"))?;
        let end = parse_hhmm(b).ok_or_else(|| bad("bad end time"))?;
        if start == end {
            return Err(bad("empty window (start equals end)"));
        }
        if start == 24 * 60 {
            return Err(bad("start cannot be 24:00"));
        }
        Ok(TimeWindow { start, end })
    }
    pub fn overnight(&self) -> bool {
        self.end < self.start
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Bit i = weekday i, Monday = 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Weekdays(pub u8);

impl Weekdays {
    pub const ALL: Weekdays = Weekdays(0x7f);
    fn day(s: &str) -> Option<u8> {
        let s = s.trim().to_ascii_lowercase();
        let s = match s.as_str() {
            "月" => "mon",
            "火" => "tue",
            "水" => "wed",
            "木" => "thu",
            "金" => "fri",
            "土" => "sat",
            "日" => "sun",
            x => x,
        };
        let short = s.get(..3)?;
        DAY_NAMES.iter().position(|d| *d == short).map(|i| i as u8)
    }
    /// One item: "mon", "monday", "月", or a range "mon-fri" (wrapping: "fri-mon").
    pub fn parse_item(s: &str) -> Result<Weekdays, String> {
        let bad = || {
            format!("invalid weekday `{s}` (use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\")")
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let a = Self::day(a).ok_or_else(bad)?;
                let b = Self::day(b).ok_or_else(bad)?;
                let mut bits = 0u8;
                let mut d = a;
                loop {
                    bits |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
                Ok(Weekdays(bits))
            }
            None => Ok(Weekdays(1 << Self::day(s).ok_or_else(bad)?)),
        }
    }
    #[inline]
    pub fn contains(&self, day: u8) -> bool {
        self.0 & (1 << day) != 0
    }
}

impl fmt::Display for Weekdays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<&str> = (0..7)
            .filter(|d| self.contains(*d))
            .map(|d| DAY_NAMES[d as usize])
            .collect();
        write!(f, "{}", v.join(","))
    }
}

/// How `?` reads in a [`wildcard_match`] pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionMark {
    /// `?` matches any one byte (log-search host patterns).
    AnyByte,
    /// `?` is an ordinary character (app URL paths, where it starts a query).
    Literal,
}

/// Case-insensitive (ASCII) whole-text wildcard match: `*` matches any run
/// of bytes, `?` as `question_mark` says. Linear-ish: one backtrack point.
pub fn wildcard_match(pattern: &[u8], text: &[u8], question_mark: QuestionMark) -> bool {
    let any_byte = question_mark == QuestionMark::AnyByte;
    let (p, s) = (pattern, text);
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len()
            && p[pi] != b'*'
            && ((any_byte && p[pi] == b'?') || p[pi].eq_ignore_ascii_case(&s[si]))
        {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Parses "+09:00", "-05:30", "Z", "UTC" into seconds east of UTC.
pub fn parse_offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    if t == "Asia/Tokyo" {
        return Ok(9 * 3600);
    }
    let bad = || format!("invalid timezone `{s}` (use a fixed offset like \"+09:00\")");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let m = parse_hhmm(rest).ok_or_else(bad)? as i32;
    if m > 18 * 60 {
        return Err(bad());
    }
    Ok(sign * m * 60)
}

/// Days since 1970-01-01 of a calendar date `YYYY-MM-DD` (the format of
/// list-entry expiry dates); `Err` says what is wrong.
pub fn parse_date(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not a date (write it like \"2026-03-31\")");
    let b = s.trim().as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = std::str::from_utf8(&b[r]).map_err(|_| bad())?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<i64>().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}

/// The Unix time (ms) at which an entry valid through local date `day`
/// (days since 1970-01-01) stops applying: the next local midnight.
pub fn end_of_local_day_ms(day: i64, offset_secs: i32) -> i64 {
    ((day + 1) * 86_400 - offset_secs as i64) * 1000
}

/// (weekday Monday=0, minute of day) for a time at a fixed UTC offset.
pub fn local_day_minute(t: std::time::SystemTime, offset_secs: i32) -> (u8, u16) {
    let secs: i64 = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let local = secs + offset_secs as i64;
    let days = local.div_euclid(86_400);
    let minute = (local.rem_euclid(86_400) / 60) as u16;
    // 1970-01-01 was a Thursday (= 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as u8;
    (weekday, minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2026-03-31"), Ok(20_543));
        assert_eq!(parse_date("2024-02-29"), Ok(19_782));
        assert!(parse_date("2025-02-29").is_err());
        assert!(parse_date("2026-3-31").is_err());
        assert!(parse_date("2026-13-01").is_err());
        // Through 2026-03-31 in JST: until 2026-03-31T15:00:00Z.
        assert_eq!(end_of_local_day_ms(20_543, 9 * 3600), 1_774_969_200_000);
    }
    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("Example.com").unwrap();
        assert!(exact.matches("example.com") && !exact.matches("a.example.com"));
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches("a.example.com") && sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com") && !sub.matches("badexample.com"));
        let both = HostPattern::parse(".example.com").unwrap();
        assert!(both.matches("example.com") && both.matches("x.example.com"));
        assert!(!both.matches("badexample.com"));
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a/b").is_err());
        assert!(HostPattern::parse("*").unwrap().matches("anything"));
    }
    #[test]
    fn ports_windows_days() {
        assert_eq!(
            PortRange::parse("8000-8080").unwrap(),
            PortRange(8000, 8080)
        );
        assert!(PortRange::parse("80-20").is_err());
        assert!(TimeWindow::parse("22:00-06:00").unwrap().overnight());
        assert!(TimeWindow::parse("25:00-06:00").is_err());
        assert!(TimeWindow::parse("08:00").is_err());
        assert_eq!(Weekdays::parse_item("mon-fri").unwrap().0, 0b11111);
        assert_eq!(Weekdays::parse_item("sat-mon").unwrap().0, 0b1100001);
        assert!(Weekdays::parse_item("funday").is_err());
        assert_eq!(parse_offset("+09:00").unwrap(), 32400);
        assert!(parse_offset("JST").is_err());
    }
    #[test]
    fn local_time() {
        // 2024-04-01T00:00:00Z is a Monday; at +09:00 it's Monday 09:00.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_711_929_600);
        assert_eq!(local_day_minute(t, 9 * 3600), (0, 9 * 60));
        assert_eq!(local_day_minute(t, -3600), (6, 23 * 60));
    }

    #[test]
    fn wildcards_and_the_question_mark() {
        use QuestionMark::{AnyByte, Literal};
        assert!(wildcard_match(
            b"*.Example.com",
            b"a.b.example.COM",
            Literal
        ));
        assert!(!wildcard_match(b"a*b*c", b"acb", AnyByte));
        assert!(wildcard_match(b"*", b"", Literal));
        assert!(wildcard_match(b"ad?.net", b"ads.net", AnyByte));
        assert!(!wildcard_match(b"ad?.net", b"ads.net", Literal));
        assert!(wildcard_match(b"/x?id=*", b"/x?id=7", Literal));
        assert!(!wildcard_match(b"/x?id=*", b"/xyid=7", Literal));
    }
}
