//! IPS rule files (the Suricata subset, with PCRE translation): parse and
//! compile a rule file, then scan a request, a body, an SNI, a DNS name
//! and a stream prefix with what compiled. Input: rule text, a NUL byte,
//! then the traffic bytes to scan.
#![no_main]

use std::path::Path;

use komugate::ips::{BodyScan, Direction, HttpRequestBuffers, IpsEngine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (rules, traffic) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(rules) = std::str::from_utf8(rules) else {
        return;
    };
    let Ok((engine, report)) = IpsEngine::from_texts(&[(Path::new("fuzz.rules"), rules)]) else {
        return;
    };
    let _ = report.summary();
    let text = String::from_utf8_lossy(traffic);
    let _ = engine.scan_tls_sni(&text, 443);
    let _ = engine.scan_dns_query(&text, Some(traffic));
    let _ = engine.scan_stream_prefix(Direction::ToServer, 80, traffic);
    let _ = engine.scan_stream_prefix(Direction::ToClient, 443, traffic);
    // The traffic as an HTTP request: method, URI, host, User-Agent lines,
    // the rest as the header block, and the whole input as the body.
    let mut lines = traffic.split(|b| *b == b'\n');
    let mut field = || lines.next().unwrap_or_default().to_vec();
    let req = HttpRequestBuffers {
        method: field(),
        uri: field(),
        host: field(),
        user_agent: Some(field()),
        headers: field(),
        port: 80,
    };
    let _ = engine.scan_http_request(&req);
    let mut body = BodyScan::new(4096);
    for chunk in traffic.chunks(700) {
        let _ = engine.scan_http_request_body_chunk(&req, &mut body, chunk);
    }
    let mut body = BodyScan::new(4096);
    let _ = engine.scan_http_response_body_chunk(&req, &mut body, traffic);
});
