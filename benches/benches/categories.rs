//! Category matcher benches: UT1 sample (lookups, snapshot load, memory) and
//! a synthetic 4 M-domain corpus.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-categories cargo bench -p komugate-benches --bench categories`
//! UT1 location: `$KOMUGATE_UT1`, else `<repo>/../shared/blocklists/ut1`
//! (relative to this crate's manifest dir); skipped with a message if absent.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use komugate_categories::{Matcher, MatcherBuilder};

const CHILD_ENV: &str = "KOMUGATE_CAT_RSS_CHILD";

/// Resident set size in bytes, from /proc/self/statm (Linux; 0 elsewhere).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mb(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Deterministic RNG (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn word(&mut self, min: usize, max: usize) -> String {
        const SYL: &[&str] = &[
            "ka", "ki", "ku", "ke", "ko", "sa", "shi", "su", "ta", "chi", "tsu", "na", "ni", "ma",
            "mi", "ya", "yo", "ra", "ri", "ro", "wa", "n", "x", "z", "q", "0", "1", "7", "-",
        ];
        let n = min + self.below(max - min + 1);
        let mut s = String::new();
        while s.len() < n {
            let syl = SYL[self.below(SYL.len())];
            if syl == "-" && (s.is_empty() || s.ends_with('-')) {
                continue;
            }
            s.push_str(syl);
        }
        s.trim_end_matches('-').to_string()
    }
    fn domain(&mut self) -> String {
        const TLD: &[&str] = &[
            "com", "net", "org", "xyz", "info", "ru", "jp", "co.jp", "de", "fr", "top", "io",
        ];
        let mut d = self.word(4, 14);
        if self.below(4) == 0 {
            d = format!("{}.{d}", self.word(2, 8));
        }
        format!("{d}.{}", TLD[self.below(TLD.len())])
    }
}

fn ut1_dir() -> Option<PathBuf> {
    let p = std::env::var_os("KOMUGATE_UT1")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/blocklists/ut1")
        });
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "categories bench: UT1 lists not found at {} (set KOMUGATE_UT1); skipping the UT1 benches",
            p.display()
        );
        None
    }
}

/// Bytes of list files (domains/urls/expressions, any split/gz part).
fn raw_list_bytes(dir: &Path) -> (usize, usize) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for cat in rd.flatten() {
            if let Ok(rd2) = std::fs::read_dir(cat.path()) {
                for f in rd2.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if [
                        "domains",
                        "urls",
                        "expressions",
                        "very_restrictive_expression",
                    ]
                    .iter()
                    .any(|b| name == *b || name.starts_with(&format!("{b}.")))
                    {
                        bytes += f.metadata().map(|m| m.len() as usize).unwrap_or(0);
                        files += 1;
                    }
                }
            }
        }
    }
    (bytes, files)
}

/// Mixed hit/miss request list: half hits from the lists, half misses.
fn ut1_queries(dir: &Path, n: usize) -> Vec<(String, String)> {
    let mut rng = Rng(42);
    let mut doms = Vec::new();
    let mut urls = Vec::new();
    for cat in [
        "gambling",
        "malware",
        "phishing",
        "shopping",
        "jobsearch",
        "press",
        "games",
    ] {
        if let Ok(t) = std::fs::read_to_string(dir.join(cat).join("domains")) {
            doms.extend(t.lines().step_by(97).map(str::to_string));
        }
        if let Ok(t) = std::fs::read_to_string(dir.join(cat).join("urls")) {
            urls.extend(t.lines().step_by(13).map(str::to_string));
        }
    }
    let paths = [
        "/",
        "/index.html",
        "/search?q=komugate&lang=ja",
        "/a/b/c/d.png",
        "",
    ];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rng.below(4) {
            0 if !doms.is_empty() => {
                let d = &doms[rng.below(doms.len())];
                let host = if rng.below(2) == 0 {
                    format!("www.{d}")
                } else {
                    d.clone()
                };
                out.push((host, paths[rng.below(paths.len())].to_string()));
            }
            1 if !urls.is_empty() => {
                let u = &urls[rng.below(urls.len())];
                let (h, p) = u.split_once('/').unwrap_or((u, ""));
                out.push((format!("www.{h}"), format!("/{p}/x")));
            }
            _ => {
                let h = format!("{}.{}", rng.word(2, 6), rng.domain());
                out.push((h, paths[rng.below(paths.len())].to_string()));
            }
        }
    }
    out
}

fn bench_lookups(c: &mut Criterion, name: &str, m: &Matcher, qs: &[(String, String)]) {
    let hits = qs
        .iter()
        .filter(|(h, p)| !m.lookup(h, p).is_empty())
        .count();
    eprintln!(
        "{name}: {} queries, {:.0}% hits",
        qs.len(),
        100.0 * hits as f64 / qs.len() as f64
    );
    let urls: Vec<String> = qs.iter().map(|(h, p)| format!("https://{h}{p}")).collect();
    // Noise-robust figure next to criterion's mean: ns per lookup over whole
    // passes of the query list, min and median of 15 passes.
    // On-CPU time from /proc/thread-self/schedstat excludes the time this
    // thread waited for a core (the bench machine is shared and noisy).
    let mut per = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..15 {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        for (h, p) in qs {
            black_box(m.lookup(black_box(h), black_box(p)));
        }
        per.push(t.elapsed().as_secs_f64() * 1e9 / qs.len() as f64);
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            cpu.push((b - a) as f64 / qs.len() as f64);
        }
    }
    per.sort_by(|a, b| a.total_cmp(b));
    cpu.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "{name}: lookup over full passes (wall): min {:.0} ns, median {:.0} ns; on-CPU: min {:.0} ns, median {:.0} ns",
        per[0],
        per[per.len() / 2],
        cpu.first().copied().unwrap_or(f64::NAN),
        cpu.get(cpu.len() / 2).copied().unwrap_or(f64::NAN)
    );
    let mut i = 0;
    c.bench_function(&format!("{name}/lookup_mixed"), |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            let (h, p) = &qs[i];
            black_box(m.lookup(black_box(h), black_box(p)))
        })
    });
    let mut j = 0;
    c.bench_function(&format!("{name}/lookup_url_mixed"), |b| {
        b.iter(|| {
            j = (j + 1) % urls.len();
            black_box(m.lookup_url(black_box(&urls[j])))
        })
    });
}

fn snapshot_child(path: &str) {
    let before = rss_bytes();
    let t = Instant::now();
    let m = Matcher::read_snapshot(Path::new(path)).expect("snapshot");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let after = rss_bytes();
    println!(
        "rss_delta={} heap={} load_ms={ms:.1} entries={}",
        after - before,
        m.heap_bytes(),
        m.entry_count()
    );
    black_box(m.lookup_url("http://example.com/"));
}

/// RSS delta of loading `snap` in a fresh process (this binary, re-run).
fn fresh_process_rss(snap: &Path) -> String {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return format!("(no current_exe: {e})"),
    };
    match std::process::Command::new(exe)
        .env(CHILD_ENV, snap)
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("(child failed: {e})"),
    }
}

fn ut1(c: &mut Criterion) {
    let Some(dir) = ut1_dir() else { return };
    let (raw, files) = raw_list_bytes(&dir);
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut b = MatcherBuilder::new();
    let rep = match b.add_squidguard_dir(&dir, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "categories bench: cannot import {}: {e}; skipping",
                dir.display()
            );
            return;
        }
    };
    let m = b.build().expect("build");
    let text_load = t.elapsed();
    let rss1 = rss_bytes();
    let snap = std::env::temp_dir().join(format!("komugate-ut1-{}.kgcat", std::process::id()));
    let t = Instant::now();
    m.write_snapshot(std::io::BufWriter::new(
        std::fs::File::create(&snap).expect("create snapshot"),
    ))
    .expect("write snapshot");
    let write = t.elapsed();
    let snap_size = std::fs::metadata(&snap)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    eprintln!("== UT1 {} ==", dir.display());
    eprintln!(
        "raw lists: {files} files, {:.1} MiB; imported {} domains, {} urls, {} expressions, {} invalid lines",
        mb(raw),
        rep.domains,
        rep.urls,
        rep.expressions,
        rep.invalid_lines
    );
    eprintln!(
        "matcher: {} categories, {} distinct entries, heap_bytes {:.1} MiB ({:.2}x raw)",
        m.category_names().len(),
        m.entry_count(),
        mb(m.heap_bytes()),
        m.heap_bytes() as f64 / raw as f64
    );
    eprintln!(
        "text import+build: {:.0} ms, RSS delta {:.1} MiB (builder dropped, allocator may keep pages)",
        text_load.as_secs_f64() * 1e3,
        mb(rss1.saturating_sub(rss0))
    );
    eprintln!(
        "snapshot: {:.1} MiB, written in {:.0} ms",
        mb(snap_size),
        write.as_secs_f64() * 1e3
    );
    eprintln!(
        "snapshot load in a fresh process: {}",
        fresh_process_rss(&snap)
    );

    let qs = ut1_queries(&dir, 100_000);
    bench_lookups(c, "ut1", &m, &qs);
    let mut g = c.benchmark_group("ut1");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("snapshot_load", |b| {
        b.iter_batched(
            || (),
            |_| black_box(Matcher::read_snapshot(&snap).expect("load")),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_file(&snap);
}

fn synthetic(c: &mut Criterion) {
    let n: usize = std::env::var("KOMUGATE_SYNTH_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let mut rng = Rng(7);
    let t = Instant::now();
    let mut text = String::with_capacity(n * 20);
    for _ in 0..n {
        text.push_str(&rng.domain());
        text.push('\n');
    }
    let gen = t.elapsed();
    let raw = text.len();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut b = MatcherBuilder::new();
    let rep = b.add_list_text(
        "adult",
        Path::new("synthetic/domains"),
        &text,
        komugate_categories::ListFormat::SquidGuardDir,
    );
    let m = b.build().expect("build");
    let build = t.elapsed();
    let rss1 = rss_bytes();
    let snap = std::env::temp_dir().join(format!("komugate-synth-{}.kgcat", std::process::id()));
    m.write_snapshot(std::io::BufWriter::new(
        std::fs::File::create(&snap).expect("create"),
    ))
    .expect("write snapshot");
    let snap_size = std::fs::metadata(&snap)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    eprintln!(
        "== synthetic {n} domains (generated in {:.0} ms) ==",
        gen.as_secs_f64() * 1e3
    );
    eprintln!(
        "raw {:.1} MiB; imported {} ({} invalid), {} distinct; heap_bytes {:.1} MiB ({:.2}x raw)",
        mb(raw),
        rep.domains,
        rep.invalid_lines,
        m.entry_count(),
        mb(m.heap_bytes()),
        m.heap_bytes() as f64 / raw as f64
    );
    eprintln!(
        "text import+build: {:.0} ms, RSS delta {:.1} MiB; snapshot {:.1} MiB",
        build.as_secs_f64() * 1e3,
        mb(rss1.saturating_sub(rss0)),
        mb(snap_size)
    );
    eprintln!(
        "snapshot load in a fresh process: {}",
        fresh_process_rss(&snap)
    );
    let lines: Vec<&str> = text.lines().step_by(41).collect();
    let mut qs = Vec::with_capacity(100_000);
    let mut r2 = Rng(99);
    while qs.len() < 100_000 {
        if r2.below(2) == 0 {
            let d = lines[r2.below(lines.len())];
            qs.push((format!("www.{d}"), "/index.html".to_string()));
        } else {
            qs.push((
                format!("{}.{}", r2.word(2, 5), r2.domain()),
                "/".to_string(),
            ));
        }
    }
    drop(text);
    bench_lookups(c, "synthetic_4m", &m, &qs);
    let mut g = c.benchmark_group("synthetic_4m");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("snapshot_load", |b| {
        b.iter_batched(
            || (),
            |_| black_box(Matcher::read_snapshot(&snap).expect("load")),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_file(&snap);
}

fn main() {
    if let Ok(p) = std::env::var(CHILD_ENV) {
        snapshot_child(&p);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    ut1(&mut c);
    if std::env::var_os("KOMUGATE_SKIP_SYNTH").is_none() {
        synthetic(&mut c);
    }
    c.final_summary();
}
