-- komugate's tables in ClickHouse (run by the gateway at start when
-- [log.clickhouse] create_table = true; {db}, {table} and {audit_table}
-- are filled in). Accepted by ClickHouse 18.16 (Debian) and current releases.
--
-- One partition per month; the gateway drops the partitions whose every day
-- is older than [log] retention_days (ALTER TABLE … DROP PARTITION, audited).
-- ReplacingMergeTree keyed by a stable id per record: a batch re-sent after
-- a lost acknowledgement adds identical rows that FINAL (used by every
-- query of the gateway) and background merges collapse.
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
PARTITION BY toYYYYMM(date)
ORDER BY (date, ts_ms, id);

-- The audit log of every gateway: one row per hash-chained entry; id is the
-- entry's hash, source the instance that wrote it, event its JSON.
CREATE TABLE IF NOT EXISTS {db}.{audit_table} (
    date Date,
    ts_ms UInt64,
    id String,
    source String,
    seq UInt64,
    prev String,
    type String,
    event String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, ts_ms, id)
