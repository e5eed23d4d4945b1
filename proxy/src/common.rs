//! Helpers several modules of the gateway share: lowercase hex of bytes,
//! the wall clock in Unix seconds, and decoding of form/query values.

use std::time::{SystemTime, UNIX_EPOCH};

/// Percent-encodes everything but unreserved characters (RFC 3986 2.3),
/// for query strings and form bodies.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lowercase hex, two digits per byte (`[0x0a, 0xff]` → `"0aff"`).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Seconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decodes an `application/x-www-form-urlencoded` value (a query or form
/// field): `%XX` escapes and `+` as a space. Lenient, as browsers are: an
/// escape that is not two hex digits stays as it is. Bytes, because the
/// result need not be UTF-8; callers decide how strict to be.
pub fn percent_decode_form(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_decode_leniently() {
        let d = |s: &str| String::from_utf8(super::percent_decode_form(s.as_bytes())).unwrap();
        assert_eq!(d("%E6%88%90%E7%B8%BE+1"), "成績 1");
        assert_eq!(d("a%2fb%2F"), "a/b/");
        assert_eq!(d("%41"), "A");
        assert_eq!(d("%4"), "%4");
        assert_eq!(d("a%"), "a%");
        assert_eq!(d("%zz%"), "%zz%");
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x0a, 0xff, 0x00]), "0aff00");
        assert_eq!(super::hex(&[]), "");
    }
}
