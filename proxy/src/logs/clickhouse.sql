-- komugate access-log table for ClickHouse (HTTP JSONEachRow inserts).
-- {db}, {table} and {ttl} are filled in by the gateway, which runs this at
-- start when [log.clickhouse] create_table = true. One partition per day;
-- on servers with table TTL (19.6+) {ttl} is "TTL date + INTERVAL N DAY",
-- otherwise the gateway drops partitions older than retention_days daily.
-- ReplacingMergeTree + id: a batch re-sent after a lost acknowledgement is
-- collapsed on merge; count exactly with uniqExact(id) or FINAL.
CREATE TABLE IF NOT EXISTS {db}.{table} (
    date Date,
    ts_ms UInt64,
    time DateTime ALIAS toDateTime(intDiv(ts_ms, 1000)),
    id String,
    listener String,
    device String,
    user String,
    groups Array(String),
    site String,
    client String,
    method String,
    target String,
    host String,
    action String,
    rule String,
    categories Array(String),
    app String,
    ips String,
    status UInt16,
    bytes_up UInt64,
    bytes_down UInt64,
    duration_ms UInt64,
    egress String,
    error String
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (date, host, ts_ms, id)
{ttl}
