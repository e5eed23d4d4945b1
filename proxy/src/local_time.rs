//! The time zone people read times in (the block page): `Asia/Tokyo` by
//! default, so a teacher sees 日本時間, not UTC.
//!
//! Zones are a small fixed-offset table, not a tz database: Japan has had
//! no daylight saving time since 1951, so `Asia/Tokyo` is exactly +09:00,
//! and a table needs no tzdata on the host (containers often have none)
//! and no extra crate. Zones with daylight saving time are refused with a
//! clear error rather than shown an hour off half the year.

use std::fmt;
use std::time::SystemTime;

use serde::Deserialize;
use time::{OffsetDateTime, UtcOffset};

/// Named zones without daylight saving time: (name, offset in seconds, abbreviation).
const ZONES: &[(&str, i32, &str)] = &[
    ("Asia/Tokyo", 9 * 3600, "JST"),
    ("Japan", 9 * 3600, "JST"),
    ("UTC", 0, "UTC"),
    ("Etc/UTC", 0, "UTC"),
];

/// A display time zone: a name from the table or a fixed offset (`+09:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalZone {
    name: String,
    offset: UtcOffset,
    abbreviation: String,
}

impl Default for LocalZone {
    fn default() -> LocalZone {
        LocalZone::parse("Asia/Tokyo").expect("Asia/Tokyo is in the table")
    }
}

impl LocalZone {
    /// `Asia/Tokyo`, `UTC`, or a fixed offset like `+09:00` / `-05:00`.
    pub fn parse(s: &str) -> Result<LocalZone, String> {
        let s = s.trim();
        if let Some((name, secs, abbr)) = ZONES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(s)) {
            return Ok(LocalZone {
                name: name.to_string(),
                offset: UtcOffset::from_whole_seconds(*secs).expect("table offsets are valid"),
                abbreviation: abbr.to_string(),
            });
        }
        match parse_offset(s) {
            Some(offset) => Ok(LocalZone {
                name: s.to_string(),
                offset,
                abbreviation: format!("UTC{s}"),
            }),
            None => Err(format!(
                "time zone {s:?} is not supported: use \"Asia/Tokyo\", \"UTC\" or a fixed offset like \"+09:00\" (zones with daylight saving time are not supported)"
            )),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `JST`, `UTC`, or `UTC+05:30` for a bare offset.
    pub fn abbreviation(&self) -> &str {
        &self.abbreviation
    }

    /// `JST, Asia/Tokyo` for a named zone, `UTC+05:30` for a bare offset:
    /// what a heading shows so a reader knows which clock the times use.
    pub fn label(&self) -> String {
        if self.abbreviation == self.name || self.abbreviation.ends_with(&self.name) {
            self.abbreviation.clone()
        } else {
            format!("{}, {}", self.abbreviation, self.name)
        }
    }

    /// Minutes east of UTC (540 for Asia/Tokyo).
    pub fn offset_minutes(&self) -> i32 {
        self.offset.whole_minutes() as i32
    }

    /// `2026年12月2日 11:08:04 JST`: the date as people write it in Japan.
    pub fn format_ja(&self, t: SystemTime) -> String {
        let t = OffsetDateTime::from(t).to_offset(self.offset);
        format!(
            "{}年{}月{}日 {:02}:{:02}:{:02} {}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            self.abbreviation
        )
    }
}

/// `+09:00`, `-05:30` (hours up to 14).
fn parse_offset(s: &str) -> Option<UtcOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    UtcOffset::from_whole_seconds(sign * (h * 3600 + m * 60)).ok()
}

impl fmt::Display for LocalZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for LocalZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LocalZone, D::Error> {
        let s = String::deserialize(d)?;
        LocalZone::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-12-01T23:30:05Z: already the 2nd in Japan.
    fn instant() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_167_805)
    }

    #[test]
    fn tokyo_is_nine_hours_ahead_and_crosses_midnight() {
        let z = LocalZone::default();
        assert_eq!(z.name(), "Asia/Tokyo");
        assert_eq!(z.format_ja(instant()), "2026年12月2日 08:30:05 JST");
        assert_eq!(
            LocalZone::parse("utc").unwrap().format_ja(instant()),
            "2026年12月1日 23:30:05 UTC"
        );
        assert_eq!(
            LocalZone::parse("-05:30").unwrap().format_ja(instant()),
            "2026年12月1日 18:00:05 UTC-05:30"
        );
    }

    #[test]
    fn zones_with_daylight_saving_or_garbage_are_refused_clearly() {
        for bad in ["Europe/Paris", "+9", "+15:00", "JST+9", ""] {
            let e = LocalZone::parse(bad).unwrap_err();
            assert!(
                e.contains("Asia/Tokyo") && e.contains("+09:00"),
                "{bad}: {e}"
            );
        }
    }
}
