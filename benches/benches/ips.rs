//! IPS scanning throughput (MB/s): no rules vs the hand-written rules file
//! vs a synthetic Emerging-Threats-sized set (plus any real Suricata rules
//! found in `$KOMUGATE_IPS_RULES` or ../../shared/ips).
//!
//! ```text
//! cargo bench -p komugate-benches --bench ips
//! KOMUGATE_IPS_SYNTH=N   number of synthetic rules (default 20000)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use komugate::ips::{BodyScan, Direction, HttpRequestBuffers, IpsEngine};

/// xorshift, so every run sees the same rules and traffic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn word(&mut self, min: usize, max: usize) -> String {
        let len = min + self.below(max - min + 1);
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

const WORDS: &[&str] = &[
    "index", "login", "api", "v1", "v2", "static", "js", "css", "img", "update", "search", "news",
    "school", "board", "teams", "mail", "share", "drive", "report", "grade", "class", "admin",
    "user", "panel", "upload", "download", "file", "data",
];

/// Synthetic rules shaped like ET Open: mostly HTTP (uri, host, user agent,
/// header), some TLS SNI and DNS names, raw TCP payload rules with
/// relative contents, ~10 % with a pcre.
fn synthetic_rules(n: usize) -> String {
    let mut r = Rng(0x5eed_1234_abcd_ef01);
    let mut out = String::with_capacity(n * 200);
    for i in 0..n {
        let sid = 2_000_000 + i;
        let w = r.word(6, 14);
        let pcre = if r.below(10) == 0 {
            format!(" pcre:\"/{}[0-9]{{2,8}}\\/[a-z]+/i\";", r.word(4, 8))
        } else {
            String::new()
        };
        let line = match r.below(10) {
            0..=2 => format!(
                "alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN uri {i}\"; flow:established,to_server; http.uri; content:\"/{}/{w}\"; content:\".php\"; distance:0;{pcre} sid:{sid}; rev:1;)",
                WORDS[r.below(WORDS.len())]
            ),
            3 => format!("alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN ua {i}\"; flow:to_server; http.user_agent; content:\"{w}/\"; startswith; sid:{sid};)"),
            4 => format!("alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN host {i}\"; flow:to_server; http.host; content:\"{w}.\"; nocase;{pcre} sid:{sid};)"),
            5 => format!("alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN header {i}\"; flow:to_server; http.header; content:\"X-{w}|3a|\"; nocase; sid:{sid};)"),
            6 => format!("alert tls $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN sni {i}\"; tls.sni; content:\"{w}.\"; nocase; sid:{sid};)"),
            7 => format!("alert dns $HOME_NET any -> any any (msg:\"SYN dns {i}\"; dns.query; content:\"{w}\"; nocase; sid:{sid};)"),
            8 => format!(
                "alert tcp $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN tcp {i}\"; flow:established,to_server; content:\"|{:02x} {:02x} {:02x} {:02x}|{w}\"; content:\"{}\"; distance:0; within:64;{pcre} sid:{sid};)",
                r.below(256),
                r.below(256),
                r.below(256),
                r.below(256),
                r.word(4, 6)
            ),
            _ => format!("alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"SYN body {i}\"; flow:to_server; http.request_body; content:\"{w}=\"; sid:{sid};)"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Traffic: HTTP-ish text mixed with binary (what the first bytes of
/// tunnels look like: ClientHellos, HTTP, protocol greetings).
fn stream_corpus(len: usize) -> Vec<u8> {
    let mut r = Rng(0xfeed_beef_0000_0001);
    let mut out = Vec::with_capacity(len + 1024);
    while out.len() < len {
        match r.below(3) {
            0 => {
                let path: Vec<&str> = (0..3).map(|_| WORDS[r.below(WORDS.len())]).collect();
                out.extend_from_slice(
                    format!("GET /{}?id={} HTTP/1.1\r\nHost: www.{}.example\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0)\r\nAccept: */*\r\n\r\n", path.join("/"), r.next() % 100000, r.word(4, 10))
                        .as_bytes(),
                );
            }
            1 => {
                for _ in 0..512 {
                    out.push(r.next() as u8);
                }
            }
            _ => {
                for _ in 0..64 {
                    out.extend_from_slice(WORDS[r.below(WORDS.len())].as_bytes());
                    out.push(b' ');
                }
            }
        }
    }
    out.truncate(len);
    out
}

fn requests(n: usize) -> Vec<HttpRequestBuffers> {
    let mut r = Rng(0xabad_cafe_0000_0002);
    (0..n)
        .map(|_| {
            let path: Vec<&str> = (0..1 + r.below(4)).map(|_| WORDS[r.below(WORDS.len())]).collect();
            let uri: http::Uri = format!("/{}?q={}&page={}", path.join("/"), r.word(3, 12), r.below(50)).parse().unwrap();
            let host = format!("{}.{}.example", WORDS[r.below(WORDS.len())], r.word(4, 10));
            let mut h = http::HeaderMap::new();
            h.insert("host", host.parse().unwrap());
            h.insert("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36".parse().unwrap());
            h.insert("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".parse().unwrap());
            h.insert("accept-language", "ja,en-US;q=0.7".parse().unwrap());
            h.insert("cookie", format!("session={}", r.word(32, 32)).parse().unwrap());
            HttpRequestBuffers::new(&http::Method::GET, &uri, &h, &host, 80)
        })
        .collect()
}

struct RuleSet {
    name: String,
    engine: IpsEngine,
}

fn rule_sets() -> Vec<RuleSet> {
    let mut sets = vec![RuleSet {
        name: "none".into(),
        engine: IpsEngine::empty(),
    }];
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hand = manifest.join("../tests/data/ips/komugate-test.rules");
    if let Ok((engine, report)) = IpsEngine::load(&[&hand]) {
        eprintln!(
            "hand-written rules: {} loaded, {} skipped",
            report.loaded,
            report.skipped_total()
        );
        sets.push(RuleSet {
            name: format!("hand-{}", report.loaded),
            engine,
        });
    }
    let n: usize = std::env::var("KOMUGATE_IPS_SYNTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let text = synthetic_rules(n);
    let hand_text = std::fs::read_to_string(&hand).unwrap_or_default();
    let started = std::time::Instant::now();
    let (engine, report) = IpsEngine::from_texts(&[
        (Path::new("synthetic.rules"), &text),
        (hand.as_path(), &hand_text),
    ])
    .unwrap();
    eprintln!(
        "synthetic + hand rules: {} loaded, {} skipped, compiled in {:.0} ms",
        report.loaded,
        report.skipped_total(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    sets.push(RuleSet {
        name: format!("full-{}", report.loaded),
        engine,
    });
    let real: PathBuf = std::env::var("KOMUGATE_IPS_RULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../../shared/ips"));
    if let Ok(entries) = std::fs::read_dir(&real) {
        let files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "rules"))
            .collect();
        if !files.is_empty() {
            let (engine, report) = IpsEngine::load(&files).unwrap();
            eprintln!(
                "real rules in {}: {} loaded, {} skipped",
                real.display(),
                report.loaded,
                report.skipped_total()
            );
            sets.push(RuleSet {
                name: format!("real-{}", report.loaded),
                engine,
            });
        }
    } else {
        eprintln!(
            "no real Suricata rules at {} (set KOMUGATE_IPS_RULES)",
            real.display()
        );
    }
    sets
}

/// On-CPU nanoseconds of this thread (excludes time waiting for a core on
/// a loaded machine), from /proc/thread-self/schedstat.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// On-CPU throughput in MB/s (10^6 bytes/s): best of 7 batches, each
/// repeating `f` for at least 200 ms of wall time (schedstat is coarse).
fn cpu_mbps(bytes: usize, mut f: impl FnMut() -> usize) -> Option<f64> {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = cpu_ns()?;
        let wall = std::time::Instant::now();
        let mut n = 0u64;
        while wall.elapsed() < Duration::from_millis(200) {
            black_box(f());
            n += 1;
        }
        let per = (cpu_ns()? - start) as f64 / n as f64;
        best = best.min(per);
    }
    Some(bytes as f64 / best.max(1.0) * 1000.0)
}

fn bench(c: &mut Criterion) {
    let sets = rule_sets();
    let corpus = stream_corpus(4 << 20);
    let reqs = requests(2000);
    let req_bytes: usize = reqs
        .iter()
        .map(|r| r.uri.len() + r.headers.len() + r.method.len() + r.host.len())
        .sum();
    let body = stream_corpus(64 << 10);

    eprintln!("on-CPU throughput, best of 7 batches of >= 200 ms (MB/s = 10^6 B/s):");
    eprintln!(
        "{:<12} {:>14} {:>14} {:>14}",
        "rules", "stream 8k", "http head", "body 64k"
    );
    for s in &sets {
        let e = &s.engine;
        let stream = cpu_mbps(corpus.len(), || {
            corpus
                .chunks(8192)
                .enumerate()
                .map(|(i, w)| {
                    e.scan_stream_prefix(
                        if i % 2 == 0 {
                            Direction::ToServer
                        } else {
                            Direction::ToClient
                        },
                        443,
                        w,
                    )
                    .len()
                })
                .sum()
        });
        let head = cpu_mbps(req_bytes, || {
            reqs.iter().map(|r| e.scan_http_request(r).len()).sum()
        });
        let bodyt = cpu_mbps(body.len(), || {
            let mut state = BodyScan::new(64 << 10);
            body.chunks(16 << 10)
                .map(|chunk| {
                    e.scan_http_request_body_chunk(&reqs[0], &mut state, chunk)
                        .len()
                })
                .sum()
        });
        let f = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into());
        eprintln!(
            "{:<12} {:>14} {:>14} {:>14}",
            s.name,
            f(stream),
            f(head),
            f(bodyt)
        );
    }

    let mut g = c.benchmark_group("ips/stream_prefix_8k");
    g.throughput(Throughput::Bytes(corpus.len() as u64));
    for s in &sets {
        g.bench_with_input(BenchmarkId::from_parameter(&s.name), &s.engine, |b, e| {
            b.iter(|| {
                let mut hits = 0;
                for (i, window) in corpus.chunks(8192).enumerate() {
                    let dir = if i % 2 == 0 {
                        Direction::ToServer
                    } else {
                        Direction::ToClient
                    };
                    hits += e.scan_stream_prefix(dir, 443, black_box(window)).len();
                }
                hits
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ips/http_request_head");
    g.throughput(Throughput::Bytes(req_bytes as u64));
    for s in &sets {
        g.bench_with_input(BenchmarkId::from_parameter(&s.name), &s.engine, |b, e| {
            b.iter(|| {
                reqs.iter()
                    .map(|r| e.scan_http_request(black_box(r)).len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ips/request_body_64k_in_16k_chunks");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for s in &sets {
        g.bench_with_input(BenchmarkId::from_parameter(&s.name), &s.engine, |b, e| {
            b.iter(|| {
                let mut state = BodyScan::new(64 << 10);
                body.chunks(16 << 10)
                    .map(|chunk| {
                        e.scan_http_request_body_chunk(&reqs[0], &mut state, chunk)
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();

    let names: Vec<String> = reqs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.host).into_owned())
        .collect();
    let name_bytes: usize = names.iter().map(|n| n.len()).sum();
    let mut g = c.benchmark_group("ips/sni_and_dns_names");
    g.throughput(Throughput::Bytes(2 * name_bytes as u64));
    for s in &sets {
        g.bench_with_input(BenchmarkId::from_parameter(&s.name), &s.engine, |b, e| {
            b.iter(|| {
                names
                    .iter()
                    .map(|n| e.scan_tls_sni(n, 443).len() + e.scan_dns_query(n, None).len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
