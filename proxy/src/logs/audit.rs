//! The administration audit log: append-only JSON lines, hash-chained.
//!
//! Each line is `{"seq":N,"time":"…","prev":"<hex>","event":{…},"hash":"<hex>"}`
//! where `prev` is the `hash` of the previous line (64 zeros for the first)
//! and `hash` = SHA-256 over `"{seq}\n{time}\n{prev}\n{event JSON}"` (the
//! event exactly as written in the line). [`verify`] recomputes the chain: an
//! edited line breaks its own hash, a removed or reordered line breaks the
//! `seq` sequence and the next line's `prev`. Removing the *last* lines
//! cannot be seen from the file alone: keep the `head` printed by `komugate
//! audit verify` (count + last hash) somewhere else, e.g. the SIEM, which
//! also receives every entry when syslog shipping is on.
//!
//! ```ignore
//! use komugate::logs::audit::{AuditLog, AuditEvent, ReloadSource, DiffSummary};
//! let audit = AuditLog::open("komugate-data/audit.log".as_ref())?;
//! audit.append(AuditEvent::PolicyReload {
//!     source: ReloadSource::Api { token_name: "board-admin".into() },
//!     ok: true, error: None,
//!     old_generation: 7, new_generation: Some(8),
//!     old_digest: "sha256:…".into(), new_digest: Some("sha256:…".into()),
//!     diff: DiffSummary { rules_added: vec!["c4th only in school".into()], ..Default::default() },
//! })?;
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{format_rfc3339_ms, now_ms};
use crate::common::hex;

/// Who asked for a policy reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReloadSource {
    FileWatch {
        path: String,
    },
    Sighup,
    Api {
        token_name: String,
    },
    Startup,
    /// A policy change applied from the console (or restored there).
    Console {
        actor: String,
    },
    /// A downloaded category list was swapped in (or rolled back); see `list_update.rs`.
    ListUpdate {
        url: String,
    },
}

/// Short summary of what changed between two policy generations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_changed: Vec<String>,
    /// List entries (hosts, categories' domains, registry rows …) added / removed.
    #[serde(default)]
    pub list_entries_added: u64,
    #[serde(default)]
    pub list_entries_removed: u64,
}

impl DiffSummary {
    /// Compares rules given as `(name, digest-or-text)` pairs, in order.
    pub fn of_rules(old: &[(String, String)], new: &[(String, String)]) -> DiffSummary {
        let find = |set: &[(String, String)], n: &str| {
            set.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        };
        let mut d = DiffSummary::default();
        for (name, body) in new {
            match find(old, name) {
                None => d.rules_added.push(name.clone()),
                Some(b) if &b != body => d.rules_changed.push(name.clone()),
                _ => {}
            }
        }
        for (name, _) in old {
            if find(new, name).is_none() {
                d.rules_removed.push(name.clone());
            }
        }
        d
    }
}

/// Something an administrator (or the gateway on their behalf) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    PolicyReload {
        source: ReloadSource,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        old_generation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_generation: Option<u64>,
        old_digest: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_digest: Option<String>,
        #[serde(default)]
        diff: DiffSummary,
    },
    /// A change of the policy file through `policy_edit` (`action`: apply,
    /// restore, rollback after a failed reload): who, what, the diff, the
    /// dry run's summary and the versions before and after. `error` when
    /// it was not applied or rolled back.
    PolicyChange {
        actor: String,
        /// "console" or "cli".
        via: String,
        action: String,
        summary: String,
        base_version: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        new_version: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        version_id: String,
        /// Unified diff of the policy file (cut at 64 KiB).
        diff: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        dry_run: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A CA, key or server certificate changed (`what`: "device-ca", "inspect-ca", "server-cert", …).
    CaChange {
        what: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_fingerprint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_fingerprint: Option<String>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    RetentionSweep {
        retention_days: u32,
        cutoff_day: String,
        deleted_days: Vec<String>,
        deleted_files: u64,
        deleted_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A monthly partition of the ClickHouse access log dropped by the
    /// retention (every day in it older than `retention_days`); `error`
    /// when the run failed (nothing dropped).
    PartitionDrop {
        table: String,
        partition: String,
        rows: u64,
        retention_days: u32,
        cutoff_day: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A search or export of the access logs (personal data): who, through
    /// what, with which filters, into which format and file. Written before
    /// any record is shown; a search that cannot be audited is refused.
    LogSearch {
        actor: String,
        /// "cli", "admin-api" or "console".
        via: String,
        /// The filters as given (`since=-7d host=*.dropbox.com …`).
        query: String,
        format: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out: Option<String>,
    },
    /// A console sign-in (`action`: sign_in, sign_in_failed,
    /// sign_in_refused by the rate limit) or sign-out, with the account name
    /// as typed and the client address.
    ConsoleSession {
        user: String,
        client: String,
        action: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// A console account added, changed or removed (`action`: add, passwd, role, remove).
    AccountChange {
        actor: String,
        action: String,
        account: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    /// Anything else worth an audit trail.
    Note { actor: String, message: String },
}

/// Who runs this command: the operating-system user (and uid).
pub fn cli_actor() -> String {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "?".into());
    #[cfg(unix)]
    {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        format!("user {name} (uid {uid})")
    }
    #[cfg(not(unix))]
    {
        format!("user {name}")
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    pub event: serde_json::Value,
    pub hash: String,
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn entry_hash(seq: u64, time: &str, prev: &str, event_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("{seq}\n{time}\n{prev}\n").as_bytes());
    h.update(event_json.as_bytes());
    hex(&h.finalize())
}

/// SHA-256 of bytes as `sha256:<hex>` (policy digests).
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Appends to the audit log; share it in an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(u64, String)>,
}

impl AuditLog {
    /// Opens (creating) the log; reads the last entry to continue the chain.
    /// A log whose last line is damaged is refused: run `komugate audit verify`.
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut last: Option<String> = None;
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| {
                        format!("cannot read the audit log {}: {e}", path.display())
                    })?;
                    if !line.trim().is_empty() {
                        last = Some(line);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read the audit log {}: {e}", path.display())),
        }
        let state = match last {
            None => (0, GENESIS.to_string()),
            Some(l) => {
                let e: AuditEntry = serde_json::from_str(&l).map_err(|e| {
                    format!(
                        "the last line of the audit log {} is damaged ({e}); run `komugate audit verify --file {}`",
                        path.display(),
                        path.display()
                    )
                })?;
                (e.seq, e.hash)
            }
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (written and fsynced before returning).
    ///
    /// The gateway and the command line (`komugate pki …`, `komugate logs
    /// search`) append to the same file, so the chain's tail is re-read from
    /// the file under an exclusive `flock` each time, never taken from memory.
    pub fn append(&self, event: AuditEvent) -> Result<AuditEntry, String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fail = |what: &str, e: std::io::Error| {
            format!("cannot {what} the audit log {}: {e}", self.path.display())
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode_0640()
            .open(&self.path)
            .map_err(|e| fail("open", e))?;
        lock_exclusive(&f).map_err(|e| fail("lock", e))?;
        let (last_seq, prev) = match last_line(&mut f).map_err(|e| fail("read", e))? {
            None => (0, GENESIS.to_string()),
            Some(l) => {
                let e: AuditEntry = serde_json::from_str(&l).map_err(|e| {
                    format!(
                        "the last line of the audit log {} is damaged ({e}); run `komugate audit verify --file {}`",
                        self.path.display(),
                        self.path.display()
                    )
                })?;
                (e.seq, e.hash)
            }
        };
        let seq = last_seq + 1;
        let time = format_rfc3339_ms(now_ms());
        let event_json = serde_json::to_string(&event).map_err(|e| e.to_string())?;
        let hash = entry_hash(seq, &time, &prev, &event_json);
        let line = format!(
            "{{\"seq\":{seq},\"time\":{},\"prev\":\"{}\",\"event\":{event_json},\"hash\":\"{hash}\"}}\n",
            serde_json::Value::String(time.clone()),
            prev
        );
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| fail("write", e))?;
        let entry = AuditEntry {
            seq,
            time,
            prev,
            event: serde_json::from_str(&event_json).unwrap_or_default(),
            hash: hash.clone(),
        };
        *st = (seq, hash);
        Ok(entry)
    }
}

/// Creates files readable by the owner and the group only.
trait Mode0640 {
    fn mode_0640(&mut self) -> &mut Self;
}

impl Mode0640 for OpenOptions {
    #[cfg(unix)]
    fn mode_0640(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o640)
    }
    #[cfg(not(unix))]
    fn mode_0640(&mut self) -> &mut Self {
        self
    }
}

/// Exclusive advisory lock, released when the file is closed.
#[cfg(unix)]
fn lock_exclusive(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_f: &File) -> std::io::Result<()> {
    Ok(())
}

/// The last non-empty line of the file, read from its end.
fn last_line(f: &mut File) -> std::io::Result<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.seek(SeekFrom::End(0))?;
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let trimmed = text.trim_end();
        match trimmed.rfind('\n') {
            Some(i) => return Ok(Some(trimmed[i + 1..].to_string())),
            None if start == 0 => return Ok((!trimmed.is_empty()).then(|| trimmed.to_string())),
            None => window *= 4,
        }
    }
}

/// Outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub head: String,
    /// `line N: what is wrong` for each problem found.
    pub problems: Vec<String>,
}

/// Checks the whole chain.
pub fn verify(path: &Path) -> Result<VerifyReport, String> {
    let f = File::open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
    let mut rep = VerifyReport {
        entries: 0,
        head: GENESIS.to_string(),
        problems: Vec::new(),
    };
    let mut prev = GENESIS.to_string();
    let mut want_seq = 1u64;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        rep.entries += 1;
        let e: AuditEntry = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(err) => {
                rep.problems
                    .push(format!("line {n}: not a valid audit entry ({err})"));
                continue;
            }
        };
        // The event text exactly as written: between "event": and ,"hash":
        let event_json = line
            .find("\"event\":")
            .and_then(|a| line.rfind(",\"hash\":").map(|b| &line[a + 8..b]))
            .unwrap_or("");
        let computed = entry_hash(e.seq, &e.time, &e.prev, event_json);
        if computed != e.hash {
            rep.problems.push(format!(
                "line {n} (seq {}): content does not match its hash (edited)",
                e.seq
            ));
        }
        if e.seq != want_seq {
            rep.problems.push(format!(
                "line {n}: seq {} where {want_seq} was expected (entries removed or reordered)",
                e.seq
            ));
        }
        if e.prev != prev {
            rep.problems.push(format!(
                "line {n} (seq {}): previous-entry hash does not match the line before (entries removed, inserted or reordered)",
                e.seq
            ));
        }
        prev = e.hash.clone();
        want_seq = e.seq + 1;
    }
    rep.head = prev;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let p = dir.join("audit.log");
        let a = AuditLog::open(&p).unwrap();
        a.append(AuditEvent::PolicyReload {
            source: ReloadSource::Sighup,
            ok: true,
            error: None,
            old_generation: 1,
            new_generation: Some(2),
            old_digest: digest(b"a"),
            new_digest: Some(digest(b"b")),
            diff: DiffSummary::of_rules(
                &[("r1".into(), "x".into()), ("r2".into(), "y".into())],
                &[("r1".into(), "x2".into()), ("r3".into(), "z".into())],
            ),
        })
        .unwrap();
        a.append(AuditEvent::Note {
            actor: "管理者".into(),
            message: "ログを出力".into(),
        })
        .unwrap();
        // A reopened log continues the chain.
        let a = AuditLog::open(&p).unwrap();
        a.append(AuditEvent::CaChange {
            what: "device-ca".into(),
            old_fingerprint: None,
            new_fingerprint: Some("ab".into()),
            detail: String::new(),
        })
        .unwrap();
        a.append(AuditEvent::Note {
            actor: "x".into(),
            message: "4".into(),
        })
        .unwrap();
        p
    }

    #[test]
    fn chain_verifies_and_diff_summary() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let r = verify(&p).unwrap();
        assert_eq!(r.entries, 4);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("\"rules_added\":[\"r3\"]")
                && text.contains("\"rules_removed\":[\"r2\"]")
                && text.contains("\"rules_changed\":[\"r1\"]"),
            "{text}"
        );
    }

    #[test]
    fn detects_edit_removal_reorder() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let write = |ls: &[String]| std::fs::write(&p, ls.join("\n") + "\n").unwrap();

        let mut edited = lines.clone();
        edited[1] = edited[1].replace("ログを出力", "何もしていない");
        write(&edited);
        let r = verify(&p).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|m| m.contains("line 2") && m.contains("edited")),
            "{:?}",
            r.problems
        );

        let mut removed = lines.clone();
        removed.remove(1);
        write(&removed);
        let r = verify(&p).unwrap();
        assert!(
            r.problems.iter().any(|m| m.contains("removed")),
            "{:?}",
            r.problems
        );

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        write(&reordered);
        let r = verify(&p).unwrap();
        assert!(!r.problems.is_empty());

        write(&lines);
        assert!(verify(&p).unwrap().problems.is_empty());
    }
}
