//! Access logs kept a year: the crash-safe writer, closed-hour segments with
//! sidecar indexes, streaming search, CSV / Excel export, the hash-chained
//! audit log of administration, and shipping to syslog and ClickHouse.
//!
//! - [`writer`]: channel → writer thread → live file, spill queue, hourly
//!   rotation, compaction, retention sweep (see its docs for the crash story)
//! - [`segment`]: the segment and index file formats (documented there)
//! - [`layout`]: the files of a log directory
//! - [`query`], [`search`]: filters and the streaming search
//! - [`export`]: table / JSON / CSV / xlsx output
//! - [`audit`]: the audit log and its verification
//! - [`ship`]: RFC 5424 syslog (TCP/TLS) and ClickHouse shipping;
//!   [`audit_ship`]: the audit log to ClickHouse
//! - [`clickhouse`]: ClickHouse client, tables and retention by month;
//!   [`clickhouse_agg`]: the dashboard's and report's counts in SQL
//! - [`store`]: one search interface over the local files or ClickHouse
//! - [`cli`]: `komugate logs …` and `komugate audit …`
//! - [`admin_http`]: `GET /admin/logs` on the admin listener

pub mod admin_http;
pub mod audit;
pub mod audit_ship;
pub mod cli;
pub mod clickhouse;
pub mod clickhouse_agg;
pub mod export;
pub mod layout;
pub mod query;
pub mod record;
pub mod search;
pub mod segment;
pub mod ship;
pub mod store;
pub mod writer;

pub use query::{Glob, Query};
pub use record::LogRecord;
pub use search::{search, SearchStats};
