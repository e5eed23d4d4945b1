//! The most blocked hosts and categories of the last 24 hours, for the
//! dashboard: one search of the blocked records (the segment indexes skip
//! whatever holds none) on a blocking thread, at most [`MAX_SCANNED`]
//! matches, the result kept for [`KEEP`] so a refreshing dashboard does
//! not search again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::logs::query::{current_ms, Query};

/// How long a result is shown before the next dashboard view searches again.
pub const KEEP: Duration = Duration::from_secs(60);
/// Blocked records counted at most (the figures say when they stop there).
pub const MAX_SCANNED: u64 = 2_000_000;
const TOP: usize = 10;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TopBlocked {
    pub hosts: Vec<(String, u64)>,
    pub categories: Vec<(String, u64)>,
    pub blocked: u64,
    /// The count stopped at [`MAX_SCANNED`].
    pub capped: bool,
}

#[derive(Default)]
pub struct TopBlockedCache {
    last: Mutex<Option<(Instant, Arc<TopBlocked>)>>,
}

fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP);
    v
}

/// Counts the blocked records of the last 24 hours in `dir`.
pub fn compute(dir: &std::path::Path) -> std::io::Result<TopBlocked> {
    let q = Query {
        since_ms: Some(current_ms() - 86_400_000),
        action: Some("block".into()),
        limit: Some(MAX_SCANNED),
        ..Query::default()
    };
    let mut hosts: HashMap<String, u64> = HashMap::new();
    let mut categories: HashMap<String, u64> = HashMap::new();
    let stats = crate::logs::search(dir, &q, |r| {
        *hosts.entry(r.host).or_default() += 1;
        for c in r.categories {
            *categories.entry(c).or_default() += 1;
        }
        Ok(true)
    })?;
    Ok(TopBlocked {
        hosts: top(hosts),
        categories: top(categories),
        blocked: stats.records_matched,
        capped: stats.limit_reached,
    })
}

impl TopBlockedCache {
    /// The last result if recent, else a new search (waiting for a search
    /// slot); `None` if no slot is free or the search fails.
    pub async fn get(
        &self,
        dir: std::path::PathBuf,
        slots: &Arc<tokio::sync::Semaphore>,
    ) -> Option<Arc<TopBlocked>> {
        if let Some((at, t)) = &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < KEEP {
                return Some(t.clone());
            }
        }
        let permit = slots.clone().try_acquire_owned().ok()?;
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            compute(&dir)
        })
        .await
        .ok()?;
        match result {
            Ok(t) => {
                let t = Arc::new(t);
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), t.clone()));
                Some(t)
            }
            Err(e) => {
                tracing::warn!("console: counting blocked records failed: {e}");
                None
            }
        }
    }
}
