//! Unpacking a downloaded tar or tar.gz: absolute paths, `..`, symlinks,
//! hard links and device entries refuse the whole archive, and the unpacked
//! size is capped.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// UT1's tarball has everything under `blacklists/`: use a single top-level
/// directory as the root unless it is itself a category (has list files).
pub(super) fn archive_root(staging: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(staging)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if let [only] = entries.as_slice() {
        if only.is_dir() {
            let has_lists = std::fs::read_dir(only)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        e.path().is_file()
                            && (n.starts_with("domains")
                                || n.starts_with("urls")
                                || n.starts_with("expressions"))
                    })
                })
                .unwrap_or(false);
            if !has_lists {
                return only.clone();
            }
        }
    }
    staging.to_path_buf()
}

/// Unpacks a tar or tar.gz into `dest`; refuses unsafe entries.
pub fn unpack(archive: &Path, dest: &Path, max_unpacked: u64) -> Result<(), String> {
    let mut file =
        std::fs::File::open(archive).map_err(|e| format!("cannot open the download: {e}"))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|e| e.to_string())?;
    drop(file);
    let file = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut ar = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let mut count = 0usize;
    for entry in ar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("bad tar archive: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("bad path in the archive: {e}"))?
            .into_owned();
        let shown = raw.display().to_string();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(format!("the archive has a path with `..`: {shown}"))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("the archive has an absolute path: {shown}"))
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(format!("the archive has a link: {shown}"));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            total += entry.header().size().unwrap_or(0);
            if total > max_unpacked {
                return Err(format!(
                    "the archive unpacks to more than {max_unpacked} bytes"
                ));
            }
            let mut out =
                std::fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            let copied = std::io::copy(&mut (&mut entry).take(max_unpacked), &mut out)
                .map_err(|e| format!("{shown}: {e}"))?;
            let _ = copied;
            count += 1;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(format!("the archive has a device or fifo entry: {shown}"));
        } else {
            // pax global headers, GNU sparse files and the like: skipped
            continue;
        }
    }
    if count == 0 {
        return Err("the archive has no files".into());
    }
    Ok(())
}
