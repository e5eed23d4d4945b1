//! The stored form of an access record and the helpers shared by the
//! writer, the segment codec and the search: time parsing and formatting,
//! host extraction.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One access record as stored and searched. The JSON form is the same as
/// the gateway's [`crate::record::AccessRecord`] (one line per record in
/// the live file): `time` is RFC 3339, `decision` is the action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogRecord {
    /// Unix time in milliseconds (RFC 3339 text in JSON).
    #[serde(
        rename = "time",
        serialize_with = "ser_time",
        deserialize_with = "de_time"
    )]
    pub time_ms: i64,
    #[serde(deserialize_with = "nullable")]
    pub listener: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub device: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// `user` was signed in on the device (OpenID Connect), not the registry's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub signed_in: bool,
    /// The signed-in user's groups (the token's group claim).
    #[serde(
        deserialize_with = "nullable_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_groups: Vec<String>,
    #[serde(
        deserialize_with = "nullable_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub site: String,
    #[serde(deserialize_with = "nullable")]
    pub client: String,
    #[serde(deserialize_with = "nullable")]
    pub method: String,
    /// Full URL for forwarded requests, `host:port` for tunnels.
    #[serde(deserialize_with = "nullable")]
    pub target: String,
    /// Lower-case host of `target` (derived when absent).
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    /// `allow`, `block` or `error` (the gateway's `decision`).
    #[serde(rename = "decision", deserialize_with = "nullable")]
    pub action: String,
    #[serde(deserialize_with = "nullable")]
    pub rule: String,
    #[serde(
        deserialize_with = "nullable_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub categories: Vec<String>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub app: String,
    /// IPS signature id(s) that fired, if any.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub ips: String,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub egress: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub error: String,
}

impl LogRecord {
    /// Parses one live-file line; fills `host` from `target` when absent.
    pub fn from_json_line(line: &[u8]) -> Result<LogRecord, serde_json::Error> {
        let mut r: LogRecord = serde_json::from_slice(line)?;
        if r.host.is_empty() {
            r.host = host_of(&r.target);
        }
        Ok(r)
    }

    /// The URL (or `host:port`) for display; same as `target`.
    pub fn url(&self) -> &str {
        &self.target
    }
}

fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn nullable_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn ser_time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_ms(*ms))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        Text(String),
        Ms(i64),
    }
    match Option::<T>::deserialize(d)? {
        None => Ok(0),
        Some(T::Ms(ms)) => Ok(ms),
        Some(T::Text(s)) => parse_rfc3339_ms(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "time {s:?} is not RFC 3339 (like 2025-04-01T08:00:00Z)"
            ))
        }),
    }
}

/// Lower-case host of a URL (`http://Host:80/x` → `host`) or of a CONNECT
/// target (`host:443` → `host`, `[::1]:443` → `::1`).
pub fn host_of(target: &str) -> String {
    let rest = match target.find("://") {
        Some(i) => &target[i + 3..],
        None => target,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut authority = &rest[..end];
    if let Some(at) = authority.rfind('@') {
        authority = &authority[at + 1..];
    }
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next().unwrap_or(stripped)
    } else {
        match authority.rfind(':') {
            Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Civil date (y, m, d) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses RFC 3339 / ISO 8601 date-times to Unix milliseconds:
/// `2025-04-01T08:00:00Z`, `...00.123+09:00`, `2025-04-01 08:00:00`
/// (no zone = UTC), `2025-04-01` (midnight UTC).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y as i64, mo, d);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b.len() < 16 || b[13] != b':' {
        return None;
    }
    let (h, mi) = (digits(&b[11..13])?, digits(&b[14..16])?);
    let mut i = 16;
    let mut sec = 0;
    if b.len() >= 19 && b[16] == b':' {
        sec = digits(&b[17..19])?;
        i = 19;
    }
    let mut ms = 0i64;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &b[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut v = 0i64;
        for k in 0..3 {
            v = v * 10 + frac.get(k).map(|c| (c - b'0') as i64).unwrap_or(0);
        }
        ms = v;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut offset_min = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            b'+' | b'-' if b.len() == i + 6 && b[i + 3] == b':' => {
                let oh = digits(&b[i + 1..i + 3])? as i64;
                let om = digits(&b[i + 4..i + 6])? as i64;
                offset_min = (oh * 60 + om) * if b[i] == b'-' { -1 } else { 1 };
            }
            _ => return None,
        }
    }
    Some(
        ((days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + sec as i64) - offset_min * 60) * 1000
            + ms,
    )
}

/// `2025-04-01T08:00:00.123Z` (milliseconds, UTC).
pub fn format_rfc3339_ms(ms: i64) -> String {
    format_with_offset(ms, 0, true)
}

/// Formats with a fixed UTC offset (minutes): `2025-04-01T17:00:00.123+09:00`.
pub fn format_with_offset(ms: i64, offset_min: i32, millis: bool) -> String {
    let local = ms + offset_min as i64 * 60_000;
    let days = local.div_euclid(86_400_000);
    let rem = local.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, f) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let mut out = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if millis {
        out.push_str(&format!(".{f:03}"));
    }
    if offset_min == 0 {
        out.push('Z');
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        let o = offset_min.abs();
        out.push_str(&format!("{sign}{:02}:{:02}", o / 60, o % 60));
    }
    out
}

/// `YYYY-MM-DD` (UTC) of a Unix millisecond time.
pub fn utc_day(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("http://WWW.Example.com:8080/a?b"),
            "www.example.com"
        );
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("https://u:p@h.example./x"), "h.example");
        assert_eq!(host_of(""), "");
    }

    #[test]
    fn times_round_trip() {
        let ms = parse_rfc3339_ms("2025-04-01T08:00:00.123Z").unwrap();
        assert_eq!(format_rfc3339_ms(ms), "2025-04-01T08:00:00.123Z");
        assert_eq!(parse_rfc3339_ms("2025-04-01T17:00:00.123+09:00"), Some(ms));
        assert_eq!(parse_rfc3339_ms("2025-04-01T08:00:00.123456789Z"), Some(ms));
        assert_eq!(
            parse_rfc3339_ms("2025-04-01"),
            Some(ms - 8 * 3_600_000 - 123)
        );
        assert_eq!(
            format_with_offset(ms, 540, false),
            "2025-04-01T17:00:00+09:00"
        );
        assert_eq!(utc_day(ms), "2025-04-01");
        assert!(parse_rfc3339_ms("yesterday").is_none());
        assert!(parse_rfc3339_ms("2025-13-01").is_none());
        // Agrees with the time crate.
        let t = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let s = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(parse_rfc3339_ms(&s), Some(1_700_000_000_000));
    }

    #[test]
    fn reads_gateway_json() {
        let line = br#"{"time":"2025-04-01T08:00:00Z","listener":"mtls","device":null,"groups":[],"client":"127.0.0.1:5000","method":"CONNECT","target":"Example.com:443","decision":"allow","rule":"default","status":200,"bytes_up":1,"bytes_down":2,"duration_ms":3,"egress":null,"error":null}"#;
        let r = LogRecord::from_json_line(line).unwrap();
        assert_eq!(r.host, "example.com");
        assert_eq!(r.action, "allow");
        assert_eq!(r.device, "");
        let back: LogRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
