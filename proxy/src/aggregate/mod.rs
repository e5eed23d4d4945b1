//! Grouped counts of access records over a time range: what the
//! dashboard's charts and top lists and the monthly report are made of.
//!
//! One small interface, [`LogAggregates`], answers "count these measures
//! over `[since, until)`, grouped by these keys". Two stores implement it:
//! [`local::SegmentStore`] reads this gateway's own log directory (closed
//! segments and the files not compacted yet; figures of this gateway only)
//! and a shared store answers with SQL `GROUP BY` for every replica at once.
//! Every implementation counts the same way:
//!
//! - **counted records**: every access record in the range except the
//!   tunnel record of an inspected CONNECT (`method = 'CONNECT'` and `rule`
//!   ending in `(inspected)`): the requests inside are records of their own.
//!   With [`Only::Blocked`], only records whose action is `block`.
//! - **requests**: counted records; **blocks**: those with action `block`;
//!   **ips_events**: those whose `ips` field (comma-separated) names a
//!   signature id, i.e. any entry other than `threat-intel`;
//!   **threat_intel**: those whose `ips` list holds `threat-intel`;
//!   **dlp_blocks**: those whose `rule` starts with `dlp:`;
//!   **devices**: distinct non-empty `device` values (computed only when
//!   [`GroupQuery::distinct_devices`] is set, else 0).
//! - **keys**: [`Key::Site`], [`Key::Host`], [`Key::App`] are the record's
//!   field (`""` when empty); [`Key::Category`] gives one group per
//!   category of the record (a record with two categories counts in both,
//!   one with none under `""`: SQL `arrayJoin(if(empty(categories), [''],
//!   categories))`); [`Key::Time`] is the start (Unix ms) of the bucket
//!   holding the record's time, buckets aligned on local time:
//!   `floor((t + offset) / width) * width - offset`.
//! - **rows**: with [`GroupQuery::top`] `(measure, n)`, the `n` groups
//!   largest by that measure (ties by key, ascending); without, every group
//!   by key ascending. [`Grouped::total`] counts all counted records once,
//!   whatever the keys.
//!
//! The SQL a shared store runs for a query grouped by site and category
//! (ClickHouse column names of `logs/clickhouse.sql`):
//!
//! ```sql
//! SELECT site, arrayJoin(if(empty(categories), [''], categories)) AS category,
//!        count() AS requests, countIf(action = 'block') AS blocks,
//!        countIf(arrayExists(x -> x != 'threat-intel', splitByChar(',', ips))) AS ips_events,
//!        countIf(has(splitByChar(',', ips), 'threat-intel')) AS threat_intel,
//!        countIf(startsWith(rule, 'dlp:')) AS dlp_blocks,
//!        uniqExactIf(device, device != '') AS devices
//! FROM komugate.access
//! WHERE ts_ms >= {since} AND ts_ms < {until}
//!   AND NOT (method = 'CONNECT' AND endsWith(rule, '(inspected)'))
//! GROUP BY site, category ORDER BY site, category
//! ```

pub mod local;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

pub use local::SegmentStore;

/// What a group is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Key {
    Site,
    /// One group per category of a record (see the module docs).
    Category,
    Host,
    /// The CASB application (`m365`, `google`, ...).
    App,
    /// Buckets of `width_ms` aligned on local time `offset_ms` east of UTC
    /// (day buckets start at local midnight); the value is the bucket's
    /// start in Unix ms.
    Time {
        width_ms: i64,
        offset_ms: i64,
    },
}

impl Key {
    /// The bucket start of time `t` for a [`Key::Time`].
    pub fn bucket(width_ms: i64, offset_ms: i64, t: i64) -> i64 {
        (t + offset_ms).div_euclid(width_ms) * width_ms - offset_ms
    }
}

/// One key's value in a row: text for the field keys, the bucket start for
/// [`Key::Time`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum KeyValue {
    Text(String),
    Time(i64),
}

impl KeyValue {
    pub fn text(&self) -> &str {
        match self {
            KeyValue::Text(s) => s,
            KeyValue::Time(_) => "",
        }
    }
    pub fn time(&self) -> i64 {
        match self {
            KeyValue::Time(t) => *t,
            KeyValue::Text(_) => 0,
        }
    }
}

/// The measures of one group (definitions in the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub blocks: u64,
    pub ips_events: u64,
    pub threat_intel: u64,
    pub dlp_blocks: u64,
    pub devices: u64,
}

impl Counts {
    pub fn get(&self, m: Measure) -> u64 {
        match m {
            Measure::Requests => self.requests,
            Measure::Blocks => self.blocks,
            Measure::IpsEvents => self.ips_events,
            Measure::ThreatIntel => self.threat_intel,
            Measure::DlpBlocks => self.dlp_blocks,
            Measure::Devices => self.devices,
        }
    }
}

/// A measure to rank groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Measure {
    Requests,
    Blocks,
    IpsEvents,
    ThreatIntel,
    DlpBlocks,
    Devices,
}

/// Which records are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Only {
    #[default]
    All,
    /// Records whose action is `block`.
    Blocked,
}

/// "Count over `[since_ms, until_ms)`, grouped by `by`."
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct GroupQuery {
    pub since_ms: i64,
    /// Exclusive.
    pub until_ms: i64,
    /// At most [`MAX_KEYS`] keys; none gives the total only.
    pub by: Vec<Key>,
    pub only: Only,
    pub distinct_devices: bool,
    /// Keep the `n` largest groups by this measure.
    pub top: Option<(Measure, usize)>,
}

/// Most keys in one query.
pub const MAX_KEYS: usize = 3;
/// Most time buckets in one query (a week by the minute is 10,080).
pub const MAX_BUCKETS: i64 = 50_000;
/// Most groups a store keeps; beyond, [`Grouped::capped`] is set and
/// further new groups are counted in the total only.
pub const MAX_GROUPS: usize = 500_000;

impl GroupQuery {
    /// The total over a range, no groups.
    pub fn total(since_ms: i64, until_ms: i64) -> GroupQuery {
        GroupQuery {
            since_ms,
            until_ms,
            by: Vec::new(),
            only: Only::All,
            distinct_devices: false,
            top: None,
        }
    }

    pub fn by(mut self, keys: &[Key]) -> GroupQuery {
        self.by = keys.to_vec();
        self
    }

    pub fn blocked(mut self) -> GroupQuery {
        self.only = Only::Blocked;
        self
    }

    pub fn with_devices(mut self) -> GroupQuery {
        self.distinct_devices = true;
        self
    }

    pub fn top(mut self, measure: Measure, n: usize) -> GroupQuery {
        self.top = Some((measure, n));
        self
    }

    /// Checks the query is one a store answers in bounded memory.
    pub fn check(&self) -> Result<(), AggError> {
        if self.since_ms >= self.until_ms {
            return Err(AggError::new(
                "the range is empty: its start must be before its end",
            ));
        }
        if self.by.len() > MAX_KEYS {
            return Err(AggError::new(format!(
                "at most {MAX_KEYS} keys in one grouped count (got {})",
                self.by.len()
            )));
        }
        for k in &self.by {
            if let Key::Time { width_ms, .. } = k {
                if *width_ms <= 0 {
                    return Err(AggError::new("a time bucket must be longer than 0 ms"));
                }
                let n = (self.until_ms - self.since_ms) / width_ms;
                if n > MAX_BUCKETS {
                    return Err(AggError::new(format!(
                        "{n} time buckets asked for, at most {MAX_BUCKETS}: use wider buckets or a shorter range"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One group and its measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// One value per key of the query, in its order.
    pub key: Vec<KeyValue>,
    pub counts: Counts,
}

/// The answer to a [`GroupQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grouped {
    pub rows: Vec<Row>,
    /// Every counted record once.
    pub total: Counts,
    /// More than [`MAX_GROUPS`] groups: some are left out of `rows`.
    pub capped: bool,
    /// Records or files that could not be read (the count goes on without them).
    pub problems: Vec<String>,
}

/// Why a store could not answer: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggError(pub String);

impl AggError {
    pub fn new(message: impl Into<String>) -> AggError {
        AggError(message.into())
    }
}

impl std::fmt::Display for AggError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AggError {}

/// Where the figures come from, as the pages say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `local` (this gateway's log directory) or the shared store's name.
    pub kind: String,
    /// The figures cover every replica of the gateway.
    pub gateway_wide: bool,
    /// The directory or server, for the operator.
    pub detail: String,
}

pub type AggFuture = Pin<Box<dyn Future<Output = Result<Grouped, AggError>> + Send + 'static>>;
pub type AggManyFuture =
    Pin<Box<dyn Future<Output = Result<Vec<Grouped>, AggError>> + Send + 'static>>;

/// A store of access records that can count them (see the module docs for
/// what every implementation counts). Work happens off the caller's
/// thread; memory is bounded by the number of groups, never the records.
pub trait LogAggregates: Send + Sync {
    fn source(&self) -> Source;
    /// Answers `q` (implementations call [`GroupQuery::check`] first).
    fn grouped(&self, q: GroupQuery) -> AggFuture;
    /// Answers several queries, in their order (a page's figures at once).
    /// The local store reads its files once for all of them; this default
    /// asks one after the other.
    fn grouped_many(&self, qs: Vec<GroupQuery>) -> AggManyFuture {
        let futures: Vec<AggFuture> = qs.into_iter().map(|q| self.grouped(q)).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(futures.len());
            for f in futures {
                out.push(f.await?);
            }
            Ok(out)
        })
    }
}

/// The store a configuration reads: ClickHouse when `[log.clickhouse]` is
/// enabled (every replica's records), else the local log directory.
pub fn for_config(
    config: &crate::config::Config,
    slots: Option<Arc<tokio::sync::Semaphore>>,
) -> Arc<dyn LogAggregates> {
    if config.log.clickhouse.enabled {
        match crate::logs::clickhouse_agg::ClickHouseAggregates::new(
            &config.log.clickhouse,
            slots.clone(),
        ) {
            Ok(a) => return Arc::new(a),
            Err(e) => tracing::error!("{e}; the figures are this gateway's own logs only"),
        }
    }
    Arc::new(SegmentStore::new(crate::logs::cli::log_dir(config), slots))
}

/// Sorts and trims rows as [`GroupQuery::top`] says.
pub fn rank(rows: &mut Vec<Row>, top: Option<(Measure, usize)>) {
    match top {
        Some((m, n)) => {
            rows.sort_by(|a, b| {
                b.counts
                    .get(m)
                    .cmp(&a.counts.get(m))
                    .then_with(|| a.key.cmp(&b.key))
            });
            rows.truncate(n);
        }
        None => rows.sort_by(|a, b| a.key.cmp(&b.key)),
    }
}

/// How long a count waits for one of the bounded search slots before it
/// gives up with a "try again" answer.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One of the bounded search slots both stores share (`None`: unbounded).
pub(crate) async fn wait_for_slot(
    slots: &Option<Arc<tokio::sync::Semaphore>>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, AggError> {
    let Some(s) = slots else { return Ok(None) };
    tokio::time::timeout(QUEUE_WAIT, s.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .map(Some)
        .ok_or_else(|| AggError::new("other log searches are running; try again shortly"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_on_local_time() {
        let day = 86_400_000;
        let jst = 9 * 3_600_000;
        // 2026-11-01T00:30+09:00 is 2026-10-31T15:30Z: its JST day starts at 15:00Z.
        let t = crate::logs::record::parse_rfc3339_ms("2026-10-31T15:30:00Z").unwrap();
        let start = crate::logs::record::parse_rfc3339_ms("2026-10-31T15:00:00Z").unwrap();
        assert_eq!(Key::bucket(day, jst, t), start);
        assert_eq!(Key::bucket(60_000, jst, t + 59_999), t);
    }

    #[test]
    fn checks_bound_the_work() {
        let q = GroupQuery::total(10, 10);
        assert!(q.check().unwrap_err().0.contains("empty"));
        let year = 366 * 86_400_000;
        let q = GroupQuery::total(0, year).by(&[Key::Time {
            width_ms: 60_000,
            offset_ms: 0,
        }]);
        assert!(q.check().unwrap_err().0.contains("wider buckets"));
        let q = GroupQuery::total(0, year).by(&[Key::Site, Key::Host, Key::App, Key::Category]);
        assert!(q.check().is_err());
        assert!(GroupQuery::total(0, year).by(&[Key::Site]).check().is_ok());
    }
}
