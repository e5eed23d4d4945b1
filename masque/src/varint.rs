//! QUIC variable-length integers (RFC 9000 section 16): the two high bits
//! of the first byte give the length (1, 2, 4 or 8 bytes), the rest is the
//! value, big-endian. Capsule types, lengths and context IDs use them.

use bytes::BufMut;

/// The largest value a varint can carry (2^62 - 1).
pub const MAX: u64 = (1 << 62) - 1;

/// How many bytes `value` takes in its shortest encoding.
///
/// # Panics
/// When `value > MAX` (no encoding exists).
pub fn len(value: u64) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        0x4000_0000..=MAX => 8,
        _ => panic!("varint value {value} is over 2^62 - 1"),
    }
}

/// Appends the shortest encoding of `value`.
///
/// # Panics
/// When `value > MAX`.
pub fn encode(value: u64, out: &mut impl BufMut) {
    match len(value) {
        1 => out.put_u8(value as u8),
        2 => out.put_u16(0x4000 | value as u16),
        4 => out.put_u32(0x8000_0000 | value as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Reads one varint from the start of `buf`: `Some((value, bytes used))`,
/// or `None` when `buf` holds only part of it. Every byte string that is
/// long enough is a valid varint (non-shortest encodings are allowed, as in
/// QUIC), so there is no "malformed" case.
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let n = 1usize << (first >> 6);
    let bytes = buf.get(..n)?;
    let mut value = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 appendix A.1 sample encodings.
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(decode(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode(&[0x25]), Some((37, 1)));
        // Non-shortest form of 37 is still 37.
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn partial_input_needs_more() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0x7b]), None);
        assert_eq!(decode(&[0xc2, 0x19, 0x7c]), None);
    }

    #[test]
    fn round_trip_at_every_boundary() {
        for v in [
            0,
            1,
            0x3f,
            0x40,
            0x3fff,
            0x4000,
            0x3fff_ffff,
            0x4000_0000,
            MAX - 1,
            MAX,
        ] {
            let mut out = Vec::new();
            encode(v, &mut out);
            assert_eq!(out.len(), len(v), "{v}");
            assert_eq!(decode(&out), Some((v, out.len())), "{v}");
            // Every strict prefix is "need more".
            for cut in 0..out.len() {
                assert_eq!(decode(&out[..cut]), None, "{v} cut at {cut}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "over 2^62 - 1")]
    fn too_large_value_panics() {
        encode(MAX + 1, &mut Vec::new());
    }
}
