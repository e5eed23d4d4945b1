//! Policy decision latency with the example board policy (examples/policy.toml).
//! Record results in benches/RESULTS.md under `## Policy decision`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use komugate_policy::{Policy, Request, Scheme};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

fn bench(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
    let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let time = UNIX_EPOCH + Duration::from_secs(1_711_897_200 + 10 * 3600); // Mon 10:00 JST
    let groups: Vec<String> = Vec::new();
    let req = |device, ip: &str, host, path| Request {
        device,
        cert_groups: &groups,
        client_ip: ip.parse().unwrap(),
        location: None,
        scheme: Scheme::Https,
        method: "GET",
        host,
        port: 443,
        path,
        time,
    };
    let cases = [
        (
            "school_allow_default",
            req(
                Some("PC-T-0001"),
                "203.0.113.130",
                "www.mext.go.jp",
                "/a/b?c=d",
            ),
        ),
        (
            "offsite_c4th_block",
            req(Some("PC-T-0001"), "192.0.2.7", "www.c4th.example", "/login"),
        ),
        (
            "telework_hyakumon_allow",
            req(Some("PC-T-0002"), "192.0.2.7", "hyakumon.example", "/q/1"),
        ),
        (
            "ut1_gambling_block",
            req(None, "203.0.113.3", "www.0-casino.info", "/"),
        ),
    ];
    let mut g = c.benchmark_group("policy_decision");
    for (name, r) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(policy.evaluate(black_box(r))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
