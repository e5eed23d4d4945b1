//! What survives a restart: the validators (`ETag`, `Last-Modified`), the
//! accepted SHA-256 and the time of the last accepted check of each source,
//! in `<path>.update.json` next to the list.

use std::path::{Path, PathBuf};

use super::feed::Feed;
use serde::{Deserialize, Serialize};

/// Validators and time of the last accepted check, in `<path>.update.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Persisted {
    pub url: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Unix seconds of the last download or 304 that left the list in force.
    pub checked_unix: u64,
}

fn state_file(path: &Path) -> PathBuf {
    sibling(path, ".update.json")
}

/// `path` with `suffix` appended to its file name.
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "list".into());
    name.push(suffix);
    path.with_file_name(name)
}

pub(super) fn read_state(src: &Feed) -> Option<Persisted> {
    let text = std::fs::read_to_string(state_file(&src.path)).ok()?;
    let p: Persisted = serde_json::from_str(&text).ok()?;
    (p.url == src.url && src.path.exists()).then_some(p)
}

/// Unix seconds of the last accepted check of the list at `path` (any
/// source), if it was ever updated by komugate.
pub fn last_accepted_check(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state_file(path)).ok()?;
    serde_json::from_str::<Persisted>(&text)
        .ok()
        .map(|p| p.checked_unix)
}

pub(super) fn write_state(src: &Feed, p: &Persisted) {
    let file = state_file(&src.path);
    let result = serde_json::to_vec_pretty(p)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::atomic_file::write(&file, &bytes));
    if let Err(e) = result {
        tracing::warn!("cannot write {}: {e}", file.display());
    }
}
