//! Things the console holds for a moment between two requests of one
//! person: a registry import between its preview and "apply", a `.pfx`
//! between "issue" and its download. Each is under a random token, for
//! the account that made it only, for a limited time, and taken at most
//! once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::new_token;

/// Items kept at most (oldest dropped first): bounds the memory a busy or
/// careless operator can pin.
const MAX_ITEMS: usize = 64;

pub struct Pending<T> {
    ttl: Duration,
    items: Mutex<HashMap<String, (Instant, String, T)>>,
}

impl<T> Pending<T> {
    pub fn new(ttl: Duration) -> Pending<T> {
        Pending {
            ttl,
            items: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `item` for `owner`; the token to take it back with.
    pub fn put(&self, owner: &str, item: T) -> String {
        let token = new_token();
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.retain(|_, (at, _, _)| at.elapsed() < self.ttl);
        while items.len() >= MAX_ITEMS {
            let oldest = items
                .iter()
                .min_by_key(|(_, (at, _, _))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => items.remove(&k),
                None => break,
            };
        }
        items.insert(token.clone(), (Instant::now(), owner.to_string(), item));
        token
    }

    /// The item under `token` if `owner` made it and it has not expired;
    /// it is gone afterwards.
    pub fn take(&self, token: &str, owner: &str) -> Option<T> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        match items.get(token) {
            Some((at, o, _)) if o == owner && at.elapsed() < self.ttl => {
                items.remove(token).map(|(_, _, t)| t)
            }
            Some((at, _, _)) if at.elapsed() >= self.ttl => {
                items.remove(token);
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_for_its_owner_within_its_time() {
        let p = Pending::new(Duration::from_secs(60));
        let t = p.put("山田", 1);
        assert_eq!(p.take(&t, "佐藤"), None, "another account");
        assert_eq!(p.take(&t, "山田"), Some(1));
        assert_eq!(p.take(&t, "山田"), None, "once");
        let p = Pending::new(Duration::from_millis(0));
        let t = p.put("山田", 2);
        assert_eq!(p.take(&t, "山田"), None, "expired");
    }
}
