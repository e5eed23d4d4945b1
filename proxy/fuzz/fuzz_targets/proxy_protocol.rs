//! PROXY protocol v1 and v2 headers, as read from the start of a
//! connection (in input-chosen chunks), and the two parsers directly.
#![no_main]

use std::time::Duration;

use komugate::listen::proxy_protocol::{encode_v2, parse_v1, parse_v2, read_header, ProxyHeader};
use komugate_fuzz::{runtime, split_plan, ChunkedStream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((plan, input)) = split_plan(data, 2) else {
        return;
    };
    let mut stream = ChunkedStream::new(input, plan);
    let read = runtime().block_on(read_header(&mut stream, Duration::from_secs(5)));
    // What was accepted re-encodes to the same addresses.
    if let Ok(ProxyHeader::Proxied {
        source,
        destination,
    }) = read
    {
        if source.is_ipv4() == destination.is_ipv4() {
            let wire = encode_v2(source, destination);
            let mut again = ChunkedStream::new(&wire, &[]);
            let reread = runtime().block_on(read_header(&mut again, Duration::from_secs(5)));
            // (v2 reports an IPv4-mapped source as IPv4; the server
            // canonicalises v1's the same way.)
            let canonical = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
            match reread {
                Ok(ProxyHeader::Proxied {
                    source: s,
                    destination: d,
                }) => {
                    assert_eq!(canonical(s), canonical(source));
                    assert_eq!(d, destination);
                }
                other => panic!("{source} -> {destination} re-read as {other:?}"),
            }
        }
    }
    let _ = parse_v1(input);
    if input.len() >= 16 {
        let head: [u8; 16] = input[..16].try_into().unwrap();
        let _ = parse_v2(&head, &input[16..]);
    }
});
