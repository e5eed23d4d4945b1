//! `komugate report monthly` as a user runs it: the binary on a log
//! directory (a closed segment and a live file), both formats, and clear
//! errors with exit status 2 for a bad month, format or output path.

use std::path::Path;
use std::process::{Command, Output};

use komugate::logs::record::{parse_rfc3339_ms, LogRecord};
use komugate::logs::segment::SegmentWriter;

fn komugate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_komugate"))
        .args(args)
        .output()
        .expect("run komugate")
}

fn rec(time: &str, site: &str, host: &str, action: &str, cats: &[&str]) -> LogRecord {
    LogRecord {
        time_ms: parse_rfc3339_ms(time).unwrap(),
        listener: "plain".into(),
        site: site.into(),
        client: "127.0.0.1:4000".into(),
        method: "GET".into(),
        target: format!("http://{host}/"),
        host: host.into(),
        action: action.into(),
        rule: "r".into(),
        categories: cats.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

/// November 2026 in JST runs from 2026-10-31T15:00Z to 2026-11-30T15:00Z.
fn write_logs(dir: &Path) {
    let seg_day = dir.join("segments/2026-11-10");
    std::fs::create_dir_all(&seg_day).unwrap();
    let mut w = SegmentWriter::create(&seg_day.join("20261110T000000.000Z-1-0.seg"), 3).unwrap();
    for r in [
        // Before the month in JST (October 31st 23:59 JST): not counted.
        rec("2026-10-31T14:59:59Z", "北小学校", "a.test", "allow", &[]),
        // The first minute of November in JST.
        rec(
            "2026-10-31T15:00:00Z",
            "北小学校",
            "casino.test",
            "block",
            &["gambling"],
        ),
        rec(
            "2026-11-10T01:00:00Z",
            "北小学校",
            "casino.test",
            "block",
            &["gambling"],
        ),
        rec(
            "2026-11-10T02:00:00Z",
            "南中学校",
            "=cmd|' /C calc'!A0",
            "block",
            &["gambling"],
        ),
    ] {
        w.push(&r).unwrap();
    }
    std::fs::write(
        seg_day.join("20261110T000000.000Z-1-0.idx"),
        w.finish().unwrap(),
    )
    .unwrap();
    let live: String = [
        rec(
            "2026-11-30T14:59:59Z",
            "南中学校",
            "b.test",
            "allow",
            &["blog"],
        ),
        // December 1st 00:00 JST: not November.
        rec(
            "2026-11-30T15:00:00Z",
            "南中学校",
            "b.test",
            "allow",
            &["blog"],
        ),
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap() + "\n")
    .collect();
    std::fs::write(dir.join("access.log"), live).unwrap();
}

#[test]
fn monthly_report_files_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    write_logs(&logs);
    let logs_s = logs.to_str().unwrap();
    let xlsx = tmp.path().join("nov.xlsx");
    let html = tmp.path().join("nov.html");

    let out = komugate(&[
        "report",
        "monthly",
        "--month",
        "2026-11",
        "--format",
        "xlsx",
        "--out",
        xlsx.to_str().unwrap(),
        "--dir",
        logs_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("4 requests, 3 blocks"),
        "JST month boundaries: {said}"
    );
    use calamine::Reader;
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook(&xlsx).unwrap();
    let sites = wb.worksheet_range("拠点別 Sites").unwrap();
    let rows: Vec<Vec<String>> = sites
        .rows()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect();
    assert_eq!(rows[1][..3], ["北小学校", "2", "2"], "{rows:?}");
    assert_eq!(rows[2][..3], ["南中学校", "2", "1"], "{rows:?}");
    // A host that looks like a formula stays text (quote prefix), never a formula.
    let top = wb.worksheet_range("ブロック上位 Top blocked").unwrap();
    let hosts: Vec<String> = top.rows().skip(1).map(|r| r[3].to_string()).collect();
    assert!(
        hosts.contains(&"=cmd|' /C calc'!A0".to_string()),
        "{hosts:?}"
    );
    assert!(wb
        .worksheet_formula("ブロック上位 Top blocked")
        .unwrap()
        .used_cells()
        .next()
        .is_none());
    // ... and carries Excel's quote prefix, so editing the cell keeps it text.
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&xlsx).unwrap()).unwrap();
    let mut styles = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("xl/styles.xml").unwrap(), &mut styles).unwrap();
    assert!(styles.contains("quotePrefix=\"1\""), "{styles}");

    let out = komugate(&[
        "report",
        "monthly",
        "--month",
        "2026-11",
        "--format",
        "html",
        "--out",
        html.to_str().unwrap(),
        "--dir",
        logs_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("2026-11-01 00:00 〜 2026-12-01 00:00"),
        "JST period"
    );
    assert!(page.contains("ギャンブル") && page.contains("@media print"));

    // Bad input: exit status 2, a message that says what to do, no file.
    let bad = tmp.path().join("bad.xlsx");
    let bad_s = bad.to_str().unwrap();
    for (args, want) in [
        (
            vec!["--month", "2026-13", "--format", "xlsx", "--out", bad_s],
            "01 to 12",
        ),
        (
            vec!["--month", "November", "--format", "xlsx", "--out", bad_s],
            "YYYY-MM",
        ),
        (
            vec!["--month", "2026-11", "--format", "pdf", "--out", bad_s],
            "use xlsx",
        ),
        (
            vec![
                "--month",
                "2026-11",
                "--format",
                "xlsx",
                "--out",
                "/nonexistent-dir/r.xlsx",
            ],
            "does not exist",
        ),
        (
            vec![
                "--month",
                "2026-11",
                "--format",
                "xlsx",
                "--out",
                tmp.path().to_str().unwrap(),
            ],
            "is a directory",
        ),
    ] {
        let mut full = vec!["report", "monthly", "--dir", logs_s];
        full.extend(args.iter().copied());
        let out = komugate(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!bad.exists());
    }
    // A log directory that is not there: status 1, names it.
    let out = komugate(&[
        "report",
        "monthly",
        "--month",
        "2026-11",
        "--format",
        "xlsx",
        "--out",
        bad_s,
        "--dir",
        "/nonexistent-logs",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-logs"));
}
