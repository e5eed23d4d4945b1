//! Access-log benchmark: storage bytes/record, ingest
//! records/s on one core, rare-host search across 365 days, full-scan
//! records/s. Custom main (not criterion): the figures are throughputs of
//! big runs, printed as a table for benches/RESULTS.md.
//!
//! ```text
//! cargo bench -p komugate-benches --bench logs
//! KOMUGATE_LOGS_DAYS=2          full-rate days generated (default 2)
//! KOMUGATE_LOGS_PER_DAY=4000000 records per day (board scale)
//! KOMUGATE_LOGS_DIR=/path       where to build the year (default: a tempdir)
//! ```
//!
//! A real year at board scale is 1.46 G records; generating it takes
//! hours, so the bench generates `DAYS` full-rate days (day 1 carries a rare
//! host in one hour, the others do not) and fills the rest of the 365 day
//! folders with hard links to the segments and indexes of a day without
//! the rare host. Every search therefore sees 8,760 real hourly indexes of
//! full-rate size and one segment that holds the rare host; the page cache
//! is warmer than with 365 distinct days (hard links share pages).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use komugate::logs::layout;
use komugate::logs::query::{Glob, Query};
use komugate::logs::record::{format_rfc3339_ms, now_ms, LogRecord};
use komugate::logs::writer::{self, WriterSettings};
use komugate::record::AccessRecord;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Zipf-like: small indexes much more likely.
    fn zipf(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as u64 % n
    }
}

const RULES: [&str; 12] = [
    "default",
    "m365 tenant",
    "google tenant",
    "c4th only in school",
    "youtube teachers",
    "social block",
    "malware",
    "phishing",
    "adult",
    "gambling",
    "upload limit",
    "ips",
];
const CATS: [&str; 10] = [
    "",
    "education",
    "news",
    "social",
    "video",
    "search",
    "cloud",
    "shopping",
    "games",
    "malware",
];
const APPS: [&str; 8] = ["", "", "", "m365", "google", "c4th", "hyakumon", "box"];

/// A board-scale record at `t` (ms). Devices, users and sites repeat;
/// hosts follow a Zipf law over 30,000 names.
fn gen(rng: &mut Rng, t: i64) -> LogRecord {
    let dev = rng.zipf(3000);
    let host_id = rng.zipf(30_000);
    let host = match host_id {
        0 => "outlook.office365.com".to_string(),
        1 => "teams.microsoft.com".to_string(),
        2 => "www.google.com".to_string(),
        3 => "c4th.example.jp".to_string(),
        n => format!("h{n}.site{}.example", n % 997),
    };
    let connect = rng.below(10) < 7;
    let target = if connect {
        format!("{host}:443")
    } else {
        let p = rng.zipf(5000);
        if rng.below(5) == 0 {
            format!("https://{host}/p/{p}/item?id={}", rng.below(1_000_000))
        } else {
            format!("https://{host}/p/{p}/index.html")
        }
    };
    let blocked = rng.below(100) < 3;
    let site = dev % 19;
    LogRecord {
        time_ms: t,
        listener: if site == 18 { "mtls" } else { "plain" }.into(),
        device: format!("T-{dev:05}"),
        user: format!("u{:05}", dev),
        groups: vec![
            if dev % 10 == 0 { "office" } else { "teachers" }.into(),
            format!("school-{site:02}"),
        ],
        site: format!("学校{site:02}"),
        client: format!(
            "10.{site}.{}.{}:{}",
            dev / 250 % 250,
            dev % 250,
            1024 + rng.below(60_000)
        ),
        method: if connect { "CONNECT" } else { "GET" }.into(),
        target,
        host: String::new(),
        action: if blocked { "block" } else { "allow" }.into(),
        rule: RULES[if blocked {
            5 + rng.below(6)
        } else {
            rng.below(5)
        } as usize]
            .into(),
        categories: match CATS[(host_id % 10) as usize] {
            "" => vec![],
            c => vec![c.into()],
        },
        app: APPS[(host_id % 8) as usize].into(),
        ips: String::new(),
        status: if blocked { 403 } else { 200 },
        bytes_up: if blocked { 0 } else { 200 + rng.below(20_000) },
        bytes_down: if blocked {
            1800
        } else {
            500 + rng.below(2_000_000)
        },
        duration_ms: rng.below(30_000),
        egress: if host_id == 3 {
            "198.51.100.7".into()
        } else {
            String::new()
        },
        error: String::new(),
    }
}

/// Diurnal shape: share of a day's records in each UTC hour (JST school day).
fn hour_weights() -> [f64; 24] {
    let mut w = [0.0; 24];
    for (h, x) in w.iter_mut().enumerate() {
        let jst = (h + 9) % 24;
        *x = match jst {
            8..=9 => 12.0,
            10..=16 => 8.0,
            7 | 17 => 4.0,
            18..=21 => 1.5,
            _ => 0.3,
        };
    }
    let sum: f64 = w.iter().sum();
    w.map(|x| x / sum)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            n += if path.is_dir() {
                dir_bytes(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    n
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let days = env_u64("KOMUGATE_LOGS_DAYS", 2).max(2);
    let per_day = env_u64("KOMUGATE_LOGS_PER_DAY", 4_000_000);
    let _tmp;
    let root: PathBuf = match std::env::var("KOMUGATE_LOGS_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => {
            _tmp = tempfile_dir();
            _tmp.clone()
        }
    };
    let dir = root.join("logs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(layout::CLOSING)).unwrap();
    println!(
        "komugate logs bench: {days} full-rate day(s) x {per_day} records, year filled to 365 days; dir {}",
        dir.display()
    );

    // 1. Writer ingest on one core: data path -> channel -> writer thread -> live file.
    let ingest_n = 500_000u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let recs: Vec<AccessRecord> = (0..ingest_n)
        .map(|i| {
            let r = gen(&mut rng, now_ms() + i as i64);
            AccessRecord {
                time: format_rfc3339_ms(r.time_ms),
                listener: "mtls",
                device: Some(r.device),
                groups: r.groups,
                client: r.client,
                method: r.method,
                target: r.target,
                decision: if r.action == "block" {
                    "block"
                } else {
                    "allow"
                },
                rule: r.rule,
                status: r.status,
                bytes_up: r.bytes_up,
                bytes_down: r.bytes_down,
                duration_ms: r.duration_ms,
                user: Some(r.user),
                site: Some(r.site),
                categories: r.categories,
                app: (!r.app.is_empty()).then_some(r.app),
                ..Default::default()
            }
        })
        .collect();
    let wdir = root.join("ingest");
    let _ = std::fs::remove_dir_all(&wdir);
    let metrics = komugate::metrics::Metrics::new();
    let mut s = WriterSettings::new(wdir.join("access.log"));
    s.channel_capacity = ingest_n as usize + 10;
    let (sub, handle, _) = writer::start(s, &metrics).unwrap();
    let t = Instant::now();
    for r in recs {
        sub.submit(r);
    }
    assert!(sub.sync(Duration::from_secs(120)));
    let writer_secs = t.elapsed().as_secs_f64();
    drop(sub);
    handle.join();
    let writer_rate = ingest_n as f64 / writer_secs;
    println!(
        "writer (JSON line + write + fsync/s): {ingest_n} records in {writer_secs:.2} s = {writer_rate:.0} records/s"
    );

    // 2. Generate full-rate days, hour by hour, and compact each hour.
    let weights = hour_weights();
    let day0 = (now_ms() / 86_400_000 - days as i64 + 1) * 86_400_000; // the last `days` days up to today
    let mut total_records = 0u64;
    let mut compact_secs = 0.0;
    let mut rare_inserted = 0;
    let mut rng = Rng(42);
    let mut line = Vec::with_capacity(1024);
    for d in 0..days {
        for (h, w) in weights.iter().enumerate() {
            let n = (per_day as f64 * w).round() as u64;
            let t0 = day0 + d as i64 * 86_400_000 + h as i64 * 3_600_000;
            let path = dir
                .join(layout::CLOSING)
                .join(format!("{}.jsonl", layout::stamp(t0)));
            let mut f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
            for i in 0..n {
                let t = t0 + (i as i64 * 3_600_000) / n as i64;
                let mut r = gen(&mut rng, t);
                if d == 0 && h == 1 && i % 50_000 == 7 && rare_inserted < 3 {
                    r.target = "rare-c2.evil.example:443".into();
                    r.method = "CONNECT".into();
                    rare_inserted += 1;
                }
                line.clear();
                serde_json::to_writer(&mut line, &r).unwrap();
                line.push(b'\n');
                f.write_all(&line).unwrap();
            }
            drop(f);
            total_records += n;
            let t = Instant::now();
            writer::compact(&dir, &path, 6).unwrap();
            compact_secs += t.elapsed().as_secs_f64();
        }
        eprintln!("  day {} generated and compacted", d + 1);
    }
    let seg_bytes = dir_bytes(&dir.join(layout::SEGMENTS));
    let compact_rate = total_records as f64 / compact_secs;
    let bpr = seg_bytes as f64 / total_records as f64;
    println!("compaction (parse JSON line + columns + zstd 6 + index): {total_records} records in {compact_secs:.1} s = {compact_rate:.0} records/s");
    println!("storage: {seg_bytes} bytes for {total_records} records = {bpr:.2} bytes/record (segments + indexes)");
    let one_core = 1.0 / (1.0 / writer_rate + 1.0 / compact_rate);
    println!(
        "ingest on one core (writer + compaction of the same records): {one_core:.0} records/s"
    );

    // 3. Fill the year with hard links to the last generated day (no rare host).
    let seg_root = dir.join(layout::SEGMENTS);
    let src_day = komugate::logs::record::utc_day(day0 + (days as i64 - 1) * 86_400_000);
    let src: Vec<PathBuf> = std::fs::read_dir(seg_root.join(&src_day))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut linked_days = 0;
    for k in days..365 {
        let day_ms = day0 - (k - days + 1) as i64 * 86_400_000;
        let day = komugate::logs::record::utc_day(day_ms);
        let dd = seg_root.join(&day);
        std::fs::create_dir_all(&dd).unwrap();
        for f in &src {
            let name = f.file_name().unwrap().to_str().unwrap();
            // keep the hour part, change the date part of the stamp
            let new = format!("{}{}", day.replace('-', ""), &name[8..]);
            std::fs::hard_link(f, dd.join(new)).unwrap();
        }
        linked_days += 1;
    }
    let files = walk_count(&seg_root, "idx");
    println!(
        "year: {} day folders, {files} hourly indexes ({linked_days} days hard-linked)",
        days + linked_days
    );

    // 4. Rare host across 365 days.
    let q = Query {
        since_ms: Some(now_ms() - 366 * 86_400_000),
        host: Some(Glob::new("rare-c2.evil.example")),
        ..Default::default()
    };
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let mut hits = 0;
        let st = komugate::logs::search(&dir, &q, |_| {
            hits += 1;
            Ok(true)
        })
        .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some((hits, st));
    }
    let (hits, st) = last.unwrap();
    println!(
        "rare host over 365 days: {hits} hits in {best:.2} s (warm cache, best of 3); {} indexes read, {} skipped, {} segment(s) opened",
        st.segments_total, st.segments_skipped_by_index, st.segments_opened
    );

    // 5. Full scan of the generated days: a filter every row must be checked
    //    against (URL substring that never matches), and a scan that
    //    materialises every record.
    let first = komugate::logs::record::utc_day(day0);
    let q = Query {
        since_ms: Some(day0),
        until_ms: Some(day0 + days as i64 * 86_400_000),
        url_contains: Some("zz-no-such-path".into()),
        ..Default::default()
    };
    let t = Instant::now();
    let st = komugate::logs::search(&dir, &q, |_| Ok(true)).unwrap();
    let scan_secs = t.elapsed().as_secs_f64();
    println!(
        "full scan from {first}: {} records checked against --url-contains in {scan_secs:.2} s = {:.0} records/s (one thread)",
        st.records_scanned,
        st.records_scanned as f64 / scan_secs
    );
    let q = Query {
        since_ms: Some(day0),
        until_ms: Some(day0 + 86_400_000),
        action: Some("allow".into()),
        ..Default::default()
    };
    let t = Instant::now();
    let mut bytes = 0usize;
    let st = komugate::logs::search(&dir, &q, |r| {
        bytes += r.target.len();
        Ok(true)
    })
    .unwrap();
    let mat_secs = t.elapsed().as_secs_f64();
    println!(
        "full scan materialising records (--action allow, one day): {} matched of {} in {mat_secs:.2} s = {:.0} records/s",
        st.records_matched,
        st.records_scanned,
        st.records_scanned as f64 / mat_secs
    );
    let _ = bytes;
    let _ = SystemTime::now();
    if std::env::var("KOMUGATE_LOGS_DIR").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn walk_count(p: &Path, ext: &str) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                n += walk_count(&path, ext);
            } else if path.extension().is_some_and(|x| x == ext) {
                n += 1;
            }
        }
    }
    n
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("komugate-logs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
