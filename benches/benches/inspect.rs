//! TLS-inspection hot paths: minting a leaf certificate for a new host (the
//! cache miss at 08:00 when every laptop visits its sites), and a cached
//! lookup (every later tunnel to the same host).
//!
//! cargo bench -p komugate-benches --bench inspect

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use komugate::stages::inspect::mint::{CertMinter, MintMetrics};

fn bench(c: &mut Criterion) {
    let ca = komugate::pki::generate_ca("komugate inspection CA").expect("CA");
    c.bench_function("mint_leaf_p256", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            ca.mint_inspection_leaf(&format!("host{i}.example.jp"), time::Duration::days(7))
                .expect("mint")
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let minter = Arc::new(CertMinter::new(
        komugate::pki::generate_ca("komugate inspection CA").expect("CA"),
        std::time::Duration::from_secs(7 * 86400),
        100_000,
        MintMetrics::register(&prometheus::Registry::new()),
    ));
    runtime
        .block_on(minter.config_for("cached.example.jp"))
        .expect("first mint");
    c.bench_function("cached_host_config", |b| {
        b.iter(|| {
            runtime
                .block_on(minter.config_for("cached.example.jp"))
                .expect("cached")
        })
    });
    let mut n = 0u64;
    c.bench_function("miss_mint_and_server_config", |b| {
        b.iter(|| {
            n += 1;
            runtime
                .block_on(minter.config_for(&format!("new{n}.example.jp")))
                .expect("mint")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
