//! The `komugate` command line.
//!
//! Conventions every subcommand follows (README "Command line"):
//!
//! - **Names**: subcommands and flags are lowercase kebab-case. A group is a
//!   noun (`pki`, `policy`, `logs`, `ips`, ...); its subcommands say what
//!   they do (`check`, `explain`, `issue-device`, `export-ca`). The file a
//!   command is about is positional (`policy check FILE`, `ips check
//!   FILE...`); everything else is a flag, with the same spelling wherever
//!   it appears: `--config` / `--data` (gateway configuration and data
//!   directory), `--dir`, `--out FILE` (output; standard output without
//!   it), `--format` (output format), `--since` / `--until`,
//!   `--utc-offset`, `--force` (overwrite). Repeatable flags are singular
//!   (`--san`, `--group`, `--beacon`).
//! - **Exit status**: `0` success; `1` failure, or a check that found
//!   problems (`policy check`, `config check`, `ips check --strict`,
//!   `audit verify`); `2` usage error: an unknown subcommand or flag, a
//!   missing or invalid value, or flags that do not go together. Messages
//!   go to standard error as `komugate: error: ...` (`komugate: usage
//!   error: ...` for status 2, clap's own format for what it rejects).
//!
//! Each group's handler is `run_<group>` (`crate::logs::cli::run_logs`,
//! `crate::ips::cli::run_ips`, ...); a handler returns the exit status, or
//! an error (status 1, or 2 for a [`UsageError`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "komugate",
    version,
    about = "komugate: secure web gateway / ZTNA edge proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: the size of the larger variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the gateway (the embedded demo configuration without --config).
    Serve {
        /// Gateway configuration file (TOML); see `komugate config default`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides [data] dir).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Certificate authorities and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Laptop client: local HTTP/SOCKS5/DNS proxy over one mTLS HTTP/2 connection to the gateway.
    Client(crate::client::ClientArgs),
    /// Site beacon: signs short-lived site assertions for devices on this site's LAN.
    Beacon(crate::beacon::BeaconArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Search, export and maintain the access logs.
    #[command(subcommand)]
    Logs(crate::logs::cli::LogsCommand),
    /// The audit log of administration.
    #[command(subcommand)]
    Audit(crate::logs::cli::AuditCommand),
    /// Console accounts: `komugate admin user add|passwd|remove|list`.
    #[command(subcommand)]
    Admin(crate::console::cli::AdminCommand),
    /// Policy tools: check, explain, import a squidGuard configuration.
    #[command(subcommand)]
    Policy(crate::cli_policy::PolicyCommand),
    /// Blocklist tools: look URLs up, compile a snapshot.
    #[command(subcommand)]
    Categories(crate::cli_policy::CategoriesCommand),
    /// IPS rules and threat-intel lists (`komugate ips check FILE`).
    #[command(subcommand)]
    Ips(crate::ips::cli::IpsCommand),
    /// Cloud apps (CASB): usage report from the access logs, the built-in catalog.
    #[command(subcommand)]
    Casb(crate::stages::casb::report::CasbCommand),
    /// Reports for the board: `komugate report monthly --month 2026-11 --format xlsx --out F`.
    #[command(subcommand)]
    Report(crate::report::cli::ReportCommand),
    /// Check a deployment: configuration, certificates, list ages, ClickHouse,
    /// SMTP, webhook, the running gateway, and the egress address seen outside.
    Doctor(crate::doctor::DoctorArgs),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Print the inspection CA certificate (what laptops must trust), as PEM or DER.
    ExportCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: CaFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a site beacon's Ed25519 key pair (PREFIX.key, PREFIX.pub) for `komugate beacon`.
    BeaconKey(crate::beacon::BeaconKeyArgs),
    /// Create the device CA, the inspection CA and the gateway's server certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Subject alternative names of the server certificate (default: localhost, 127.0.0.1).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Overwrite existing keys and certificates.
        #[arg(long)]
        force: bool,
        /// Audit log to record this in (default: audit.log next to --dir).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Issue a device certificate signed by the device CA.
    IssueDevice {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Output prefix: writes PREFIX.pem and PREFIX.key.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (1 to 3650).
        #[arg(long, default_value_t = crate::pki::DEFAULT_DEVICE_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::pki::MAX_DEVICE_DAYS)))]
        days: u32,
        #[arg(long)]
        force: bool,
        /// Audit log to record this in (default: audit.log next to --dir).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Issue a certificate for every device of a CSV (a `device_id` column;
    /// the registry CSV will do; UTF-8 or CP932) as a zip of DEVICE.pfx, all
    /// under one generated password printed once.
    IssueBulk {
        #[arg(long)]
        dir: PathBuf,
        /// The CSV of devices.
        csv: PathBuf,
        /// The zip to write.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (1 to 3650).
        #[arg(long, default_value_t = crate::pki::DEFAULT_DEVICE_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::pki::MAX_DEVICE_DAYS)))]
        days: u32,
        /// The revoked-serials list (default: DIR/revoked-serials.txt).
        #[arg(long)]
        list: Option<PathBuf>,
        #[arg(long)]
        force: bool,
        /// Audit log to record this in (default: audit.log next to --dir).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// List the device certificates issued from DIR: device, serial, expiry, revoked.
    List {
        #[arg(long)]
        dir: PathBuf,
        /// Only valid certificates that expire within this many days.
        #[arg(long)]
        expiring_within: Option<u32>,
        /// The revoked-serials list (default: DIR/revoked-serials.txt).
        #[arg(long)]
        list: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Revoke a device certificate: add its serial to the revoked-serials list
    /// ([tls] revoked_serials) that the gateway applies at its next reload.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's serial number (hex; colons allowed).
        #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
        serial: Option<String>,
        /// The certificate file (PEM) to take the serial from.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Why (lost, stolen, replaced ...); recorded in the list and the audit log.
        #[arg(long)]
        reason: String,
        /// The revoked-serials list (default: DIR/revoked-serials.txt).
        #[arg(long)]
        list: Option<PathBuf>,
        /// Audit log to record this in (default: audit.log next to --dir).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CaFormat {
    Pem,
    Der,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration (commented TOML).
    Default,
    /// Check a configuration file.
    Check { file: PathBuf },
}

/// Exit status of a usage error (the status clap uses for the ones it finds).
pub const EXIT_USAGE: u8 = 2;

/// A command called the wrong way (an invalid flag value, flags that do not
/// go together) found after clap's own checks: exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An [`UsageError`] as an `anyhow` error.
pub fn usage_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Serve { config, data } => done(run_serve(config.as_deref(), data)),
        Command::Pki(cmd) => done(run_pki(cmd)),
        Command::Client(args) => done(crate::client::run_client(args)),
        Command::Beacon(args) => done(crate::beacon::run_beacon(args)),
        Command::Logs(cmd) => done(crate::logs::cli::run_logs(cmd)),
        Command::Audit(cmd) => done(crate::logs::cli::run_audit(cmd)),
        Command::Admin(cmd) => done(crate::console::cli::run_admin(cmd)),
        Command::Ips(cmd) => done(crate::ips::cli::run_ips(cmd)),
        Command::Casb(cmd) => done(crate::stages::casb::report::run_casb(cmd)),
        Command::Report(cmd) => done(crate::report::cli::run_report(cmd)),
        Command::Policy(cmd) => crate::cli_policy::run_policy(cmd),
        Command::Categories(cmd) => crate::cli_policy::run_categories(cmd),
        Command::Config(cmd) => done(run_config(cmd)),
        Command::Doctor(args) => crate::doctor::run_doctor(args),
    };
    exit_status(result)
}

/// The documented exit status of a handler's result, with the error on stderr.
pub fn exit_status(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("komugate: usage error: {e:#} (see `komugate help`)");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("komugate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        ConfigCommand::Check { file } => {
            Config::load(&file).map(|_| println!("{}: ok", file.display()))
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KOMUGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_pki(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::BeaconKey(args) => crate::beacon::run_beacon_key(args),
        PkiCommand::ExportCa { dir, format, out } => {
            let path = crate::pki::PkiPaths::new(&dir).inspect_ca_cert();
            // Parsing validates the file; PEM output is the file itself.
            let certs = crate::pki::load_certs(&path)?;
            let der = certs
                .into_iter()
                .next()
                .context("the inspection CA file holds no certificate")?;
            let bytes = match format {
                CaFormat::Der => der.to_vec(),
                CaFormat::Pem => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            };
            match out {
                Some(out) => std::fs::write(&out, bytes)
                    .with_context(|| format!("cannot write {}", out.display()))?,
                None => {
                    use std::io::Write as _;
                    std::io::stdout().write_all(&bytes)?;
                }
            }
            Ok(())
        }
        PkiCommand::Init {
            dir,
            sans,
            force,
            audit_log,
        } => {
            let sans = if sans.is_empty() {
                default_sans()
            } else {
                sans
            };
            let before = crate::pki_audit::PkiSnapshot::take(&dir);
            crate::pki::init(&dir, &sans, force)?;
            let audit = crate::pki_audit::audit_log_path(&dir, audit_log);
            let command = if force {
                "komugate pki init --force"
            } else {
                "komugate pki init"
            };
            before.record_init(&audit, &crate::logs::audit::cli_actor(), command)?;
            println!(
                "PKI written to {} (audited in {})",
                dir.display(),
                audit.display()
            );
            println!("  device-ca.pem/.key    signs device certificates");
            println!("  inspect-ca.pem/.key   the CA laptops trust (TLS inspection, gateway certificate)");
            println!(
                "  server.pem/.key       the gateway's certificate for {}",
                sans.join(", ")
            );
            Ok(())
        }
        PkiCommand::IssueDevice {
            dir,
            device,
            groups,
            out,
            days,
            force,
            audit_log,
        } => {
            let (cert, key) = crate::pki::issue_device(
                &dir,
                &crate::pki::DeviceCertOptions {
                    device_id: &device,
                    groups: &groups,
                    days,
                },
                &out,
                force,
            )?;
            let audit = crate::pki_audit::audit_log_path(&dir, audit_log);
            crate::pki_audit::record_issue(
                &audit,
                &crate::logs::audit::cli_actor(),
                &cert,
                &device,
                &groups,
            )?;
            println!(
                "device certificate for {device}: {} (key {})",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        PkiCommand::IssueBulk {
            dir,
            csv,
            out,
            days,
            list,
            force,
            audit_log,
        } => {
            if out.exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to overwrite it",
                    out.display()
                );
            }
            let bytes =
                std::fs::read(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
            let list = list.unwrap_or_else(|| crate::pki::inventory::default_revoked_list(&dir));
            let bulk = crate::pki::delivery::issue_bulk(&dir, &list, &bytes, days)
                .map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
            let audit = crate::pki_audit::audit_log_path(&dir, audit_log);
            crate::pki_audit::record_delivery(
                &audit,
                &crate::logs::audit::cli_actor(),
                &bulk.records,
                &out.display().to_string(),
            )?;
            std::fs::write(&out, &bulk.zip)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{} device certificate(s) in {} (one DEVICE.pfx each)",
                bulk.records.len(),
                out.display()
            );
            println!(
                "  password of every .pfx (shown once, not stored): {}",
                bulk.password
            );
            Ok(())
        }
        PkiCommand::List {
            dir,
            expiring_within,
            list,
            format,
        } => {
            let list = list.unwrap_or_else(|| crate::pki::inventory::default_revoked_list(&dir));
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let records: Vec<_> = crate::pki::inventory::list(&dir, &list)?
                .into_iter()
                .filter(|r| expiring_within.is_none_or(|d| r.expiring_within(i64::from(d), now)))
                .collect();
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&records)?),
                ListFormat::Text => {
                    println!("device\tserial\tnot_after\tstatus");
                    for r in &records {
                        let status = if r.revoked {
                            "revoked"
                        } else if r.expired(now) {
                            "expired"
                        } else {
                            "valid"
                        };
                        println!(
                            "{}\t{}\t{}\t{status}",
                            r.device,
                            r.serial,
                            crate::record::rfc3339(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_secs(r.not_after.max(0) as u64)
                            )
                        );
                    }
                }
            }
            Ok(())
        }
        PkiCommand::Revoke {
            dir,
            serial,
            cert,
            reason,
            list,
            audit_log,
        } => {
            let target = match (serial, cert) {
                (Some(s), _) => crate::pki_audit::RevokeTarget::Serial(s),
                (None, Some(c)) => crate::pki_audit::RevokeTarget::Cert(c),
                (None, None) => anyhow::bail!("give --serial HEX or --cert FILE"),
            };
            let list = list.unwrap_or_else(|| crate::pki::inventory::default_revoked_list(&dir));
            let audit = crate::pki_audit::audit_log_path(&dir, audit_log);
            let (serial, new) = crate::pki_audit::revoke(
                &list,
                &target,
                &reason,
                &audit,
                &crate::logs::audit::cli_actor(),
            )?;
            if new {
                println!("serial {serial} revoked: added to {}", list.display());
                println!("  the gateway applies it at its next reload (SIGHUP, POST /admin/reload, or by itself when [tls] revoked_serials names this file and [policy] watch is on)");
            } else {
                println!("serial {serial} is already in {}", list.display());
            }
            Ok(())
        }
    }
}

fn default_sans() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// Loads the config (or the embedded default), applies `--data`, prepares
/// the PKI of the embedded demo.
pub fn prepare(config_path: Option<&Path>, data: Option<PathBuf>) -> Result<Config> {
    let mut config = match config_path {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    if let Some(d) = data {
        config.data.dir = d;
    }
    std::fs::create_dir_all(&config.data.dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data.dir.display()
        )
    })?;
    if config.data.create_pki {
        let pki_dir = config.data.dir.join("pki");
        let audit = config.data_path(&config.log.audit_log);
        let before = crate::pki_audit::PkiSnapshot::take(&pki_dir);
        if crate::pki::ensure(&pki_dir, &default_sans())? {
            tracing::info!("created the demo PKI in {}", pki_dir.display());
            before.record_init(&audit, "komugate serve", "[data] create_pki on first start")?;
        }
        if !config.data.demo_device.is_empty() {
            let prefix = pki_dir.join("demo-device");
            if !prefix.with_extension("pem").exists() {
                crate::pki::issue_device(
                    &pki_dir,
                    &crate::pki::DeviceCertOptions {
                        device_id: &config.data.demo_device,
                        groups: &["demo".to_string()],
                        days: 730,
                    },
                    &prefix,
                    false,
                )?;
                crate::pki_audit::record_issue(
                    &audit,
                    "komugate serve ([data] demo_device on first start)",
                    &prefix.with_extension("pem"),
                    &config.data.demo_device,
                    &["demo".to_string()],
                )?;
            }
        }
    }
    Ok(config)
}

fn run_serve(config_path: Option<&Path>, data: Option<PathBuf>) -> Result<()> {
    let config = prepare(config_path, data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let drain = Duration::from_secs(config.limits.drain_secs);
        let stop_demo = tokio_util::sync::CancellationToken::new();
        let demo_origin = match config.data.demo_origin.trim() {
            "" => None,
            addr => {
                let addr = addr.parse().with_context(|| {
                    format!("[data] demo_origin {addr:?} is not an address like 127.0.0.1:8081")
                })?;
                Some(crate::demo_origin::start(addr, stop_demo.clone()).await?)
            }
        };
        let demo_account = crate::console::cli::ensure_demo_account(&config)?;
        let running = crate::gateway::start::start(config).await?;
        print_banner(&running, demo_origin, demo_account);
        wait_for_signal().await;
        stop_demo.cancel();
        eprintln!("komugate: shutting down: no new connections; draining for up to {drain:?}");
        running.shutdown(drain).await;
        Ok(())
    })
}

fn print_banner(
    running: &crate::gateway::start::Running,
    demo_origin: Option<std::net::SocketAddr>,
    demo_account: Option<(String, String)>,
) {
    let config = &running.gateway.config;
    let addrs = &running.addrs;
    let data = &config.data.dir;
    println!("komugate {} is running", env!("CARGO_PKG_VERSION"));
    if let Some(a) = addrs.plain {
        println!(
            "  plain HTTP proxy   http://{a}  (clients: {})",
            config
                .listen
                .plain_clients
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(a) = addrs.mtls {
        println!("  mTLS HTTPS proxy   https://{a}  (device certificate required)");
    }
    if let Some(a) = addrs.admin {
        let scheme = if addrs.admin_tls { "https" } else { "http" };
        println!("  admin              {scheme}://{a}/metrics  {scheme}://{a}/healthz");
        println!("  console            {scheme}://{a}/console/");
        match &demo_account {
            Some((name, password)) => println!(
                "  console sign-in    {name} / {password}  (generated now, shown once; `komugate admin user passwd {name}` sets a new one)"
            ),
            None if !config.data.demo_console_user.is_empty() => println!(
                "  console sign-in    {} (password shown at first start; `komugate admin user passwd {}` sets a new one)",
                config.data.demo_console_user, config.data.demo_console_user
            ),
            None => {}
        }
    }
    println!(
        "  access log         {}",
        config.data_path(&config.log.access_log).display()
    );
    if let Some(origin) = demo_origin {
        println!("  demo origin        http://{origin}/  (a hello page to proxy to)");
    }
    if let Some(admin) = addrs.admin {
        println!("\nTry it:");
        println!("  curl http://{admin}/healthz");
    }
    if let (Some(origin), Some(plain)) = (demo_origin, addrs.plain) {
        println!("  curl -x http://{plain} http://{origin}/");
        println!(
            "  curl -x http://{plain} http://blocked.example/      # blocked: 403 + block page"
        );
        if let Some(admin) = addrs.admin {
            println!(
                "  curl -x http://{plain} http://{admin}/metrics      # refused: the admin listener is not reachable through the proxy"
            );
        }
    }
    if let (Some(origin), Some(mtls)) = (demo_origin, addrs.mtls) {
        let pki = data.join("pki");
        let demo = pki.join("demo-device");
        if demo.with_extension("pem").exists() {
            println!(
                "  curl --proxy https://localhost:{} --proxy-cacert {} --proxy-cert {} --proxy-key {} http://{origin}/",
                mtls.port(),
                pki.join("inspect-ca.pem").display(),
                demo.with_extension("pem").display(),
                demo.with_extension("key").display(),
            );
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
