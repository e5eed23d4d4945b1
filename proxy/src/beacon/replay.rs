//! Nonce replay protection: each nonce is bound to the connection that
//! first presented it until the assertion expires.

use std::collections::HashMap;
use std::sync::Mutex;

/// Nonces seen, each bound to the connection that first presented it,
/// kept until the assertion expires.
pub struct ReplayCache {
    seen: Mutex<HashMap<String, (String, u64)>>,
    max_entries: usize,
}

impl ReplayCache {
    pub fn new(max_entries: usize) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// `true` if `nonce` is new (now bound to `binding`) or already bound to
    /// the same `binding`; `false` for a replay. Refuses (fails closed) when
    /// full of unexpired nonces.
    pub fn bind(&self, nonce: &str, binding: &str, expires_at: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, _)) = seen.get(nonce) {
            return b == binding;
        }
        if seen.len() >= self.max_entries {
            seen.retain(|_, (_, exp)| *exp >= now);
            if seen.len() >= self.max_entries {
                return false;
            }
        }
        seen.insert(nonce.to_string(), (binding.to_string(), expires_at));
        true
    }
}
