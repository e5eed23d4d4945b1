//! The aggregation interface ([`LogAggregates`]) over ClickHouse: one SQL
//! `GROUP BY` per query over every replica's records, so the dashboard and
//! the monthly report are gateway-wide. It counts what the local
//! [`crate::aggregate::SegmentStore`] counts (the rules are in
//! [`crate::aggregate`]'s docs): the same records, measures, keys, ranking
//! and cap. Reads use `FINAL`, so a batch stored twice counts once.

use std::sync::Arc;

use super::clickhouse::{sql_string, Client};
use super::record::utc_day;
use super::ship::ClickHouseTarget;
use crate::aggregate::{
    AggError, AggFuture, Counts, GroupQuery, Grouped, Key, KeyValue, LogAggregates, Measure, Only,
    Row, Source, MAX_GROUPS,
};

/// The access-log table as a [`LogAggregates`].
#[derive(Clone)]
pub struct ClickHouseAggregates {
    client: Arc<Client>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// `ips` as its comma-separated ids (blanks dropped, as the local store trims them).
const IPS_IDS: &str = "splitByChar(',', replaceAll(ips, ' ', ''))";

fn measure_column(m: Measure) -> &'static str {
    match m {
        Measure::Requests => "requests",
        Measure::Blocks => "blocks",
        Measure::IpsEvents => "ips_events",
        Measure::ThreatIntel => "threat_intel",
        Measure::DlpBlocks => "dlp_blocks",
        Measure::Devices => "devices",
    }
}

fn key_expr(k: &Key) -> String {
    match k {
        Key::Site => "site".into(),
        Key::Host => "host".into(),
        Key::App => "app".into(),
        Key::Category => "arrayJoin(if(empty(categories), [''], categories))".into(),
        Key::Time {
            width_ms,
            offset_ms,
        } => format!("intDiv(toInt64(ts_ms) + {offset_ms}, {width_ms}) * {width_ms} - {offset_ms}"),
    }
}

impl ClickHouseAggregates {
    pub fn new(
        cfg: &ClickHouseTarget,
        slots: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Result<ClickHouseAggregates, String> {
        Ok(ClickHouseAggregates {
            client: Arc::new(Client::new(cfg)?),
            slots,
        })
    }

    /// The measures of a group as SQL.
    fn measures(q: &GroupQuery) -> String {
        let devices = if q.distinct_devices {
            "uniqExactIf(device, device != '')"
        } else {
            "toUInt64(0)"
        };
        format!(
            "count() AS requests, countIf(action = 'block') AS blocks, \
             countIf(arrayExists(x -> x != '' AND x != 'threat-intel', {IPS_IDS})) AS ips_events, \
             countIf(has({IPS_IDS}, 'threat-intel')) AS threat_intel, \
             countIf(startsWith(rule, 'dlp:')) AS dlp_blocks, {devices} AS devices"
        )
    }

    /// Which records count: the range, not the tunnel record of an
    /// inspected CONNECT, only blocks when asked.
    fn condition(q: &GroupQuery) -> String {
        let (since, until) = (q.since_ms.max(0), q.until_ms.max(0));
        let mut c = format!(
            "date >= toDate({}) AND date <= toDate({}) AND ts_ms >= {since} AND ts_ms < {until} \
             AND NOT (method = 'CONNECT' AND endsWith(rule, '(inspected)'))",
            sql_string(&utc_day(since)),
            sql_string(&utc_day(until))
        );
        if q.only == Only::Blocked {
            c.push_str(" AND action = 'block'");
        }
        c
    }

    /// The statement for the groups of `q` (None without keys).
    pub fn groups_sql(&self, q: &GroupQuery) -> Option<String> {
        if q.by.is_empty() {
            return None;
        }
        let keys: Vec<String> =
            q.by.iter()
                .enumerate()
                .map(|(i, k)| format!("{} AS k{i}", key_expr(k)))
                .collect();
        let names: Vec<String> = (0..q.by.len()).map(|i| format!("k{i}")).collect();
        let order = match q.top {
            Some((m, n)) => format!(
                "ORDER BY {} DESC, {} LIMIT {n}",
                measure_column(m),
                names.join(", ")
            ),
            None => format!("ORDER BY {} LIMIT {}", names.join(", "), MAX_GROUPS + 1),
        };
        Some(format!(
            "SELECT {}, {} FROM {} FINAL WHERE {} GROUP BY {} {order} FORMAT JSONEachRow",
            keys.join(", "),
            Self::measures(q),
            self.client.access(),
            Self::condition(q),
            names.join(", ")
        ))
    }

    /// The statement for the total of `q`.
    pub fn total_sql(&self, q: &GroupQuery) -> String {
        format!(
            "SELECT {} FROM {} FINAL WHERE {} FORMAT JSONEachRow",
            Self::measures(q),
            self.client.access(),
            Self::condition(q)
        )
    }

    /// Answers `q` on this thread.
    pub fn count(&self, q: &GroupQuery) -> Result<Grouped, AggError> {
        q.check()?;
        let fail = |e: String| {
            AggError::new(format!(
                "cannot count in ClickHouse ({}): {e}; check [log.clickhouse] and that the server is up",
                self.client.access()
            ))
        };
        let total_text = self.client.query(&self.total_sql(q)).map_err(fail)?;
        let total = total_text
            .lines()
            .find(|l| !l.trim().is_empty())
            .map(|l| parse_counts(l).map_err(fail))
            .transpose()?
            .unwrap_or_default();
        let mut rows = Vec::new();
        let mut capped = false;
        if let Some(sql) = self.groups_sql(q) {
            let mut problem = None;
            self.client
                .query_lines(&sql, |line| {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        return Ok(true);
                    }
                    match parse_row(line, &q.by) {
                        Ok(r) => rows.push(r),
                        Err(e) => {
                            problem = Some(e);
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })
                .map_err(|e| fail(e.to_string()))?;
            if let Some(e) = problem {
                return Err(fail(e));
            }
            if q.top.is_none() && rows.len() > MAX_GROUPS {
                rows.truncate(MAX_GROUPS);
                capped = true;
            }
        }
        Ok(Grouped {
            rows,
            total,
            capped,
            problems: Vec::new(),
        })
    }
}

fn field(v: &serde_json::Value, name: &str) -> Result<u64, String> {
    match &v[name] {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("{name}: {n}")),
        serde_json::Value::String(s) => s.parse().map_err(|_| format!("{name}: {s:?}")),
        other => Err(format!("{name}: {other}")),
    }
}

fn counts_of(v: &serde_json::Value) -> Result<Counts, String> {
    Ok(Counts {
        requests: field(v, "requests")?,
        blocks: field(v, "blocks")?,
        ips_events: field(v, "ips_events")?,
        threat_intel: field(v, "threat_intel")?,
        dlp_blocks: field(v, "dlp_blocks")?,
        devices: field(v, "devices")?,
    })
}

fn parse_json(line: &[u8]) -> Result<serde_json::Value, String> {
    // An error after the first rows comes as text in the body.
    serde_json::from_slice(line).map_err(|_| String::from_utf8_lossy(line).trim().to_string())
}

fn parse_counts(line: &str) -> Result<Counts, String> {
    counts_of(&parse_json(line.as_bytes())?)
}

fn parse_row(line: &[u8], by: &[Key]) -> Result<Row, String> {
    let v = parse_json(line)?;
    let mut key = Vec::with_capacity(by.len());
    for (i, k) in by.iter().enumerate() {
        let cell = &v[format!("k{i}")];
        key.push(match k {
            Key::Time { .. } => KeyValue::Time(
                cell.as_i64()
                    .or_else(|| cell.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| format!("k{i}: {cell}"))?,
            ),
            _ => KeyValue::Text(cell.as_str().ok_or_else(|| format!("k{i}: {cell}"))?.into()),
        });
    }
    Ok(Row {
        key,
        counts: counts_of(&v)?,
    })
}

impl LogAggregates for ClickHouseAggregates {
    fn source(&self) -> Source {
        Source {
            kind: "clickhouse".into(),
            gateway_wide: true,
            detail: self.client.access(),
        }
    }

    fn grouped(&self, q: GroupQuery) -> AggFuture {
        let this = self.clone();
        Box::pin(async move {
            q.check()?;
            let permit = crate::aggregate::wait_for_slot(&this.slots).await?;
            crate::background::run("komugate-count", move || {
                let _permit = permit;
                this.count(&q)
            })
            .await
            .map_err(|e| AggError::new(format!("the count stopped: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_groups_and_ranks_like_the_local_store() {
        let a = ClickHouseAggregates::new(
            &ClickHouseTarget {
                url: "http://127.0.0.1:8123".into(),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let q = GroupQuery::total(1_000, 90_000_000)
            .by(&[
                Key::Category,
                Key::Time {
                    width_ms: 3_600_000,
                    offset_ms: 32_400_000,
                },
            ])
            .blocked()
            .top(Measure::Blocks, 5);
        let sql = a.groups_sql(&q).unwrap();
        assert!(sql.contains("arrayJoin(if(empty(categories), [''], categories)) AS k0"));
        assert!(
            sql.contains("intDiv(toInt64(ts_ms) + 32400000, 3600000) * 3600000 - 32400000 AS k1")
        );
        assert!(sql.contains("FROM komugate.access_log FINAL"));
        assert!(sql.contains("AND action = 'block'"));
        assert!(sql.contains("ORDER BY blocks DESC, k0, k1 LIMIT 5"));
        assert!(a.groups_sql(&GroupQuery::total(0, 1)).is_none());
        let row = parse_row(
            br#"{"k0":"malware","k1":1700000000000,"requests":3,"blocks":"2","ips_events":0,"threat_intel":0,"dlp_blocks":1,"devices":0}"#,
            &q.by,
        )
        .unwrap();
        assert_eq!(
            row.key,
            vec![
                KeyValue::Text("malware".into()),
                KeyValue::Time(1_700_000_000_000)
            ]
        );
        assert_eq!((row.counts.requests, row.counts.blocks), (3, 2));
    }
}
