//! Two helpers several modules of the gateway share: lowercase hex of
//! bytes, and the wall clock in Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x0a, 0xff, 0x00]), "0aff00");
        assert_eq!(super::hex(&[]), "");
    }
}
