//! Wall-clock jumps, backwards and forwards, under libfaketime: the test
//! re-runs itself with `LD_PRELOAD=libfaketime` and a timestamp file it
//! rewrites to jump (`FAKETIME_NO_CACHE=1`: every clock read sees the file;
//! the monotonic clock is left alone, as a real NTP step leaves it). The
//! gateway, its log writer, rustls and the test's own certificate issuing
//! all see the same faked wall clock. Its own test binary: the whole process
//! runs on the faked clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use komugate_tests::gw::{tls_connect, TestGateway, TestPki};
use komugate_tests::raw::{self, RawConn};
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{eventually, within};

/// In the child: the timestamp file libfaketime reads.
const CLOCK_FILE_ENV: &str = "KOMUGATE_CLOCK_FILE";
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// Sets the faked wall clock to real time + `offset_secs`.
fn jump(offset_secs: i64) {
    let file = std::env::var(CLOCK_FILE_ENV).expect("child only");
    // Whole-file replacement: libfaketime re-reads the file at every clock
    // read, and a half-written "+3600" read as "+36" would be two small
    // steps instead of one jump.
    komugate::atomic_file::write(Path::new(&file), format!("{offset_secs:+}\n").as_bytes())
        .unwrap();
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

#[test]
fn clock_jumps() {
    if std::env::var(CLOCK_FILE_ENV).is_ok() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(certificate_checks_follow_the_wall_clock());
        rt.block_on(log_segments_survive_clock_jumps());
        return;
    }
    let lib = LIBFAKETIME
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is not installed (looked in {LIBFAKETIME:?}): apt-get install faketime (.ci/run installs it)")
        });
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "clock_jumps", "--nocapture", "--test-threads=1"])
        .env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env(CLOCK_FILE_ENV, &clock)
        .output()
        .expect("run the test under libfaketime");
    assert!(
        out.status.success(),
        "the clock-jump scenarios failed under libfaketime:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One request through the mTLS listener with `device`'s certificate:
/// Some(status) if the handshake and request went through, None if refused.
async fn mtls_get(
    gw: &TestGateway,
    pki: &TestPki,
    device: &komugate::pki::IssuedCert,
    url: &str,
) -> Option<u16> {
    let h1: &[&[u8]] = &[b"http/1.1"];
    let tls = tls_connect(gw.mtls(), pki.client_config(Some(device), h1))
        .await
        .ok()?;
    let mut c = RawConn::new(tls);
    let host = url.split('/').nth(2).unwrap_or_default();
    c.send(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    c.read_response(false).await.ok().map(|r| r.status)
}

/// Device certificates are checked against the wall clock at each
/// handshake, whichever way it moved. Expected, for a certificate valid
/// from -1 h to +1 day and one valid from +2 h: at +0 the first is
/// accepted and the second refused (`not_yet_valid`); at +3 h both are
/// accepted; at +2 days both are refused (`expired`); back at +0 it is as
/// at the start. The refusals are counted by reason.
async fn certificate_checks_follow_the_wall_clock() {
    within("certificates and the clock", async {
        jump(0);
        let up = HttpUpstream::start("127.0.0.1").await;
        let gw = TestGateway::start(|_, _| {}).await;
        let pki = gw.tls();
        let now = time::OffsetDateTime::now_utc();
        let current = pki.device("clock-now", &[]);
        let later = pki
            .device_ca()
            .issue_device(
                "clock-later",
                &[],
                now + time::Duration::hours(2),
                now + time::Duration::days(1),
            )
            .unwrap();
        let url = format!("http://{}/clock", up.addr);
        let failures = |reason: &str| {
            gw.metric(
                "komugate_tls_handshake_failures_total",
                &[("listener", "mtls"), ("reason", reason)],
            )
        };

        assert_eq!(
            mtls_get(&gw, &pki, &current, &url).await,
            Some(200),
            "+0: current"
        );
        assert_eq!(mtls_get(&gw, &pki, &later, &url).await, None, "+0: later");
        jump(3 * HOUR);
        assert_eq!(
            mtls_get(&gw, &pki, &current, &url).await,
            Some(200),
            "+3 h: current"
        );
        assert_eq!(
            mtls_get(&gw, &pki, &later, &url).await,
            Some(200),
            "+3 h: later"
        );
        jump(2 * DAY);
        assert_eq!(
            mtls_get(&gw, &pki, &current, &url).await,
            None,
            "+2 d: current"
        );
        assert_eq!(mtls_get(&gw, &pki, &later, &url).await, None, "+2 d: later");
        jump(0);
        assert_eq!(
            mtls_get(&gw, &pki, &current, &url).await,
            Some(200),
            "back: current"
        );
        assert_eq!(mtls_get(&gw, &pki, &later, &url).await, None, "back: later");

        let counted = eventually(Duration::from_secs(15), || {
            let (nyv, exp) = (failures("not_yet_valid"), failures("expired"));
            async move { (nyv >= 2.0 && exp >= 2.0).then_some(()) }
        })
        .await;
        assert!(
            counted.is_some(),
            "refusals counted by reason:\n{}",
            gw.metrics()
        );
        gw.shutdown().await;
    })
    .await;
}

/// Every `.seg` file under `dir`, with its bytes.
fn segments(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Waits until there are more than `n` segments.
async fn segments_beyond(dir: &Path, n: usize) -> BTreeMap<PathBuf, Vec<u8>> {
    eventually(Duration::from_secs(15), || {
        let s = segments(dir);
        async move { (s.len() > n).then_some(s) }
    })
    .await
    .unwrap_or_else(|| panic!("no new segment beyond {n} in {}", dir.display()))
}

/// Log segments across jumps of the wall clock. Expected: a jump forward
/// of an hour closes the live file into a segment at once; a jump back of
/// an hour does too (the live file never spans a jump, so a segment never
/// holds records from both sides of one); no segment is ever rewritten or
/// overwritten (each keeps its bytes to the end); every record is found
/// exactly once; and a jump of 400 days forward does not let the
/// retention sweep delete the year of logs (`komugate_clock_jumps_total`
/// counts the jumps).
/// Waits until the log writer has counted `count` jumps. It sees a jump at
/// its next tick (every 100 ms here): waiting keeps two jumps from falling
/// between the same two ticks, where they would look like one.
async fn jump_seen(gw: &TestGateway, count: f64) {
    let seen = eventually(Duration::from_secs(5), || {
        let n = gw.metric("komugate_clock_jumps_total", &[]);
        async move { (n >= count).then_some(n) }
    })
    .await;
    assert!(seen.is_some(), "jump {count} counted:\n{}", gw.metrics());
}

async fn log_segments_survive_clock_jumps() {
    within("log segments and the clock", async {
        jump(0);
        let up = HttpUpstream::start("127.0.0.1").await;
        let gw = TestGateway::start(|c, _| {
            c.log.fsync_interval_ms = 100;
            c.log.rotate_secs = 3600;
        })
        .await;
        let log_dir = gw.access_log.parent().unwrap().to_path_buf();
        let send = |phase: &'static str| {
            let (plain, port) = (gw.plain(), up.addr.port());
            async move {
                for i in 0..3 {
                    let url = format!("http://127.0.0.1:{port}/clock/{phase}/{i}");
                    let r = raw::proxy_get(plain, &url).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            }
        };
        let synced = |gw: &TestGateway| {
            let log = gw.running.as_ref().unwrap().gateway.access_log.clone();
            assert!(log.sync(Duration::from_secs(5)), "the log writer syncs");
        };

        send("before").await;
        synced(&gw);
        jump(HOUR);
        jump_seen(&gw, 1.0).await;
        let after_forward = segments_beyond(&log_dir, 0).await;
        send("ahead").await;
        synced(&gw);
        jump(0);
        jump_seen(&gw, 2.0).await;
        let after_back = segments_beyond(&log_dir, after_forward.len()).await;
        for (p, bytes) in &after_forward {
            assert_eq!(after_back.get(p), Some(bytes), "{} kept", p.display());
        }
        send("back").await;
        synced(&gw);

        jump(400 * DAY);
        jump_seen(&gw, 3.0).await;
        tokio::time::sleep(Duration::from_millis(500)).await; // a few ticks on the new clock
        let after_far = segments(&log_dir);
        for (p, bytes) in &after_back {
            assert_eq!(
                after_far.get(p),
                Some(bytes),
                "{} neither swept nor rewritten after +400 days",
                p.display()
            );
        }
        jump(0);
        // Stop the gateway but keep its directory for the search.
        let mut gw = gw;
        let running = gw.running.take().unwrap();
        running.shutdown(Duration::from_secs(2)).await;

        let mut found: BTreeMap<String, usize> = BTreeMap::new();
        komugate::logs::search(&log_dir, &komugate::logs::Query::default(), |r| {
            if r.target.contains("/clock/") {
                *found.entry(r.target.clone()).or_default() += 1;
            }
            Ok(true)
        })
        .unwrap();
        assert_eq!(found.len(), 9, "every record found: {found:?}");
        assert!(found.values().all(|&n| n == 1), "none twice: {found:?}");
        drop(gw);
    })
    .await;
}
