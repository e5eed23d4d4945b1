//! `komugate report monthly --month 2026-11 --format xlsx|html --out FILE`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{Month, MonthlyReport};
use crate::aggregate::{LogAggregates, SegmentStore};
use crate::cli::usage_error;
use crate::logs::audit::AuditEvent;

#[derive(Subcommand)]
pub enum ReportCommand {
    /// The committee's monthly report: per school and category, top blocked, cloud apps, IPS/DLP, devices.
    Monthly(MonthlyArgs),
}

#[derive(Args)]
pub struct MonthlyArgs {
    /// The month, YYYY-MM (month boundaries in the configured zone, JST by default).
    #[arg(long)]
    pub month: String,
    /// xlsx (Excel, with charts) or html (printable page).
    #[arg(long)]
    pub format: String,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Where the logs are (the configuration also gives the time zone).
    #[command(flatten)]
    pub loc: crate::logs::cli::LogDirArgs,
    /// Month boundaries and times in this UTC offset (+09:00) instead of the configured zone.
    #[arg(long, allow_hyphen_values = true)]
    pub utc_offset: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Xlsx,
    Html,
}

pub fn run_report(cmd: ReportCommand) -> Result<()> {
    match cmd {
        ReportCommand::Monthly(a) => monthly(a),
    }
}

/// Refuses an output path whose folder does not exist or that is a folder,
/// before any counting.
fn check_out(out: &Path) -> Result<()> {
    if out.as_os_str().is_empty() {
        return Err(usage_error(
            "--out is empty: give the file to write, like report-2026-11.xlsx",
        ));
    }
    if out.is_dir() {
        return Err(usage_error(format!(
            "--out {} is a directory: give a file name inside it, like {}",
            out.display(),
            out.join("report.xlsx").display()
        )));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(usage_error(format!(
            "--out {}: the directory {} does not exist; create it first or write elsewhere",
            out.display(),
            parent.display()
        )));
    }
    Ok(())
}

fn monthly(a: MonthlyArgs) -> Result<()> {
    let month = Month::parse(&a.month).map_err(|e| usage_error(format!("--month: {e}")))?;
    let format = match a.format.to_ascii_lowercase().as_str() {
        "xlsx" | "excel" => Format::Xlsx,
        "html" => Format::Html,
        other => {
            return Err(usage_error(format!(
                "--format {other:?}: use xlsx (Excel with charts) or html (printable page)"
            )))
        }
    };
    check_out(&a.out)?;
    let mut config = match &a.loc.config {
        Some(p) => crate::config::Config::load(p)?,
        None => crate::config::Config::embedded_default(),
    };
    if let Some(d) = &a.loc.data {
        config.data.dir = d.clone();
    }
    let (offset_min, zone) = match &a.utc_offset {
        Some(o) => {
            let m = crate::logs::query::parse_offset(o)
                .map_err(|e| usage_error(format!("--utc-offset: {e}")))?;
            (
                m,
                crate::logs::record::format_with_offset(0, m, false)[19..].to_string(),
            )
        }
        None => (
            config.block_page.time_zone.offset_minutes(),
            crate::console::zone_label(&config.block_page.time_zone),
        ),
    };
    let dir = a
        .loc
        .dir
        .clone()
        .unwrap_or_else(|| crate::logs::cli::log_dir(&config));
    // Gateway-wide from ClickHouse when the configuration logs there.
    let store: std::sync::Arc<dyn LogAggregates> = if a.loc.dir.is_none()
        && config.log.clickhouse.enabled
    {
        std::sync::Arc::new(
            crate::logs::clickhouse_agg::ClickHouseAggregates::new(&config.log.clickhouse, None)
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        if !dir.is_dir() {
            anyhow::bail!(
                    "log directory {} does not exist: pass the gateway's log directory with --dir (e.g. komugate-data/logs) or its configuration with --config",
                    dir.display()
                );
        }
        std::sync::Arc::new(SegmentStore::new(dir, None))
    };
    let audit_log = if a.loc.dir.is_some() {
        a.loc.audit_log()?
    } else {
        config.data_path(&config.log.audit_log)
    };
    crate::logs::audit::AuditLog::open(&audit_log)
        .and_then(|log| {
            log.append(AuditEvent::LogSearch {
                actor: crate::logs::audit::cli_actor(),
                via: "cli".into(),
                query: format!("report monthly month={}", month.label()),
                format: format!(
                    "report-{}",
                    if format == Format::Xlsx {
                        "xlsx"
                    } else {
                        "html"
                    }
                ),
                out: Some(a.out.display().to_string()),
            })
            .map(|_| ())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "not written: the report cannot be recorded in the audit log {}",
                audit_log.display()
            )
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = rt
        .block_on(MonthlyReport::build(&*store, month, offset_min, &zone))
        .map_err(|e| anyhow::anyhow!("cannot count {}: {e}", month.label()))?;
    let bytes = match format {
        Format::Xlsx => super::xlsx::workbook(&report).map_err(anyhow::Error::msg)?,
        Format::Html => super::html::standalone(&report, crate::console::text::Lang::Ja)
            .map_err(anyhow::Error::msg)?
            .into_bytes(),
    };
    crate::atomic_file::write(&a.out, &bytes)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!(
        "komugate: monthly report {} written to {} ({} requests, {} blocks)",
        month.label(),
        a.out.display(),
        report.total.requests,
        report.total.blocks
    );
    for p in &report.problems {
        eprintln!("komugate: warning: {p}");
    }
    Ok(())
}
