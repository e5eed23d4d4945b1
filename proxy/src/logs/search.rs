//! Streaming search over a log directory: closed segments (skipped by their
//! sidecar index when they cannot match), files waiting for compaction, the
//! spill queue and the live file. Memory is bounded by one segment block.
//!
//! Order: segments by day and name (oldest first), then the files not yet
//! compacted, then the live file — i.e. roughly chronological.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::layout;
use super::query::Query;
use super::record::{utc_day, LogRecord};
use super::segment::{SegmentIndex, SegmentReader};

/// What a search did; `segments_opened` counts segment files actually read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SearchStats {
    pub segments_total: u64,
    pub segments_skipped_by_index: u64,
    pub segments_opened: u64,
    pub blocks_skipped: u64,
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
    mut emit: impl FnMut(LogRecord) -> io::Result<bool>,
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

    for seg in list_segments(dir, q) {
        st.segments_total += 1;
        let idx_path = seg.with_extension("idx");
        match SegmentIndex::read(&idx_path) {
            Ok(idx) if !q.may_match_index(&idx) => {
                st.segments_skipped_by_index += 1;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                // No usable index: read the segment itself.
                tracing::debug!("no index for {}: {e}", seg.display());
            }
        }
        st.segments_opened += 1;
        let result = (|| -> io::Result<bool> {
            let mut r = SegmentReader::open(&seg)?;
            while let Some(h) = r.next_header()? {
                if !q.time_overlaps(h.min_ms, h.max_ms) {
                    st.blocks_skipped += 1;
                    r.skip_block(&h)?;
                    continue;
                }
                let b = r.read_block(&h)?;
                st.blocks_read += 1;
                st.records_scanned += b.rows as u64;
                for row in q.matching_rows(&b) {
                    if !emit_one(b.record(row), &mut st)? {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })();
        match result {
            Ok(true) => {}
            Ok(false) => return Ok(st),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
            Err(e) => st.errors.push(format!("{}: {e}", seg.display())),
        }
    }

    for live in layout::unsealed_files(dir) {
        st.live_files += 1;
        match scan_jsonl(&live, q, &mut st, &mut emit_one) {
            Ok(true) => {}
            Ok(false) => return Ok(st),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
            Err(e) => st.errors.push(format!("{}: {e}", live.display())),
        }
    }
    Ok(st)
}

fn scan_jsonl(
    path: &Path,
    q: &Query,
    st: &mut SearchStats,
    emit_one: &mut impl FnMut(LogRecord, &mut SearchStats) -> io::Result<bool>,
) -> io::Result<bool> {
    let f = match File::open(path) {
        Ok(f) => f,
        // Rotated or ingested between listing and opening: its records are
        // now in the next file of the list.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut line = Vec::new();
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
