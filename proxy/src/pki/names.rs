//! Device ids, group names and certificate serial numbers as text.

use anyhow::{bail, Result};

use super::MAX_NAME_LEN;
use crate::common::hex;

/// Check a device id or group name against the documented safe set.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("{what} must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        bail!(
            "{what} {name:?} is too long ({} bytes, at most {MAX_NAME_LEN})",
            name.len()
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        let why = if c == ':' {
            "':' is reserved as the URN separator".to_string()
        } else if c.is_whitespace() {
            "whitespace is not allowed".to_string()
        } else if !c.is_ascii() {
            format!("non-ASCII character {c:?} is not allowed")
        } else {
            format!("character {c:?} is not allowed")
        };
        bail!("invalid {what} {name:?}: {why}; use ASCII letters, digits and - _ . @");
    }
    Ok(())
}

/// Parse a hex serial ("0A:1b:..", "0x0a1b", "0a1b") into big-endian bytes with leading
/// zero bytes removed (so "00:ab" and "ab" compare equal). `None` if not hex.
pub fn parse_serial_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("checked hex"))
        .collect();
    let first_nonzero = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes.drain(..first_nonzero);
    Some(bytes)
}

/// Canonical lowercase hex of a serial (leading zero bytes removed, no colons).
pub fn serial_to_hex(raw: &[u8]) -> String {
    let first_nonzero = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[first_nonzero..])
}
