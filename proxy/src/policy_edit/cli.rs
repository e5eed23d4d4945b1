//! `komugate policy diff OLD NEW [--against-logs 7d]`: the line diff of two
//! policy files and, with `--against-logs`, the dry run of the change over
//! that period of access logs (the console's preview, on the command line).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use clap::Args;

use super::dryrun::{self, Direction, DryRunOptions, DryRunReport};
use super::textdiff;

#[derive(Args)]
pub struct DiffArgs {
    /// The policy in force (or any earlier version).
    pub old: PathBuf,
    /// The changed policy.
    pub new: PathBuf,
    /// Dry-run the change over the access logs of this last period: 7d, 24h, 30d.
    #[arg(long, value_name = "PERIOD")]
    pub against_logs: Option<String>,
    #[command(flatten)]
    pub loc: crate::logs::cli::LogDirArgs,
    /// Worker threads for the dry run (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the dry run as JSON (after the diff).
    #[arg(long)]
    pub json: bool,
}

/// `7d`, `24h` → milliseconds.
pub fn parse_period(s: &str) -> Result<i64> {
    let t = s.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| anyhow!("--against-logs {s:?}: give a period like 7d or 24h"))?;
    let ms = match unit {
        "d" => n * 86_400_000,
        "h" => n * 3_600_000,
        _ => {
            return Err(anyhow!(
                "--against-logs {s:?}: give a period like 7d or 24h"
            ))
        }
    };
    if !(1..=400 * 86_400_000).contains(&ms) {
        return Err(anyhow!("--against-logs {s:?}: between 1h and 400d"));
    }
    Ok(ms)
}

pub fn run(a: DiffArgs) -> Result<ExitCode> {
    run_to(a, &mut std::io::stdout().lock())
}

/// `run`, writing the diff and the dry run to `out` (errors to stderr).
pub fn run_to(a: DiffArgs, out: &mut dyn std::io::Write) -> Result<ExitCode> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| anyhow!("cannot read {}: {e}", p.display()))
    };
    let (old_text, new_text) = (read(&a.old)?, read(&a.new)?);
    let d = textdiff::diff(&old_text, &new_text);
    write!(
        out,
        "{}",
        d.unified(&a.old.display().to_string(), &a.new.display().to_string())
    )?;
    let mut failed = false;
    let mut compiled = Vec::new();
    for p in [&a.old, &a.new] {
        match komugate_policy::Policy::load(p) {
            Ok(pol) => compiled.push(pol),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: the policy is not valid", p.display());
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let Some(period) = a.against_logs.as_deref() else {
        return Ok(ExitCode::SUCCESS);
    };
    let ms = parse_period(period)?;
    let dir = a.loc.resolve()?;
    let now = crate::logs::record::now_ms();
    let mut opts = DryRunOptions::last_days(1);
    opts.since_ms = now - ms;
    opts.until_ms = now + 1;
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let report = dryrun::dry_run(&compiled[0], &compiled[1], &dir, &opts)?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", text_report(&report, &dir.display().to_string()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The dry run as text.
pub fn text_report(r: &DryRunReport, dir: &str) -> String {
    let mut s = format!(
        "\ndry run over {dir}: {} records from {} to {} ({} segments, {} live files), {} distinct cases evaluated in {} ms\n",
        r.records,
        crate::logs::record::format_rfc3339_ms(r.since_ms),
        crate::logs::record::format_rfc3339_ms(r.until_ms),
        r.segments,
        r.live_files,
        r.evaluated,
        r.elapsed_ms
    );
    for (name, d) in [
        ("newly blocked", &r.newly_blocked),
        ("newly allowed", &r.newly_allowed),
    ] {
        s.push_str(&direction(name, d));
    }
    for e in &r.errors {
        s.push_str(&format!("not read: {e}\n"));
    }
    s
}

fn direction(name: &str, d: &Direction) -> String {
    let mut s = format!(
        "{name}: {} requests, {} devices, {} clients without a device\n",
        d.requests, d.devices, d.anonymous_clients
    );
    for h in &d.top_hosts {
        s.push_str(&format!("  {:>8}  {}\n", h.requests, h.host));
    }
    for r in &d.rules {
        s.push_str(&format!(
            "  rule {} -> {}: {}\n",
            r.old_rule, r.new_rule, r.requests
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn periods() {
        assert_eq!(super::parse_period("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(super::parse_period("24h").unwrap(), 86_400_000);
        assert!(super::parse_period("7").is_err());
        assert!(super::parse_period("0d").is_err());
    }
}
