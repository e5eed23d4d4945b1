//! Shipping access records to external engines, off the data path.
//!
//! The writer copies every batch it writes into `ship/<target>/` (sealed
//! into a `.jsonl` queue file at each fsync tick). One thread per target
//! sends the queue files oldest first and deletes a file only after the
//! target acknowledged it; while a target is down the files wait on disk
//! (up to `max_buffer_mb`, beyond which the oldest are dropped, counted in
//! `komugate_log_ship_dropped_total` and logged), and sending is retried
//! with exponential backoff (0.2 s doubling to 30 s). Every record carries
//! a stable `id`, `<instance>/<queue file>:<line>`, so a re-sent batch can be
//! de-duplicated by the receiver: the instance is a random name kept in the
//! log directory (`ship/instance`), so two gateways never share an id even
//! with the same process id and clock (every pod is pid 1), and a restarted
//! gateway re-sends what it had not seen acknowledged under the same ids.
//!
//! - **syslog**: RFC 5424 messages, octet-counted framing (RFC 6587 / 5425)
//!   over TCP, optionally TLS. Each batch uses one connection which the
//!   gateway half-closes; the receiver's orderly close is the
//!   acknowledgement that it read the whole batch (plain TCP syslog has no
//!   other). MSG is the record's JSON; the id is in
//!   `[komugate@32473 id="…"]`.
//! - **ClickHouse**: `INSERT … FORMAT JSONEachRow` over HTTP; HTTP 200 is the
//!   acknowledgement. Tables: `clickhouse.sql` (monthly partitions,
//!   ReplacingMergeTree on the id, read with FINAL). Once a day the shipper
//!   drops the partitions older than the retention, each drop audited
//!   ([`super::clickhouse`]). The audit log goes to its own table
//!   ([`super::audit_ship`]).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::audit::{AuditEvent, AuditLog};
use super::clickhouse::{Client, RetentionReport};
use super::layout::{self, SHIP};
use super::record::{format_rfc3339_ms, now_ms, utc_day, LogRecord};
use super::writer::LogMetrics;

fn default_true() -> bool {
    true
}
fn default_buffer_mb() -> u64 {
    1024
}
fn default_batch() -> usize {
    5000
}
fn default_app() -> String {
    "komugate".into()
}

/// `[log.syslog]`: RFC 5424 over TCP (optionally TLS) to the SIEM.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SyslogTarget {
    #[serde(default)]
    pub enabled: bool,
    /// "host:port" of the syslog receiver.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// CA certificate (PEM) that signed the receiver's certificate (TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name expected in the receiver's certificate (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// HOSTNAME field (default: this machine's host name).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_app")]
    pub app_name: String,
    #[serde(default = "default_buffer_mb")]
    pub max_buffer_mb: u64,
    #[serde(default = "default_batch")]
    pub batch_records: usize,
}

/// `[log.clickhouse]`: HTTP JSONEachRow inserts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseTarget {
    #[serde(default)]
    pub enabled: bool,
    /// "http://host:8123" (plain HTTP; put TLS in front with a local proxy if needed).
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_db")]
    pub database: String,
    #[serde(default = "default_table")]
    pub table: String,
    /// Table of the audit log entries (every gateway's, by entry hash).
    #[serde(default = "default_audit_table")]
    pub audit_table: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// File holding the password (a mounted Secret), read at start and at
    /// each search; takes the place of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Run the DDL (`CREATE DATABASE/TABLE IF NOT EXISTS`) at start.
    #[serde(default = "default_true")]
    pub create_table: bool,
    #[serde(default = "default_buffer_mb")]
    pub max_buffer_mb: u64,
    #[serde(default = "default_batch")]
    pub batch_records: usize,
}

fn default_db() -> String {
    "komugate".into()
}
fn default_table() -> String {
    "access_log".into()
}
fn default_audit_table() -> String {
    "audit_log".into()
}
fn default_user() -> String {
    "default".into()
}

impl Default for ClickHouseTarget {
    fn default() -> Self {
        ClickHouseTarget {
            enabled: false,
            url: String::new(),
            database: default_db(),
            table: default_table(),
            audit_table: default_audit_table(),
            user: default_user(),
            password: String::new(),
            password_file: None,
            create_table: true,
            max_buffer_mb: default_buffer_mb(),
            batch_records: default_batch(),
        }
    }
}

/// A record with its stable shipping id.
pub struct Shipped {
    pub id: String,
    pub rec: LogRecord,
}

/// One external engine.
pub trait Target: Send {
    fn name(&self) -> &'static str;
    /// Delivers the batch; `Ok` only when the target acknowledged all of it.
    fn send(&mut self, batch: &[Shipped]) -> Result<(), String>;
    /// Daily housekeeping (retention); errors are logged.
    fn maintain(&mut self, _now_ms: i64) -> Result<(), String> {
        Ok(())
    }
    fn max_buffer_bytes(&self) -> u64;
    fn batch_records(&self) -> usize;
}

/// Stops the shipper threads (they resume from disk at the next start).
#[derive(Clone, Default)]
pub struct ShipStop(Arc<AtomicBool>);

impl ShipStop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub(crate) fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// Sleeps `d`, or less when stopped meanwhile.
    pub(crate) fn sleep(&self, d: Duration) {
        sleep_unless_stopped(self, d)
    }
}

/// Starts a shipper thread for `target` reading `log_dir/ship/<name>`.
pub fn spawn(
    log_dir: &Path,
    mut target: Box<dyn Target>,
    metrics: Arc<LogMetrics>,
    stop: ShipStop,
) -> io::Result<()> {
    let qdir = log_dir.join(SHIP).join(target.name());
    std::fs::create_dir_all(&qdir)?;
    let instance = instance_id(log_dir)?;
    std::thread::Builder::new()
        .name(format!("komugate-ship-{}", target.name()))
        .spawn(move || {
            let name = target.name();
            let mut backoff = Duration::from_millis(200);
            let mut next_maintain = Instant::now();
            while !stop.stopped() {
                if Instant::now() >= next_maintain {
                    if let Err(e) = target.maintain(now_ms()) {
                        tracing::warn!("log shipping to {name}: housekeeping failed: {e}; retrying in an hour");
                        next_maintain = Instant::now() + Duration::from_secs(3600);
                    } else {
                        next_maintain = Instant::now() + Duration::from_secs(86_400);
                    }
                }
                enforce_cap(&qdir, target.max_buffer_bytes(), name, &metrics);
                match ship_once(&qdir, &instance, target.as_mut(), &metrics) {
                    Ok(0) => sleep_unless_stopped(&stop, Duration::from_millis(200)),
                    Ok(_) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        metrics.ship_errors.with_label_values(&[name]).inc();
                        tracing::warn!(
                            "log shipping to {name} failed: {e}; records stay queued in {}, retrying in {backoff:?}",
                            qdir.display()
                        );
                        sleep_unless_stopped(&stop, backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })?;
    Ok(())
}

/// This log directory's instance name (created once, random): the first
/// part of every shipped record's id.
pub fn instance_id(log_dir: &Path) -> io::Result<String> {
    let path = log_dir.join(SHIP).join("instance");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(s.to_string());
        }
    }
    std::fs::create_dir_all(log_dir.join(SHIP))?;
    let mut seed = [0u8; 16];
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| io::Error::other("no randomness for the instance name"))?;
    let id = crate::common::hex(&seed);
    super::segment::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

fn sleep_unless_stopped(stop: &ShipStop, d: Duration) {
    let end = Instant::now() + d;
    while !stop.stopped() && Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())),
        );
    }
}

fn enforce_cap(qdir: &Path, cap: u64, name: &'static str, metrics: &LogMetrics) {
    let files = layout::list_files(qdir, ".jsonl");
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut total: u64 = sizes.iter().sum();
    metrics
        .ship_queue_bytes
        .with_label_values(&[name])
        .set(total as i64);
    for (f, size) in files.iter().zip(sizes) {
        if total <= cap {
            break;
        }
        let lines = std::fs::read(f)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if std::fs::remove_file(f).is_ok() {
            total -= size;
            metrics
                .ship_dropped
                .with_label_values(&[name])
                .inc_by(lines as u64);
            tracing::error!(
                "LOG SHIPPING TO {name}: disk buffer over {} MB; dropped the oldest {lines} record(s) ({})",
                cap >> 20,
                f.display()
            );
        }
    }
}

/// Reads one queue file: records after `skip` lines; a torn tail is ignored.
fn load(file: &Path, instance: &str, skip: usize) -> io::Result<Vec<Shipped>> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("q")
        .to_string();
    let bytes = std::fs::read(file)?;
    let mut out = Vec::new();
    for (n, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if n < skip || line.last() != Some(&b'\n') {
            continue;
        }
        match LogRecord::from_json_line(line) {
            Ok(rec) => out.push(Shipped {
                id: format!("{instance}/{stem}:{n}"),
                rec,
            }),
            Err(e) => tracing::warn!(
                "{}: line {}: skipped unreadable record: {e}",
                file.display(),
                n + 1
            ),
        }
    }
    Ok(out)
}

/// Sends up to one batch; returns the records sent (0 = queue empty).
fn ship_once(
    qdir: &Path,
    instance: &str,
    target: &mut dyn Target,
    metrics: &LogMetrics,
) -> Result<usize, String> {
    let files = layout::list_files(qdir, ".jsonl");
    if files.is_empty() {
        return Ok(0);
    }
    let cursor_path = qdir.join("cursor");
    let cursor = std::fs::read_to_string(&cursor_path).ok().and_then(|s| {
        let (f, n) = s.trim().rsplit_once(' ')?;
        Some((f.to_string(), n.parse::<usize>().ok()?))
    });
    let max = target.batch_records().max(1);
    let mut batch: Vec<Shipped> = Vec::new();
    let mut done_files: Vec<PathBuf> = Vec::new();
    let mut partial: Option<(String, usize)> = None;
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let skip = match &cursor {
            Some((cf, n)) if *cf == name => *n,
            _ => 0,
        };
        let mut recs =
            load(f, instance, skip).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let room = max - batch.len();
        if recs.len() > room {
            if batch.is_empty() || recs.len() > max {
                // Send part of this file, remember how far we got.
                let take: Vec<Shipped> = recs.drain(..room).collect();
                let last_line = take
                    .last()
                    .and_then(|s| s.id.rsplit(':').next()?.parse::<usize>().ok())
                    .unwrap_or(skip);
                batch.extend(take);
                partial = Some((name, last_line + 1));
            }
            break;
        }
        batch.extend(recs);
        done_files.push(f.clone());
        if batch.len() >= max {
            break;
        }
    }
    if !batch.is_empty() {
        target.send(&batch)?;
        metrics
            .ship_sent
            .with_label_values(&[target.name()])
            .inc_by(batch.len() as u64);
    }
    for f in &done_files {
        let _ = std::fs::remove_file(f);
    }
    match &partial {
        Some((f, n)) => {
            let _ = super::segment::write_atomic(&cursor_path, format!("{f} {n}\n").as_bytes());
        }
        None => {
            let _ = std::fs::remove_file(&cursor_path);
        }
    }
    Ok(batch.len().max(done_files.len()))
}

// ---------------------------------------------------------------- syslog

/// RFC 5424 over TCP / TLS.
pub struct Syslog {
    cfg: SyslogTarget,
    hostname: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Syslog {
    pub fn new(cfg: SyslogTarget) -> Result<Syslog, String> {
        if cfg.address.is_empty() {
            return Err("[log.syslog] address is empty; set it to the receiver's host:port".into());
        }
        let tls = if cfg.tls {
            let ca = cfg
                .ca_file
                .as_ref()
                .ok_or("[log.syslog] tls = true needs ca_file (the receiver's CA, PEM)")?;
            let pem = std::fs::read(ca)
                .map_err(|e| format!("[log.syslog] ca_file {}: {e}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let c: rustls_pki_types::CertificateDer =
                    c.map_err(|e| format!("[log.syslog] ca_file {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("[log.syslog] ca_file {}: {e}", ca.display()))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let c = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(c))
        } else {
            None
        };
        let hostname = cfg.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into())
        });
        Ok(Syslog { cfg, hostname, tls })
    }

    /// One RFC 5424 message (without framing).
    pub fn format(&self, s: &Shipped) -> String {
        // facility local0; severity notice for blocks, info otherwise
        let pri = 16 * 8 + if s.rec.action == "block" { 5 } else { 6 };
        let json = serde_json::to_string(&s.rec).unwrap_or_default();
        let id = s.id.replace(['\\', '"', ']'], "_");
        format!(
            "<{pri}>1 {} {} {} - access [komugate@32473 id=\"{id}\"] {json}",
            format_rfc3339_ms(s.rec.time_ms),
            sanitize(&self.hostname),
            sanitize(&self.cfg.app_name)
        )
    }
}

fn sanitize(s: &str) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(48)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{address}: no address"));
    for a in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(15)))?;
                s.set_write_timeout(Some(Duration::from_secs(15)))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Target for Syslog {
    fn name(&self) -> &'static str {
        "syslog"
    }
    fn max_buffer_bytes(&self) -> u64 {
        self.cfg.max_buffer_mb << 20
    }
    fn batch_records(&self) -> usize {
        self.cfg.batch_records
    }

    fn send(&mut self, batch: &[Shipped]) -> Result<(), String> {
        let addr = &self.cfg.address;
        let mut payload = Vec::with_capacity(batch.len() * 400);
        for s in batch {
            let m = self.format(s);
            payload.extend_from_slice(format!("{} ", m.len()).as_bytes());
            payload.extend_from_slice(m.as_bytes());
        }
        let tcp = connect(addr).map_err(|e| format!("syslog {addr}: {e}"))?;
        let fail = |e: io::Error| format!("syslog {addr}: {e}");
        match &self.tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(&payload).map_err(fail)?;
                tcp.shutdown(std::net::Shutdown::Write).map_err(fail)?;
                let mut sink = [0u8; 512];
                loop {
                    match tcp.read(&mut sink) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(format!(
                                "syslog {addr}: no acknowledgement (orderly close): {e}"
                            ))
                        }
                    }
                }
            }
            Some(cfg) => {
                let host = self.cfg.server_name.clone().unwrap_or_else(|| {
                    addr.rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                        .unwrap_or_default()
                });
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("syslog server name {host:?}: {e}"))?;
                let conn =
                    rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(&payload).map_err(fail)?;
                s.conn.send_close_notify();
                s.flush().map_err(fail)?;
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut s.sock).map_err(fail)?;
                }
                let _ = s.sock.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 512];
                loop {
                    match s.read(&mut sink) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => {
                            return Err(format!(
                                "syslog {addr}: no acknowledgement (orderly close): {e}"
                            ))
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------ ClickHouse

/// ClickHouse over its HTTP interface ([`super::clickhouse`]).
pub struct ClickHouse {
    cfg: ClickHouseTarget,
    client: Client,
    retention_days: u32,
    audit: Option<Arc<AuditLog>>,
    ready: bool,
}

impl ClickHouse {
    pub fn new(
        cfg: ClickHouseTarget,
        retention_days: u32,
        audit: Option<Arc<AuditLog>>,
    ) -> Result<ClickHouse, String> {
        Ok(ClickHouse {
            client: Client::new(&cfg)?,
            cfg,
            retention_days,
            audit,
            ready: false,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn ensure_tables(&mut self) -> Result<(), String> {
        if !self.ready {
            if self.cfg.create_table {
                self.client.create_tables()?;
            }
            self.ready = true;
        }
        Ok(())
    }

    /// Drops the monthly partitions older than the retention, each drop in
    /// the audit log.
    pub fn drop_old_partitions(&mut self, now_ms: i64) -> Result<RetentionReport, String> {
        self.ensure_tables()?;
        let res = self.client.drop_old_partitions(now_ms, self.retention_days);
        if let Some(a) = &self.audit {
            let events: Vec<AuditEvent> = match &res {
                Ok(rep) => rep
                    .dropped
                    .iter()
                    .map(|(partition, rows)| AuditEvent::PartitionDrop {
                        table: rep.table.clone(),
                        partition: partition.clone(),
                        rows: *rows,
                        retention_days: self.retention_days,
                        cutoff_day: rep.cutoff_day.clone(),
                        error: None,
                    })
                    .collect(),
                Err(e) => vec![AuditEvent::PartitionDrop {
                    table: self.client.access(),
                    partition: String::new(),
                    rows: 0,
                    retention_days: self.retention_days,
                    cutoff_day: String::new(),
                    error: Some(e.clone()),
                }],
            };
            for ev in events {
                if let Err(e) = a.append(ev) {
                    tracing::error!("cannot write the audit log: {e}");
                }
            }
        }
        let rep = res?;
        if !rep.dropped.is_empty() {
            tracing::info!(
                "clickhouse: dropped partitions of {} before {}: {:?}",
                rep.table,
                rep.cutoff_day,
                rep.dropped
            );
        }
        Ok(rep)
    }

    /// The JSONEachRow line of one record.
    pub fn row(s: &Shipped) -> serde_json::Value {
        let r = &s.rec;
        serde_json::json!({
            "date": utc_day(r.time_ms), "ts_ms": r.time_ms.max(0), "id": s.id,
            "listener": r.listener, "device": r.device, "user": r.user, "groups": r.groups, "site": r.site,
            "client": r.client, "method": r.method, "target": r.target, "host": r.host, "action": r.action,
            "rule": r.rule, "categories": r.categories, "app": r.app, "ips": r.ips, "status": r.status,
            "bytes_up": r.bytes_up, "bytes_down": r.bytes_down, "duration_ms": r.duration_ms,
            "egress": r.egress, "error": r.error,
        })
    }
}

impl Target for ClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn max_buffer_bytes(&self) -> u64 {
        self.cfg.max_buffer_mb << 20
    }
    fn batch_records(&self) -> usize {
        self.cfg.batch_records
    }
    fn send(&mut self, batch: &[Shipped]) -> Result<(), String> {
        self.ensure_tables()?;
        let mut body = Vec::with_capacity(batch.len() * 400);
        for s in batch {
            serde_json::to_writer(&mut body, &ClickHouse::row(s)).map_err(|e| e.to_string())?;
            body.push(b'\n');
        }
        self.client.insert(
            &format!("INSERT INTO {} FORMAT JSONEachRow", self.client.access()),
            &body,
        )
    }
    fn maintain(&mut self, now_ms: i64) -> Result<(), String> {
        self.drop_old_partitions(now_ms).map(|_| ())
    }
}

/// Builds the configured targets (queue names for the writer + targets).
pub fn targets(
    syslog: &SyslogTarget,
    clickhouse: &ClickHouseTarget,
    retention_days: u32,
    audit: Option<Arc<AuditLog>>,
) -> Result<Vec<Box<dyn Target>>, String> {
    let mut v: Vec<Box<dyn Target>> = Vec::new();
    if syslog.enabled {
        v.push(Box::new(Syslog::new(syslog.clone())?));
    }
    if clickhouse.enabled {
        v.push(Box::new(ClickHouse::new(
            clickhouse.clone(),
            retention_days,
            audit,
        )?));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_format() {
        let s = Syslog::new(SyslogTarget {
            address: "127.0.0.1:1".into(),
            hostname: Some("gw 1".into()),
            app_name: "komugate".into(),
            ..Default::default()
        })
        .unwrap();
        let rec = LogRecord {
            time_ms: 1_700_000_000_123,
            action: "block".into(),
            target: "x.example:443".into(),
            ..Default::default()
        };
        let m = s.format(&Shipped {
            id: "a:1".into(),
            rec,
        });
        assert!(
            m.starts_with("<133>1 2023-11-14T22:13:20.123Z gw1 komugate - access [komugate@32473 id=\"a:1\"] {"),
            "{m}"
        );
    }

    #[test]
    fn config_errors_are_clear() {
        assert!(Syslog::new(SyslogTarget::default())
            .err()
            .unwrap()
            .contains("address"));
        let c = ClickHouseTarget {
            url: "https://x".into(),
            ..Default::default()
        };
        assert!(ClickHouse::new(c, 365, None)
            .err()
            .unwrap()
            .contains("http://"));
    }
}
