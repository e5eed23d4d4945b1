//! Where things live inside a log directory (the folder of `[log]
//! access_log`, `komugate-data/logs` by default):
//!
//! ```text
//! access.log                   live file: JSON lines, this hour, fsynced ≥ 1/s
//! closing/<stamp>.jsonl        closed live files waiting for compaction
//! segments/YYYY-MM-DD/<stamp>.seg + .idx   compressed hours + sidecar index
//! spill/<stamp>.jsonl(.part)   overflow queue when the writer's channel is full
//! ship/<target>/<stamp>.jsonl  shipping queue per external target
//! ```
//!
//! `<stamp>` is the UTC open time `YYYYMMDDTHHMMSS.mmmZ-<n>`; the day folder
//! is the UTC day of that time. Retention deletes whole day folders.

use std::path::{Path, PathBuf};

use super::record::{civil_from_days, now_ms};

pub const SEGMENTS: &str = "segments";
pub const CLOSING: &str = "closing";
pub const SPILL: &str = "spill";
pub const SHIP: &str = "ship";

/// A sortable, unique-in-process file stamp for time `ms`.
pub fn stamp(ms: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z-{:04}-{n}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
        std::process::id() % 10_000
    )
}

/// `YYYY-MM-DD` day folder of a stamp.
pub fn stamp_day(stamp: &str) -> Option<String> {
    let b = stamp.as_bytes();
    if b.len() < 8 || !b[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(format!(
        "{}-{}-{}",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8]
    ))
}

pub fn stamp_now() -> String {
    stamp(now_ms())
}

fn list(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    v.sort();
    v
}

/// Files with records that are not in a segment yet, oldest first: closing
/// files, spill files, then the live `*.log` file(s).
pub fn unsealed_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = list(&dir.join(CLOSING), |n| n.ends_with(".jsonl"));
    v.extend(list(&dir.join(SPILL), |n| {
        n.ends_with(".jsonl") || n.ends_with(".part")
    }));
    v.extend(list(dir, |n| n.ends_with(".log")));
    v
}

pub fn closing_files(dir: &Path) -> Vec<PathBuf> {
    list(&dir.join(CLOSING), |n| n.ends_with(".jsonl"))
}

pub fn spill_files(dir: &Path, include_part: bool) -> Vec<PathBuf> {
    list(&dir.join(SPILL), |n| {
        n.ends_with(".jsonl") || (include_part && n.ends_with(".part"))
    })
}

/// Segment path for a closing file's stamp.
pub fn segment_path(dir: &Path, stamp: &str) -> PathBuf {
    let day = stamp_day(stamp).unwrap_or_else(|| "unknown-day".to_string());
    dir.join(SEGMENTS).join(day).join(format!("{stamp}.seg"))
}

pub fn list_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    list(dir, |n| n.ends_with(ext))
}
