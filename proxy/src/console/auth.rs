//! Console sessions (random tokens in an HttpOnly cookie, ended after an
//! idle period, on sign-out, or when a local account's password or role
//! changes), their CSRF tokens, and the sign-in rate limit.
//!
//! Sessions live in memory: a restart signs everyone out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::accounts::{random_bytes, Role};
use crate::common::hex;

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Sent back in every form; checked on every POST.
    pub csrf: String,
    pub origin: Origin,
    last_seen: Instant,
}

/// How a session was signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A local account; its password hash at sign-in: a changed password
    /// (or a removed account) ends the session.
    Local { password_hash: String },
    /// An OpenID provider vouched for the person (`sub` at `issuer`); the
    /// role came from the group claim at sign-in.
    Oidc { issuer: String, subject: String },
}

/// Most sessions kept at once; beyond it the oldest idle one goes.
const MAX_SESSIONS: usize = 10_000;

pub struct Sessions {
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Starts a session; returns its cookie token.
    pub fn create(&self, user: &str, role: Role, origin: Origin) -> (String, Session) {
        let token = hex(&random_bytes::<32>());
        let session = Session {
            user: user.to_string(),
            role,
            csrf: hex(&random_bytes::<32>()),
            origin,
            last_seen: Instant::now(),
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let idle = self.idle;
        map.retain(|_, s| s.last_seen.elapsed() < idle);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(token.clone(), session.clone());
        (token, session)
    }

    /// The session behind a cookie token, if it has not been idle too long
    /// (its idle clock restarts); an expired one is removed.
    pub fn touch(&self, token: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(token)?;
        if s.last_seen.elapsed() >= self.idle {
            map.remove(token);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    pub fn remove(&self, token: &str) -> Option<Session> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token)
    }
}

/// Equality in time independent of where the first difference is.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn new_token() -> String {
    hex(&random_bytes::<32>())
}

/// Failed sign-ins, per account name and per client address, in a sliding
/// window. An account is refused after `max` failures in the window, a
/// client address after `2 × max` (several staff may share one address).
pub struct SignInLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys kept at most; beyond it, keys with no failure in the window go.
const MAX_KEYS: usize = 100_000;

impl SignInLimiter {
    pub fn new(max: u32, window: Duration) -> SignInLimiter {
        SignInLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(account: &str, client: &str) -> [(String, u32); 2] {
        [
            (format!("account:{account}"), 1),
            (format!("client:{client}"), 2),
        ]
    }

    /// Starts an attempt: `Err(wait)` while the account or the address is
    /// locked out, else the attempt is counted as a failure at once (so
    /// attempts sent in parallel cannot all pass the check before any has
    /// failed); [`SignInLimiter::succeeded`] takes it back.
    pub fn begin(&self, account: &str, client: &str) -> Result<(), Duration> {
        self.check(account, client)?;
        self.failed(account, client);
        Ok(())
    }

    /// `Err(wait)` while the account or the address is locked out.
    pub fn check(&self, account: &str, client: &str) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = None;
        for (key, factor) in Self::keys(account, client) {
            if let Some(q) = map.get_mut(&key) {
                while q.front().is_some_and(|t| t.elapsed() >= self.window) {
                    q.pop_front();
                }
                if q.len() as u32 >= self.max * factor {
                    let oldest = q.front().copied().unwrap_or_else(Instant::now);
                    let w = self.window.saturating_sub(oldest.elapsed());
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        match wait {
            Some(w) => Err(w.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&self, account: &str, client: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| t.elapsed() < window));
        }
        for (key, factor) in Self::keys(account, client) {
            let q = map.entry(key).or_default();
            q.push_back(Instant::now());
            while q.len() as u32 > self.max * factor {
                q.pop_front();
            }
        }
    }

    /// A successful sign-in clears the account's failures and takes back
    /// the address's count of this attempt (its earlier failures stay).
    pub fn succeeded(&self, account: &str, client: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("account:{account}"));
        if let Some(q) = map.get_mut(&format!("client:{client}")) {
            q.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::new(Duration::from_millis(50));
        let origin = Origin::Local {
            password_hash: "h".into(),
        };
        let (t, sess) = s.create("a", Role::Viewer, origin);
        assert_eq!(sess.csrf.len(), 64);
        assert!(s.touch(&t).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.touch(&t).is_none());
        assert!(s.touch("unknown").is_none());
    }

    #[test]
    fn limiter_per_account_and_per_address() {
        let l = SignInLimiter::new(2, Duration::from_secs(60));
        l.failed("a", "1.1.1.1");
        assert!(l.check("a", "1.1.1.1").is_ok());
        l.failed("a", "2.2.2.2");
        assert!(l.check("a", "3.3.3.3").is_err(), "account locked");
        assert!(l.check("b", "1.1.1.1").is_ok());
        l.failed("b", "1.1.1.1");
        l.failed("c", "1.1.1.1");
        assert!(l.check("d", "1.1.1.1").is_ok(), "3 of 4 for the address");
        l.failed("e", "1.1.1.1");
        assert!(l.check("d", "1.1.1.1").is_err(), "address locked");
        l.succeeded("a", "3.3.3.3");
        assert!(l.check("a", "3.3.3.3").is_ok());
        let l = SignInLimiter::new(2, Duration::from_secs(60));
        assert!(l.begin("z", "9.9.9.9").is_ok());
        assert!(l.begin("z", "9.9.9.9").is_ok());
        assert!(
            l.begin("z", "9.9.9.9").is_err(),
            "two attempts in flight use the allowance"
        );
        l.succeeded("z", "9.9.9.9");
        assert!(l.begin("z", "9.9.9.9").is_ok());
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd"));
    }
}
