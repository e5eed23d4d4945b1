//! Replacing a file whole: readers, a crash or a `kill -9` at any instant
//! see the old content or the new, never a mix. Every writer of
//! configuration, policy, list and state files goes through [`write`].
//!
//! How: write a temporary file beside the target (same file system, so the
//! rename is atomic), fsync it, rename it over the target, fsync the
//! directory. A process killed mid-way leaves at most a hidden
//! `.<name>.<pid>.<n>.tmp` file next to the target; the target is intact.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` atomically and durably. An existing
/// file's permissions are kept (a 0600 file stays 0600).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let context = |e: io::Error, what: &str, p: &Path| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
    };
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| context(e, "create", &tmp))?;
        if let Ok(old) = std::fs::metadata(path) {
            f.set_permissions(old.permissions())
                .map_err(|e| context(e, "set the permissions of", &tmp))?;
        }
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| context(e, "write", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| context(e, "replace", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_parent(path);
    Ok(())
}

/// A temporary name unique to this process and call, beside `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Fsyncs the directory holding `path` so a rename in it survives a power loss.
pub fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no-such-dir").join("policy.toml");
        let e = write(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e}");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
    }
}
