//! Key and certificate files created with their final mode from the start
//! (never chmod-ed afterwards), and the output-path checks of `issue-device`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const CERT_MODE: u32 = 0o644;
pub(super) const DIR_MODE: u32 = 0o700;

pub(super) fn with_suffix(prefix: &Path, suffix: &str) -> Result<PathBuf> {
    if prefix.as_os_str().is_empty() || prefix.file_name().is_none() {
        bail!(
            "--out must be a file prefix such as certs/laptop-001, got {:?}",
            prefix
        );
    }
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    Ok(PathBuf::from(s))
}

/// Does `out` name one of `files` (compared after canonicalising the parent directories)?
pub(super) fn same_file_name(out: &Path, files: &[PathBuf]) -> bool {
    fn canon(p: &Path) -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(x) if !x.as_os_str().is_empty() => x,
            _ => Path::new("."),
        };
        Some(fs::canonicalize(parent).ok()?.join(p.file_name()?))
    }
    match canon(out) {
        Some(o) => files.iter().any(|f| canon(f).as_ref() == Some(&o)),
        None => false,
    }
}

pub(super) fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    #[cfg(not(unix))]
    let _ = DIR_MODE;
    b.create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

fn open_new(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.open(path)
}

/// Write a file created with `mode` from the start. Without `force`, fails if the file
/// exists (atomically, via O_EXCL). With `force`, writes a temp file next to it (same
/// mode) and renames it over the target, so the old file's permissions never leak onto
/// the new content and a crash leaves either the old or the new file.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<()> {
    let write_into = |f: &mut fs::File, p: &Path| -> Result<()> {
        f.write_all(contents)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", p.display()))
    };
    if !force {
        let mut f = match open_new(path, mode) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        return write_into(&mut f, path);
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = open_new(&tmp, mode).with_context(|| format!("creating {}", tmp.display()))?;
    let res = write_into(&mut f, &tmp).and_then(|_| {
        drop(f);
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}
