//! The ClickHouse side of the log store: a small HTTP client (whole
//! answers, and rows streamed line by line for big results), SQL string
//! literals, the tables' DDL and the retention by monthly partitions.
//!
//! Tables (`clickhouse.sql`): `access_log` and `audit_log`, both
//! `ReplacingMergeTree` keyed by `(date, ts_ms, id)` with a stable id per
//! record, `PARTITION BY toYYYYMM(date)`. A batch re-sent after a lost
//! acknowledgement inserts rows identical to the first ones; reads use
//! `FINAL`, which collapses them (merges do it on disk eventually).
//!
//! No server-side query parameters (`{name:Type}` needs ClickHouse 19.15+;
//! Debian ships 18.16): every value is written as a literal by
//! [`sql_string`], which escapes everything ClickHouse's lexer treats
//! specially, and the SQL travels in the POST body.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::record::{civil_from_days, days_from_civil};
use super::ship::ClickHouseTarget;

pub const DDL: &str = include_str!("clickhouse.sql");

/// A ClickHouse server and the komugate tables on it.
#[derive(Debug, Clone)]
pub struct Client {
    host_port: String,
    user: String,
    password: String,
    pub database: String,
    pub table: String,
    pub audit_table: String,
}

/// `'text'` with every character ClickHouse's lexer treats specially escaped:
/// backslash, quote, and control characters (as `\xHH`). Multibyte UTF-8
/// passes through unchanged.
pub fn sql_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('\'');
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\'' => o.push_str("\\'"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                o.push_str(&format!("\\x{:02X}", c as u32));
            }
            c => o.push(c),
        }
    }
    o.push('\'');
    o
}

/// A host glob (`*` any run, `?` one character) as a LIKE pattern, with
/// LIKE's own `%`, `_` and `\` taken literally.
pub fn like_pattern(glob: &str) -> String {
    let mut o = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => o.push('%'),
            '?' => o.push('_'),
            '%' | '_' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{address}: no address"));
    for a in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An HTTP/1.1 response body: chunked, sized, or up to the close.
struct Body {
    r: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk (chunked) or in the body (sized).
    left: Option<usize>,
    done: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left.unwrap_or(0) == 0 {
            if self.left.is_some() {
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf)?;
            }
            let mut size = String::new();
            self.r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad chunk size from ClickHouse")
                })?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(n);
        }
        let want = match self.left {
            Some(n) => buf.len().min(n),
            None => buf.len(),
        };
        let got = self.r.read(&mut buf[..want])?;
        if got == 0 {
            if self.left.is_some_and(|n| n > 0) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "ClickHouse closed the connection in the middle of the answer",
                ));
            }
            self.done = true;
        }
        if let Some(n) = &mut self.left {
            *n -= got;
            if !self.chunked && *n == 0 {
                self.done = true;
            }
        }
        Ok(got)
    }
}

impl Client {
    pub fn new(cfg: &ClickHouseTarget) -> Result<Client, String> {
        let bad = || {
            format!(
                "[log.clickhouse] url {:?} must be like http://127.0.0.1:8123",
                cfg.url
            )
        };
        let rest = cfg.url.strip_prefix("http://").ok_or_else(bad)?;
        let host_port = rest.trim_end_matches('/').to_string();
        if host_port.is_empty() || host_port.contains('/') {
            return Err(bad());
        }
        for (what, v) in [
            ("database", &cfg.database),
            ("table", &cfg.table),
            ("audit_table", &cfg.audit_table),
        ] {
            if !ident_ok(v) {
                return Err(format!(
                    "[log.clickhouse] {what} {v:?} must be letters, digits and _"
                ));
            }
        }
        let password = match &cfg.password_file {
            None => cfg.password.clone(),
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| {
                    format!(
                        "[log.clickhouse] password_file {}: {e}; mount the Secret there or remove password_file",
                        f.display()
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        };
        Ok(Client {
            host_port,
            user: cfg.user.clone(),
            password,
            database: cfg.database.clone(),
            table: cfg.table.clone(),
            audit_table: cfg.audit_table.clone(),
        })
    }

    /// `db.access_log`
    pub fn access(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// `db.audit_log`
    pub fn audit(&self) -> String {
        format!("{}.{}", self.database, self.audit_table)
    }

    /// Sends one request; `url_sql` goes in the URL (INSERTs, whose data is
    /// the body), otherwise the body is the statement.
    fn request(&self, url_sql: Option<&str>, body: &[u8]) -> Result<Body, String> {
        let target = &self.host_port;
        // 64-bit integers as JSON numbers, not strings.
        let mut path = String::from("/?output_format_json_quote_64bit_integers=0");
        if let Some(sql) = url_sql {
            path.push_str("&query=");
            path.push_str(&url_encode(sql));
        }
        let mut s = connect(target).map_err(|e| format!("clickhouse {target}: {e}"))?;
        // Credentials in headers (never in the URL, which servers log).
        let header = |v: &str| v.replace(['\r', '\n'], "");
        let mut auth = format!("X-ClickHouse-User: {}\r\n", header(&self.user));
        if !self.password.is_empty() {
            auth.push_str(&format!("X-ClickHouse-Key: {}\r\n", header(&self.password)));
        }
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Length: {}\r\nContent-Type: text/plain; charset=utf-8\r\n{auth}Connection: close\r\n\r\n",
            body.len()
        );
        let fail = |e: io::Error| format!("clickhouse {target}: {e}");
        s.write_all(head.as_bytes()).map_err(fail)?;
        s.write_all(body).map_err(fail)?;
        s.flush().map_err(fail)?;
        let mut r = BufReader::with_capacity(1 << 16, s);
        let mut status = String::new();
        r.read_line(&mut status).map_err(fail)?;
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut chunked = false;
        let mut len: Option<usize> = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).map_err(fail)? == 0 || h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().ok();
            }
        }
        let mut body = Body {
            r,
            chunked,
            left: if chunked { None } else { len },
            done: !chunked && len == Some(0),
        };
        if code != 200 {
            let mut text = Vec::new();
            let _ = body.by_ref().take(64 << 10).read_to_end(&mut text);
            return Err(format!(
                "clickhouse {target}: HTTP {code}: {}",
                String::from_utf8_lossy(&text).trim()
            ));
        }
        Ok(body)
    }

    /// Runs one statement with `body` as its data (INSERT … FORMAT …).
    pub fn insert(&self, sql: &str, body: &[u8]) -> Result<(), String> {
        let mut b = self.request(Some(sql), body)?;
        io::copy(&mut b, &mut io::sink())
            .map_err(|e| format!("clickhouse {}: {e}", self.host_port))?;
        Ok(())
    }

    /// Runs one statement; returns the whole answer.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let mut b = self.request(None, sql.as_bytes())?;
        let mut out = Vec::new();
        b.read_to_end(&mut out)
            .map_err(|e| format!("clickhouse {}: {e}", self.host_port))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs a SELECT and hands each line of the answer to `each` as it
    /// arrives (memory: one line); `each` returns `Ok(false)` to stop.
    pub fn query_lines(
        &self,
        sql: &str,
        mut each: impl FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<()> {
        let body = self
            .request(None, sql.as_bytes())
            .map_err(io::Error::other)?;
        let mut r = BufReader::with_capacity(1 << 16, body);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if !each(&line)? {
                return Ok(());
            }
        }
    }

    /// The server's version as (major, minor).
    pub fn version(&self) -> Result<(u32, u32), String> {
        let v = self.query("SELECT version()")?;
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    /// `CREATE DATABASE / TABLE IF NOT EXISTS` for both tables.
    pub fn create_tables(&self) -> Result<(), String> {
        self.query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database))?;
        let ddl: String = DDL
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("{db}", &self.database)
            .replace("{table}", &self.table)
            .replace("{audit_table}", &self.audit_table);
        for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            self.query(stmt)?;
        }
        Ok(())
    }

    /// The active partitions of `table` with their row counts.
    pub fn partitions(&self, table: &str) -> Result<Vec<(String, u64)>, String> {
        let text = self.query(&format!(
            "SELECT partition, sum(rows) FROM system.parts WHERE database = {} AND table = {} AND active GROUP BY partition ORDER BY partition FORMAT TabSeparated",
            sql_string(&self.database),
            sql_string(table)
        ))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (p, n) = l.split_once('\t')?;
                Some((p.to_string(), n.trim().parse().unwrap_or(0)))
            })
            .collect())
    }

    /// Drops the access-log partitions whose every day is before the first
    /// kept day (today minus `retention_days - 1`, UTC, as the local sweep).
    /// Idempotent: replicas that run it at once drop nothing twice
    /// (dropping a partition that is gone is a no-op). Returns what it dropped.
    pub fn drop_old_partitions(
        &self,
        now_ms: i64,
        retention_days: u32,
    ) -> Result<RetentionReport, String> {
        let today = now_ms.div_euclid(86_400_000);
        let first_kept = today - retention_days.max(1) as i64 + 1;
        let (y, m, d) = civil_from_days(first_kept);
        let mut rep = RetentionReport {
            table: self.access(),
            cutoff_day: format!("{y:04}-{m:02}-{d:02}"),
            dropped: Vec::new(),
        };
        for (partition, rows) in self.partitions(&self.table)? {
            let Some((last_day, literal)) = partition_end(&partition) else {
                continue;
            };
            if last_day >= first_kept {
                continue;
            }
            self.query(&format!(
                "ALTER TABLE {} DROP PARTITION {literal}",
                self.access()
            ))?;
            rep.dropped
                .push((literal.trim_matches('\'').to_string(), rows));
        }
        Ok(rep)
    }
}

/// What one retention run dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub table: String,
    /// First UTC day kept.
    pub cutoff_day: String,
    /// (partition, rows) dropped.
    pub dropped: Vec<(String, u64)>,
}

/// The last day (days since the epoch) a partition holds and its literal
/// for `DROP PARTITION`: monthly `202401`, or a day `'2024-01-31'` (tables
/// created by earlier versions partitioned by day).
fn partition_end(p: &str) -> Option<(i64, String)> {
    let p = p.trim();
    if p.len() == 6 && p.bytes().all(|b| b.is_ascii_digit()) {
        let y: i64 = p[..4].parse().ok()?;
        let m: u32 = p[4..].parse().ok()?;
        if !(1..=12).contains(&m) {
            return None;
        }
        let next = if m == 12 {
            days_from_civil(y + 1, 1, 1)
        } else {
            days_from_civil(y, m + 1, 1)
        };
        return Some((next - 1, p.to_string()));
    }
    // TabSeparated escapes quotes: '2024-01-01' arrives as \'2024-01-01\'
    let day = p.replace("\\'", "").replace('\'', "");
    let ms = super::record::parse_rfc3339_ms(&day).filter(|_| day.len() == 10)?;
    Some((ms.div_euclid(86_400_000), format!("'{day}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_what_the_lexer_reads() {
        assert_eq!(sql_string("a'b"), r"'a\'b'");
        assert_eq!(sql_string(r"a\b"), r"'a\\b'");
        assert_eq!(sql_string("') OR 1=1 --"), r"'\') OR 1=1 --'");
        assert_eq!(sql_string("a\0b\n"), r"'a\x00b\x0A'");
        assert_eq!(sql_string("山田'"), r"'山田\''");
        assert_eq!(like_pattern("*.ex_am%ple\\.com?"), r"%.ex\_am\%ple\\.com_");
    }

    #[test]
    fn partitions_end_on_their_last_day() {
        let (end, lit) = partition_end("202402").unwrap();
        assert_eq!(end, days_from_civil(2024, 2, 29));
        assert_eq!(lit, "202402");
        let (end, lit) = partition_end("202412").unwrap();
        assert_eq!(end, days_from_civil(2024, 12, 31));
        assert_eq!(lit, "202412");
        let (end, lit) = partition_end("\\'2024-01-05\\'").unwrap();
        assert_eq!(end, days_from_civil(2024, 1, 5));
        assert_eq!(lit, "'2024-01-05'");
        assert!(partition_end("tuple()").is_none());
        assert!(partition_end("202413").is_none());
    }
}
