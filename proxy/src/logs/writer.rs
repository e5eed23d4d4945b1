//! The crash-safe access-log writer.
//!
//! ```text
//! data path ──try_send──► bounded channel ──► writer thread ──► access.log (JSON lines)
//!      │ full                                     │ flush after every batch, fsync ≥ 1/s
//!      └──try_send──► spill thread ──► spill/*.jsonl ─┘ (ingested at the next tick)
//!                     (full too: counted in komugate_access_log_dropped_total, logged)
//! writer, every rotation (hourly): access.log ─rename─► closing/<stamp>.jsonl
//!      ─► compactor thread ─► segments/<day>/<stamp>.idx, then .seg (tmp, fsync, rename)
//!      ─► closing file removed
//! ```
//!
//! A disk that refuses a write (full, I/O error) never tears or loses a
//! batch: what was partly written is cut back off the file and the batch
//! stays in memory, retried at every tick, with `komugate_access_log_unwritten_bytes`
//! and a logged error as the alert. Beyond [`MAX_UNWRITTEN`] the writer
//! stops taking records, the channel fills, and the spill queue takes over
//! (on the same disk: what it cannot write is counted in
//! `komugate_access_log_dropped_total` and logged). The data path keeps
//! serving throughout.
//!
//! Clock jumps: the live file is closed at once when the wall clock goes
//! back before its period began or steps by an hour or more (file names are
//! unique per process, so a repeated time never overwrites a segment), and
//! after a step of an hour or more the retention sweep waits a day for the
//! clock to be put right (`komugate_clock_jumps_total`).
//!
//! The data path never touches the disk: both channels are bounded and
//! `try_send`. A `kill -9` loses what is in the channels and in the current
//! batch (milliseconds at board load); a power loss at most the records
//! since the last fsync (≤ `fsync_interval_ms`). Closed files are never
//! rewritten: segments are renamed into place complete, and at start-up a
//! leftover live file is moved to `closing/` (its torn last line, if any, is
//! skipped by the compactor) and compacted like any other.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::audit::{AuditEvent, AuditLog};
use super::layout::{self, CLOSING, SEGMENTS, SHIP, SPILL};
use super::record::{days_from_civil, now_ms, utc_day, LogRecord};
use super::segment::{sync_dir, write_atomic, SegmentWriter};
use crate::metrics::Metrics;
use crate::record::AccessRecord;

/// How long the writer lets records gather after writing a batch. Bounds
/// what a `kill -9` can lose on top of the channel contents, at any load.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Bytes of records the writer keeps in memory while the disk refuses them,
/// per file, before it stops taking records from the channel.
pub const MAX_UNWRITTEN: usize = 64 << 20;

/// How often a disk that keeps refusing writes is reported in the log.
const DISK_ERROR_REPORT: Duration = Duration::from_secs(10);

/// A wall-clock step at least this large (against the monotonic clock,
/// between two ticks) is a clock jump.
const CLOCK_JUMP_MS: i64 = 3_600_000;

/// After a clock jump the retention sweep waits this long (monotonic) for
/// the clock to be put right: a clock set a year ahead by mistake must not
/// delete a year of logs.
const SWEEP_HOLD_AFTER_JUMP: Duration = Duration::from_secs(86_400);

/// Writer settings (from `[log]`).
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// The live file; its folder is the log directory.
    pub live_file: PathBuf,
    pub retention_days: u32,
    pub fsync_interval: Duration,
    /// Rotation period, aligned to multiples of it since the epoch (3600 = on the hour).
    pub rotate_secs: u64,
    pub channel_capacity: usize,
    pub spill_capacity: usize,
    pub zstd_level: i32,
    /// Shipping queue folders the writer copies every batch into (`ship/<name>`).
    pub ship_queues: Vec<String>,
    pub audit: Option<Arc<AuditLog>>,
}

impl WriterSettings {
    pub fn new(live_file: PathBuf) -> WriterSettings {
        WriterSettings {
            live_file,
            retention_days: 365,
            fsync_interval: Duration::from_secs(1),
            rotate_secs: 3600,
            channel_capacity: 65_536,
            spill_capacity: 1_000_000,
            zstd_level: 6,
            ship_queues: Vec::new(),
            audit: None,
        }
    }

    pub fn dir(&self) -> PathBuf {
        match self.live_file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Writer metrics, registered in the gateway's registry.
pub struct LogMetrics {
    pub written: IntCounter,
    pub spilled: IntCounter,
    pub dropped: IntCounter,
    pub segments: IntCounter,
    pub write_errors: IntCounter,
    pub unwritten_bytes: IntGauge,
    pub clock_jumps: IntCounter,
    pub ship_sent: IntCounterVec,
    pub ship_errors: IntCounterVec,
    pub ship_dropped: IntCounterVec,
    pub ship_queue_bytes: IntGaugeVec,
}

impl LogMetrics {
    pub fn new(m: &Metrics) -> LogMetrics {
        let c = |n: &str, h: &str| IntCounter::new(n, h).expect("metric");
        let v =
            |n: &str, h: &str| IntCounterVec::new(Opts::new(n, h), &["target"]).expect("metric");
        let lm = LogMetrics {
            written: c(
                "komugate_access_log_records_total",
                "Access records written to the live file",
            ),
            spilled: c(
                "komugate_access_log_spilled_total",
                "Access records that went through the on-disk spill queue because the writer channel was full",
            ),
            dropped: m.access_log_dropped.clone(),
            segments: c(
                "komugate_access_log_segments_total",
                "Closed log files compacted into segments",
            ),
            write_errors: c(
                "komugate_access_log_write_errors_total",
                "Failed writes or syncs of the access log",
            ),
            unwritten_bytes: IntGauge::new(
                "komugate_access_log_unwritten_bytes",
                "Bytes of records held in memory because the disk refused them (full, I/O error); alert when above 0",
            )
            .expect("metric"),
            clock_jumps: c(
                "komugate_clock_jumps_total",
                "Wall-clock steps of an hour or more seen by the log writer (the retention sweep is held for a day after one)",
            ),
            ship_sent: v(
                "komugate_log_ship_records_total",
                "Records acknowledged by an external log target",
            ),
            ship_errors: v(
                "komugate_log_ship_errors_total",
                "Failed delivery attempts to an external log target",
            ),
            ship_dropped: v(
                "komugate_log_ship_dropped_total",
                "Records dropped because a target's disk buffer was full",
            ),
            ship_queue_bytes: IntGaugeVec::new(
                Opts::new(
                    "komugate_log_ship_queue_bytes",
                    "Bytes buffered on disk for an external log target",
                ),
                &["target"],
            )
            .expect("metric"),
        };
        let r = &m.registry;
        let _ = r.register(Box::new(lm.written.clone()));
        let _ = r.register(Box::new(lm.spilled.clone()));
        let _ = r.register(Box::new(lm.segments.clone()));
        let _ = r.register(Box::new(lm.write_errors.clone()));
        let _ = r.register(Box::new(lm.unwritten_bytes.clone()));
        let _ = r.register(Box::new(lm.clock_jumps.clone()));
        let _ = r.register(Box::new(lm.ship_sent.clone()));
        let _ = r.register(Box::new(lm.ship_errors.clone()));
        let _ = r.register(Box::new(lm.ship_dropped.clone()));
        let _ = r.register(Box::new(lm.ship_queue_bytes.clone()));
        lm
    }
}

pub(crate) enum Msg {
    Rec(Box<AccessRecord>),
    /// Flush, fsync and acknowledge (tests, benchmarks, admin).
    Sync(SyncSender<()>),
}

/// The data path's end of the writer: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Msg>,
    spill_tx: SyncSender<Box<AccessRecord>>,
    metrics: Arc<LogMetrics>,
    last_drop_warning: Arc<AtomicI64>,
}

impl Submitter {
    pub fn submit(&self, record: AccessRecord) {
        let rec = match self.tx.try_send(Msg::Rec(Box::new(record))) {
            Ok(()) => return,
            Err(TrySendError::Full(Msg::Rec(r))) | Err(TrySendError::Disconnected(Msg::Rec(r))) => {
                r
            }
            Err(_) => return,
        };
        match self.spill_tx.try_send(rec) {
            Ok(()) => self.metrics.spilled.inc(),
            Err(_) => {
                self.metrics.dropped.inc();
                let now = now_ms();
                let last = self.last_drop_warning.load(Ordering::Relaxed);
                if now - last >= 1000
                    && self
                        .last_drop_warning
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::error!(
                        "ACCESS RECORDS DROPPED: the log writer and its spill queue are both full (total so far: {}, metric komugate_access_log_dropped_total); check the disk under the log directory",
                        self.metrics.dropped.get()
                    );
                }
            }
        }
    }

    /// Flushes and fsyncs everything submitted before; waits up to `timeout`.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Sync(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Joins the writer (after every [`Submitter`] is dropped).
pub struct WriterHandle {
    thread: std::thread::JoinHandle<()>,
}

impl WriterHandle {
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Recovers the directory, then starts the writer, spill and compactor threads.
pub fn start(
    settings: WriterSettings,
    metrics: &Metrics,
) -> io::Result<(Submitter, WriterHandle, Arc<LogMetrics>)> {
    let lm = Arc::new(LogMetrics::new(metrics));
    let dir = settings.dir();
    for sub in [SEGMENTS, CLOSING, SPILL] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| with_path(e, &dir.join(sub), "create the log directory"))?;
    }
    for q in &settings.ship_queues {
        let qd = dir.join(SHIP).join(q);
        std::fs::create_dir_all(&qd).map_err(|e| with_path(e, &qd, "create the shipping queue"))?;
        for part in layout::list_files(&qd, ".part") {
            let _ = std::fs::rename(&part, part.with_extension("jsonl"));
        }
    }
    // A live file left by a crash or stop is closed now, never appended to.
    if std::fs::metadata(&settings.live_file)
        .map(|m| m.len() > 0)
        .unwrap_or(false)
    {
        let to = dir
            .join(CLOSING)
            .join(format!("{}.jsonl", layout::stamp_now()));
        std::fs::rename(&settings.live_file, &to)
            .map_err(|e| with_path(e, &settings.live_file, "close the previous live file"))?;
        sync_dir(&dir.join(CLOSING));
        sync_dir(&dir);
    }
    for part in layout::spill_files(&dir, true) {
        if part.extension().is_some_and(|x| x == "part") {
            let _ = std::fs::rename(&part, part.with_extension("jsonl"));
        }
    }
    let live = open_live(&settings.live_file)?;

    let (tx, rx) = mpsc::sync_channel(settings.channel_capacity.max(1));
    let (spill_tx, spill_rx) = mpsc::sync_channel(settings.spill_capacity.max(1));
    let spill_dir = dir.join(SPILL);
    let fsync = settings.fsync_interval;
    let lm2 = lm.clone();
    let spill = std::thread::Builder::new()
        .name("komugate-log-spill".into())
        .spawn(move || spill_thread(spill_dir, spill_rx, fsync, lm2))?;

    let (ctx, crx) = mpsc::channel::<PathBuf>();
    for f in layout::closing_files(&dir) {
        let _ = ctx.send(f);
    }
    let (cdir, level, lm3) = (dir.clone(), settings.zstd_level, lm.clone());
    let compactor = std::thread::Builder::new()
        .name("komugate-log-compact".into())
        .spawn(move || {
            for f in crx {
                match compact(&cdir, &f, level) {
                    Ok(Some(_)) => lm3.segments.inc(),
                    Ok(None) => {}
                    Err(e) => {
                        lm3.write_errors.inc();
                        tracing::error!(
                            "cannot compact {}: {e}; it stays in closing/ and is retried at the next start",
                            f.display()
                        )
                    }
                }
            }
        })?;

    let lm4 = lm.clone();
    let thread = std::thread::Builder::new()
        .name("komugate-log-writer".into())
        .spawn(move || {
            let mut w = Writer::new(settings, live, ctx, lm4);
            w.run(rx);
            let _ = spill.join();
            w.ingest_spill();
            w.sync();
            w.report_lost_at_stop();
            let Writer { compactor_tx, .. } = w;
            drop(compactor_tx);
            let _ = compactor.join();
        })?;
    Ok((
        Submitter {
            tx,
            spill_tx,
            metrics: lm.clone(),
            last_drop_warning: Arc::new(AtomicI64::new(0)),
        },
        WriterHandle { thread },
        lm,
    ))
}

fn with_path(e: io::Error, p: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
}

fn open_live(path: &Path) -> io::Result<AppendFile> {
    AppendFile::open(path).map_err(|e| with_path(e, path, "open the access log"))
}

/// An append-only file that never keeps a torn batch: a write the disk
/// refuses is cut back off the file and the batch waits in `unwritten`.
struct AppendFile {
    file: File,
    /// File length after the last complete write.
    len: u64,
    /// Bytes the disk refused, oldest first; retried before anything newer.
    unwritten: Vec<u8>,
    /// The last write failed: the file may hold part of it.
    failed: bool,
}

impl AppendFile {
    fn open(path: &Path) -> io::Result<AppendFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(AppendFile {
            file,
            len,
            unwritten: Vec::new(),
            failed: false,
        })
    }

    /// Appends `bytes` after whatever is still unwritten.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.unwritten.extend_from_slice(bytes);
        self.retry()
    }

    /// Writes what the disk refused before.
    fn retry(&mut self) -> io::Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        // A failed write may have left part of a batch behind: cut it off.
        if self.failed && self.file.metadata()?.len() != self.len {
            self.file.set_len(self.len)?;
        }
        match self.file.write_all(&self.unwritten) {
            Ok(()) => {
                self.len += self.unwritten.len() as u64;
                self.unwritten.clear();
                self.failed = false;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

struct ShipTee {
    dir: PathBuf,
    part: Option<(PathBuf, AppendFile)>,
}

struct Writer {
    s: WriterSettings,
    dir: PathBuf,
    live: AppendFile,
    dirty: bool,
    next_tick: Instant,
    next_rotate_ms: i64,
    sweep_day: i64,
    compactor_tx: mpsc::Sender<PathBuf>,
    tees: Vec<ShipTee>,
    buf: Vec<u8>,
    lm: Arc<LogMetrics>,
    pending_acks: Vec<SyncSender<()>>,
    /// Since when, and when last reported, the disk refuses writes.
    disk_failing: Option<(Instant, Instant)>,
    /// Wall clock (ms) and monotonic clock at the last tick.
    last_tick: (i64, Instant),
    /// No retention sweep before this (set by a clock jump).
    sweep_held_until: Option<Instant>,
}

impl Writer {
    fn new(
        s: WriterSettings,
        live: AppendFile,
        compactor_tx: mpsc::Sender<PathBuf>,
        lm: Arc<LogMetrics>,
    ) -> Writer {
        let dir = s.dir();
        let tees = s
            .ship_queues
            .iter()
            .map(|q| ShipTee {
                dir: dir.join(SHIP).join(q),
                part: None,
            })
            .collect();
        let now = now_ms();
        let mut w = Writer {
            next_rotate_ms: next_rotation(now, s.rotate_secs),
            next_tick: Instant::now() + s.fsync_interval,
            sweep_day: i64::MIN,
            s,
            dir,
            live,
            dirty: false,
            compactor_tx,
            tees,
            buf: Vec::with_capacity(1 << 20),
            lm,
            pending_acks: Vec::new(),
            disk_failing: None,
            last_tick: (now, Instant::now()),
            sweep_held_until: None,
        };
        w.maybe_sweep(now);
        w
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            if self.live.unwritten.len() >= MAX_UNWRITTEN {
                // The disk refuses and memory holds enough: leave new
                // records to the channel and the spill queue until it heals.
                std::thread::sleep(wait);
                self.tick();
                continue;
            }
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.take(msg);
                    while self.buf.len() < (1 << 20) {
                        match rx.try_recv() {
                            Ok(m) => self.take(m),
                            Err(_) => break,
                        }
                    }
                    self.write_batch();
                    self.acknowledge_syncs();
                    // Let the next records gather instead of blocking in
                    // recv again: a blocked receiver costs every submitting
                    // request a futex wake-up and this thread a context
                    // switch (measured: ~10 % of the proxy's CPU at 20 k
                    // requests/s). Senders never wait on a sleeping writer.
                    std::thread::sleep(BATCH_WINDOW);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= self.next_tick {
                self.tick();
            }
        }
        self.write_batch();
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Rec(r) => {
                if serde_json::to_writer(&mut self.buf, &*r).is_ok() {
                    self.buf.push(b'\n');
                    self.lm.written.inc();
                }
            }
            Msg::Sync(ack) => self.pending_acks.push(ack),
        }
    }

    /// Answers `sync` callers once everything before them is on disk.
    fn acknowledge_syncs(&mut self) {
        if self.pending_acks.is_empty() {
            return;
        }
        self.sync();
        if self.unwritten() == 0 {
            for a in self.pending_acks.drain(..) {
                let _ = a.try_send(());
            }
        }
    }

    /// At stop, records the disk still refuses are lost: counted and said.
    fn report_lost_at_stop(&self) {
        let lines = self.live.unwritten.iter().filter(|&&b| b == b'\n').count();
        if lines > 0 {
            self.lm.dropped.inc_by(lines as u64);
            tracing::error!(
                "ACCESS RECORDS DROPPED: {lines} record(s) could not be written to {} before the stop (the disk refused them)",
                self.s.live_file.display()
            );
        }
    }

    fn unwritten(&self) -> usize {
        self.live.unwritten.len()
            + self
                .tees
                .iter()
                .filter_map(|t| t.part.as_ref())
                .map(|(_, f)| f.unwritten.len())
                .sum::<usize>()
    }

    /// Hands the batch (and what the disk refused before) to the OS: a
    /// kill -9 after this loses nothing.
    fn write_batch(&mut self) {
        if self.buf.is_empty() && self.unwritten() == 0 {
            return;
        }
        let mut failure = self
            .live
            .append(&self.buf)
            .err()
            .map(|e| format!("{}: {e}", self.s.live_file.display()));
        for t in &mut self.tees {
            if let Err(e) = tee_write(t, &self.buf, &self.lm) {
                failure.get_or_insert_with(|| format!("{}: {e}", t.dir.display()));
            }
        }
        self.buf.clear();
        self.dirty = true;
        self.note_disk(failure);
    }

    /// The alert for a disk that refuses writes: a gauge, an error line at
    /// the first failure and every [`DISK_ERROR_REPORT`], a line when it heals.
    fn note_disk(&mut self, failure: Option<String>) {
        let unwritten = self.unwritten();
        self.lm.unwritten_bytes.set(unwritten as i64);
        let now = Instant::now();
        match (failure, self.disk_failing) {
            (Some(e), state) => {
                self.lm.write_errors.inc();
                let report = match state {
                    None => true,
                    Some((_, last)) => now.duration_since(last) >= DISK_ERROR_REPORT,
                };
                let since = state.map(|(s, _)| s).unwrap_or(now);
                if report {
                    tracing::error!(
                        "ACCESS LOG CANNOT BE WRITTEN: {e}; {unwritten} bytes of records are kept in memory and retried every {:?} (beyond {} MiB new records go to the spill queue, and are dropped and counted in komugate_access_log_dropped_total if it fails too); free space in {}",
                        self.s.fsync_interval,
                        MAX_UNWRITTEN >> 20,
                        self.dir.display()
                    );
                }
                let last = match state {
                    Some((_, last)) if !report => last,
                    _ => now,
                };
                self.disk_failing = Some((since, last));
            }
            (None, Some((since, _))) if unwritten == 0 => {
                tracing::warn!(
                    "the access log is writable again after {:?}; every record kept in memory is written",
                    now.duration_since(since)
                );
                self.disk_failing = None;
            }
            (None, _) => {}
        }
    }

    fn sync(&mut self) {
        self.write_batch();
        if self.dirty {
            if let Err(e) = self.live.file.sync_data() {
                self.lm.write_errors.inc();
                tracing::error!(
                    "cannot sync the access log {}: {e}",
                    self.s.live_file.display()
                );
            }
            for t in &mut self.tees {
                // A part with unwritten records stays open until they are written.
                if t.part
                    .as_ref()
                    .is_some_and(|(_, f)| !f.unwritten.is_empty())
                {
                    continue;
                }
                if let Some((part, f)) = t.part.take() {
                    let res = f.file.sync_data();
                    drop(f);
                    let res =
                        res.and_then(|_| std::fs::rename(&part, part.with_extension("jsonl")));
                    if let Err(e) = res {
                        tracing::error!(
                            "cannot seal the shipping queue file {}: {e}",
                            part.display()
                        );
                    }
                    sync_dir(&t.dir);
                }
            }
            self.dirty = false;
        }
    }

    fn tick(&mut self) {
        self.ingest_spill();
        self.sync();
        self.acknowledge_syncs();
        let now = now_ms();
        let jumped = self.watch_clock(now);
        let period = (self.s.rotate_secs.max(1) * 1000) as i64;
        // Back before the live file's period began: close it now, so a
        // file never mixes hours (or days) and a segment's name never
        // claims a time its records are not from.
        if jumped || now >= self.next_rotate_ms || now < self.next_rotate_ms - period {
            self.rotate(now);
        }
        self.maybe_sweep(now);
        self.next_tick = Instant::now() + self.s.fsync_interval;
    }

    /// Moves finished spill files into the live file (and the shipping queues).
    fn ingest_spill(&mut self) {
        let files = layout::spill_files(&self.dir, false);
        if files.is_empty() {
            return;
        }
        if !self.live.unwritten.is_empty() {
            return; // the disk refuses writes: the spill files are safer where they are
        }
        for f in &files {
            match std::fs::read(f) {
                Ok(mut bytes) => {
                    let keep = bytes
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map(|i| i + 1)
                        .unwrap_or(0);
                    bytes.truncate(keep);
                    self.buf.extend_from_slice(&bytes);
                    self.write_batch();
                }
                Err(e) => tracing::error!("cannot read the spill file {}: {e}", f.display()),
            }
        }
        self.sync();
        if self.live.unwritten.is_empty() {
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn rotate(&mut self, now: i64) {
        self.next_rotate_ms = next_rotation(now, self.s.rotate_secs);
        self.sync();
        if std::fs::metadata(&self.s.live_file)
            .map(|m| m.len() == 0)
            .unwrap_or(true)
        {
            return;
        }
        let to = self
            .dir
            .join(CLOSING)
            .join(format!("{}.jsonl", layout::stamp(now)));
        if let Err(e) = std::fs::rename(&self.s.live_file, &to) {
            self.lm.write_errors.inc();
            tracing::error!(
                "cannot rotate {}: {e}; keeping it open",
                self.s.live_file.display()
            );
            return;
        }
        sync_dir(&self.dir.join(CLOSING));
        sync_dir(&self.dir);
        match open_live(&self.s.live_file) {
            Ok(mut l) => {
                l.unwritten = std::mem::take(&mut self.live.unwritten);
                self.live = l;
            }
            Err(e) => {
                self.lm.write_errors.inc();
                tracing::error!("{e}");
            }
        }
        let _ = self.compactor_tx.send(to);
    }

    /// Notices wall-clock jumps (NTP step, an administrator's `date -s`)
    /// by comparing with the monotonic clock; returns true on a jump.
    fn watch_clock(&mut self, now: i64) -> bool {
        let mono = Instant::now();
        let (last_wall, last_mono) = self.last_tick;
        self.last_tick = (now, mono);
        let expected = last_wall + mono.duration_since(last_mono).as_millis() as i64;
        let step = now - expected;
        // The two clocks are read a moment apart and rounded to ms: allow a
        // second of slack, so a step of exactly an hour always counts.
        if step.abs() + 1_000 < CLOCK_JUMP_MS {
            return false;
        }
        self.lm.clock_jumps.inc();
        self.sweep_held_until = Some(mono + SWEEP_HOLD_AFTER_JUMP);
        tracing::warn!(
            "the wall clock jumped by {:+} s; the live access log is closed now and the retention sweep waits 24 h for the clock to be put right (check NTP)",
            step / 1000
        );
        true
    }

    fn maybe_sweep(&mut self, now: i64) {
        if let Some(until) = self.sweep_held_until {
            if Instant::now() < until {
                return;
            }
            self.sweep_held_until = None;
        }
        let today = now.div_euclid(86_400_000);
        if today == self.sweep_day {
            return;
        }
        self.sweep_day = today;
        match sweep(&self.dir, self.s.retention_days, now) {
            Ok(report) => {
                tracing::info!(
                    "log retention sweep: kept {} days; deleted {} day folder(s), {} files, {} bytes",
                    self.s.retention_days,
                    report.deleted_days.len(),
                    report.files,
                    report.bytes
                );
                if let Some(a) = &self.s.audit {
                    let ev = AuditEvent::RetentionSweep {
                        retention_days: self.s.retention_days,
                        cutoff_day: report.cutoff_day.clone(),
                        deleted_days: report.deleted_days.clone(),
                        deleted_files: report.files,
                        deleted_bytes: report.bytes,
                        error: None,
                    };
                    if let Err(e) = a.append(ev) {
                        tracing::error!("cannot write the audit log: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::error!("log retention sweep failed: {e}");
                if let Some(a) = &self.s.audit {
                    let _ = a.append(AuditEvent::RetentionSweep {
                        retention_days: self.s.retention_days,
                        cutoff_day: String::new(),
                        deleted_days: Vec::new(),
                        deleted_files: 0,
                        deleted_bytes: 0,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
    }
}

fn tee_write(t: &mut ShipTee, bytes: &[u8], lm: &LogMetrics) -> io::Result<()> {
    if t.part.is_none() {
        if bytes.is_empty() {
            return Ok(());
        }
        let p = t.dir.join(format!("{}.part", layout::stamp_now()));
        t.part = Some((p.clone(), AppendFile::open(&p)?));
    }
    let Some((_, f)) = &mut t.part else {
        return Ok(());
    };
    if f.unwritten.len() >= MAX_UNWRITTEN {
        // The shipping queue's disk refuses and memory holds enough: these
        // records reach the local log only, never the external target.
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let name = t.dir.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        lm.ship_dropped.with_label_values(&[name]).inc_by(lines);
        tracing::error!(
            "LOG SHIPPING RECORDS DROPPED: {lines} record(s) for {name}; its queue {} cannot be written",
            t.dir.display()
        );
        return f.retry();
    }
    f.append(bytes)
}

fn next_rotation(now: i64, rotate_secs: u64) -> i64 {
    let p = (rotate_secs.max(1) * 1000) as i64;
    (now.div_euclid(p) + 1) * p
}

fn spill_thread(
    dir: PathBuf,
    rx: Receiver<Box<AccessRecord>>,
    fsync: Duration,
    lm: Arc<LogMetrics>,
) {
    let mut cur: Option<(PathBuf, BufWriter<File>)> = None;
    let mut next_seal = Instant::now() + fsync;
    let seal = |cur: &mut Option<(PathBuf, BufWriter<File>)>| {
        if let Some((p, mut f)) = cur.take() {
            let res = f.flush().and_then(|_| f.get_ref().sync_data());
            drop(f);
            if let Err(e) = res.and_then(|_| std::fs::rename(&p, p.with_extension("jsonl"))) {
                tracing::error!("spill queue {}: {e}", p.display());
            }
        }
    };
    loop {
        match rx.recv_timeout(next_seal.saturating_duration_since(Instant::now())) {
            Ok(r) => {
                if cur.is_none() {
                    let p = dir.join(format!("{}.part", layout::stamp_now()));
                    match OpenOptions::new().create(true).append(true).open(&p) {
                        Ok(f) => cur = Some((p, BufWriter::with_capacity(1 << 20, f))),
                        Err(e) => {
                            lm.dropped.inc();
                            tracing::error!(
                                "ACCESS RECORD DROPPED: cannot open the spill file {}: {e}",
                                p.display()
                            );
                            continue;
                        }
                    }
                }
                if let Some((_, f)) = &mut cur {
                    let ok =
                        serde_json::to_writer(&mut *f, &*r).is_ok() && f.write_all(b"\n").is_ok();
                    if !ok {
                        lm.dropped.inc();
                        tracing::error!("ACCESS RECORD DROPPED: cannot write to the spill queue");
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_seal {
            seal(&mut cur);
            next_seal = Instant::now() + fsync;
        }
    }
    seal(&mut cur);
}

/// Compacts one closed JSON-lines file into a segment and its index.
/// Returns the segment path, or `None` if the file had no records.
pub fn compact(dir: &Path, closing: &Path, zstd_level: i32) -> io::Result<Option<PathBuf>> {
    let stamp = closing
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("unnamed")
        .to_string();
    let seg = layout::segment_path(dir, &stamp);
    let idx = seg.with_extension("idx");
    if seg.exists() {
        // Finished before a crash; only the removal was missing.
        std::fs::remove_file(closing)?;
        return Ok(Some(seg));
    }
    let day_dir = seg
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(SEGMENTS));
    std::fs::create_dir_all(&day_dir)?;
    let tmp = seg.with_extension("seg-tmp");
    let mut w = SegmentWriter::create(&tmp, zstd_level)?;
    let mut r = BufReader::with_capacity(1 << 20, File::open(closing)?);
    let mut line = Vec::new();
    let mut bad = 0u64;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            bad += 1; // torn by a crash: never acknowledged as written
            break;
        }
        match LogRecord::from_json_line(&line) {
            Ok(rec) => w.push(&rec)?,
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(
            "{}: skipped {bad} incomplete or unreadable line(s)",
            closing.display()
        );
    }
    if w.count() == 0 {
        drop(w);
        let _ = std::fs::remove_file(&tmp);
        std::fs::remove_file(closing)?;
        return Ok(None);
    }
    let index = w.finish()?;
    write_atomic(&idx, &index)?;
    std::fs::rename(&tmp, &seg)?;
    sync_dir(&day_dir);
    std::fs::remove_file(closing)?;
    if let Some(p) = closing.parent() {
        sync_dir(p);
    }
    Ok(Some(seg))
}

/// Result of a retention sweep.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub cutoff_day: String,
    pub deleted_days: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

/// Deletes day folders older than `retention_days` (kept: the last
/// `retention_days` UTC days including today).
pub fn sweep(dir: &Path, retention_days: u32, now: i64) -> io::Result<SweepReport> {
    let today = now.div_euclid(86_400_000);
    let cutoff = today - retention_days as i64 + 1;
    let mut rep = SweepReport {
        cutoff_day: utc_day(cutoff * 86_400_000),
        ..Default::default()
    };
    let root = dir.join(SEGMENTS);
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(rep),
        Err(e) => return Err(e),
    };
    let mut days: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    days.sort();
    for (name, path) in days {
        let b = name.as_bytes();
        let parsed = (b.len() == 10 && b[4] == b'-' && b[7] == b'-')
            .then(|| {
                Some((
                    name[0..4].parse().ok()?,
                    name[5..7].parse().ok()?,
                    name[8..10].parse().ok()?,
                ))
            })
            .flatten();
        let Some((y, m, d)) = parsed else { continue };
        if days_from_civil(y, m, d) >= cutoff {
            continue;
        }
        for e in std::fs::read_dir(&path)?.flatten() {
            rep.files += 1;
            rep.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        std::fs::remove_dir_all(&path)?;
        rep.deleted_days.push(name);
    }
    Ok(rep)
}
