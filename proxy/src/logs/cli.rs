//! `komugate logs …` and `komugate audit …`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::export::{OutputFormat, Sink};
use super::query::{current_ms, parse_time, Glob, Query};
use super::store::{LocalStore, LogStore};
use crate::cli::usage_error;

#[derive(Subcommand)]
// Parsed once per process: the size of the larger variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum LogsCommand {
    /// Search access logs (closed hours and the live file), streaming the results.
    Search(SearchArgs),
    /// Compact closed live files left in closing/ into segments now.
    Compact {
        #[command(flatten)]
        loc: LogDirArgs,
    },
    /// Delete day folders older than the retention period now (the gateway does this daily).
    Sweep {
        #[command(flatten)]
        loc: LogDirArgs,
        #[arg(long, default_value_t = 365)]
        retention_days: u32,
    },
    /// (tests) Write generated records through the writer until killed,
    /// printing "acked N" after each fsync.
    #[command(hide = true)]
    WriteTest {
        #[arg(long)]
        dir: PathBuf,
        /// Records per second.
        #[arg(long, default_value_t = 20000)]
        rate: u64,
        #[arg(long, default_value_t = 3600)]
        rotate_secs: u64,
        /// Stop submitting after this many records (keep shipping).
        #[arg(long)]
        count: Option<u64>,
        /// Also ship to this ClickHouse (http://host:port) ...
        #[arg(long)]
        clickhouse: Option<String>,
        /// ... into this database.
        #[arg(long, default_value = "komugate")]
        clickhouse_database: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain; exit status 1 if anything is wrong.
    Verify {
        /// The audit log (default: [log] audit_log of the configuration).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// Where the logs are: `--dir`, or the configuration's log folder.
#[derive(Args, Clone, Default)]
pub struct LogDirArgs {
    /// Log directory (the folder of [log] access_log, e.g. komugate-data/logs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Gateway configuration to take the log directory from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides [data] dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl LogDirArgs {
    /// The audit log that goes with these logs: the configuration's
    /// `[log] audit_log`, or with `--dir` the data directory layout's
    /// `audit.log` next to the log directory.
    pub fn audit_log(&self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            let data = d.parent().filter(|p| !p.as_os_str().is_empty());
            return Ok(data.unwrap_or(Path::new(".")).join("audit.log"));
        }
        let config = self.config()?;
        Ok(config.data_path(&config.log.audit_log))
    }

    /// Where to search: ClickHouse when the configuration enables
    /// `[log.clickhouse]` (every replica's records), else the log directory;
    /// `--dir` or `local` always searches the files here.
    pub fn store(&self, local: bool) -> Result<Arc<dyn LogStore>> {
        if self.dir.is_some() || local {
            return Ok(Arc::new(LocalStore {
                dir: self.resolve()?,
            }));
        }
        let config = self.config()?;
        super::store::for_config(&config).map_err(anyhow::Error::msg)
    }

    fn config(&self) -> Result<crate::config::Config> {
        let mut config = match &self.config {
            Some(p) => crate::config::Config::load(p)?,
            None => crate::config::Config::embedded_default(),
        };
        if let Some(d) = &self.data {
            config.data.dir = d.clone();
        }
        Ok(config)
    }

    pub fn resolve(&self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        Ok(log_dir(&self.config()?))
    }

    /// The zone people read times in: the configuration's `[block_page]
    /// time_zone` (the embedded default's Asia/Tokyo without `--config`).
    pub fn display_zone(&self) -> Result<crate::local_time::LocalZone> {
        Ok(match &self.config {
            Some(p) => crate::config::Config::load(p)?.block_page.time_zone,
            None => crate::local_time::LocalZone::default(),
        })
    }
}

/// The log directory of a configuration.
pub fn log_dir(config: &crate::config::Config) -> PathBuf {
    let live = config.data_path(&config.log.access_log);
    match live.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[derive(Args, Default)]
pub struct SearchArgs {
    #[command(flatten)]
    pub loc: LogDirArgs,
    /// Start (inclusive): ISO 8601, today, yesterday, now, -7d, -12h ...
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// End (exclusive), same forms as --since.
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub site: Option<String>,
    /// Host glob: example.com, *.example.com, ad?.*.net (case-insensitive).
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub url_contains: Option<String>,
    /// allow, block or error.
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub rule: Option<String>,
    #[arg(long)]
    pub category: Option<String>,
    #[arg(long)]
    pub app: Option<String>,
    /// IPS signature id.
    #[arg(long)]
    pub ips: Option<String>,
    /// table, json, csv or xlsx (default: from --out's extension, else table).
    #[arg(long)]
    pub format: Option<String>,
    /// Output file (default: standard output; xlsx needs a file unless piped).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub limit: Option<u64>,
    /// Time zone for times without a zone and for displayed times:
    /// Asia/Tokyo, UTC or a fixed offset like +09:00 (default: the
    /// configuration's [block_page] time_zone, Asia/Tokyo).
    #[arg(long, alias = "utc-offset")]
    pub time_zone: Option<String>,
    /// Print what the search read (files skipped by the index ...) to stderr.
    #[arg(long)]
    pub stats: bool,
    /// Search this host's log files even when [log.clickhouse] is enabled
    /// (by default the search reads ClickHouse then: every replica's records).
    #[arg(long)]
    pub local: bool,
    /// Audit log that records this search (default: the configuration's
    /// [log] audit_log; with --dir, audit.log next to the log directory).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// Builds a query from textual filters (shared with `GET /admin/logs`).
#[allow(clippy::too_many_arguments)]
pub fn build_query(
    since: Option<&str>,
    until: Option<&str>,
    offset_min: i32,
    fields: [Option<&str>; 11],
    limit: Option<u64>,
) -> Result<Query, String> {
    let now = current_ms();
    let t = |v: Option<&str>| {
        v.filter(|s| !s.is_empty())
            .map(|s| parse_time(s, now, offset_min))
            .transpose()
    };
    let s = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
    let [device, user, group, site, host, url_contains, action, rule, category, app, ips] = fields;
    let q = Query {
        since_ms: t(since)?,
        until_ms: t(until)?,
        device: s(device),
        user: s(user),
        group: s(group),
        site: s(site),
        host: host.filter(|h| !h.is_empty()).map(Glob::new),
        url_contains: s(url_contains),
        action: s(action),
        rule: s(rule),
        category: s(category),
        app: s(app),
        ips: s(ips),
        skip: 0,
        limit,
    };
    if let (Some(a), Some(b)) = (q.since_ms, q.until_ms) {
        if a >= b {
            return Err("--since must be before --until".into());
        }
    }
    Ok(q)
}

pub fn run_logs(cmd: LogsCommand) -> Result<()> {
    match cmd {
        LogsCommand::Search(a) => run_search(a),
        LogsCommand::Compact { loc } => {
            let dir = loc.resolve()?;
            let mut n = 0;
            for f in super::layout::closing_files(&dir) {
                if let Some(seg) = super::writer::compact(&dir, &f, 6)
                    .with_context(|| format!("cannot compact {}", f.display()))?
                {
                    println!("{}", seg.display());
                    n += 1;
                }
            }
            eprintln!("{n} file(s) compacted");
            Ok(())
        }
        LogsCommand::Sweep {
            loc,
            retention_days,
        } => {
            let dir = loc.resolve()?;
            let rep = super::writer::sweep(&dir, retention_days, current_ms())
                .with_context(|| format!("retention sweep of {}", dir.display()))?;
            println!(
                "kept days from {}; deleted {} day folder(s) ({} files, {} bytes)",
                rep.cutoff_day,
                rep.deleted_days.len(),
                rep.files,
                rep.bytes
            );
            Ok(())
        }
        LogsCommand::WriteTest {
            dir,
            rate,
            rotate_secs,
            count,
            clickhouse,
            clickhouse_database,
        } => {
            let ch = clickhouse.map(|url| super::ship::ClickHouseTarget {
                enabled: true,
                url,
                database: clickhouse_database,
                batch_records: 500,
                ..Default::default()
            });
            write_test(&dir, rate, rotate_secs, count, ch)
        }
    }
}

/// An export holds personal data: owner and group only (0640).
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// The search's filters as `name=value` words, for the audit log.
fn describe_search(a: &SearchArgs) -> String {
    let fields = [
        ("since", &a.since),
        ("until", &a.until),
        ("device", &a.device),
        ("user", &a.user),
        ("group", &a.group),
        ("site", &a.site),
        ("host", &a.host),
        ("url_contains", &a.url_contains),
        ("action", &a.action),
        ("rule", &a.rule),
        ("category", &a.category),
        ("app", &a.app),
        ("ips", &a.ips),
    ];
    let mut words: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    if let Some(n) = a.limit {
        words.push(format!("limit={n}"));
    }
    words.join(" ")
}

fn run_search(a: SearchArgs) -> Result<()> {
    let store = a.loc.store(a.local)?;
    let zone = match &a.time_zone {
        Some(z) => crate::local_time::LocalZone::parse(z)
            .map_err(|e| usage_error(format!("--time-zone: {e}")))?,
        None => a.loc.display_zone()?,
    };
    let offset = zone.offset_minutes();
    let format = match (&a.format, &a.out) {
        (Some(f), _) => f.parse::<OutputFormat>().map_err(usage_error)?,
        (None, Some(p)) => match p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => OutputFormat::Csv,
            Some("xlsx") => OutputFormat::Xlsx,
            Some("json") | Some("jsonl") | Some("ndjson") => OutputFormat::Json,
            _ => OutputFormat::Table,
        },
        (None, None) => OutputFormat::Table,
    };
    let q = build_query(
        a.since.as_deref(),
        a.until.as_deref(),
        offset,
        [
            a.device.as_deref(),
            a.user.as_deref(),
            a.group.as_deref(),
            a.site.as_deref(),
            a.host.as_deref(),
            a.url_contains.as_deref(),
            a.action.as_deref(),
            a.rule.as_deref(),
            a.category.as_deref(),
            a.app.as_deref(),
            a.ips.as_deref(),
        ],
        a.limit,
    )
    .map_err(usage_error)?;
    // Personal data: the search is audited (who, filters, format, file)
    // before anything is read; if it cannot be audited it does not run.
    let audit_path = match &a.audit_log {
        Some(p) => p.clone(),
        None => a.loc.audit_log()?,
    };
    let audit = super::audit::AuditLog::open(&audit_path).map_err(|e| {
        anyhow::anyhow!("{e}; the search is not run without an audit entry (--audit-log FILE)")
    })?;
    audit
        .append(super::audit::AuditEvent::LogSearch {
            actor: super::audit::cli_actor(),
            via: "cli".into(),
            query: describe_search(&a),
            format: format!("{format:?}").to_ascii_lowercase(),
            out: a.out.as_ref().map(|p| p.display().to_string()),
        })
        .map_err(|e| anyhow::anyhow!("{e}; the search is not run without an audit entry"))?;
    let started = Instant::now();
    let out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(io::BufWriter::with_capacity(
            1 << 20,
            create_private(p)
                .with_context(|| format!("cannot create the output file {}", p.display()))?,
        )),
        None => Box::new(io::BufWriter::with_capacity(1 << 16, io::stdout().lock())),
    };
    let mut sink = Sink::new(format, out, &zone)?;
    let result = store.search(&q, &mut |r| sink.write(&r).map(|_| true));
    let stats = match result {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => bail!("search in {}: {e}", store.describe()),
    };
    match sink.finish() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => bail!("cannot write the results: {e}"),
    }
    for e in &stats.errors {
        eprintln!("komugate: warning: skipped an unreadable file: {e}");
    }
    if a.stats {
        eprintln!(
            "{} record(s) matched{}; scanned {} records; segments: {} total, {} skipped by index, {} opened; blocks {} read, {} skipped; {} live file(s); {:.3} s",
            stats.records_matched,
            if stats.limit_reached { " (limit reached)" } else { "" },
            stats.records_scanned,
            stats.segments_total,
            stats.segments_skipped_by_index,
            stats.segments_opened,
            stats.blocks_read,
            stats.blocks_skipped,
            stats.live_files,
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(p) = &a.out {
        eprintln!(
            "{} record(s) written to {}",
            stats.records_matched,
            p.display()
        );
    }
    Ok(())
}

pub fn run_audit(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { file, config, data } => {
            let path = match file {
                Some(f) => f,
                None => {
                    let mut c = match &config {
                        Some(p) => crate::config::Config::load(p)?,
                        None => crate::config::Config::embedded_default(),
                    };
                    if let Some(d) = data {
                        c.data.dir = d;
                    }
                    c.data_path(&c.log.audit_log)
                }
            };
            let rep = super::audit::verify(&path).map_err(anyhow::Error::msg)?;
            if rep.problems.is_empty() {
                println!(
                    "{}: ok, {} entries, head {}",
                    path.display(),
                    rep.entries,
                    rep.head
                );
                Ok(())
            } else {
                for p in &rep.problems {
                    println!("{}: {p}", path.display());
                }
                bail!(
                    "the audit log {} has been tampered with or damaged ({} problem(s) in {} entries)",
                    path.display(),
                    rep.problems.len(),
                    rep.entries
                )
            }
        }
    }
}

/// A generated record for tests and benchmarks.
pub fn sample_record(i: u64, time: std::time::SystemTime) -> crate::record::AccessRecord {
    crate::record::AccessRecord {
        time: crate::record::rfc3339(time),
        listener: "mtls",
        device: Some(format!("T-{:04}", i % 800)),
        groups: vec!["teachers".into()],
        client: format!("10.1.{}.{}:{}", i % 17, i % 250, 30000 + i % 30000),
        method: "CONNECT".into(),
        target: format!("host{}.example:443", i % 500),
        decision: "allow",
        rule: "default".into(),
        status: 200,
        bytes_up: i % 5000,
        bytes_down: i % 100_000,
        duration_ms: i % 3000,
        user: Some(format!("seq-{i}")),
        ..Default::default()
    }
}

fn write_test(
    dir: &Path,
    rate: u64,
    rotate_secs: u64,
    count: Option<u64>,
    clickhouse: Option<super::ship::ClickHouseTarget>,
) -> Result<()> {
    let metrics = crate::metrics::Metrics::new();
    let mut s = super::writer::WriterSettings::new(dir.join("access.log"));
    s.rotate_secs = rotate_secs;
    let target = match clickhouse {
        Some(c) => Some(super::ship::ClickHouse::new(c, 365, None).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if target.is_some() {
        s.ship_queues = vec!["clickhouse".into()];
    }
    let (sub, _handle, lm) = super::writer::start(s, &metrics)?;
    if let Some(t) = target {
        super::ship::spawn(dir, Box::new(t), lm, super::ship::ShipStop::default())?;
    }
    let start = Instant::now();
    let mut i = 0u64;
    let stdout = io::stdout();
    loop {
        let due =
            ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(count.unwrap_or(u64::MAX));
        while i < due {
            sub.submit(sample_record(i, std::time::SystemTime::now()));
            i += 1;
        }
        // Every record submitted so far is fsynced once this returns.
        if sub.sync(Duration::from_secs(5)) {
            let mut o = stdout.lock();
            let _ = writeln!(o, "acked {i}");
            let _ = o.flush();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
