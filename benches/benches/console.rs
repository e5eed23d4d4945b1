//! Console under board volume: a running gateway whose log directory holds
//! 7 days at ~2 M records/day (closed hours compacted by the production
//! `writer::compact`; the current hour written by the gateway's own log
//! writer) and the rest of a year as hard links to a generated day. Then:
//!
//! 1. the dashboard (`/console/dashboard` + its chart data) — first view
//!    (cold: every segment counted) and the following views (warm);
//! 2. a one-day log search page (a filter that must scan the day);
//! 3. the proxy's latency (p50 / p99 of plain HTTP GETs through the
//!    gateway, closed loop) idle, then while a year-long search (a CSV
//!    export over 365 days with a filter that never matches, so every
//!    record is checked) runs in the console.
//!
//! Custom main (not criterion): prints the figures for benches/RESULTS.md.
//!
//! ```text
//! cargo bench -p komugate-benches --bench console
//! KOMUGATE_CONSOLE_PER_DAY=2000000  records per day
//! KOMUGATE_CONSOLE_DAYS=7           full-rate days generated
//! KOMUGATE_CONSOLE_LOAD_SECS=15     seconds per latency run
//! KOMUGATE_CONSOLE_CLIENTS=8        concurrent proxy clients
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use komugate::console::accounts::Role;
use komugate::logs::layout;
use komugate::logs::record::now_ms;
use komugate_benches::board::{access_record, gen, hour_weights, write_closed_hours, Rng};
use komugate_tests::console::{write_accounts, ConsoleClient};
use komugate_tests::gw::TestGateway;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const PW: &str = "bench-password-1";

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The rest of the year: day folders of hard links to `src_day`'s files.
fn link_year(logs: &Path, src_day: &str, first_day_ms: i64, days: i64) -> usize {
    let root = logs.join(layout::SEGMENTS);
    let src: Vec<_> = std::fs::read_dir(root.join(src_day))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut n = 0;
    for k in 1..=days {
        let day = komugate::logs::record::utc_day(first_day_ms - k * DAY);
        let dd = root.join(&day);
        std::fs::create_dir_all(&dd).unwrap();
        for f in &src {
            let name = f.file_name().unwrap().to_str().unwrap();
            std::fs::hard_link(
                f,
                dd.join(format!("{}{}", day.replace('-', ""), &name[8..])),
            )
            .unwrap();
            n += 1;
        }
    }
    n
}

/// A keep-alive origin answering every request with 4 KiB.
async fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let body = vec![b'k'; 4096];
                let mut line = String::new();
                loop {
                    // Read a request head.
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    // Head and body in one write: two small writes on a
                    // socket with Nagle on wait for the proxy's delayed ACK
                    // (40 ms), which is what the first run measured.
                    let mut answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    answer.extend_from_slice(&body);
                    if w.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive client through the proxy until `stop`; latencies in µs.
async fn client(proxy: SocketAddr, origin: SocketAddr, stop: Instant) -> Vec<u32> {
    let mut lat = Vec::new();
    let s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let req = format!("GET http://{origin}/x HTTP/1.1\r\nHost: {origin}\r\n\r\n");
    let mut line = String::new();
    let mut body = vec![0u8; 4096];
    while Instant::now() < stop {
        let t = Instant::now();
        w.write_all(req.as_bytes()).await.unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body).await.unwrap();
        lat.push(t.elapsed().as_micros() as u32);
    }
    lat
}

/// p50 and p99 (ms) and requests/s of `clients` clients for `secs`.
async fn load(proxy: SocketAddr, origin: SocketAddr, clients: u64, secs: u64) -> (f64, f64, f64) {
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(proxy, origin, stop)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    (q(0.5), q(0.99), all.len() as f64 / secs as f64)
}

/// Milliseconds of `n` GETs of `path`: (first, median of the rest, max of the rest).
async fn timed(c: &mut ConsoleClient, path: &str, n: usize) -> (f64, f64, f64, usize) {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let p = c.get(path).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(p.status, 200, "{path}: {}", p.text());
        bytes = p.body.len();
    }
    let first = ms[0];
    let mut rest = ms[1..].to_vec();
    rest.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (first, rest[rest.len() / 2], rest[rest.len() - 1], bytes)
}

/// Bytes of the files under `dir` (not following links; hard links counted
/// once per name, so call it before the year is linked).
fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        n += if p.is_dir() {
            dir_bytes(&p)
        } else {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    n
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let per_day = env_u64("KOMUGATE_CONSOLE_PER_DAY", 2_000_000);
    let days = env_u64("KOMUGATE_CONSOLE_DAYS", 7).max(1) as i64;
    let secs = env_u64("KOMUGATE_CONSOLE_LOAD_SECS", 15);
    let clients = env_u64("KOMUGATE_CONSOLE_CLIENTS", 8);

    let gw = TestGateway::start(|c, _| {
        write_accounts(c, &[("bench", Role::Admin, PW)]);
        c.admin.max_searches = 2;
    })
    .await;
    let logs = gw.access_log.parent().unwrap().to_path_buf();
    let staging = gw.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    println!(
        "komugate console bench: {days} day(s) x {per_day} records/day, log dir {}",
        logs.display()
    );
    println!("load average at start: {}", load_avg());

    // Closed hours: the last `days` days up to the current hour.
    let now = now_ms();
    let hour0 = now.div_euclid(HOUR) * HOUR;
    let first = hour0 - days * DAY;
    let t = Instant::now();
    let mut rng = Rng(0x5eed);
    let closed = tokio::task::spawn_blocking({
        let (logs, staging) = (logs.clone(), staging.clone());
        move || write_closed_hours(&logs, &staging, first, hour0, per_day, &mut rng)
    })
    .await
    .unwrap();
    println!(
        "generated and compacted {closed} records of closed hours in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let stored = dir_bytes(&logs.join(layout::SEGMENTS));
    println!(
        "stored: {:.1} bytes/record (segments + indexes, {:.0} MB)",
        stored as f64 / closed as f64,
        stored as f64 / 1e6
    );
    let linked = link_year(
        &logs,
        &komugate::logs::record::utc_day(first + DAY),
        first,
        365 - days - 1,
    );
    println!("rest of the year: {linked} hard-linked segment/index files");

    // The current hour so far, through the gateway's own log writer.
    let weights = hour_weights();
    let so_far = ((per_day as f64 * weights[(hour0 / HOUR % 24) as usize])
        * ((now - hour0) as f64 / HOUR as f64)) as u64;
    let running = gw.running.as_ref().unwrap().gateway.clone();
    let mut rng = Rng(0x11fe);
    for i in 0..so_far {
        let r = gen(
            &mut rng,
            hour0 + (i as i64 * (now - hour0)) / so_far.max(1) as i64,
        );
        running.access_log.submit(access_record(r));
    }
    assert!(running.access_log.sync(Duration::from_secs(120)));
    println!("current hour: {so_far} records written by the gateway's log writer (live file)");

    let mut c = ConsoleClient::plain(gw.admin());
    assert_eq!(c.sign_in("bench", PW).await.status, 303);
    println!("load average before measuring: {}", load_avg());

    // 1. Dashboard.
    let d = timed(&mut c, "/console/dashboard", 21).await;
    let cd = timed(&mut c, "/console/dashboard/data", 21).await;
    println!(
        "dashboard page: first {:.0} ms, then median {:.0} ms, max {:.0} ms ({} bytes)",
        d.0, d.1, d.2, d.3
    );
    println!(
        "dashboard chart data: first {:.0} ms, then median {:.0} ms, max {:.0} ms ({} bytes)",
        cd.0, cd.1, cd.2, cd.3
    );

    // 2. One-day search: a host filter every hour of the day must be checked for.
    let day_since = komugate::logs::record::format_with_offset(now - DAY, 540, false);
    let search = format!("/console/logs?since={}&host=h12345.site*", &day_since[..16]);
    let s = timed(&mut c, &search, 11).await;
    println!("one-day search page (host=h12345.site*): first {:.0} ms, then median {:.0} ms, max {:.0} ms", s.0, s.1, s.2);
    // The same search in the library, for what it read.
    let q = komugate::logs::Query {
        since_ms: Some(now - DAY),
        host: Some(komugate::logs::Glob::new("h12345.site*")),
        ..Default::default()
    };
    let t = Instant::now();
    let mut hits = 0;
    let st = komugate::logs::search(&logs, &q, |_| {
        hits += 1;
        Ok(true)
    })
    .unwrap();
    println!(
        "  (library, whole day: {:.0} ms, {hits} hits; segments {} of which {} skipped by index; blocks read {}, skipped by index {}, by time {}; live files {})",
        t.elapsed().as_secs_f64() * 1000.0,
        st.segments_total,
        st.segments_skipped_by_index,
        st.blocks_read,
        st.blocks_skipped_by_index,
        st.blocks_skipped,
        st.live_files
    );
    let s2 = timed(
        &mut c,
        &format!("/console/logs?since={}&action=block", &day_since[..16]),
        11,
    )
    .await;
    println!(
        "one-day search page (action=block): first {:.0} ms, then median {:.0} ms, max {:.0} ms",
        s2.0, s2.1, s2.2
    );

    // 3. Proxy latency, idle and during a year-long search.
    let origin = origin().await;
    let _warm = load(gw.plain(), origin, clients, 2).await;
    let idle = load(gw.plain(), origin, clients, secs).await;
    println!(
        "proxy idle: p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s ({clients} clients, {secs} s) load avg {}",
        idle.0, idle.1, idle.2, load_avg()
    );
    let mut searcher = ConsoleClient::plain(gw.admin());
    assert_eq!(searcher.sign_in("bench", PW).await.status, 303);
    let year = tokio::spawn(async move {
        let t = Instant::now();
        let p = searcher
            .get("/console/logs/export?since=2000-01-01T00:00&url_contains=zz-no-such-path&format=csv")
            .await;
        (t.elapsed().as_secs_f64(), p.status, p.body.len())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = load(gw.plain(), origin, clients, secs).await;
    println!(
        "proxy during the year-long search: p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s; load avg {}",
        busy.0,
        busy.1,
        busy.2,
        load_avg()
    );
    println!(
        "ratio during/idle: p50 {:.2}, p99 {:.2}, throughput {:.2}",
        busy.0 / idle.0,
        busy.1 / idle.1,
        busy.2 / idle.2
    );
    if year.is_finished() {
        let (t, status, bytes) = year.await.unwrap();
        println!("year-long search finished in {t:.0} s (status {status}, {bytes} bytes)");
    } else {
        println!("year-long search still running when the measurements ended (stopped)");
        year.abort();
    }
    gw.shutdown().await;
}
