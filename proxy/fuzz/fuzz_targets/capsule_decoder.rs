//! RFC 9297 capsule streams as the gateway and the client read them from a
//! CONNECT-UDP stream (`masque::CapsuleDecoder`), fed in input-chosen
//! chunks. Checks the decoder's promises: the same payloads and outcome
//! whatever the chunking, memory bounded by its limit (never a whole
//! oversized or unknown capsule buffered), every payload within the limit,
//! and payloads re-encoded decode to themselves.
#![no_main]

use komugate_fuzz::split_plan;
use libfuzzer_sys::fuzz_target;
use masque::checked::decode_checked as decode;
use masque::encode_datagram;

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
