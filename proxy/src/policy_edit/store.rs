//! The policy file and its versions: every text applied is kept in a
//! `<policy file name>.versions/` directory next to it, so any earlier
//! version can be restored; an apply based on a version that is no longer
//! the file's content is refused (a conflict, never a lost update).
//!
//! ```text
//! policy.toml                       the file in force
//! policy.toml.versions/
//!   .lock                           flock held while checking and writing
//!   000001-20261202T091500Z.toml    the text of version 1
//!   000001-20261202T091500Z.json    who, when, what (VersionInfo)
//! ```
//!
//! A version token is the first 16 hex digits of the SHA-256 of the file's
//! bytes: forms carry the token of the text they were built on, and
//! [`PolicyStore::apply`] compares it with the file under the lock. The
//! file edited on disk since (by hand, by another console, by another
//! replica's console on shared storage) has another token: refused too. The
//! text found on disk is kept as a version (`on-disk`) before it is
//! replaced, so hand edits are in the history as well.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One kept version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionInfo {
    /// `000001-20261202T091500Z` (sequence and UTC time).
    pub id: String,
    pub seq: u64,
    pub time_ms: i64,
    /// Version token of the text.
    pub token: String,
    /// Who applied it (`山田 (console, 10.0.0.5)`, `cli`, `on-disk`).
    pub actor: String,
    /// `console`, `restore`, `rollback`, `cli` or `on-disk`.
    pub kind: String,
    pub summary: String,
    /// The summary in Japanese (empty for versions kept without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary_ja: String,
    /// Token of the text it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<String>,
}

/// Why an apply did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The file is no longer the text the change was based on.
    Conflict {
        base: String,
        current: String,
    },
    Io(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Conflict { base, current } => write!(
                f,
                "the policy file changed since this change was prepared (based on version {base}, the file is now version {current}); nothing was applied: start again from the current file"
            ),
            ApplyError::Io(e) => f.write_str(e),
        }
    }
}

/// The version token of a text.
pub fn version_token(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What goes into the history with an applied text.
#[derive(Clone, Debug)]
pub struct ChangeMeta {
    pub actor: String,
    pub kind: String,
    pub summary: String,
    pub summary_ja: String,
}

/// A policy file with its versions directory.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    file: PathBuf,
    dir: PathBuf,
}

/// What [`PolicyStore::apply`] did.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The version that was in force before (kept, possibly just now as `on-disk`).
    pub previous: VersionInfo,
    pub version: VersionInfo,
    /// The text that was replaced.
    pub previous_text: String,
}

impl PolicyStore {
    pub fn for_policy(file: &Path) -> PolicyStore {
        let mut name = file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "policy.toml".into());
        name.push(".versions");
        PolicyStore {
            file: file.to_path_buf(),
            dir: file.with_file_name(name),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn versions_dir(&self) -> &Path {
        &self.dir
    }

    /// The file's text and version token.
    pub fn current(&self) -> io::Result<(String, String)> {
        let bytes = std::fs::read(&self.file).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", self.file.display()),
            )
        })?;
        let token = version_token(&bytes);
        let text = String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not UTF-8", self.file.display()),
            )
        })?;
        Ok((text, token))
    }

    /// Replaces the file with `text` if it is still the version `base`;
    /// keeps the replaced text (if not kept yet) and the new one.
    pub fn apply(&self, base: &str, text: &str, meta: &ChangeMeta) -> Result<Applied, ApplyError> {
        let io_err = |e: io::Error| ApplyError::Io(e.to_string());
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ApplyError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let _lock = Lock::take(&self.dir.join(".lock")).map_err(io_err)?;
        let (current_text, current) = self.current().map_err(io_err)?;
        if current != base {
            return Err(ApplyError::Conflict {
                base: base.to_string(),
                current,
            });
        }
        let mut versions = self.list().map_err(io_err)?;
        let previous = match versions.first() {
            Some(v) if v.token == current => v.clone(),
            _ => {
                let v = self
                    .keep(
                        &current_text,
                        versions.first(),
                        &ChangeMeta {
                            actor: "on-disk".into(),
                            kind: "on-disk".into(),
                            summary: "the file as found on disk".into(),
                            summary_ja: "ファイルにあった内容".into(),
                        },
                        None,
                    )
                    .map_err(io_err)?;
                versions.insert(0, v.clone());
                v
            }
        };
        crate::atomic_file::write(&self.file, text.as_bytes()).map_err(io_err)?;
        let version = self
            .keep(text, versions.first(), meta, Some(current))
            .map_err(io_err)?;
        Ok(Applied {
            previous,
            version,
            previous_text: current_text,
        })
    }

    fn keep(
        &self,
        text: &str,
        latest: Option<&VersionInfo>,
        meta: &ChangeMeta,
        based_on: Option<String>,
    ) -> io::Result<VersionInfo> {
        let seq = latest.map(|v| v.seq + 1).unwrap_or(1);
        let time_ms = crate::logs::record::now_ms();
        let stamp = crate::logs::record::format_rfc3339_ms(time_ms);
        let compact: String = stamp[..19]
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let id = format!("{seq:06}-{compact}Z");
        let info = VersionInfo {
            id: id.clone(),
            seq,
            time_ms,
            token: version_token(text.as_bytes()),
            actor: meta.actor.clone(),
            kind: meta.kind.clone(),
            summary: meta.summary.clone(),
            summary_ja: meta.summary_ja.clone(),
            based_on,
        };
        crate::atomic_file::write(&self.dir.join(format!("{id}.toml")), text.as_bytes())?;
        let json = serde_json::to_vec_pretty(&info).map_err(io::Error::other)?;
        crate::atomic_file::write(&self.dir.join(format!("{id}.json")), &json)?;
        Ok(info)
    }

    /// Every kept version, newest first.
    pub fn list(&self) -> io::Result<Vec<VersionInfo>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", self.dir.display()),
                ))
            }
        };
        let mut v: Vec<VersionInfo> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice::<VersionInfo>(&b).ok())
            .collect();
        v.sort_by_key(|v| std::cmp::Reverse(v.seq));
        Ok(v)
    }

    /// The text of version `id` (as listed).
    pub fn read(&self, id: &str) -> io::Result<String> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{id}` is not a version id"),
            ));
        }
        std::fs::read_to_string(self.dir.join(format!("{id}.toml")))
            .map_err(|e| io::Error::new(e.kind(), format!("version {id}: {e}")))
    }
}

/// An exclusive flock, released on drop.
struct Lock(File);

impl Lock {
    fn take(path: &Path) -> io::Result<Lock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own, for the lifetime of `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; the descriptor is still open.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(who: &str) -> ChangeMeta {
        ChangeMeta {
            actor: who.into(),
            kind: "console".into(),
            summary: format!("change by {who}"),
            summary_ja: String::new(),
        }
    }

    #[test]
    fn two_admins_from_the_same_version_one_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, "version = 1\n").unwrap();
        let store = PolicyStore::for_policy(&file);
        let (_, base) = store.current().unwrap();
        let first = store
            .apply(&base, "version = 1\n# a\n", &meta("a"))
            .unwrap();
        assert_eq!(first.previous.kind, "on-disk");
        assert_eq!(first.previous_text, "version = 1\n");
        let e = store
            .apply(&base, "version = 1\n# b\n", &meta("b"))
            .unwrap_err();
        assert!(matches!(e, ApplyError::Conflict { .. }), "{e:?}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "version = 1\n# a\n"
        );
        // Edited on disk meanwhile: refused too, and the hand edit is kept once applied over.
        std::fs::write(&file, "version = 1\n# by hand\n").unwrap();
        let e = store
            .apply(&first.version.token, "x", &meta("a"))
            .unwrap_err();
        assert!(matches!(e, ApplyError::Conflict { .. }));
        let (_, now) = store.current().unwrap();
        store.apply(&now, "version = 1\n# c\n", &meta("c")).unwrap();
        let v = store.list().unwrap();
        let kinds: Vec<&str> = v.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, ["console", "on-disk", "console", "on-disk"]);
        assert_eq!(store.read(&v[1].id).unwrap(), "version = 1\n# by hand\n");
        assert!(store.read("../policy").is_err());
    }
}
