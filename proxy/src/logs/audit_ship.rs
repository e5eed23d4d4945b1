//! The audit log to ClickHouse: a thread tails the hash-chained file and
//! inserts its new entries into the audit table, oldest first.
//!
//! The row id is the entry's own hash, unique and the same however often
//! the entry is sent, so a batch re-sent after a lost acknowledgement (or a
//! crash before the cursor moved) collapses under FINAL like the access
//! records. The cursor (`ship/clickhouse-audit/cursor`: byte offset and the
//! hash of the last entry sent) moves only after ClickHouse answered 200;
//! when the file no longer continues that hash (replaced, restored from a
//! backup) the whole file is sent again, which the ids make harmless.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::audit::{AuditEntry, GENESIS};
use super::clickhouse::Client;
use super::layout::SHIP;
use super::record::{parse_rfc3339_ms, utc_day};
use super::ship::{instance_id, ClickHouseTarget, ShipStop};
use super::writer::LogMetrics;

/// Queue folder (cursor) and metrics label part.
pub const NAME: &str = "clickhouse-audit";
const BATCH: usize = 1000;

/// Tails `audit_log` into ClickHouse until `stop`.
pub fn spawn(
    audit_log: PathBuf,
    log_dir: &Path,
    cfg: ClickHouseTarget,
    metrics: Arc<LogMetrics>,
    stop: ShipStop,
) -> Result<(), String> {
    let client = Client::new(&cfg)?;
    let dir = log_dir.join(SHIP).join(NAME);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let instance = instance_id(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let cursor = dir.join("cursor");
    std::thread::Builder::new()
        .name("komugate-ship-audit".into())
        .spawn(move || {
            let mut ready = !cfg.create_table;
            let mut backoff = Duration::from_millis(200);
            while !stop.stopped() {
                let res = (|| {
                    if !ready {
                        client.create_tables()?;
                        ready = true;
                    }
                    ship_once(&client, &audit_log, &cursor, &instance)
                })();
                match res {
                    Ok(n) => {
                        backoff = Duration::from_millis(200);
                        if n > 0 {
                            metrics.ship_sent.with_label_values(&[NAME]).inc_by(n as u64);
                        }
                        if n < BATCH {
                            stop.sleep(Duration::from_millis(500));
                        }
                    }
                    Err(e) => {
                        // Counted with the access records' failures: the
                        // "ClickHouse unreachable" alert watches that label.
                        metrics.ship_errors.with_label_values(&["clickhouse"]).inc();
                        tracing::warn!(
                            "audit log shipping to clickhouse failed: {e}; the entries stay in {}, retrying in {backoff:?}",
                            audit_log.display()
                        );
                        stop.sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn read_cursor(path: &Path) -> (u64, String) {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let (o, h) = s.trim().split_once(' ')?;
            Some((o.parse().ok()?, h.to_string()))
        })
        .unwrap_or((0, GENESIS.to_string()))
}

/// The rows of up to [`BATCH`] entries after `offset`; `None` when the first entry does not continue
/// `last_hash` (empty: no check).
/// JSONEachRow rows, entries in them, the offset after them, the last hash.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    entries: usize,
    end: u64,
    last_hash: String,
}

fn read_batch(
    audit_log: &Path,
    offset: u64,
    last_hash: &str,
    instance: &str,
) -> io::Result<Option<Batch>> {
    let mut f = match File::open(audit_log) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Some(Batch {
                end: offset,
                last_hash: last_hash.to_string(),
                ..Batch::default()
            }))
        }
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() < offset {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let (mut body, mut n, mut pos, mut hash) = (Vec::new(), 0, offset, last_hash.to_string());
    let mut line = Vec::new();
    while n < BATCH {
        line.clear();
        let got = r.read_until(b'\n', &mut line)?;
        if got == 0 || line.last() != Some(&b'\n') {
            break; // end, or an entry still being written
        }
        pos += got as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let e: AuditEntry = serde_json::from_slice(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} at byte {pos}: not an audit entry ({e}); run `komugate audit verify`",
                    audit_log.display()
                ),
            )
        })?;
        if n == 0 && !last_hash.is_empty() && e.prev != hash {
            return Ok(None);
        }
        // The event exactly as written (and hashed), so the chain can be
        // checked again from ClickHouse: seq, time (ts_ms in the same
        // millisecond format), prev, event, id = hash.
        let text = String::from_utf8_lossy(&line);
        let event = text
            .find("\"event\":")
            .and_then(|a| text.rfind(",\"hash\":").map(|b| &text[a + 8..b]))
            .map(str::to_string)
            .unwrap_or_else(|| e.event.to_string());
        let ts = parse_rfc3339_ms(&e.time).unwrap_or(0).max(0);
        let row = serde_json::json!({
            "date": utc_day(ts), "ts_ms": ts, "id": e.hash, "source": instance,
            "seq": e.seq, "prev": e.prev,
            "type": e.event.get("type").and_then(|t| t.as_str()).unwrap_or(""),
            "event": event,
        });
        serde_json::to_writer(&mut body, &row)?;
        body.push(b'\n');
        hash = e.hash;
        n += 1;
    }
    Ok(Some(Batch {
        body,
        entries: n,
        end: pos,
        last_hash: hash,
    }))
}

/// Sends the next batch; returns the entries sent.
fn ship_once(
    client: &Client,
    audit_log: &Path,
    cursor: &Path,
    instance: &str,
) -> Result<usize, String> {
    let (offset, hash) = read_cursor(cursor);
    let read = |o, h: &str| {
        read_batch(audit_log, o, h, instance).map_err(|e| format!("{}: {e}", audit_log.display()))
    };
    let batch = match read(offset, &hash)? {
        Some(b) => b,
        None => {
            tracing::warn!(
                "{} does not continue the last entry shipped; sending it again from the start (ClickHouse keeps one row per entry)",
                audit_log.display()
            );
            read(0, "")?.unwrap_or_default()
        }
    };
    if batch.entries == 0 {
        return Ok(0);
    }
    client.insert(
        &format!("INSERT INTO {} FORMAT JSONEachRow", client.audit()),
        &batch.body,
    )?;
    let cursor_text = format!("{} {}\n", batch.end, batch.last_hash);
    super::segment::write_atomic(cursor, cursor_text.as_bytes())
        .map_err(|e| format!("{}: {e}", cursor.display()))?;
    Ok(batch.entries)
}
