//! Putting a verified download next to the feed in force: unpack or place
//! it in a staging directory and parse it the way the gateway will load it
//! (`komugate_categories`, the IPS engine, the threat-intel lists), then
//! swap it in (keeping `path.prev`) or roll it back.

use std::path::{Path, PathBuf};

use super::archive::{archive_root, unpack};
use super::feed::{Feed, FeedKind};
use super::state::sibling;
use super::Stop;

/// Unpacked archive size limit, as a multiple of `max_bytes`.
const UNPACK_FACTOR: u64 = 20;

pub(super) struct Checked {
    /// What to swap into `path` (a directory inside staging, or the download).
    pub root: PathBuf,
    pub entries: usize,
    /// Lines (or rules) that cannot be used.
    pub invalid: usize,
    pub first_error: Option<String>,
}

/// Unpacks or places the download and parses it as its kind.
pub(super) fn stage_and_parse(
    feed: &Feed,
    download: &Path,
    staging: &Path,
) -> Result<Checked, Stop> {
    match feed.kind {
        FeedKind::Categories => stage_categories(feed, download, staging),
        FeedKind::IpsRules => {
            let root = if is_archive(download) {
                unpack_to(feed, download, staging)?;
                archive_root(staging)
            } else {
                place(download, staging)?
            };
            let checked = parse_ips(&root)?;
            if checked.entries + checked.invalid == 0 {
                return Err(Stop(
                    "refused_empty",
                    "the download has no IPS rules (no `.rules` file, or only comments)".into(),
                ));
            }
            Ok(Checked { root, ..checked })
        }
        FeedKind::ThreatIntel => {
            let root = place(download, staging)?;
            Ok(Checked {
                root: root.clone(),
                ..parse_threat_list(&root)?
            })
        }
    }
}

/// Entries of the feed now on disk (IPS rules loaded, threat-list entries);
/// categories come from the policy compile instead.
pub(super) fn entries_in_force(feed: &Feed) -> usize {
    if !feed.path.exists() {
        return 0;
    }
    let parsed = match feed.kind {
        FeedKind::Categories => return feed.entries,
        FeedKind::IpsRules => parse_ips(&feed.path),
        FeedKind::ThreatIntel => parse_threat_list(&feed.path),
    };
    parsed.map(|c| c.entries).unwrap_or(0)
}

fn parse_ips(root: &Path) -> Result<Checked, Stop> {
    let files =
        crate::ips::rule_files(root).map_err(|e| Stop("refused_archive", format!("{e:#}")))?;
    let (_, report) = komugate_ips::IpsEngine::load(&files)
        .map_err(|e| Stop("refused_invalid", format!("{e:#}")))?;
    let first_error = report
        .skipped
        .iter()
        .max_by_key(|(_, stat)| stat.count)
        .map(|(reason, stat)| format!("{reason} ({} rules)", stat.count));
    Ok(Checked {
        root: root.to_path_buf(),
        entries: report.loaded,
        invalid: report.skipped_total(),
        first_error,
    })
}

fn parse_threat_list(file: &Path) -> Result<Checked, Stop> {
    let (_, reports) = komugate_ips::ThreatIntel::load(&[file])
        .map_err(|e| Stop("refused_invalid", format!("{e:#}")))?;
    let report = reports.into_iter().next().unwrap_or_default();
    Ok(Checked {
        root: file.to_path_buf(),
        entries: report.ips + report.domains,
        invalid: report.invalid.len(),
        first_error: report.invalid.first().map(|(line, text)| {
            format!("line {line}: {text:?} is not an address, network or domain")
        }),
    })
}

/// gzip, or a tar header (`ustar` at offset 257).
fn is_archive(file: &Path) -> bool {
    let mut head = [0u8; 262];
    let n = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    (n >= 2 && head[..2] == [0x1f, 0x8b]) || (n >= 262 && &head[257..262] == b"ustar")
}

fn unpack_to(feed: &Feed, download: &Path, staging: &Path) -> Result<(), Stop> {
    std::fs::create_dir_all(staging)
        .map_err(|e| Stop("error", format!("cannot create {}: {e}", staging.display())))?;
    unpack(
        download,
        staging,
        feed.max_bytes.saturating_mul(UNPACK_FACTOR),
    )
    .map_err(|e| Stop("refused_archive", e))
}

/// A single-file download becomes the staged file.
fn place(download: &Path, staging: &Path) -> Result<PathBuf, Stop> {
    std::fs::rename(download, staging)
        .map_err(|e| Stop("error", format!("cannot stage the download: {e}")))?;
    Ok(staging.to_path_buf())
}

fn stage_categories(feed: &Feed, download: &Path, staging: &Path) -> Result<Checked, Stop> {
    let only = feed.only.as_deref();
    let mut b = komugate_categories::MatcherBuilder::new();
    let (root, report) = if feed.format == "squidguard" {
        unpack_to(feed, download, staging)?;
        let root = archive_root(staging);
        let present: Vec<String> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(only) = only {
            let missing: Vec<&String> = only.iter().filter(|c| !present.contains(c)).collect();
            if !missing.is_empty() {
                return Err(Stop(
                    "refused_archive",
                    format!(
                        "the archive has no {:?} categor{} (named in `only`)",
                        missing,
                        if missing.len() == 1 { "y" } else { "ies" }
                    ),
                ));
            }
        }
        let report = b
            .add_squidguard_dir(&root, only)
            .map_err(|e| Stop("refused_archive", e.to_string()))?;
        (root, report)
    } else {
        let staged = place(download, staging)?;
        let format = match feed.format.as_str() {
            "hosts" => komugate_categories::ListFormat::Hosts,
            "adblock" => komugate_categories::ListFormat::Adblock,
            "auto" => komugate_categories::ListFormat::Auto,
            _ => komugate_categories::ListFormat::Plain,
        };
        let report = b
            .add_list_file(feed.category.as_deref().unwrap_or("list"), &staged, format)
            .map_err(|e| Stop("refused_invalid", e.to_string()))?;
        (staged, report)
    };
    b.build()
        .map_err(|e| Stop("refused_invalid", e.to_string()))?;
    Ok(Checked {
        root,
        entries: report.domains + report.urls + report.expressions,
        invalid: report.invalid_lines,
        first_error: report.first_errors.first().map(|e| e.to_string()),
    })
}

/// Replaces `path` by `new` keeping the old version as `prev`.
pub(super) fn swap_in(new: &Path, path: &Path, prev: &Path) -> std::io::Result<()> {
    remove_any(prev)?;
    let had_old = path.exists() || path.is_symlink();
    if had_old {
        std::fs::rename(path, prev)?;
    }
    if let Err(e) = std::fs::rename(new, path) {
        if had_old {
            let _ = std::fs::rename(prev, path);
        }
        return Err(e);
    }
    Ok(())
}

/// Puts `prev` back at `path` (a first download has no `prev`: `path` is removed).
pub(super) fn roll_back(path: &Path, prev: &Path) -> std::io::Result<()> {
    let failed = sibling(path, ".failed");
    remove_any(&failed)?;
    if path.exists() {
        std::fs::rename(path, &failed)?;
    }
    if prev.exists() {
        std::fs::rename(prev, path)?;
    }
    remove_any(&failed)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    }
}
