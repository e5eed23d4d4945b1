//! `komugate doctor`: checks a deployment the way an operator would by
//! hand, from the same configuration file the gateway runs with (on
//! Kubernetes: `kubectl exec deploy/komugate -- komugate doctor --config
//! /etc/komugate/config/komugate.toml`; k8s/README.md, "Fixed egress IP").
//!
//! It changes nothing: no PKI is created, no alert sent, no list updated.
//! Exit status 1 when a check failed (warnings alone are 0).

mod egress_seen;
mod http;
mod local;
pub mod report;
mod services;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

pub use report::{Check, Report, Status};

use crate::config::Config;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Gateway configuration file (the embedded demo configuration without it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides [data] dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Echo service URL (overrides [doctor] echo_url).
    #[arg(long)]
    echo_url: Option<String>,
    /// Address the fixed egress must be seen from (overrides [doctor] expected_egress; repeatable).
    #[arg(long)]
    expect_egress: Vec<IpAddr>,
    /// Seconds each network check may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Output: text (people) or json (scripts, the CronJob's log).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

pub fn run_doctor(args: DoctorArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    if let Some(d) = args.data {
        config.data.dir = d;
    }
    if let Some(url) = args.echo_url {
        config.doctor.echo_url = url;
    }
    if !args.expect_egress.is_empty() {
        config.doctor.expected_egress = args.expect_egress;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(diagnose(&config, Duration::from_secs(args.timeout.max(1))));
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let source = args
            .config
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<embedded default>".into());
        println!("komugate doctor — 設定 / configuration: {source}");
        print!("{}", report.render_text());
    }
    Ok(if report.count(Status::Fail) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Every check, in the order an operator reads them: files first, then
/// the running gateway, then what it depends on, then the egress.
pub async fn diagnose(config: &Config, timeout: Duration) -> Report {
    let mut report = Report::default();
    let now = SystemTime::now();
    let built = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut part = Report::default();
            let built = local::generation(&config, &mut part);
            (part, built)
        })
        .await
    };
    let built = match built {
        Ok((part, built)) => {
            report.checks.extend(part.checks);
            built
        }
        Err(e) => {
            report.push(
                Check::new("config", "設定 / configuration", Status::Fail).detail(e.to_string()),
            );
            None
        }
    };
    local::certificates(config, now, &mut report);
    if let Some(b) = &built {
        local::list_ages(&b.lists, config.doctor.list_max_age_days, now, &mut report);
    }
    services::running_gateway(config, timeout, &mut report).await;
    services::clickhouse(config, &mut report).await;
    services::smtp(config, &mut report).await;

    let metrics = Arc::new(crate::metrics::Metrics::new());
    let egress = crate::egress::Egress::new(&config.dns, &config.egress, metrics);
    let upstream_ca = (!config.inspect.upstream_ca.is_empty())
        .then(|| config.data_path(std::path::Path::new(&config.inspect.upstream_ca)));
    let tls = crate::egress::upstream::upstream_tls_config(upstream_ca.as_deref());
    match (egress, tls) {
        (Ok(egress), Ok(tls)) => {
            let tls = Arc::new(tls);
            services::webhook(config, &egress, tls.clone(), &mut report).await;
            let policy = built.as_ref().and_then(|b| b.policy.as_deref());
            let routes = egress_seen::routes(config, policy);
            egress_seen::check(config, &routes, &egress, tls, timeout, &mut report).await;
        }
        (Err(e), _) | (_, Err(e)) => report.push(
            Check::new("egress", "送信 / egress", Status::Fail)
                .detail(format!("{e:#}"))
                .fix("[dns] servers と [inspect] upstream_ca を確認 / check [dns] servers and [inspect] upstream_ca"),
        ),
    }
    report
}
