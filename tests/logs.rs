//! Access logs: writer, rotation + compaction, search with the
//! sidecar-index skip, spill queue, retention + audit, CSV / xlsx read-back,
//! `GET /admin/logs`. Shipping to real rsyslog / ClickHouse: logs_ship.rs.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use komugate::local_time::LocalZone;
use komugate::logs::export::{OutputFormat, Sink, XlsxSink};
use komugate::logs::query::{Glob, Query};
use komugate::logs::record::{parse_rfc3339_ms, LogRecord};
use komugate::logs::writer::{self, WriterSettings};
use komugate::logs::{layout, search};
use komugate::metrics::Metrics;
use komugate_tests::gw::TestGateway;
use komugate_tests::raw;

fn collect(dir: &Path, q: &Query) -> (Vec<LogRecord>, komugate::logs::SearchStats) {
    let mut v = Vec::new();
    let st = search(dir, q, |r| {
        v.push(r);
        Ok(true)
    })
    .expect("search");
    (v, st)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn segments(dir: &Path) -> usize {
    walk(&dir.join(layout::SEGMENTS))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .count()
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn writer_rotates_compacts_and_search_reads_segments_and_live_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let metrics = Metrics::new();
    let mut s = WriterSettings::new(dir.join("access.log"));
    s.rotate_secs = 1;
    s.fsync_interval = Duration::from_millis(100);
    let (sub, handle, _) = writer::start(s, &metrics).unwrap();
    let n = 3000u64;
    for i in 0..n {
        let mut r = komugate::logs::cli::sample_record(i, SystemTime::now());
        if i == 1234 {
            r.target = "https://rare.evil.example/payload?x=1".into();
            r.method = "GET".into();
            r.decision = "block";
            r.rule = "malware".into();
            r.categories = vec!["malware".into()];
            r.site = Some("豊科南小学校".into());
        }
        sub.submit(r);
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(1100)); // crosses a rotation
        }
    }
    assert!(sub.sync(Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(5), || segments(&dir) >= 2),
        "closed seconds are compacted"
    );

    let (all, st) = collect(&dir, &Query::default());
    assert_eq!(all.len() as u64, n, "{st:?}");
    let mut seqs: Vec<u64> = all
        .iter()
        .map(|r| r.user.trim_start_matches("seq-").parse().unwrap())
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, n, "every record exactly once");
    assert!(st.segments_opened >= 2 && st.live_files >= 1, "{st:?}");

    let q = Query {
        host: Some(Glob::new("*.evil.example")),
        ..Default::default()
    };
    let (hits, _) = collect(&dir, &q);
    assert_eq!(hits.len(), 1);
    let h = &hits[0];
    assert_eq!(h.target, "https://rare.evil.example/payload?x=1");
    assert_eq!(
        (h.action.as_str(), h.rule.as_str(), h.site.as_str()),
        ("block", "malware", "豊科南小学校")
    );
    for q in [
        Query {
            category: Some("malware".into()),
            ..Default::default()
        },
        Query {
            url_contains: Some("payload?x".into()),
            ..Default::default()
        },
        Query {
            action: Some("block".into()),
            site: Some("豊科南小学校".into()),
            ..Default::default()
        },
    ] {
        assert_eq!(collect(&dir, &q).0.len(), 1, "{q:?}");
    }
    let q = Query {
        device: Some("T-0007".into()),
        limit: Some(2),
        ..Default::default()
    };
    let (d, st) = collect(&dir, &q);
    assert_eq!(d.len(), 2);
    assert!(st.limit_reached);
    drop(sub);
    handle.join();
}

/// Writes one closed file per hour with given hosts, compacted.
fn make_segments(dir: &Path, hours: &[(&str, &[&str])]) {
    std::fs::create_dir_all(dir.join(layout::CLOSING)).unwrap();
    for (i, (start, hosts)) in hours.iter().enumerate() {
        let t0 = parse_rfc3339_ms(start).unwrap();
        let mut text = String::new();
        for (k, h) in hosts.iter().enumerate() {
            let r = LogRecord {
                time_ms: t0 + k as i64 * 1000,
                listener: "mtls".into(),
                device: format!("T-{i}"),
                client: "10.0.0.1:40000".into(),
                method: "CONNECT".into(),
                target: format!("{h}:443"),
                action: "allow".into(),
                rule: "default".into(),
                ..Default::default()
            };
            text.push_str(&serde_json::to_string(&r).unwrap());
            text.push('\n');
        }
        let stamp = layout::stamp(t0);
        let closing = dir.join(layout::CLOSING).join(format!("{stamp}.jsonl"));
        std::fs::write(&closing, text).unwrap();
        writer::compact(dir, &closing, 3)
            .unwrap()
            .expect("segment written");
        assert!(!closing.exists());
    }
}

#[test]
fn sidecar_index_skips_segments_that_cannot_match() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_segments(
        dir,
        &[
            ("2025-04-01T00:00:00Z", &["a.example", "b.example"]),
            ("2025-04-01T01:00:00Z", &["a.example", "rare.example"]),
            ("2025-04-02T00:00:00Z", &["b.example"]),
            ("2025-04-03T00:00:00Z", &["c.example"]),
        ],
    );
    // The segment files that cannot match are not even opened: make them
    // unreadable garbage and the search still succeeds without errors.
    let segs: Vec<_> = walk(&dir.join(layout::SEGMENTS))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 4);
    for s in &segs {
        let idx = komugate::logs::segment::SegmentIndex::read(&s.with_extension("idx")).unwrap();
        if !idx.any(komugate::logs::segment::IndexField::Host, |h| {
            h == b"rare.example"
        }) {
            std::fs::write(s, b"not a segment").unwrap();
        }
    }
    let q = Query {
        host: Some(Glob::new("rare.example")),
        ..Default::default()
    };
    let (hits, st) = collect(dir, &q);
    assert_eq!(hits.len(), 1);
    assert_eq!(st.segments_total, 4);
    assert_eq!(st.segments_skipped_by_index, 3);
    assert_eq!(st.segments_opened, 1);
    assert!(st.errors.is_empty(), "{:?}", st.errors);

    // Time range skip: only the 2025-04-01 files overlap, and the day
    // folders before since-1d are not even listed.
    let q = Query {
        since_ms: parse_rfc3339_ms("2025-04-01T00:30:00Z"),
        until_ms: parse_rfc3339_ms("2025-04-01T01:00:01Z"),
        host: Some(Glob::new("*.example")),
        ..Default::default()
    };
    let (hits, st) = collect(dir, &q);
    assert_eq!(
        hits.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        vec!["a.example"]
    );
    assert_eq!(st.segments_opened, 1, "{st:?}");
}

#[test]
fn full_channel_spills_to_disk_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let metrics = Metrics::new();
    let mut s = WriterSettings::new(dir.join("access.log"));
    s.channel_capacity = 1;
    s.fsync_interval = Duration::from_millis(100);
    let (sub, handle, lm) = writer::start(s, &metrics).unwrap();
    let n = 20_000u64;
    for i in 0..n {
        sub.submit(komugate::logs::cli::sample_record(i, SystemTime::now()));
    }
    assert!(
        lm.spilled.get() > 0,
        "a one-slot channel must overflow into the spill queue"
    );
    assert_eq!(metrics.access_log_dropped.get(), 0);
    assert!(wait_until(Duration::from_secs(5), || {
        sub.sync(Duration::from_secs(1));
        collect(&dir, &Query::default()).0.len() as u64 >= n
            && layout::spill_files(&dir, true).is_empty()
    }));
    drop(sub);
    handle.join();
    let (all, _) = collect(&dir, &Query::default());
    let mut seqs: Vec<String> = all.into_iter().map(|r| r.user).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, n);
    assert!(metrics
        .render()
        .contains("komugate_access_log_spilled_total"));
}

#[test]
fn retention_sweep_deletes_old_days_and_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    let old = komugate::logs::record::now_ms() - 400 * 86_400_000;
    let recent = komugate::logs::record::now_ms() - 10 * 86_400_000;
    make_segments(
        &dir,
        &[
            (
                &komugate::logs::record::format_rfc3339_ms(old),
                &["old.example"],
            ),
            (
                &komugate::logs::record::format_rfc3339_ms(recent),
                &["recent.example"],
            ),
        ],
    );
    let audit_path = tmp.path().join("audit.log");
    let audit = std::sync::Arc::new(komugate::logs::audit::AuditLog::open(&audit_path).unwrap());
    let metrics = Metrics::new();
    let mut s = WriterSettings::new(dir.join("access.log"));
    s.audit = Some(audit);
    let (sub, handle, _) = writer::start(s, &metrics).unwrap(); // sweeps at start
    drop(sub);
    handle.join();
    let (hits, _) = collect(&dir, &Query::default());
    assert_eq!(
        hits.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        vec!["recent.example"]
    );
    let text = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        text.contains("\"type\":\"retention_sweep\"") && text.contains("\"retention_days\":365"),
        "{text}"
    );
    assert!(
        text.contains(&komugate::logs::record::utc_day(old)),
        "the deleted day is named: {text}"
    );
    let rep = komugate::logs::audit::verify(&audit_path).unwrap();
    assert!(rep.problems.is_empty() && rep.entries == 1, "{rep:?}");
}

fn sample_for_export() -> Vec<LogRecord> {
    let t = parse_rfc3339_ms("2025-04-01T23:30:00.250Z").unwrap();
    vec![
        LogRecord {
            time_ms: t,
            listener: "mtls".into(),
            device: "T-0001".into(),
            user: "山田 太郎".into(),
            groups: vec!["教職員".into(), "豊科南小".into()],
            site: "豊科南小学校".into(),
            client: "10.0.0.5:50000".into(),
            method: "GET".into(),
            target: "https://c4th.example/成績?q=\"a,b\"\nx".into(),
            host: "c4th.example".into(),
            action: "block".into(),
            rule: "C4th は校内からのみ".into(),
            categories: vec!["gambling".into(), "phishing".into()],
            app: "c4th".into(),
            status: 403,
            bytes_up: 10,
            bytes_down: 2000,
            duration_ms: 3,
            ..Default::default()
        },
        LogRecord {
            time_ms: t + 1000,
            device: "T-0002".into(),
            target: "x.example:443".into(),
            host: "x.example".into(),
            action: "allow".into(),
            status: 200,
            ..Default::default()
        },
        LogRecord {
            time_ms: t + 2000,
            device: "T-0003".into(),
            target: "y.example:443".into(),
            host: "y.example".into(),
            action: "allow".into(),
            status: 200,
            ..Default::default()
        },
    ]
}

#[test]
fn csv_is_bom_utf8_rfc4180_and_reads_back() {
    let mut sink = Sink::new(OutputFormat::Csv, Vec::new(), &LocalZone::default()).unwrap();
    for r in sample_for_export() {
        sink.write(&r).unwrap();
    }
    let bytes = sink.finish().unwrap();
    assert!(
        bytes.starts_with("\u{feff}".as_bytes()),
        "UTF-8 BOM for Excel"
    );
    assert!(bytes.windows(2).any(|w| w == b"\r\n"), "CRLF records");
    let mut rd = csv::ReaderBuilder::new().from_reader(&bytes[3..]);
    let header = rd.headers().unwrap().clone();
    assert_eq!(
        &header[0], "日時 time (JST, Asia/Tokyo)",
        "the zone is named"
    );
    assert_eq!(
        &header[11], "カテゴリ categories",
        "Japanese first, English beside"
    );
    assert_eq!(&header[21], "日時UTC time_utc");
    assert_eq!(&header[22], "カテゴリID category_ids");
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[0][0], "2025-04-02 08:30:00.250", "JST display time");
    assert_eq!(&rows[0][2], "山田 太郎");
    assert_eq!(&rows[0][3], "教職員,豊科南小");
    assert_eq!(
        &rows[0][7], "https://c4th.example/成績?q=\"a,b\"\nx",
        "quotes, comma and newline survive"
    );
    assert_eq!(&rows[0][10], "C4th は校内からのみ");
    assert_eq!(&rows[0][14], "403");
    // Categories by their Japanese labels; the ids and the UTC time stay
    // machine-readable in the last columns.
    assert_eq!(&rows[0][11], "ギャンブル,フィッシング詐欺");
    assert_eq!(&rows[0][21], "2025-04-01T23:30:00.250Z");
    assert_eq!(&rows[0][22], "gambling,phishing");
    // Another zone is named as such.
    let utc = LocalZone::parse("UTC").unwrap();
    let mut sink = Sink::new(OutputFormat::Csv, Vec::new(), &utc).unwrap();
    sink.write(&sample_for_export()[0]).unwrap();
    let bytes = sink.finish().unwrap();
    let mut rd = csv::ReaderBuilder::new().from_reader(&bytes[3..]);
    assert_eq!(&rd.headers().unwrap()[0], "日時 time (UTC)");
    let row = rd.records().next().unwrap().unwrap();
    assert_eq!(&row[0], "2025-04-01 23:30:00.250");
}

#[test]
fn xlsx_has_header_filter_freeze_datetimes_and_continues_on_new_sheets() {
    use calamine::{open_workbook_from_rs, Data, Reader, Xlsx};
    // A 3-row sheet limit (header + 2) to exercise the overflow cheaply;
    // production uses the real limit.
    assert_eq!(komugate::logs::export::EXCEL_MAX_ROWS, 1_048_576);
    let mut x = XlsxSink::new(Vec::new(), &LocalZone::default(), 3).unwrap();
    for r in sample_for_export() {
        x.write(&r).unwrap();
    }
    assert_eq!(x.sheets(), 2);
    let bytes = x.finish().unwrap();
    let mut wb: Xlsx<_> = open_workbook_from_rs(std::io::Cursor::new(bytes.clone())).unwrap();
    assert_eq!(
        wb.sheet_names(),
        vec!["ログ".to_string(), "ログ2".to_string()]
    );
    let s1 = wb.worksheet_range("ログ").unwrap();
    assert_eq!(s1.height(), 3);
    assert!(matches!(s1.get((0, 1)), Some(Data::String(h)) if h.contains("device")));
    assert_eq!(
        s1.get((0, 0)),
        Some(&Data::String("日時 time (JST, Asia/Tokyo)".into()))
    );
    assert_eq!(
        s1.get((1, 11)),
        Some(&Data::String("ギャンブル,フィッシング詐欺".into()))
    );
    assert_eq!(
        s1.get((1, 21)),
        Some(&Data::String("2025-04-01T23:30:00.250Z".into()))
    );
    assert_eq!(
        s1.get((1, 22)),
        Some(&Data::String("gambling,phishing".into()))
    );
    match s1.get((1, 0)) {
        Some(Data::DateTime(dt)) => {
            use komugate::logs::record::days_from_civil;
            // Excel serial days since 1899-12-30: 2025-04-02 08:30:00 JST.
            let want =
                (days_from_civil(2025, 4, 2) - days_from_civil(1899, 12, 30)) as f64 + 8.5 / 24.0;
            assert!(
                (dt.as_f64() - want).abs() < 1e-6,
                "a real date-time cell in JST: {} vs {want}",
                dt.as_f64()
            );
        }
        other => panic!("time cell is {other:?}"),
    }
    assert_eq!(s1.get((1, 2)), Some(&Data::String("山田 太郎".into())));
    assert_eq!(s1.get((1, 14)), Some(&Data::Float(403.0)));
    let s2 = wb.worksheet_range("ログ2").unwrap();
    assert_eq!(s2.height(), 2, "header + the third record");
    assert_eq!(s2.get((1, 1)), Some(&Data::String("T-0003".into())));
    // Auto-filter and frozen header are in the sheet XML.
    let mut zip = zip_entry(&bytes, "xl/worksheets/sheet1.xml");
    assert!(zip.contains("<autoFilter ref=\"A1:Y3\""), "{zip}");
    assert!(zip.contains("state=\"frozen\""), "{zip}");
    assert!(zip.contains("<col "), "column widths");
    zip = zip_entry(&bytes, "xl/worksheets/sheet2.xml");
    assert!(zip.contains("<autoFilter"));
}

/// Reads one entry of a zip (xlsx) with calamine's own zip dependency.
fn zip_entry(bytes: &[u8], name: &str) -> String {
    // Find the local file header for `name` and inflate it.
    let needle = name.as_bytes();
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("entry in zip");
    let hdr = pos - 30;
    assert_eq!(&bytes[hdr..hdr + 4], b"PK\x03\x04");
    let le16 = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let le32 = |i: usize| {
        u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    let method = le16(hdr + 8);
    let csize = le32(hdr + 18);
    let data_start = hdr + 30 + le16(hdr + 26) + le16(hdr + 28);
    if method == 0 {
        return String::from_utf8_lossy(&bytes[data_start..data_start + csize]).into_owned();
    }
    // Sizes may be in a data descriptor (bit 3): inflate until the stream ends.
    let mut out = Vec::new();
    let mut d = flate2::read::DeflateDecoder::new(&bytes[data_start..]);
    std::io::Read::read_to_end(&mut d, &mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn admin_logs_endpoint_needs_the_token_and_exports() {
    let gw = TestGateway::start(|c, _| c.admin.token = "s3cret-token".into()).await;
    // A blocked request makes an access record.
    let r = raw::proxy_get(gw.plain(), "http://blocked.test/")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let admin = gw.admin();
    let get = |path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n")
    };
    let r = raw::request(admin, get("/admin/logs", None).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = raw::request(admin, get("/admin/logs", Some("wrong")).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = raw::request(
        admin,
        get("/admin/logs?nonsense=1", Some("s3cret-token")).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("unknown parameter"));

    // Eventually the record is on disk and found.
    let mut found = None;
    for _ in 0..60 {
        let r = raw::request(
            admin,
            get(
                "/admin/logs?host=blocked.test&since=-1h&format=json",
                Some("s3cret-token"),
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        if !r.text().trim().is_empty() {
            found = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = found.expect("the blocked request is searchable");
    let rec: serde_json::Value = serde_json::from_str(r.text().lines().next().unwrap()).unwrap();
    assert_eq!(rec["decision"], "block");
    assert_eq!(rec["host"], "blocked.test");

    let r = raw::request(
        admin,
        get("/admin/logs?action=block&format=csv", Some("s3cret-token")).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert!(r.body.starts_with("\u{feff}".as_bytes()));
    assert!(r.text().contains("blocked.test"));

    let r = raw::request(
        admin,
        get("/admin/logs?action=block&format=xlsx", Some("s3cret-token")).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with(b"PK"), "an xlsx (zip) file");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_logs_is_off_without_a_token() {
    let gw = TestGateway::start(|_, _| {}).await;
    let r = raw::request(
        gw.admin(),
        b"GET /admin/logs HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().contains("[admin] token"));
    gw.shutdown().await;
}
