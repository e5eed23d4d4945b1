//! Local console accounts: name, role and an argon2id password hash, kept
//! in one JSON file under the data directory (mode 0600, replaced
//! atomically). The gateway re-reads the file when it changes, so `komugate
//! admin user …` takes effect on the next request without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

/// What a person may do in the console; each role includes the ones below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Look: dashboard, log search, record details.
    Viewer,
    /// Day-to-day work: exports, explain, changes.
    Operator,
    /// Everything: accounts, audit log, CA.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "role {s:?} is not known: use viewer (look), operator (day-to-day changes) or admin (everything)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// PHC string `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
    pub hash: String,
    /// RFC 3339, UTC.
    pub changed: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFile {
    pub accounts: Vec<Account>,
}

impl AccountFile {
    pub fn find(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

/// Reads the accounts file; a missing file is no accounts.
pub fn load(path: &Path) -> Result<AccountFile, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "the console accounts file {} is damaged ({e}); restore it from a backup or remove it and add the accounts again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AccountFile::default()),
        Err(e) => Err(format!(
            "cannot read the console accounts file {}: {e}",
            path.display()
        )),
    }
}

/// Replaces the accounts file atomically; a new file is created 0600 first
/// so the hashes are never readable by others, even for a moment.
pub fn save(path: &Path, file: &AccountFile) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    let mut bytes = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    crate::atomic_file::write(path, &bytes).map_err(|e| e.to_string())
}

/// Names: 1–64 characters, letters (any script), digits, `.`, `_`, `-`, `@`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 64 {
        return Err(format!("account name {name:?} must be 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "account name {name:?} contains {c:?}: use letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

pub const MIN_PASSWORD_CHARS: usize = 12;

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > 1024 {
        return Err("the password must be at most 1024 bytes".into());
    }
    Ok(())
}

/// argon2id with the crate's default (OWASP) parameters and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Verifies against a fixed hash so an unknown name costs as much time as
/// a known one (no account enumeration by timing).
pub fn burn_verification(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("komugate-no-such-account").unwrap_or_default());
    let _ = verify_password(hash, password);
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    b
}

/// A password to print once: 20 characters without look-alikes (0/O, 1/l/I).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes::<20>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The accounts file as last read, re-read when it changes on disk.
pub struct AccountCache {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, Arc<AccountFile>)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

impl AccountCache {
    pub fn new(path: PathBuf) -> AccountCache {
        AccountCache {
            path,
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current accounts (a missing file: none).
    pub fn get(&self) -> Result<Arc<AccountFile>, String> {
        let now = stamp(&self.path);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        match (&*cached, &now) {
            (Some((s, file)), Some(n)) if s == n => return Ok(file.clone()),
            (_, None) => return Ok(Arc::new(AccountFile::default())),
            _ => {}
        }
        let file = Arc::new(load(&self.path)?);
        if let Some(n) = now {
            *cached = Some((n, file.clone()));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn names_roles_passwords() {
        assert!(validate_name("山田.太郎").is_ok());
        assert!(validate_name("a b").unwrap_err().contains("' '"));
        assert!(validate_name("").is_err());
        assert_eq!(Role::parse("Operator"), Ok(Role::Operator));
        assert!(Role::parse("root").unwrap_err().contains("viewer"));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert!(validate_password("short").is_err());
        let p = generate_password();
        assert_eq!(p.len(), 20);
        assert!(validate_password(&p).is_ok());
    }

    #[test]
    fn file_is_private_and_cache_follows_changes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users.json");
        let cache = AccountCache::new(p.clone());
        assert!(cache.get().unwrap().accounts.is_empty());
        let mut f = AccountFile::default();
        f.accounts.push(Account {
            name: "a".into(),
            role: Role::Viewer,
            hash: "h1".into(),
            changed: String::new(),
        });
        save(&p, &f).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(cache.get().unwrap().find("a").unwrap().hash, "h1");
        f.accounts[0].hash = "h2".into();
        save(&p, &f).unwrap();
        assert_eq!(cache.get().unwrap().find("a").unwrap().hash, "h2");
    }
}
