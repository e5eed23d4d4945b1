//! Header rewrite on the forward path: hop-by-hop stripping
//! (`komugate::flow::http::strip_hop_by_hop`) on a typical browser request.
//!
//! Run: `cargo bench -p komugate-benches --bench header_rewrite`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderValue};

fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "outlook.office365.com"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "ja,en-US;q=0.9,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "a=1; b=2; session=0123456789abcdef0123456789abcdef"),
        ("connection", "keep-alive, x-hop"),
        ("proxy-connection", "keep-alive"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade-insecure-requests", "1"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let base = browser_request();
    c.bench_function("strip_hop_by_hop/browser_request_12_headers", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| komugate::flow::http::strip_hop_by_hop(black_box(h), false),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
