//! Putting a verified download next to the list in force: unpack or place
//! it in a staging directory and parse it with `komugate_categories`, then
//! swap it in (keeping `path.prev`) or roll it back.

use std::path::{Path, PathBuf};

use komugate_policy::RemoteSource;

use super::archive::{archive_root, unpack};
use super::state::sibling;
use super::Stop;

/// Unpacked archive size limit, as a multiple of `max_bytes`.
const UNPACK_FACTOR: u64 = 20;

pub(super) struct Checked {
    /// What to swap into `path` (a directory inside staging, or the download).
    pub root: PathBuf,
    pub entries: usize,
    pub invalid: usize,
    pub first_error: Option<String>,
}

/// Unpacks (squidguard) or places (single list) the download and parses it.
pub(super) fn stage_and_parse(
    src: &RemoteSource,
    download: &Path,
    staging: &Path,
) -> Result<Checked, Stop> {
    let mut b = komugate_categories::MatcherBuilder::new();
    let (root, report) = if src.format == "squidguard" {
        std::fs::create_dir_all(staging)
            .map_err(|e| Stop("error", format!("cannot create {}: {e}", staging.display())))?;
        unpack(
            download,
            staging,
            src.max_bytes.saturating_mul(UNPACK_FACTOR),
        )
        .map_err(|e| Stop("refused_archive", e))?;
        let root = archive_root(staging);
        let present: Vec<String> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(only) = &src.only {
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
            .add_squidguard_dir(&root, src.only.as_deref())
            .map_err(|e| Stop("refused_archive", e.to_string()))?;
        (root, report)
    } else {
        std::fs::rename(download, staging)
            .map_err(|e| Stop("error", format!("cannot stage the download: {e}")))?;
        let format = match src.format.as_str() {
            "hosts" => komugate_categories::ListFormat::Hosts,
            "adblock" => komugate_categories::ListFormat::Adblock,
            "auto" => komugate_categories::ListFormat::Auto,
            _ => komugate_categories::ListFormat::Plain,
        };
        let cat = src.category.clone().unwrap_or_else(|| "list".into());
        let report = b
            .add_list_file(&cat, staging, format)
            .map_err(|e| Stop("refused_invalid", e.to_string()))?;
        (staging.to_path_buf(), report)
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
