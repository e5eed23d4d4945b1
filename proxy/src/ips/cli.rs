//! `komugate ips ...`: check rules files and threat-intel lists offline.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum IpsCommand {
    /// Load Suricata rules files and print what loads and what is skipped, by reason.
    Check {
        /// Rules files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Exit with an error if any rule is skipped.
        #[arg(long)]
        strict: bool,
    },
    /// Load threat-intel lists and print their entries and invalid lines.
    CheckLists {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run_ips(cmd: IpsCommand) -> anyhow::Result<()> {
    match cmd {
        IpsCommand::Check { files, strict } => {
            let started = std::time::Instant::now();
            let (_engine, report) = super::IpsEngine::load(&files)?;
            print!("{}", report.summary());
            println!(
                "compiled in {:.0} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
            if strict && report.skipped_total() > 0 {
                anyhow::bail!("{} rule(s) skipped (--strict)", report.skipped_total());
            }
            Ok(())
        }
        IpsCommand::CheckLists { files } => {
            let (_intel, reports) = super::ThreatIntel::load(&files)?;
            for r in reports {
                println!(
                    "{}: {} addresses/networks, {} domains, {} invalid lines",
                    r.name,
                    r.ips,
                    r.domains,
                    r.invalid.len()
                );
                for (line, text) in r.invalid.iter().take(20) {
                    println!("  line {line}: {text:?}");
                }
            }
            Ok(())
        }
    }
}
