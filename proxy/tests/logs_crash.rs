//! Issue 8 point 1: `kill -9` of a process writing access logs loses at most
//! the last second, and a restart never rewrites closed files. Also the
//! `komugate audit verify` and `komugate logs search` commands end to end.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use komugate::logs::query::Query;
use komugate::logs::writer::{self, WriterSettings};

const BIN: &str = env!("CARGO_BIN_EXE_komugate");

fn files_with_ext(dir: &Path, ext: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn kill_9_loses_at_most_the_last_second_and_restart_keeps_closed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let rate = 20_000u64;
    let mut child = Command::new(BIN)
        .args(["logs", "write-test", "--dir"])
        .arg(&dir)
        .args(["--rate", &rate.to_string(), "--rotate-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start komugate logs write-test");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut acked = 0u64;
    let mut line = String::new();
    while started.elapsed() < Duration::from_millis(2500) {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(n) = line.trim().strip_prefix("acked ") {
            acked = n.parse().unwrap();
        }
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let _ = child.wait();
    assert!(acked > rate, "the writer ran for a while (acked {acked})");
    let closed_before = files_with_ext(&dir, "seg");
    assert!(
        !closed_before.is_empty(),
        "some seconds were rotated and compacted before the kill"
    );

    // Restart: the writer recovers (live file -> closing -> segment).
    let metrics = komugate::metrics::Metrics::new();
    let (sub, handle, _) =
        writer::start(WriterSettings::new(dir.join("access.log")), &metrics).unwrap();
    assert!(sub.sync(Duration::from_secs(5)));
    drop(sub);
    handle.join();

    for (path, bytes) in &closed_before {
        assert_eq!(
            std::fs::read(path).ok().as_ref(),
            Some(bytes),
            "closed file {path} unchanged by the restart"
        );
    }
    let mut seqs = Vec::new();
    komugate::logs::search(&dir, &Query::default(), |r| {
        seqs.push(r.user.trim_start_matches("seq-").parse::<u64>().unwrap());
        Ok(true)
    })
    .unwrap();
    let found = seqs.len() as u64;
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, found, "no record twice");
    // Every acknowledged (fsynced) record survived, and they are a prefix.
    assert!(found >= acked, "found {found} < acked {acked}");
    assert_eq!(seqs.last().copied().unwrap() + 1, found, "no holes");
    // Submitted after the last ack is at most ~20 ms of records + what the
    // test loop printed late; the bound the issue sets is one second.
    assert!(
        found - acked <= rate,
        "lost window larger than a second? found {found}, acked {acked}"
    );
    let closing = dir.join("closing");
    assert_eq!(
        std::fs::read_dir(&closing).map(|r| r.count()).unwrap_or(0),
        0,
        "everything compacted after restart"
    );
}

#[test]
fn logs_search_cli_and_audit_verify_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let metrics = komugate::metrics::Metrics::new();
    let (sub, handle, _) =
        writer::start(WriterSettings::new(dir.join("access.log")), &metrics).unwrap();
    for i in 0..500 {
        sub.submit(komugate::logs::cli::sample_record(
            i,
            std::time::SystemTime::now(),
        ));
    }
    assert!(sub.sync(Duration::from_secs(5)));
    let run = |args: &[&str]| {
        let o = Command::new(BIN).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let (ok, out, err) = run(&[
        "logs",
        "search",
        "--dir",
        d,
        "--since",
        "-1h",
        "--host",
        "host7.example",
        "--format",
        "json",
        "--stats",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(err.contains("1 record(s) matched"), "{err}");
    let csv_path = tmp.path().join("out.csv");
    let (ok, _, err) = run(&[
        "logs",
        "search",
        "--dir",
        d,
        "--device",
        "T-0001",
        "--out",
        csv_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read(&csv_path)
        .unwrap()
        .starts_with("\u{feff}".as_bytes()));
    let (ok, _, err) = run(&["logs", "search", "--dir", d, "--since", "last week"]);
    assert!(!ok && err.contains("ISO 8601"), "{err}");
    drop(sub);
    handle.join();

    let audit = tmp.path().join("audit.log");
    let a = komugate::logs::audit::AuditLog::open(&audit).unwrap();
    for i in 0..3 {
        a.append(komugate::logs::audit::AuditEvent::Note {
            actor: "test".into(),
            message: format!("entry {i}"),
        })
        .unwrap();
    }
    // The two searches that read records above are audited first (who and
    // what), then the three notes.
    let (ok, out, _) = run(&["audit", "verify", "--file", audit.to_str().unwrap()]);
    assert!(ok && out.contains("ok, 5 entries"), "{out}");
    let searches = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(searches.matches("host7.example").count(), 1, "{searches}");
    let text = std::fs::read_to_string(&audit)
        .unwrap()
        .replace("entry 1", "entry X");
    std::fs::write(&audit, text).unwrap();
    let (ok, out, err) = run(&["audit", "verify", "--file", audit.to_str().unwrap()]);
    assert!(!ok, "tampering is detected");
    assert!(
        out.contains("line 4") && err.contains("tampered"),
        "{out}{err}"
    );
}
