//! Shipping to a real rsyslog (Debian package, started here on loopback
//! with its own config in a tempdir). The target is stopped mid-stream and
//! started again; every record must arrive exactly once. Skipped, loudly,
//! when the binary is absent (`.ci/run` installs it). ClickHouse:
//! `proxy/tests/logs_clickhouse.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use komugate::logs::ship::{self, ShipStop, Syslog, SyslogTarget, Target};
use komugate::logs::writer::{self, WriterSettings};
use komugate::metrics::Metrics;

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn skip(what: &str) {
    eprintln!("\n!!!!! SKIPPED: {what} is not installed; run .ci/run (apt-get install rsyslog clickhouse-server) to run this test !!!!!\n");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Stops a child politely (SIGTERM) so it flushes what it accepted.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Feed {
    sub: komugate::logs::writer::Submitter,
    handle: Option<komugate::logs::writer::WriterHandle>,
    stop: ShipStop,
    next: u64,
    metrics: std::sync::Arc<komugate::logs::writer::LogMetrics>,
}

impl Feed {
    fn start(dir: &Path, target: Box<dyn Target>) -> Feed {
        let metrics = Metrics::new();
        let mut s = WriterSettings::new(dir.join("access.log"));
        s.fsync_interval = Duration::from_millis(100);
        s.ship_queues = vec![target.name().to_string()];
        let (sub, handle, lm) = writer::start(s, &metrics).unwrap();
        let stop = ShipStop::default();
        ship::spawn(dir, target, lm.clone(), stop.clone()).unwrap();
        Feed {
            sub,
            handle: Some(handle),
            stop,
            next: 0,
            metrics: lm,
        }
    }
    /// Submits `n` records as fast as the writer takes them, time-stamped
    /// evenly from `from` to `from + over`.
    fn send_stamped(&mut self, n: u64, from: SystemTime, over: Duration) {
        let step = over / n.max(1) as u32;
        for k in 0..n {
            self.sub.submit(komugate::logs::cli::sample_record(
                self.next,
                from + step * k as u32,
            ));
            self.next += 1;
        }
    }
    /// Submits `n` records over `over`.
    fn send(&mut self, n: u64, over: Duration) {
        let per = over / n.max(1) as u32;
        for _ in 0..n {
            self.sub.submit(komugate::logs::cli::sample_record(
                self.next,
                SystemTime::now(),
            ));
            self.next += 1;
            if self.next % 50 == 0 {
                std::thread::sleep(per * 50);
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Shippers stop; the writer thread ends with the test process.
        self.stop.stop();
        let _ = self.handle.take();
    }
}

fn count_exactly_once(ids: &[String], n: u64) {
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len() as u64, n, "every record arrived");
    assert_eq!(ids.len() as u64, n, "no record arrived twice");
}

/// A real rsyslogd on loopback writing every message it receives, raw, to `out`.
struct Rsyslog {
    bin: PathBuf,
    conf: PathBuf,
    pid: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Rsyslog {
    fn configure(bin: PathBuf, dir: &Path) -> Rsyslog {
        let port = free_port();
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{wd}\")\nmodule(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\naction(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
                wd = dir.display(),
                out = out.display()
            ),
        )
        .unwrap();
        Rsyslog {
            bin,
            conf,
            pid: dir.join("rsyslog.pid"),
            port,
            out,
        }
    }

    fn start(&self) -> Child {
        let _ = std::fs::remove_file(&self.pid);
        let c = Command::new(&self.bin)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "rsyslogd listens on {}",
            self.port
        );
        c
    }

    /// The `user` field (`seq-<n>`) of every record received, checking the
    /// RFC 5424 framing of each line.
    fn received_ids(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                assert!(
                    l.starts_with("<") && l.contains(" komugate - access [komugate@32473 id="),
                    "RFC 5424: {l}"
                );
                let json = &l[l.find("] {")? + 2..];
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                Some(v["user"].as_str()?.to_string())
            })
            .collect()
    }

    fn target(&self, batch_records: usize) -> Syslog {
        Syslog::new(SyslogTarget {
            enabled: true,
            address: format!("127.0.0.1:{}", self.port),
            hostname: Some("gw-test".into()),
            app_name: "komugate".into(),
            max_buffer_mb: 64,
            batch_records,
            ..Default::default()
        })
        .unwrap()
    }
}

#[test]
fn syslog_outage_loses_nothing_and_duplicates_nothing() {
    let Some(rsyslogd) = find_binary("rsyslogd") else {
        return skip("rsyslogd");
    };
    let tmp = tempfile::tempdir().unwrap();
    let syslog = Rsyslog::configure(rsyslogd, tmp.path());
    let mut rs = syslog.start();
    let logs = tmp.path().join("logs");
    let mut feed = Feed::start(&logs, Box::new(syslog.target(300)));
    feed.send(1000, Duration::from_millis(700));
    terminate(&mut rs); // target down mid-stream
    feed.send(1000, Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(500));
    let mut rs = syslog.start(); // back
    feed.send(1000, Duration::from_millis(700));
    let n = feed.next;
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end && (syslog.received_ids().len() as u64) < n {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    terminate(&mut rs);
    count_exactly_once(&syslog.received_ids(), n);
}

/// The syslog receiver is down for an hour's worth of records: 36,000
/// (an hour at 10 records a second), time-stamped across the past hour and
/// submitted as fast as the writer takes them. Expected: while it is down
/// every record waits in the on-disk queue (queue bytes > 0, failed
/// attempts counted, nothing dropped); once it is back, all 36,000 arrive
/// exactly once (by id) within the shipper's longest backoff (30 s) plus
/// the sending time, and the queue empties.
#[test]
fn syslog_down_for_an_hour_of_records_loses_and_duplicates_nothing() {
    let Some(rsyslogd) = find_binary("rsyslogd") else {
        return skip("rsyslogd");
    };
    let tmp = tempfile::tempdir().unwrap();
    let syslog = Rsyslog::configure(rsyslogd, tmp.path());
    let logs = tmp.path().join("logs");
    let mut feed = Feed::start(&logs, Box::new(syslog.target(5000)));
    let n = 36_000;
    let hour = Duration::from_secs(3600);
    feed.send_stamped(n, SystemTime::now() - hour, hour);
    assert!(
        feed.sub.sync(Duration::from_secs(20)),
        "the writer took every record"
    );
    let queued = |f: &Feed| {
        f.metrics
            .ship_queue_bytes
            .with_label_values(&["syslog"])
            .get()
    };
    let waited = Instant::now() + Duration::from_secs(5);
    while Instant::now() < waited
        && (queued(&feed) == 0
            || feed
                .metrics
                .ship_errors
                .with_label_values(&["syslog"])
                .get()
                == 0)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(queued(&feed) > 0, "the records wait on disk");
    assert!(
        feed.metrics
            .ship_errors
            .with_label_values(&["syslog"])
            .get()
            > 0
    );
    assert!(syslog.received_ids().is_empty());

    let mut rs = syslog.start();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && (syslog.received_ids().len() as u64) < n {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(300));
    terminate(&mut rs);
    count_exactly_once(&syslog.received_ids(), n);
    assert_eq!(
        feed.metrics
            .ship_dropped
            .with_label_values(&["syslog"])
            .get(),
        0
    );
    assert_eq!(feed.metrics.dropped.get(), 0);
    assert_eq!(queued(&feed), 0, "the queue is empty");
}
