//! Logs written before index version 2 stay searchable: a segment and its
//! version-1 index made by the komugate of 2026-12-02 (`komugate logs
//! compact` of `data/logs-v1/source.jsonl`; 65,536-row blocks, no block
//! sets), searched beside a segment the current writer makes, read whole
//! and with the same results as filtering the source records.

use std::path::Path;

use komugate::logs::layout;
use komugate::logs::query::Glob;
use komugate::logs::segment::{SegmentIndex, IDX_MAGIC, IDX_MAGIC_V1};
use komugate::logs::{search, writer, LogRecord, Query};

const V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/logs-v1");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn source() -> Vec<LogRecord> {
    std::fs::read(Path::new(V1).join("source.jsonl"))
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| LogRecord::from_json_line(l).unwrap())
        .collect()
}

#[test]
fn version_1_segments_are_searched_beside_version_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    copy_tree(&Path::new(V1).join("segments"), &dir.join(layout::SEGMENTS));
    let old = source();
    assert_eq!(old.len(), 400);

    // The fixture is what it claims: a version-1 index, no block sets.
    let old_idx = std::fs::read_dir(dir.join(layout::SEGMENTS).join("2025-11-30"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .unwrap();
    assert_eq!(&std::fs::read(&old_idx).unwrap()[..8], IDX_MAGIC_V1);
    let idx = SegmentIndex::read(&old_idx).unwrap();
    assert_eq!((idx.count, idx.block_count()), (400, None));

    // The next day's hour through today's writer (index version 2).
    let new: Vec<LogRecord> = old
        .iter()
        .map(|r| LogRecord {
            time_ms: r.time_ms + 86_400_000,
            ..r.clone()
        })
        .collect();
    let closing = dir
        .join(layout::CLOSING)
        .join(format!("{}.jsonl", layout::stamp(new[0].time_ms)));
    std::fs::create_dir_all(closing.parent().unwrap()).unwrap();
    let mut lines = Vec::new();
    for r in &new {
        serde_json::to_writer(&mut lines, r).unwrap();
        lines.push(b'\n');
    }
    std::fs::write(&closing, lines).unwrap();
    let seg = writer::compact(&dir, &closing, 3).unwrap().unwrap();
    assert_eq!(
        &std::fs::read(seg.with_extension("idx")).unwrap()[..8],
        IDX_MAGIC
    );

    let all: Vec<LogRecord> = old.iter().chain(&new).cloned().collect();
    let queries = [
        (
            "rare host",
            Query {
                host: Some(Glob::new("rare.school.ed.jp")),
                ..Query::default()
            },
        ),
        (
            "suffix glob",
            Query {
                host: Some(Glob::new("*.example.com")),
                ..Query::default()
            },
        ),
        (
            "prefix glob",
            Query {
                host: Some(Glob::new("RARE.*")),
                ..Query::default()
            },
        ),
        (
            "device and category",
            Query {
                device: Some("T-0007".into()),
                category: Some("video".into()),
                ..Query::default()
            },
        ),
        (
            "user in Japanese",
            Query {
                user: Some("山田太郎".into()),
                action: Some("block".into()),
                ..Query::default()
            },
        ),
        (
            "ips",
            Query {
                ips: Some("3005".into()),
                ..Query::default()
            },
        ),
        ("everything", Query::default()),
    ];
    for (what, q) in queries {
        let mut got = Vec::new();
        let st = search(&dir, &q, |r| {
            got.push(r);
            Ok(true)
        })
        .unwrap();
        let want: Vec<&LogRecord> = all.iter().filter(|r| q.matches(r)).collect();
        assert!(!want.is_empty(), "{what}: the fixture has matches");
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(&want) {
            // The stored form: host filled in from the target when absent.
            assert_eq!(g.time_ms, w.time_ms, "{what}");
            assert_eq!(
                (&g.device, &g.target, &g.host),
                (&w.device, &w.target, &w.host),
                "{what}"
            );
            assert_eq!(g, *w, "{what}");
        }
        assert!(st.errors.is_empty(), "{what}: {:?}", st.errors);
        // The version-1 segment is read whole when admitted: its one block.
        assert!(st.blocks_read >= 1, "{what}");
    }
}
