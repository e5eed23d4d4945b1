//! The decoder's promises, checked while it decodes: shared by the unit
//! tests and the `capsule_decoder` fuzz target (feature `checked`).

use bytes::Bytes;

use crate::CapsuleDecoder;

/// Decodes `input` pushed in chunks of `plan[i] + 1` bytes (one push
/// when `plan` is empty), checking the decoder's bounds after every
/// drain: payloads within the limit, at most one header and one
/// DATAGRAM within the limit buffered. The payloads, and whether the
/// stream was well-formed.
pub fn decode_checked(input: &[u8], plan: &[u8], max: usize) -> (Vec<Bytes>, bool) {
    let mut dec = CapsuleDecoder::new(max);
    let (mut out, mut pos, mut step) = (Vec::new(), 0, 0);
    while pos < input.len() {
        let n = plan
            .get(step % plan.len().max(1))
            .map_or(input.len(), |b| *b as usize + 1)
            .min(input.len() - pos);
        dec.push(&input[pos..pos + n]);
        (pos, step) = (pos + n, step + 1);
        loop {
            match dec.next_payload() {
                Ok(Some(p)) => {
                    assert!(p.len() < max.max(1), "{} bytes over {max}", p.len());
                    out.push(p);
                }
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
        assert!(dec.buffered() <= max + 16, "{} buffered", dec.buffered());
    }
    (out, dec.finish().is_ok())
}
