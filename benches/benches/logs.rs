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
use komugate::logs::record::now_ms;
use komugate::logs::writer::{self, WriterSettings};
use komugate::record::AccessRecord;
use komugate_benches::board::{access_record, gen, hour_weights, Rng};

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
        .map(|i| access_record(gen(&mut rng, now_ms() + i as i64)))
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
