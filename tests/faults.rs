//! Faults injected from outside the gateway, one test each. Every test's
//! doc comment states the behaviour komugate owes; the asserts check it:
//! clear answers, truthful access records, nothing lost or torn, and the
//! gateway keeps serving afterwards.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use komugate_tests::dns::FaultDns;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw::{self, RawConn};
use komugate_tests::upstream::HttpUpstream;
use komugate_tests::{eventually, within};

/// Polls the synchronous check `f` (every 50 ms) until it gives `Some`.
async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    eventually(limit, || {
        let v = f();
        async move { v }
    })
    .await
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw TCP origin: every accepted connection is handed to `serve`.
struct RawOrigin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    async fn start<F, Fut>(serve: F) -> RawOrigin
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s));
            }
        });
        RawOrigin { addr, task }
    }
}

/// Reads up to the end of a request head.
async fn read_request_head(s: &mut TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
}

/// Body bytes a client receives until the connection ends (EOF or reset).
async fn body_until_closed(c: &mut RawConn<TcpStream>) -> usize {
    let mut n = c.take_buffered().len();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return n,
            Ok(Ok(k)) => n += k,
            Err(_) => panic!("the connection stayed open 5 s after {n} body bytes"),
        }
    }
}

fn target_ends(rec: &serde_json::Value, suffix: &str) -> bool {
    rec["target"].as_str().is_some_and(|t| t.ends_with(suffix))
}

fn error_of(rec: &serde_json::Value) -> String {
    rec["error"].as_str().unwrap_or_default().to_string()
}

/// The gateway still relays a plain GET after the fault.
async fn still_serving(gw: &TestGateway) {
    let up = HttpUpstream::start("127.0.0.1").await;
    let url = format!("http://127.0.0.1:{}/still-serving", up.addr.port());
    let r = raw::proxy_get(gw.plain(), &url).await.expect("request");
    assert_eq!(r.status, 200, "the gateway keeps serving: {}", r.text());
    assert_eq!(r.text(), "hello from upstream /still-serving");
}

// ------------------------------------------------------------ upstream

/// Upstream resets (SO_LINGER 0) after 10,000 of 100,000 body bytes.
/// Expected: the client gets the 200 head and exactly those 10,000 bytes,
/// then the connection ends (never a body that looks complete); the access
/// record keeps status 200 (what the client got) with `bytes_down` 10000
/// and an error saying the upstream cut the body short; the gateway keeps
/// serving.
#[tokio::test]
async fn upstream_reset_mid_response_is_recorded_as_cut_short() {
    within("upstream reset mid-response", async {
        let origin = RawOrigin::start(|mut s| async move {
            read_request_head(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                .await;
            let _ = s.write_all(&[b'x'; 10_000]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.set_zero_linger().unwrap();
            drop(s); // RST
        })
        .await;
        let gw = TestGateway::start(|_, _| {}).await;
        let url = format!("http://127.0.0.1:{}/reset-down", origin.addr.port());
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(body_until_closed(&mut c).await, 10_000);

        let rec = gw.access_record(|r| target_ends(r, "/reset-down")).await;
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["bytes_down"], 10_000, "{rec}");
        let err = error_of(&rec);
        assert!(
            err.contains("upstream body") && err.contains("cut short after 10000 bytes"),
            "the record says the upstream cut the body: {rec}"
        );
        still_serving(&gw).await;
        gw.shutdown().await;
    })
    .await;
}

/// The client resets (SO_LINGER 0) after 10,000 of 100,000 upload bytes.
/// Expected: the upstream never receives a complete request; the access
/// record says the client aborted the body after the 10,000 bytes relayed
/// (`bytes_up`), decision `error`, status 400; the gateway keeps serving.
#[tokio::test]
async fn client_reset_mid_upload_is_recorded_as_aborted() {
    within("client reset mid-upload", async {
        let up = HttpUpstream::start("127.0.0.1").await;
        let gw = TestGateway::start(|_, _| {}).await;
        let url = format!("http://127.0.0.1:{}/reset-up", up.addr.port());
        let s = TcpStream::connect(gw.plain()).await.unwrap();
        let mut c = RawConn::new(s);
        c.send(
            format!("POST {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        c.send(&[b'u'; 10_000]).await.unwrap();
        // Once the gateway has opened the upstream connection and relayed
        // what it got, reset.
        let relayed = wait_for(Duration::from_secs(3), || (up.accepts() >= 1).then_some(())).await;
        assert!(
            relayed.is_some(),
            "the gateway opened the upstream connection"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.stream.set_zero_linger().unwrap();
        drop(c);

        let rec = gw.access_record(|r| target_ends(r, "/reset-up")).await;
        assert_eq!(rec["decision"], "error", "{rec}");
        assert_eq!(rec["status"], 400, "{rec}");
        assert_eq!(rec["bytes_up"], 10_000, "{rec}");
        assert!(
            error_of(&rec).contains("client aborted or malformed it after 10000 bytes"),
            "{rec}"
        );
        assert!(
            !up.seen().iter().any(|s| s.uri.path() == "/reset-up"),
            "the upstream never saw a complete request"
        );
        still_serving(&gw).await;
        gw.shutdown().await;
    })
    .await;
}

/// An upstream that sends its response head one byte per second.
/// Expected: `[egress] response_header_timeout_ms` (1,500 ms here) after
/// the request was sent the client gets a 504 (between 1.5 and 4 s), and
/// the record says 504 and names the setting. A healthy upstream behind a
/// *slow upload* (2.4 s, longer than the timeout) is not cut: the
/// upstream's clock starts once the request body is sent.
#[tokio::test]
async fn upstream_one_byte_per_second_gets_a_504_in_time() {
    within("slow upstream", async {
        let origin = RawOrigin::start(|mut s| async move {
            read_request_head(&mut s).await;
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await;
        let up = HttpUpstream::start("127.0.0.1").await;
        let gw = TestGateway::start(|c, _| c.egress.response_header_timeout_ms = 1500).await;

        let started = Instant::now();
        let url = format!("http://127.0.0.1:{}/slow", origin.addr.port());
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "504 after {took:?}"
        );
        assert!(r.text().contains("did not answer within 1500 ms"), "{}", r.text());
        let rec = gw.access_record(|r| target_ends(r, "/slow")).await;
        assert_eq!(rec["status"], 504, "{rec}");
        assert!(
            error_of(&rec).contains("response_header_timeout_ms"),
            "{rec}"
        );

        // Slow upload, quick upstream: 3 chunks 1.2 s apart.
        let url = format!("http://127.0.0.1:{}/slow-upload", up.addr.port());
        let mut c = RawConn::connect(gw.plain()).await;
        c.send(
            format!(
                "POST {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 30\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            c.send(format!("chunk-{i:03}\n").as_bytes()).await.unwrap();
        }
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "chunk-000\nchunk-001\nchunk-002\n");
        gw.shutdown().await;
    })
    .await;
}

// ----------------------------------------------------------------- DNS

/// A gateway whose only DNS server is a [`FaultDns`] (300 ms per query,
/// one attempt), and an upstream on 127.0.0.1 for names that resolve.
async fn dns_fault_gateway() -> (FaultDns, HttpUpstream, TestGateway) {
    let dns = FaultDns::start().await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let addr = dns.addr;
    let gw = TestGateway::start(move |c, _| {
        c.dns.servers = vec![addr];
        c.dns.timeout_ms = 300;
        c.dns.attempts = 1;
    })
    .await;
    (dns, up, gw)
}

/// The DNS server answers SERVFAIL. Expected: 502 whose body names the
/// host and says the DNS server answered SERVFAIL; the record carries the
/// same reason.
#[tokio::test]
async fn dns_servfail_is_a_502_that_says_so() {
    within("DNS SERVFAIL", async {
        let (_dns, up, gw) = dns_fault_gateway().await;
        let url = format!("http://servfail.faults.test:{}/", up.addr.port());
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text()
                .contains("cannot resolve servfail.faults.test: the DNS server answered SERVFAIL"),
            "{}",
            r.text()
        );
        let rec = gw
            .access_record(|r| {
                r["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("servfail."))
            })
            .await;
        assert_eq!(rec["status"], 502, "{rec}");
        assert!(error_of(&rec).contains("SERVFAIL"), "{rec}");
        still_serving(&gw).await;
        gw.shutdown().await;
    })
    .await;
}

/// The DNS server never answers. Expected: 504 within a few query timeouts
/// (under 3 s with 300 ms per query), a body and record saying the DNS
/// servers did not answer in time.
#[tokio::test]
async fn dns_timeout_is_a_504_in_time() {
    within("DNS timeout", async {
        let (dns, up, gw) = dns_fault_gateway().await;
        let url = format!("http://silent.faults.test:{}/", up.addr.port());
        let started = Instant::now();
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
        assert!(
            r.text().contains(
                "cannot resolve silent.faults.test: the DNS servers did not answer in time"
            ),
            "{}",
            r.text()
        );
        assert!(dns.queries("silent", "udp") >= 1);
        let rec = gw
            .access_record(|r| r["target"].as_str().is_some_and(|t| t.contains("silent.")))
            .await;
        assert_eq!(rec["status"], 504, "{rec}");
        assert!(error_of(&rec).contains("did not answer in time"), "{rec}");
        gw.shutdown().await;
    })
    .await;
}

/// UDP answers come back truncated (TC=1, no records). Expected: the
/// resolver asks again over TCP and the request succeeds (200); when TCP
/// fails too, a clean 502 naming the host and DNS, not a hang.
#[tokio::test]
async fn dns_truncated_answer_is_retried_over_tcp() {
    within("DNS truncated", async {
        let (dns, up, gw) = dns_fault_gateway().await;
        let url = format!("http://truncated.faults.test:{}/tc", up.addr.port());
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "hello from upstream /tc");
        assert!(dns.queries("truncated", "udp") >= 1, "asked over UDP first");
        assert!(dns.queries("truncated", "tcp") >= 1, "then over TCP");

        let url = format!("http://tcpgone.faults.test:{}/tc", up.addr.port());
        let started = Instant::now();
        let r = raw::proxy_get(gw.plain(), &url).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(matches!(r.status, 502 | 504), "{} {}", r.status, r.text());
        assert!(
            r.text().contains("cannot resolve tcpgone.faults.test"),
            "{}",
            r.text()
        );
        let rec = gw
            .access_record(|r| r["target"].as_str().is_some_and(|t| t.contains("tcpgone.")))
            .await;
        assert!(
            error_of(&rec).contains("cannot resolve tcpgone.faults.test"),
            "{rec}"
        );
        gw.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------- disk full

/// A small tmpfs mounted for the test, unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill the log disk and must run as root (CI does): mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `dir` with `dir/filler`.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    path
}

/// `ENOSPC` on the log directory. Expected: requests keep being served
/// (200); the records wait in memory, with the alert up:
/// `komugate_access_log_unwritten_bytes` > 0 and
/// `komugate_access_log_write_errors_total` rising; the file never holds a
/// torn line. Once space is freed, every record is written exactly once
/// within a few seconds, the gauge is back to 0 and nothing was dropped.
#[tokio::test]
async fn disk_full_keeps_serving_and_loses_no_record() {
    let disk = Tmpfs::mount("1m");
    let log_dir = disk.path().join("logs");
    within("disk full", async {
        let up = HttpUpstream::start("127.0.0.1").await;
        let live = log_dir.join("access.log");
        let gw = TestGateway::start(move |c, _| {
            c.log.access_log = live;
            c.log.fsync_interval_ms = 100;
        })
        .await;
        let url = |i: usize| format!("http://127.0.0.1:{}/disk-full/{i}", up.addr.port());
        let r = raw::proxy_get(gw.plain(), &url(0)).await.unwrap();
        assert_eq!(r.status, 200);
        gw.access_record(|r| target_ends(r, "/disk-full/0")).await;

        let filler = fill_disk(disk.path());
        let n = 60;
        for i in 1..=n {
            let r = raw::proxy_get(gw.plain(), &url(i)).await.unwrap();
            assert_eq!(r.status, 200, "request {i} served while the disk is full");
        }
        let alert = wait_for(Duration::from_secs(3), || {
            (gw.metric("komugate_access_log_unwritten_bytes", &[]) > 0.0).then_some(())
        })
        .await;
        assert!(
            alert.is_some(),
            "the unwritten-bytes gauge rises:\n{}",
            gw.metrics()
        );
        assert!(gw.metric("komugate_access_log_write_errors_total", &[]) >= 1.0);
        let lines = |path: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
                .collect()
        };
        lines(&gw.access_log); // every line parses while the disk is full

        std::fs::remove_file(&filler).unwrap();
        let all_written = wait_for(Duration::from_secs(5), || {
            let recs = lines(&gw.access_log);
            let found = (1..=n)
                .filter(|i| {
                    recs.iter()
                        .any(|r| target_ends(r, &format!("/disk-full/{i}")))
                })
                .count();
            (found == n).then_some(recs)
        })
        .await;
        let recs = all_written.expect("every record is written once space is back");
        for i in 0..=n {
            let suffix = format!("/disk-full/{i}");
            let count = recs.iter().filter(|r| target_ends(r, &suffix)).count();
            assert_eq!(count, 1, "{suffix} written exactly once");
        }
        assert_eq!(gw.metric("komugate_access_log_unwritten_bytes", &[]), 0.0);
        assert_eq!(gw.metric("komugate_access_log_dropped_total", &[]), 0.0);
        still_serving(&gw).await;
        gw.shutdown().await;
    })
    .await;
}

// ------------------------------------------------------- policy writes

/// Set in the child: the policy file it keeps rewriting until killed.
const WRITER_ENV: &str = "KOMUGATE_FAULTS_POLICY_WRITER";

/// The two versions the child alternates between: the board's example
/// policy, padded with a comment to about 2 MiB so a write takes long
/// enough to be killed in the middle of.
fn policy_versions() -> [Vec<u8>; 2] {
    let base = include_str!("../examples/policy.toml");
    let pad = |c: char| {
        let mut s = String::with_capacity(2 << 20);
        while s.len() < 2 << 20 {
            s.push_str("# ");
            s.extend(std::iter::repeat_n(c, 76));
            s.push('\n');
        }
        s
    };
    [
        format!("{base}\n# version A\n{}", pad('a')).into_bytes(),
        format!("{base}\n# version B\n{}", pad('b')).into_bytes(),
    ]
}

/// `kill -9` of a process rewriting the policy file, at 30 random
/// instants. Expected: after every kill the file is byte for byte either
/// the old or the new version, never a mix or a truncation; the only
/// debris is hidden `.policy.toml.<pid>.<n>.tmp` files. (The writer is
/// `komugate::atomic_file::write`, what every writer of policy, list and
/// config files uses.)
#[test]
fn policy_write_killed_mid_way_leaves_old_or_new() {
    let versions = policy_versions();
    if let Ok(path) = std::env::var(WRITER_ENV) {
        // Child: rewrite forever; the parent kills us.
        let path = PathBuf::from(path);
        for i in 1usize.. {
            komugate::atomic_file::write(&path, &versions[i % 2]).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, &versions[0]).unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let (mut saw_a, mut killed_mid_write) = (0, 0);
    for round in 0..30 {
        std::fs::write(&policy, &versions[0]).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "policy_write_killed_mid_way_leaves_old_or_new",
                "--nocapture",
            ])
            .env(WRITER_ENV, &policy)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the writer");
        // Once its first write (version B) is in place, the child keeps
        // alternating; kill it at a random instant of that.
        let started = Instant::now();
        while std::fs::read(&policy).unwrap() != versions[1] {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: the writer never finished a first write"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 100));
        child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the writer was killed");
        let now = std::fs::read(&policy).unwrap();
        assert!(
            now == versions[0] || now == versions[1],
            "round {round}: torn policy file ({} bytes)",
            now.len()
        );
        saw_a += usize::from(now == versions[0]);
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "policy.toml" {
                assert!(
                    name.starts_with(".policy.toml.") && name.ends_with(".tmp"),
                    "unexpected file {name}"
                );
                killed_mid_write += 1;
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
    // The test is only worth something if kills landed after later writes
    // finished, and in the middle of writes.
    assert!(saw_a > 0, "no second write finished before a kill");
    assert!(
        killed_mid_write > 0,
        "no kill landed in the middle of a write"
    );
}
