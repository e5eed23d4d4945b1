//! RFC 9297 capsule streams as the gateway and the client read them from a
//! CONNECT-UDP stream (`masque::CapsuleDecoder`), fed in input-chosen
//! chunks. Checks the decoder's promises: the same payloads and outcome
//! whatever the chunking, memory bounded by its limit (never a whole
//! oversized or unknown capsule buffered), every payload within the limit,
//! and payloads re-encoded decode to themselves.
#![no_main]

use komugate_fuzz::split_plan;
use libfuzzer_sys::fuzz_target;
use masque::{encode_datagram, CapsuleDecoder};

/// Payloads until the decoder needs more bytes or fails; `false` on failure.
fn drain(dec: &mut CapsuleDecoder, out: &mut Vec<bytes::Bytes>, max: usize) -> bool {
    loop {
        match dec.next_payload() {
            Ok(Some(p)) => {
                // The value is context ID (>= 1 byte) + payload, within the limit.
                assert!(
                    p.len() < max.max(1),
                    "{} byte payload over the limit {max}",
                    p.len()
                );
                out.push(p);
            }
            Ok(None) => {
                // Waiting for a header (< 16 bytes) or one DATAGRAM within the limit.
                assert!(
                    dec.buffered() <= max + 16,
                    "{} bytes buffered with a limit of {max}",
                    dec.buffered()
                );
                return true;
            }
            Err(_) => return false,
        }
    }
}

/// Decodes `input` pushed in chunks of `plan[i] + 1` bytes.
fn decode(input: &[u8], plan: &[u8], max: usize) -> (Vec<bytes::Bytes>, bool) {
    let mut dec = CapsuleDecoder::new(max);
    let mut out = Vec::new();
    let (mut pos, mut step) = (0, 0);
    while pos < input.len() {
        let n = plan
            .get(step % plan.len().max(1))
            .map_or(input.len(), |b| *b as usize + 1)
            .min(input.len() - pos);
        dec.push(&input[pos..pos + n]);
        pos += n;
        step += 1;
        if !drain(&mut dec, &mut out, max) {
            return (out, false);
        }
    }
    (out, dec.finish().is_ok())
}

fuzz_target!(|data: &[u8]| {
    // Two bytes of limit (small limits reach the skip paths), four of chunking plan.
    let Some((head, input)) = split_plan(data, 6) else {
        return;
    };
    let max = u16::from_le_bytes([head[0], head[1]]) as usize;
    let (chunked, chunked_ok) = decode(input, &head[2..], max);
    let (whole, whole_ok) = decode(input, &[], max);
    assert_eq!(chunked, whole, "payloads depend on the read boundaries");
    assert_eq!(
        chunked_ok, whole_ok,
        "the outcome depends on the read boundaries"
    );

    let mut wire = Vec::new();
    for p in &whole {
        encode_datagram(p, &mut wire);
    }
    let (again, ok) = decode(&wire, &[], max);
    assert!(ok);
    assert_eq!(again, whole, "re-encoded payloads decode differently");
});
