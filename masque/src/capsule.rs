//! RFC 9297 capsules on a byte stream, and the DATAGRAM capsule that
//! carries RFC 9298 UDP payloads.
//!
//! A capsule is `type (varint) | length (varint) | value (length bytes)`.
//! The DATAGRAM capsule (type 0x00) holds an HTTP Datagram: `context ID
//! (varint) | payload`; for CONNECT-UDP, context 0 is a UDP payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::varint;

/// Capsule type of the DATAGRAM capsule (RFC 9297 section 3.5).
pub const DATAGRAM: u64 = 0x00;

/// Context ID of a plain UDP payload (RFC 9298 section 4).
pub const UDP_CONTEXT: u64 = 0;

/// The largest UDP payload any IP version carries: 65,535 minus the 8-byte
/// UDP header (an IPv6 jumbogram aside). IPv4 tops out at 65,507.
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// Default limit on a DATAGRAM capsule's value: the largest UDP payload
/// plus the longest context ID.
pub const DEFAULT_MAX_DATAGRAM: usize = MAX_UDP_PAYLOAD + 8;

/// A capsule stream that cannot be read on (the request is malformed,
/// RFC 9297 section 3.3): the receiver ends the stream, not the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsuleError {
    /// A DATAGRAM capsule whose value does not start with a whole context ID.
    #[error("DATAGRAM capsule of {len} bytes has no complete context ID")]
    MissingContextId { len: usize },
    /// The stream ended inside a capsule.
    #[error("capsule stream ended inside a capsule ({buffered} bytes left over)")]
    Truncated { buffered: usize },
}

/// What a [`CapsuleDecoder`] has dropped so far. Counters only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// UDP payloads handed out (context 0 DATAGRAMs).
    pub datagrams: u64,
    /// DATAGRAM capsules with a context ID other than 0, dropped (RFC 9298:
    /// no extension registers one here).
    pub unknown_context: u64,
    /// Capsules of a type other than DATAGRAM, skipped unread.
    pub unknown_type: u64,
    /// DATAGRAM capsules longer than the decoder's limit, skipped unread.
    pub oversized: u64,
}

/// Appends one capsule (type, length, value).
pub fn encode_capsule(capsule_type: u64, value: &[u8], out: &mut impl BufMut) {
    varint::encode(capsule_type, out);
    varint::encode(value.len() as u64, out);
    out.put_slice(value);
}

/// Appends a DATAGRAM capsule carrying `payload` as a UDP payload
/// (context 0). `out` may be a `Vec<u8>` or a `BytesMut`.
pub fn encode_datagram(payload: &[u8], out: &mut impl BufMut) {
    let context_len = varint::len(UDP_CONTEXT);
    varint::encode(DATAGRAM, out);
    varint::encode((context_len + payload.len()) as u64, out);
    varint::encode(UDP_CONTEXT, out);
    out.put_slice(payload);
}

/// Bytes [`encode_datagram`] writes for a payload of `payload_len` bytes.
pub fn datagram_capsule_len(payload_len: usize) -> usize {
    let value = varint::len(UDP_CONTEXT) + payload_len;
    varint::len(DATAGRAM) + varint::len(value as u64) + value
}

/// Splits a DATAGRAM capsule's value into its context ID and payload.
pub fn parse_datagram(value: &[u8]) -> Result<(u64, &[u8]), CapsuleError> {
    let (context, n) =
        varint::decode(value).ok_or(CapsuleError::MissingContextId { len: value.len() })?;
    Ok((context, &value[n..]))
}

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for a capsule header.
    Header,
    /// Discarding the rest of a capsule that is not read.
    Skip { remaining: u64 },
}

/// Incremental decoder for a capsule stream (the body of a CONNECT-UDP
/// request or response). Feed it bytes as they arrive with [`push`], then
/// call [`next_payload`] until it says "need more" (`Ok(None)`).
///
/// Memory is bounded by the limit given to [`new`]: DATAGRAMs over it and
/// capsules of unknown types are skipped as their bytes arrive, never
/// buffered whole.
///
/// [`push`]: CapsuleDecoder::push
/// [`next_payload`]: CapsuleDecoder::next_payload
/// [`new`]: CapsuleDecoder::new
#[derive(Debug)]
pub struct CapsuleDecoder {
    buf: BytesMut,
    max_datagram: usize,
    state: State,
    stats: DecoderStats,
}

impl Default for CapsuleDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DATAGRAM)
    }
}

impl CapsuleDecoder {
    /// A decoder that drops DATAGRAM capsules whose value (context ID +
    /// payload) is longer than `max_datagram` bytes.
    pub fn new(max_datagram: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_datagram,
            state: State::Header,
            stats: DecoderStats::default(),
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next UDP payload: `Ok(Some(payload))`, `Ok(None)` when more bytes
    /// are needed, `Err` when the stream is malformed (the error repeats on
    /// every later call: end the stream). Unknown capsule types, unknown
    /// context IDs and oversized DATAGRAMs are dropped and counted in
    /// [`stats`](CapsuleDecoder::stats).
    pub fn next_payload(&mut self) -> Result<Option<Bytes>, CapsuleError> {
        loop {
            match self.state {
                State::Skip { remaining } => {
                    let n = remaining.min(self.buf.len() as u64);
                    self.buf.advance(n as usize);
                    if n < remaining {
                        self.state = State::Skip {
                            remaining: remaining - n,
                        };
                        return Ok(None);
                    }
                    self.state = State::Header;
                }
                State::Header => {
                    let Some((capsule_type, t)) = varint::decode(&self.buf) else {
                        return Ok(None);
                    };
                    let Some((len, l)) = varint::decode(&self.buf[t..]) else {
                        return Ok(None);
                    };
                    if capsule_type != DATAGRAM || len > self.max_datagram as u64 {
                        if capsule_type == DATAGRAM {
                            self.stats.oversized += 1;
                        } else {
                            self.stats.unknown_type += 1;
                        }
                        self.buf.advance(t + l);
                        self.state = State::Skip { remaining: len };
                        continue;
                    }
                    let len = len as usize;
                    if self.buf.len() < t + l + len {
                        // Room for the rest, so the next push does not reallocate twice.
                        self.buf.reserve(t + l + len - self.buf.len());
                        return Ok(None);
                    }
                    let (context, n) = match varint::decode(&self.buf[t + l..t + l + len]) {
                        Some(found) => found,
                        None => return Err(CapsuleError::MissingContextId { len }),
                    };
                    self.buf.advance(t + l);
                    let mut value = self.buf.split_to(len).freeze();
                    if context != UDP_CONTEXT {
                        self.stats.unknown_context += 1;
                        continue;
                    }
                    value.advance(n);
                    self.stats.datagrams += 1;
                    return Ok(Some(value));
                }
            }
        }
    }

    /// Call when the stream has ended: `Err` if it ended inside a capsule.
    pub fn finish(&self) -> Result<(), CapsuleError> {
        match self.state {
            State::Header if self.buf.is_empty() => Ok(()),
            _ => Err(CapsuleError::Truncated {
                buffered: self.buf.len(),
            }),
        }
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What has been handed out and dropped so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut CapsuleDecoder) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(p) = dec.next_payload().unwrap() {
            out.push(p);
        }
        out
    }

    /// A deterministic pseudo-random generator (xorshift), so the
    /// round-trip tests cover many shapes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn datagram_wire_format() {
        let mut out = Vec::new();
        encode_datagram(b"hi", &mut out);
        // type 0, length 3, context 0, "hi"
        assert_eq!(out, [0x00, 0x03, 0x00, b'h', b'i']);
        assert_eq!(datagram_capsule_len(2), out.len());
        let mut big = BytesMut::new();
        encode_datagram(&[7; 100], &mut big);
        // length 101 takes a 2-byte varint
        assert_eq!(&big[..4], &[0x00, 0x40, 101, 0x00]);
        assert_eq!(datagram_capsule_len(100), big.len());
    }

    #[test]
    fn empty_udp_payload_is_a_datagram() {
        let mut out = Vec::new();
        encode_datagram(b"", &mut out);
        let mut dec = CapsuleDecoder::default();
        dec.push(&out);
        assert_eq!(dec.next_payload().unwrap(), Some(Bytes::new()));
        dec.finish().unwrap();
    }

    #[test]
    fn byte_at_a_time_needs_more_then_yields() {
        let mut wire = Vec::new();
        encode_datagram(b"hello", &mut wire);
        encode_datagram(b"world", &mut wire);
        let mut dec = CapsuleDecoder::default();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(&[*b]);
            got.extend(decode_all(&mut dec));
        }
        assert_eq!(got, [&b"hello"[..], &b"world"[..]]);
        assert_eq!(dec.stats().datagrams, 2);
        dec.finish().unwrap();
    }

    #[test]
    fn unknown_types_and_contexts_are_dropped_and_counted() {
        let mut wire = Vec::new();
        encode_capsule(0x2a, b"ignored capsule", &mut wire);
        encode_datagram(b"one", &mut wire);
        // DATAGRAM with context 2 (would be a registered extension)
        encode_capsule(DATAGRAM, &[0x02, b'x'], &mut wire);
        // Unknown type with a 4-byte type varint and an empty value
        encode_capsule(0x1234_5678, b"", &mut wire);
        encode_datagram(b"two", &mut wire);
        let mut dec = CapsuleDecoder::default();
        dec.push(&wire);
        assert_eq!(decode_all(&mut dec), [&b"one"[..], &b"two"[..]]);
        let s = dec.stats();
        assert_eq!((s.datagrams, s.unknown_context, s.unknown_type), (2, 1, 2));
        dec.finish().unwrap();
    }

    #[test]
    fn unknown_capsule_is_skipped_without_buffering_it() {
        let mut dec = CapsuleDecoder::new(16);
        let mut head = Vec::new();
        varint::encode(0x77, &mut head);
        varint::encode(1_000_000, &mut head);
        dec.push(&head);
        assert_eq!(dec.next_payload().unwrap(), None);
        for _ in 0..1000 {
            dec.push(&[0u8; 1000]);
            assert_eq!(dec.next_payload().unwrap(), None);
            assert_eq!(dec.buffered(), 0);
        }
        let mut wire = Vec::new();
        encode_datagram(b"after", &mut wire);
        dec.push(&wire);
        assert_eq!(dec.next_payload().unwrap().as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn oversized_datagram_is_skipped_and_the_stream_goes_on() {
        let mut dec = CapsuleDecoder::new(100);
        let mut wire = Vec::new();
        encode_datagram(&[1; 99], &mut wire); // value 100: at the limit
        encode_datagram(&[2; 100], &mut wire); // value 101: over
        encode_datagram(b"next", &mut wire);
        dec.push(&wire);
        let got = decode_all(&mut dec);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), 99);
        assert_eq!(&got[1][..], b"next");
        assert_eq!(dec.stats().oversized, 1);
    }

    #[test]
    fn default_limit_is_the_largest_udp_payload() {
        let mut dec = CapsuleDecoder::default();
        let mut wire = Vec::new();
        encode_datagram(&vec![0; MAX_UDP_PAYLOAD], &mut wire);
        encode_datagram(&vec![0; MAX_UDP_PAYLOAD + 8], &mut wire);
        dec.push(&wire);
        assert_eq!(decode_all(&mut dec).len(), 1);
        assert_eq!(dec.stats().oversized, 1);
    }

    #[test]
    fn datagram_without_context_id_is_malformed() {
        let mut dec = CapsuleDecoder::default();
        dec.push(&[0x00, 0x00]); // DATAGRAM, empty value
        let err = dec.next_payload().unwrap_err();
        assert_eq!(err, CapsuleError::MissingContextId { len: 0 });
        // The error repeats: the stream cannot be read on.
        assert_eq!(dec.next_payload().unwrap_err(), err);

        // A 2-byte context varint cut by the capsule length.
        let mut dec = CapsuleDecoder::default();
        dec.push(&[0x00, 0x01, 0x40]);
        assert!(matches!(
            dec.next_payload(),
            Err(CapsuleError::MissingContextId { len: 1 })
        ));
        assert_eq!(
            parse_datagram(&[0x40]),
            Err(CapsuleError::MissingContextId { len: 1 })
        );
        assert_eq!(parse_datagram(&[0x00, 9]), Ok((0, &[9u8][..])));
    }

    #[test]
    fn stream_ending_inside_a_capsule_is_truncated() {
        let mut wire = Vec::new();
        encode_datagram(b"abc", &mut wire);
        let mut dec = CapsuleDecoder::default();
        dec.push(&wire[..wire.len() - 1]);
        assert_eq!(dec.next_payload().unwrap(), None);
        assert!(matches!(dec.finish(), Err(CapsuleError::Truncated { .. })));

        // Ending inside a skipped capsule is truncated too.
        let mut dec = CapsuleDecoder::default();
        dec.push(&[0x21, 0x05, 1, 2]);
        assert_eq!(dec.next_payload().unwrap(), None);
        assert!(dec.finish().is_err());
    }

    /// Random mixes of capsules, cut into random chunks, decode to the
    /// datagrams that went in, whatever the chunking.
    #[test]
    fn round_trip_random_streams_and_chunkings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            let mut unknown = 0;
            for _ in 0..rng.below(20) {
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(64),
                    2 => rng.below(20_000),
                    _ => 16_383 + rng.below(3),
                } as usize;
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if rng.below(5) == 0 {
                    encode_capsule(1 + rng.below(varint::MAX), &payload, &mut wire);
                    unknown += 1;
                } else {
                    encode_datagram(&payload, &mut wire);
                    expected.push(payload);
                }
            }
            let mut dec = CapsuleDecoder::default();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(4096) as usize).min(rest.len());
                dec.push(&rest[..n]);
                rest = &rest[n..];
                got.extend(decode_all(&mut dec).into_iter().map(|b| b.to_vec()));
            }
            assert_eq!(got, expected);
            assert_eq!(dec.stats().unknown_type, unknown);
            dec.finish().unwrap();
        }
    }

    /// Arbitrary bytes (capsule-like: small types and lengths, DATAGRAMs
    /// with odd context IDs, cut anywhere) under small limits: the outcome
    /// does not depend on the chunking, memory stays bounded, and what
    /// comes out re-encodes to itself.
    #[test]
    fn arbitrary_bytes_keep_the_decoders_bounds() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(8) {
                let len = rng.below(80);
                if rng.below(3) == 0 {
                    input.extend((0..rng.below(12)).map(|_| rng.next() as u8));
                } else {
                    varint::encode(
                        if rng.below(3) == 0 {
                            rng.below(4)
                        } else {
                            DATAGRAM
                        },
                        &mut input,
                    );
                    varint::encode(len, &mut input);
                    input.extend((0..len).map(|_| rng.below(3) as u8));
                }
            }
            input.truncate(rng.below(input.len() as u64 + 1) as usize);
            let max = rng.below(100) as usize;
            let plan: Vec<u8> = (0..rng.below(4)).map(|_| rng.below(16) as u8).collect();
            let (chunked, chunked_ok) = crate::checked::decode_checked(&input, &plan, max);
            let (whole, whole_ok) = crate::checked::decode_checked(&input, &[], max);
            assert_eq!(
                (&chunked, chunked_ok),
                (&whole, whole_ok),
                "{input:?} {plan:?} {max}"
            );
            let mut wire = Vec::new();
            for p in &whole {
                encode_datagram(p, &mut wire);
            }
            assert_eq!(
                crate::checked::decode_checked(&wire, &[], max),
                (whole, true)
            );
        }
    }
}
