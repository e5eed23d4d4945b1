//! `komugate casb report`: cloud-app usage per day, app and user (or
//! group) from the access logs — requests, bytes up and down, uploads,
//! blocks, first and last seen, and the app's category and risk
//! attributes (catalog, or the policy's overrides with `--policy`).
//!
//! Reads the logs with [`crate::logs::search`] (segments and live files),
//! so memory grows with the number of (day, app, user) rows, not records.
//!
//! The CONNECT record of an inspected tunnel is skipped (its requests are
//! counted one by one); a bypassed tunnel counts as one request.
//!
//! Uploads are counted from what the stored record keeps: a request blocked
//! as `casb-upload`, or a POST / PUT / PATCH with a body to a storage,
//! transfer or AI app (the DLP / file details of the `casb` note are in the
//! live JSON only, not in the columnar segments).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::usage_error;
use crate::logs::cli::{build_query, LogDirArgs};
use crate::logs::query::parse_offset;
use crate::logs::record::{format_with_offset, LogRecord};

#[derive(Subcommand)]
// Parsed once per process: the size of the larger variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum CasbCommand {
    /// Cloud-app usage per day, app and user (or group): requests, bytes, uploads, blocks, risk.
    Report(ReportArgs),
    /// Print the built-in cloud-app catalog (version, apps, hosts, risk attributes).
    Catalog {
        /// json or table
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Args, Clone)]
pub struct ReportArgs {
    #[command(flatten)]
    pub loc: LogDirArgs,
    /// Start (inclusive): 2025-04-01, -7d, today ...
    #[arg(long, allow_hyphen_values = true)]
    pub since: String,
    /// End (exclusive).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// table, csv, xlsx or json
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Output file (xlsx needs one).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// user (device or client when unknown) or group
    #[arg(long, default_value = "user")]
    pub by: String,
    /// Policy file for app categories and risk attributes (default: the built-in catalog).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// UTC offset of the report's days and times.
    #[arg(long, default_value = "+09:00")]
    pub utc_offset: String,
}

/// One report row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub day: String,
    pub app: String,
    pub category: String,
    pub principal: String,
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub uploads: u64,
    pub blocks: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub certifications: String,
    pub tenant_provider: String,
}

struct AppInfo {
    category: String,
    certifications: String,
    tenant_provider: String,
}

const FILE_CATEGORIES: &[&str] = &["storage", "transfer", "ai"];

fn apps(policy: Option<&PathBuf>) -> Result<BTreeMap<String, AppInfo>> {
    let list = match policy {
        Some(p) => komugate_policy::Policy::load(p)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .apps()
            .to_vec(),
        None => komugate_policy::builtin_apps().map_err(anyhow::Error::msg)?,
    };
    Ok(list
        .into_iter()
        .map(|a| {
            (
                a.name.clone(),
                AppInfo {
                    category: a.category,
                    certifications: a.certifications.join(" "),
                    tenant_provider: a.tenant_provider.unwrap_or_default(),
                },
            )
        })
        .collect())
}

/// Aggregates records into rows (sorted by day, app, principal).
pub struct Aggregator {
    apps: BTreeMap<String, AppInfo>,
    by_group: bool,
    offset_min: i32,
    rows: BTreeMap<(String, String, String), (Row, i64, i64)>,
}

impl Aggregator {
    fn add(&mut self, r: &LogRecord) {
        // An inspected tunnel's requests are logged one by one; its CONNECT
        // record would count them twice. Bypassed tunnels count as one request.
        if r.app.is_empty() || (r.method == "CONNECT" && r.rule.ends_with("(inspected)")) {
            return;
        }
        let info = self.apps.get(&r.app);
        let category = info.map(|i| i.category.clone()).unwrap_or_default();
        let local = format_with_offset(r.time_ms, self.offset_min, false);
        let day = local.get(..10).unwrap_or("").to_string();
        let body_method = matches!(r.method.as_str(), "POST" | "PUT" | "PATCH");
        let upload = r.rule == "casb-upload"
            || (body_method && r.bytes_up > 0 && FILE_CATEGORIES.contains(&category.as_str()));
        let principals: Vec<String> = if self.by_group {
            if r.groups.is_empty() {
                vec!["(no group)".into()]
            } else {
                r.groups.clone()
            }
        } else if !r.user.is_empty() {
            vec![r.user.clone()]
        } else if !r.device.is_empty() {
            vec![r.device.clone()]
        } else {
            vec![r
                .client
                .rsplit_once(':')
                .map(|(ip, _)| ip.to_string())
                .unwrap_or_else(|| r.client.clone())]
        };
        for p in principals {
            let key = (day.clone(), r.app.clone(), p.clone());
            let e = self.rows.entry(key).or_insert_with(|| {
                (
                    Row {
                        day: day.clone(),
                        app: r.app.clone(),
                        category: category.clone(),
                        principal: p,
                        requests: 0,
                        bytes_up: 0,
                        bytes_down: 0,
                        uploads: 0,
                        blocks: 0,
                        first_seen: String::new(),
                        last_seen: String::new(),
                        certifications: info.map(|i| i.certifications.clone()).unwrap_or_default(),
                        tenant_provider: info
                            .map(|i| i.tenant_provider.clone())
                            .unwrap_or_default(),
                    },
                    i64::MAX,
                    i64::MIN,
                )
            });
            e.0.requests += 1;
            e.0.bytes_up += r.bytes_up;
            e.0.bytes_down += r.bytes_down;
            e.0.uploads += upload as u64;
            e.0.blocks += (r.action == "block") as u64;
            e.1 = e.1.min(r.time_ms);
            e.2 = e.2.max(r.time_ms);
        }
    }

    fn finish(self) -> Vec<Row> {
        let off = self.offset_min;
        self.rows
            .into_values()
            .map(|(mut row, first, last)| {
                row.first_seen = format_with_offset(first, off, false);
                row.last_seen = format_with_offset(last, off, false);
                row
            })
            .collect()
    }
}

pub const HEADERS: [&str; 13] = [
    "日付 day",
    "アプリ app",
    "分類 category",
    "利用者 user/group",
    "リクエスト requests",
    "送信 bytes_up",
    "受信 bytes_down",
    "アップロード uploads",
    "ブロック blocks",
    "初回 first_seen",
    "最終 last_seen",
    "認証 certifications",
    "テナント tenant",
];

fn fields(r: &Row) -> [String; 13] {
    [
        r.day.clone(),
        r.app.clone(),
        r.category.clone(),
        r.principal.clone(),
        r.requests.to_string(),
        r.bytes_up.to_string(),
        r.bytes_down.to_string(),
        r.uploads.to_string(),
        r.blocks.to_string(),
        r.first_seen.clone(),
        r.last_seen.clone(),
        r.certifications.clone(),
        r.tenant_provider.clone(),
    ]
}

/// Builds the report rows from the logs (shared with tests).
pub fn build(args: &ReportArgs) -> Result<Vec<Row>> {
    let offset = parse_offset(&args.utc_offset).map_err(usage_error)?;
    let by_group = match args.by.as_str() {
        "user" => false,
        "group" => true,
        other => return Err(usage_error(format!("--by {other:?}: use user or group"))),
    };
    let dir = args.loc.resolve()?;
    let q = build_query(
        Some(&args.since),
        args.until.as_deref(),
        offset,
        [None; 11],
        None,
    )
    .map_err(usage_error)?;
    let mut agg = Aggregator {
        apps: apps(args.policy.as_ref())?,
        by_group,
        offset_min: offset,
        rows: BTreeMap::new(),
    };
    let stats = crate::logs::search(&dir, &q, |r| {
        agg.add(&r);
        Ok(true)
    })
    .with_context(|| format!("reading the access logs in {}", dir.display()))?;
    for e in &stats.errors {
        eprintln!("komugate: warning: skipped an unreadable file: {e}");
    }
    Ok(agg.finish())
}

pub fn run_casb(cmd: CasbCommand) -> Result<()> {
    match cmd {
        CasbCommand::Report(a) => run_report(a),
        CasbCommand::Catalog { format } => {
            if !matches!(format.as_str(), "json" | "table") {
                return Err(usage_error(format!(
                    "--format {format:?}: use json or table"
                )));
            }
            let apps = komugate_policy::builtin_apps().map_err(anyhow::Error::msg)?;
            let mut out = io::stdout().lock();
            if format == "json" {
                serde_json::to_writer_pretty(&mut out, &apps)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "catalog version {}",
                    komugate_policy::casb::catalog_version()
                )?;
                for a in apps {
                    writeln!(
                        out,
                        "{:<18} {:<13} {:<32} {}",
                        a.name,
                        a.category,
                        a.certifications.join(" "),
                        a.hosts.join(" ")
                    )?;
                }
            }
            Ok(())
        }
    }
}

fn run_report(a: ReportArgs) -> Result<()> {
    let format = a.format.to_ascii_lowercase();
    if !matches!(format.as_str(), "table" | "csv" | "xlsx" | "json") {
        return Err(usage_error(format!(
            "--format {format:?}: use table, csv, xlsx or json"
        )));
    }
    let xlsx_out = match (format.as_str(), &a.out) {
        ("xlsx", Some(path)) => Some(path),
        ("xlsx", None) => return Err(usage_error("--format xlsx needs --out FILE.xlsx")),
        _ => None,
    };
    let rows = build(&a)?;
    if let Some(path) = xlsx_out {
        return write_xlsx(&rows, path);
    }
    let out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = io::BufWriter::new(out);
    match format.as_str() {
        "json" => {
            for r in &rows {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            }
        }
        "csv" => {
            out.write_all("\u{feff}".as_bytes())?;
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(out);
            w.write_record(HEADERS)?;
            for r in &rows {
                w.write_record(fields(r))?;
            }
            w.flush()?;
            return Ok(());
        }
        "table" => {
            writeln!(
                out,
                "{:<10} {:<18} {:<13} {:<20} {:>8} {:>12} {:>12} {:>7} {:>6}  {:<19} {:<19} risk",
                "day",
                "app",
                "category",
                "user/group",
                "requests",
                "bytes_up",
                "bytes_down",
                "uploads",
                "blocks",
                "first_seen",
                "last_seen"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<10} {:<18} {:<13} {:<20} {:>8} {:>12} {:>12} {:>7} {:>6}  {:<19} {:<19} {}",
                    r.day,
                    r.app,
                    r.category,
                    r.principal,
                    r.requests,
                    r.bytes_up,
                    r.bytes_down,
                    r.uploads,
                    r.blocks,
                    r.first_seen.get(..19).unwrap_or(&r.first_seen),
                    r.last_seen.get(..19).unwrap_or(&r.last_seen),
                    if r.certifications.is_empty() {
                        "-"
                    } else {
                        &r.certifications
                    }
                )?;
            }
        }
        other => bail!("--format {other:?}: use table, csv, xlsx or json"),
    }
    out.flush()?;
    Ok(())
}

fn write_xlsx(rows: &[Row], path: &PathBuf) -> Result<()> {
    use rust_xlsxwriter::{Format, Workbook};
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("cloud apps")?;
    let bold = Format::new().set_bold();
    for (c, h) in HEADERS.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *h, &bold)?;
    }
    for (i, r) in rows.iter().enumerate() {
        let row = i as u32 + 1;
        for (c, v) in fields(r).iter().enumerate() {
            if (4..=8).contains(&c) {
                ws.write_number(row, c as u16, v.parse::<f64>().unwrap_or(0.0))?;
            } else {
                ws.write_string(row, c as u16, v)?;
            }
        }
    }
    ws.autofilter(0, 0, rows.len() as u32, HEADERS.len() as u16 - 1)?;
    ws.set_freeze_panes(1, 0)?;
    wb.save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
