//! DNS messages from clients: the `komugate client` DNS listener's SERVFAIL
//! reply (built from the raw query), and the gateway's DoH decoding,
//! refusal and block replies. Every reply the gateway builds must decode.
#![no_main]

use komugate::client::local::servfail;
use komugate::stages::doh::{blocked_reply, BlockedAnswer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 12 {
        let reply = servfail(data);
        assert!(reply.len() >= 12 && reply.len() <= data.len());
    }
    for answer in [
        BlockedAnswer::NxDomain,
        BlockedAnswer::Address("192.0.2.1".parse().unwrap()),
        BlockedAnswer::Address("2001:db8::1".parse().unwrap()),
    ] {
        if let Ok(wire) = blocked_reply(data, answer, 60) {
            blocked_reply(&wire, answer, 60).expect("the gateway's own reply decodes");
        }
    }
});
