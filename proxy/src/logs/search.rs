//! Streaming search over a log directory: closed segments (a segment, or a
//! block of one, is passed over when its sidecar index says it holds no
//! wanted value), files waiting for compaction, the spill queue and the
//! live file (a line without the wanted text is not parsed). Memory is
//! bounded by one segment block.
//!
//! Order: segments by day and name (oldest first), then the files not yet
//! compacted, then the live file — i.e. roughly chronological.
//!
//! The writer keeps working while a search runs: a closing file can be
//! compacted, and the live file rotated, between listing and reading. Files
//! are matched by their stamp (`closing/<stamp>.jsonl` becomes
//! `segments/<day>/<stamp>.seg`), so a closing file whose segment was read
//! is passed over, and after the live files the segments and closing files
//! are listed again: what appeared meanwhile and was not read in another
//! form is read then (after the live file, so out of time order). Left: a
//! live file rotated before it was opened whose closing file is compacted
//! between the two second listings (microseconds apart) is missed by that
//! search.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::layout;
use super::query::Query;
use super::record::{utc_day, LogRecord};
use super::segment::{SegmentIndex, SegmentReader};

/// What a search did; `segments_opened` counts segment files actually read,
/// `blocks_read` the blocks decompressed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SearchStats {
    pub segments_total: u64,
    pub segments_skipped_by_index: u64,
    pub segments_opened: u64,
    /// Blocks passed over for their time range.
    pub blocks_skipped: u64,
    /// Blocks passed over because the index's block sets hold no wanted value.
    pub blocks_skipped_by_index: u64,
    pub blocks_read: u64,
    pub live_files: u64,
    pub records_scanned: u64,
    pub records_matched: u64,
    /// Files that could not be read (reported, the search goes on).
    pub errors: Vec<String>,
    pub limit_reached: bool,
}

/// Runs `q` over `dir`, calling `emit` for each match in order (after the
/// first `q.skip` matches); `emit` returns `Ok(false)` to stop early.
pub fn search(
    dir: &Path,
    q: &Query,
    emit: impl FnMut(LogRecord) -> io::Result<bool>,
) -> io::Result<SearchStats> {
    search_with(dir, q, emit, |_| {})
}

/// Points of a search where the writer may act (for tests of those races).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The segments were listed and read.
    SegmentsRead,
    /// The files not yet compacted were listed, none read yet.
    UnsealedListed,
    /// Those files were read; nothing was listed again yet.
    UnsealedRead,
}

fn stamp_of(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// [`search`] with a call at each [`Stage`].
pub(crate) fn search_with(
    dir: &Path,
    q: &Query,
    mut emit: impl FnMut(LogRecord) -> io::Result<bool>,
    mut at: impl FnMut(Stage),
) -> io::Result<SearchStats> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("log directory {} does not exist; pass the gateway's log directory (data dir + [log] access_log's folder, e.g. komugate-data/logs) with --dir", dir.display()),
        ));
    }
    let mut st = SearchStats::default();
    let limit = q.limit.unwrap_or(u64::MAX);
    let mut skipped = 0u64;
    let mut emit_one = |r: LogRecord, st: &mut SearchStats| -> io::Result<bool> {
        if skipped < q.skip {
            skipped += 1;
            return Ok(true);
        }
        st.records_matched += 1;
        let go_on = emit(r)?;
        if st.records_matched >= limit {
            st.limit_reached = true;
            return Ok(false);
        }
        Ok(go_on)
    };
    // Stamps read, as a segment or a closing file.
    let mut seen: HashSet<String> = HashSet::new();
    // Identity (device, inode) of each live file read.
    let mut live_read: HashSet<(u64, u64)> = HashSet::new();

    // What a file's error means for the search: go on, stop, or fail.
    macro_rules! read {
        ($res:expr, $path:expr) => {
            match $res {
                Ok(true) => {}
                Ok(false) => return Ok(st),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
                Err(e) => st.errors.push(format!("{}: {e}", $path.display())),
            }
        };
    }

    for seg in list_segments(dir, q) {
        seen.insert(stamp_of(&seg));
        let res = scan_segment(&seg, q, &mut st, &mut emit_one);
        read!(res, seg);
    }
    at(Stage::SegmentsRead);

    let closing_dir = dir.join(layout::CLOSING);
    let unsealed = layout::unsealed_files(dir);
    at(Stage::UnsealedListed);
    for file in unsealed {
        let closing = file.parent() == Some(closing_dir.as_path());
        // Its segment was listed and read (compacted, not yet removed).
        if closing && seen.contains(&stamp_of(&file)) {
            continue;
        }
        // Gone since the listing: compacted (its segment is listed again
        // below) or a spill file ingested into the live file.
        let Some((f, id)) = open_jsonl(&file) else {
            continue;
        };
        if closing {
            seen.insert(stamp_of(&file));
        } else {
            live_read.insert(id);
        }
        let res = scan_jsonl(f, q, &mut st, &mut emit_one);
        read!(res, file);
    }

    at(Stage::UnsealedRead);

    // Compacted between the first listing and reading its closing file.
    for seg in list_segments(dir, q) {
        if seen.insert(stamp_of(&seg)) {
            let res = scan_segment(&seg, q, &mut st, &mut emit_one);
            read!(res, seg);
        }
    }
    // The live file rotated before it was opened: its records are now in
    // a closing file not read under its stamp. (A live file opened before
    // its rotation was read whole through that handle: same identity.)
    for file in layout::closing_files(dir) {
        if !seen.insert(stamp_of(&file)) {
            continue;
        }
        let Some((f, id)) = open_jsonl(&file) else {
            continue;
        };
        if !live_read.contains(&id) {
            let res = scan_jsonl(f, q, &mut st, &mut emit_one);
            read!(res, file);
        }
    }
    Ok(st)
}

/// Reads one segment, block by block, passing over what its index excludes.
fn scan_segment(
    seg: &Path,
    q: &Query,
    st: &mut SearchStats,
    emit_one: &mut impl FnMut(LogRecord, &mut SearchStats) -> io::Result<bool>,
) -> io::Result<bool> {
    st.segments_total += 1;
    let idx_path = seg.with_extension("idx");
    let plan = match SegmentIndex::read(&idx_path) {
        Ok(idx) => match q.plan(&idx) {
            None => {
                st.segments_skipped_by_index += 1;
                return Ok(true);
            }
            Some(plan) => Some((idx, plan)),
        },
        Err(e) => {
            // No usable index: read the segment itself.
            tracing::debug!("no index for {}: {e}", seg.display());
            None
        }
    };
    let mut r = match SegmentReader::open(seg) {
        Ok(r) => r,
        // Removed by retention since the listing: nothing to search.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    st.segments_opened += 1;
    let mut block = 0usize;
    while let Some(h) = r.next_header()? {
        let this = block;
        block += 1;
        if !q.time_overlaps(h.min_ms, h.max_ms) {
            st.blocks_skipped += 1;
            r.skip_block(&h)?;
            continue;
        }
        if let Some((idx, plan)) = &plan {
            if !plan.may_match_block(idx, this, h.rows) {
                st.blocks_skipped_by_index += 1;
                r.skip_block(&h)?;
                continue;
            }
        }
        let b = r.read_block(&h)?;
        st.blocks_read += 1;
        st.records_scanned += b.rows as u64;
        for row in q.matching_rows(&b) {
            if !emit_one(b.record(row), st)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Opens a JSON-lines file with its identity (device, inode); `None` when
/// it is gone (compacted, or a spill file ingested, since the listing: its
/// records are in a segment listed again at the end, or in the live file)
/// or unreadable (reported when read).
fn open_jsonl(path: &Path) -> Option<(io::Result<File>, (u64, u64))> {
    match File::open(path) {
        Ok(f) => {
            let id = f.metadata().map(|m| (m.dev(), m.ino())).unwrap_or_default();
            Some((Ok(f), id))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some((Err(e), (0, 0))),
    }
}

fn scan_jsonl(
    f: io::Result<File>,
    q: &Query,
    st: &mut SearchStats,
    emit_one: &mut impl FnMut(LogRecord, &mut SearchStats) -> io::Result<bool>,
) -> io::Result<bool> {
    let f = f?;
    st.live_files += 1;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut line = Vec::new();
    let filter = q.line_filter();
    let mut scratch = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(true);
        }
        if line.last() != Some(&b'\n') {
            // A record still being written (or torn by a crash).
            return Ok(true);
        }
        st.records_scanned += 1;
        if !filter.may_match(&line, &mut scratch) {
            continue;
        }
        let Ok(rec) = LogRecord::from_json_line(&line) else {
            continue;
        };
        if q.matches(&rec) && !emit_one(rec, st)? {
            return Ok(false);
        }
    }
}

/// Segment files in day order; whole days before `since - 1 day` are not
/// even listed (a file opened on a day holds that day's and at most the
/// previous hours' records).
pub(crate) fn list_segments(dir: &Path, q: &Query) -> Vec<PathBuf> {
    let root = dir.join(layout::SEGMENTS);
    let mut days: Vec<String> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => return Vec::new(),
    };
    days.sort();
    let min_day = q.since_ms.map(|s| utc_day(s - 86_400_000));
    let mut out = Vec::new();
    for day in days {
        if let Some(min) = &min_day {
            if day.as_str() < min.as_str() {
                continue;
            }
        }
        let Ok(rd) = std::fs::read_dir(root.join(&day)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::query::Glob;
    use crate::logs::segment::{write_atomic, SegmentWriter};
    use crate::logs::writer;

    const T0: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

    fn rec(i: u64, host: &str) -> LogRecord {
        LogRecord {
            time_ms: T0 + i as i64 * 1000,
            device: format!("T-{:03}", i % 7),
            method: "CONNECT".into(),
            target: format!("{host}:443"),
            host: host.into(),
            action: "allow".into(),
            bytes_up: i,
            ..Default::default()
        }
    }

    /// A segment and its index, as compaction leaves them, with small blocks.
    fn write_segment(dir: &Path, stamp: &str, recs: &[LogRecord], block_rows: usize) {
        let seg = layout::segment_path(dir, stamp);
        std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
        let mut w = SegmentWriter::create(&seg, 1)
            .unwrap()
            .with_block_rows(block_rows);
        for r in recs {
            w.push(r).unwrap();
        }
        write_atomic(&seg.with_extension("idx"), &w.finish().unwrap()).unwrap();
    }

    fn write_jsonl(path: &Path, recs: impl Iterator<Item = LogRecord>) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = Vec::new();
        for r in recs {
            serde_json::to_writer(&mut out, &r).unwrap();
            out.push(b'\n');
        }
        std::fs::write(path, out).unwrap();
    }

    fn run(dir: &Path, q: &Query, at: impl FnMut(Stage)) -> (Vec<u64>, SearchStats) {
        let mut got = Vec::new();
        let st = search_with(
            dir,
            q,
            |r| {
                got.push(r.bytes_up);
                Ok(true)
            },
            at,
        )
        .unwrap();
        (got, st)
    }

    #[test]
    fn a_rare_host_decompresses_only_its_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs: Vec<LogRecord> = (0..1000u64)
            .map(|i| match i {
                150 | 160 | 820 => rec(i, "rare.school.ed.jp"),
                _ => rec(i, &format!("common{}.example.jp", i % 5)),
            })
            .collect();
        write_segment(dir, &layout::stamp(T0), &recs, 100);

        for pattern in ["rare.school.ed.jp", "*.school.ed.jp", "RARE.*", "*school*"] {
            let q = Query {
                host: Some(Glob::new(pattern)),
                ..Query::default()
            };
            let (got, st) = run(dir, &q, |_| {});
            assert_eq!(got, vec![150, 160, 820], "{pattern}");
            assert_eq!(st.blocks_read, 2, "{pattern}: blocks 1 and 8 only");
            assert_eq!(st.blocks_skipped_by_index, 8, "{pattern}");
        }
        // Two fields: each must be in the block (device T-003 is in every
        // block, the host in two of them).
        let q = Query {
            host: Some(Glob::new("*.school.ed.jp")),
            device: Some("T-003".into()),
            ..Query::default()
        };
        let (got, st) = run(dir, &q, |_| {});
        assert_eq!(got, vec![150]); // 150 % 7 == 3, 160 % 7 == 6, 820 % 7 == 1
        assert_eq!(st.blocks_read, 2);
        // Not in the hour at all: the segment-level list says so.
        let q = Query {
            host: Some(Glob::new("*.nowhere.jp")),
            ..Query::default()
        };
        let (got, st) = run(dir, &q, |_| {});
        assert!(got.is_empty());
        assert_eq!((st.segments_skipped_by_index, st.blocks_read), (1, 0));
        // No filter the index knows: every block is read.
        let q = Query {
            url_contains: Some("rare".into()),
            ..Query::default()
        };
        let (got, st) = run(dir, &q, |_| {});
        assert_eq!(got, vec![150, 160, 820]);
        assert_eq!((st.blocks_read, st.blocks_skipped_by_index), (10, 0));
    }

    /// Three hours: A in a segment, B in a closing file, the live file.
    fn three_hours(dir: &Path) -> (PathBuf, String) {
        let a = layout::stamp(T0);
        write_segment(
            dir,
            &a,
            &(0..100).map(|i| rec(i, "a.jp")).collect::<Vec<_>>(),
            30,
        );
        let b = dir
            .join(layout::CLOSING)
            .join(format!("{}.jsonl", layout::stamp(T0 + 3_600_000)));
        write_jsonl(&b, (100..200).map(|i| rec(i, "b.jp")));
        write_jsonl(&dir.join("access.log"), (200..300).map(|i| rec(i, "c.jp")));
        (b, a)
    }

    fn once_each(mut got: Vec<u64>, n: u64) {
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "every record once");
    }

    #[test]
    fn a_file_compacted_during_the_search_is_read_once() {
        // Compacted after the segments were listed: before the fix its
        // records were in neither list.
        for stage in [Stage::SegmentsRead, Stage::UnsealedListed] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let (b, _) = three_hours(dir);
            let (got, _) = run(dir, &Query::default(), |s| {
                if s == stage {
                    writer::compact(dir, &b, 1).unwrap().unwrap();
                }
            });
            once_each(got, 300);
        }
        // Compacted before the search, the closing file not removed yet
        // (the compactor's last step): read once, from the segment.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (b, _) = three_hours(dir);
        let keep = std::fs::read(&b).unwrap();
        writer::compact(dir, &b, 1).unwrap().unwrap();
        std::fs::write(&b, keep).unwrap();
        let (got, st) = run(dir, &Query::default(), |_| {});
        once_each(got, 300);
        assert_eq!(st.segments_opened, 2);
    }

    #[test]
    fn a_live_file_rotated_during_the_search_is_read_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        three_hours(dir);
        let live = dir.join("access.log");
        let (got, _) = run(dir, &Query::default(), |s| {
            if s == Stage::UnsealedListed {
                // The writer's rotation: rename, then a new live file.
                let to = dir
                    .join(layout::CLOSING)
                    .join(format!("{}.jsonl", layout::stamp(T0 + 7_200_000)));
                std::fs::rename(&live, to).unwrap();
                write_jsonl(&live, (300..350).map(|i| rec(i, "d.jp")));
            }
        });
        once_each(got, 350);

        // Rotated after the live file was read, before the second listing:
        // the new closing file is the file read (same identity).
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        three_hours(dir);
        let live = dir.join("access.log");
        let (got, _) = run(dir, &Query::default(), |s| {
            if s == Stage::UnsealedRead {
                let to = dir
                    .join(layout::CLOSING)
                    .join(format!("{}.jsonl", layout::stamp(T0 + 7_200_000)));
                std::fs::rename(&live, to).unwrap();
                write_jsonl(&live, (300..350).map(|i| rec(i, "d.jp")));
            }
        });
        once_each(got, 300);
    }
}
