//! One search interface over the two places access records live: this
//! gateway's own files ([`LocalStore`], the segment store) and ClickHouse,
//! which holds every replica's records ([`ClickHouseStore`]). `komugate logs
//! search`, `GET /admin/logs` and the console search through [`for_config`]:
//! ClickHouse when `[log.clickhouse]` is enabled, else the local files.
//!
//! Both take the same [`Query`] (filters, `skip`, `limit`) and give the same
//! records, oldest first, streamed (memory: one segment block locally, one
//! row from ClickHouse). Order: ClickHouse sorts by time, then record id;
//! the local store returns records in the order they were written, which
//! is time order except that a request is written when it ends (a long
//! download is listed after shorter ones that started later).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::clickhouse::{like_pattern, sql_string, Client};
use super::query::{Glob, Query};
use super::record::{utc_day, LogRecord};
use super::search::SearchStats;
use super::ship::ClickHouseTarget;

/// Where `komugate logs search`, `/admin/logs` and the console read records.
pub trait LogStore: Send + Sync {
    /// Calls `emit` for each match of `q`, oldest first, after the first
    /// `q.skip` matches and at most `q.limit` times; `emit` returns
    /// `Ok(false)` to stop.
    fn search(
        &self,
        q: &Query,
        emit: &mut dyn FnMut(LogRecord) -> io::Result<bool>,
    ) -> io::Result<SearchStats>;

    /// What is searched, for messages ("the log directory …", "ClickHouse …").
    fn describe(&self) -> String;
}

/// The segment store of one gateway's log directory.
pub struct LocalStore {
    pub dir: PathBuf,
}

impl LogStore for LocalStore {
    fn search(
        &self,
        q: &Query,
        emit: &mut dyn FnMut(LogRecord) -> io::Result<bool>,
    ) -> io::Result<SearchStats> {
        super::search::search(&self.dir, q, emit)
    }

    fn describe(&self) -> String {
        format!("the log directory {}", self.dir.display())
    }
}

/// The access-log table in ClickHouse (every replica's records).
pub struct ClickHouseStore {
    client: Client,
}

impl ClickHouseStore {
    pub fn new(cfg: &ClickHouseTarget) -> Result<ClickHouseStore, String> {
        Ok(ClickHouseStore {
            client: Client::new(cfg)?,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The SELECT for `q` (every value escaped by [`sql_string`]).
    pub fn sql(&self, q: &Query) -> String {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM {} FINAL WHERE {} ORDER BY ts_ms, id",
            self.client.access(),
            where_clause(q)
        );
        match q.limit {
            Some(n) => sql.push_str(&format!(" LIMIT {}, {n}", q.skip)),
            // LIMIT needs a length: more rows than any table holds
            // (ClickHouse overflows on u64::MAX).
            None if q.skip > 0 => sql.push_str(&format!(" LIMIT {}, {}", q.skip, 1u64 << 50)),
            None => {}
        }
        sql.push_str(" FORMAT JSONEachRow");
        sql
    }
}

const COLUMNS: &str = "ts_ms, listener, device, user, groups, site, client, method, target, host, action, rule, categories, app, ips, status, bytes_up, bytes_down, duration_ms, egress, error";

/// The WHERE condition of `q` (`1` when it filters nothing). The day bounds
/// let ClickHouse skip months and days; `ts_ms` is the exact range.
pub fn where_clause(q: &Query) -> String {
    let mut c: Vec<String> = Vec::new();
    if let Some(s) = q.since_ms {
        let s = s.max(0);
        c.push(format!("date >= toDate({})", sql_string(&utc_day(s))));
        c.push(format!("ts_ms >= {s}"));
    }
    if let Some(u) = q.until_ms {
        let u = u.max(0);
        c.push(format!("date <= toDate({})", sql_string(&utc_day(u))));
        c.push(format!("ts_ms < {u}"));
    }
    for (col, v) in [
        ("device", &q.device),
        ("user", &q.user),
        ("site", &q.site),
        ("action", &q.action),
        ("rule", &q.rule),
        ("app", &q.app),
    ] {
        if let Some(v) = v {
            c.push(format!("{col} = {}", sql_string(v)));
        }
    }
    for (col, v) in [("groups", &q.group), ("categories", &q.category)] {
        if let Some(v) = v {
            c.push(format!("has({col}, {})", sql_string(v)));
        }
    }
    if let Some(v) = &q.ips {
        // As the local search: one of the ids separated by commas or spaces.
        c.push(format!(
            "has(splitByChar(',', replaceAll(ips, ' ', ',')), {})",
            sql_string(v)
        ));
    }
    if let Some(v) = &q.url_contains {
        c.push(format!("position(target, {}) > 0", sql_string(v)));
    }
    match &q.host {
        None => {}
        Some(Glob::Exact(h)) => c.push(format!("lower(host) = {}", sql_string(h))),
        Some(Glob::Suffix(s)) => c.push(format!(
            "lower(host) LIKE {}",
            sql_string(&format!("%{}", like_pattern(s)))
        )),
        Some(Glob::Any(p)) => c.push(format!(
            "lower(host) LIKE {}",
            sql_string(&like_pattern(&String::from_utf8_lossy(p)))
        )),
    }
    if c.is_empty() {
        "1".into()
    } else {
        c.join(" AND ")
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

/// One row of the SELECT, as ClickHouse writes it in JSONEachRow.
#[derive(Deserialize)]
struct Row {
    #[serde(deserialize_with = "lenient_u64")]
    ts_ms: u64,
    listener: String,
    device: String,
    user: String,
    groups: Vec<String>,
    site: String,
    client: String,
    method: String,
    target: String,
    host: String,
    action: String,
    rule: String,
    categories: Vec<String>,
    app: String,
    ips: String,
    #[serde(deserialize_with = "lenient_u64")]
    status: u64,
    #[serde(deserialize_with = "lenient_u64")]
    bytes_up: u64,
    #[serde(deserialize_with = "lenient_u64")]
    bytes_down: u64,
    #[serde(deserialize_with = "lenient_u64")]
    duration_ms: u64,
    egress: String,
    error: String,
}

impl From<Row> for LogRecord {
    fn from(r: Row) -> LogRecord {
        LogRecord {
            time_ms: r.ts_ms as i64,
            listener: r.listener,
            device: r.device,
            user: r.user,
            // The ClickHouse table has no columns for them (yet).
            signed_in: false,
            user_groups: Vec::new(),
            groups: r.groups,
            site: r.site,
            client: r.client,
            method: r.method,
            target: r.target,
            host: r.host,
            action: r.action,
            rule: r.rule,
            categories: r.categories,
            app: r.app,
            ips: r.ips,
            status: r.status.min(u16::MAX as u64) as u16,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            duration_ms: r.duration_ms,
            egress: r.egress,
            error: r.error,
        }
    }
}

impl LogStore for ClickHouseStore {
    fn search(
        &self,
        q: &Query,
        emit: &mut dyn FnMut(LogRecord) -> io::Result<bool>,
    ) -> io::Result<SearchStats> {
        let mut st = SearchStats::default();
        let limit = q.limit.unwrap_or(u64::MAX);
        let mut go_on = true;
        self.client.query_lines(&self.sql(q), |line| {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
            let row: Row = serde_json::from_slice(line).map_err(|e| {
                // An error after the first rows comes as text in the body.
                io::Error::other(format!(
                    "ClickHouse ({}): {} ({e})",
                    self.client.access(),
                    String::from_utf8_lossy(line).trim()
                ))
            })?;
            st.records_scanned += 1;
            st.records_matched += 1;
            go_on = emit(row.into())?;
            if st.records_matched >= limit {
                st.limit_reached = true;
                return Ok(false);
            }
            Ok(go_on)
        })?;
        Ok(st)
    }

    fn describe(&self) -> String {
        format!("ClickHouse table {}", self.client.access())
    }
}

/// The store a gateway configuration searches: ClickHouse when
/// `[log.clickhouse]` is enabled, else its own log directory.
pub fn for_config(config: &crate::config::Config) -> Result<Arc<dyn LogStore>, String> {
    if config.log.clickhouse.enabled {
        Ok(Arc::new(ClickHouseStore::new(&config.log.clickhouse)?))
    } else {
        Ok(Arc::new(LocalStore {
            dir: super::cli::log_dir(config),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_quoted_literal() {
        let evil = "x') OR 1=1 --\\\0山";
        let q = Query {
            device: Some(evil.into()),
            group: Some(evil.into()),
            host: Some(Glob::new("*.a_b%'")),
            ips: Some(evil.into()),
            url_contains: Some(evil.into()),
            since_ms: Some(1_700_000_000_000),
            skip: 5,
            limit: Some(10),
            ..Default::default()
        };
        let w = where_clause(&q);
        let lit = r"'x\') OR 1=1 --\\\x00山'";
        assert!(w.contains(&format!("device = {lit}")), "{w}");
        assert!(w.contains(&format!("has(groups, {lit})")), "{w}");
        assert!(w.contains(r"lower(host) LIKE '%.a\\_b\\%\''"), "{w}");
        assert!(w.contains("ts_ms >= 1700000000000"), "{w}");
        let store = ClickHouseStore::new(&ClickHouseTarget {
            url: "http://127.0.0.1:8123".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(store
            .sql(&q)
            .ends_with("ORDER BY ts_ms, id LIMIT 5, 10 FORMAT JSONEachRow"));
        assert_eq!(where_clause(&Query::default()), "1");
    }
}
