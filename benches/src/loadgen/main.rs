//! komugate-loadgen: the school-morning load generator, its fast local
//! origin, idle-tunnel memory measurement, inspected sessions (steady state
//! for profiling, many held open for memory) and the side-by-side table.
//!
//! ```text
//! komugate-loadgen origin --http 127.0.0.1:18080 --https 127.0.0.1:18443 --ca-out origin-ca.pem
//! komugate-loadgen run --proxy mtls://127.0.0.1:8443 --pki DIR --trust origin-ca.pem \
//!     --devices 800 --ramp 60 --ops-per-device 20 --mix http=5,connect=3,blocked=1,download=0 ...
//! komugate-loadgen idle --proxy mtls://127.0.0.1:8443 --pki DIR --tunnels 10000 --proxy-pid PID \
//!     [--replica mtls://127.0.0.1:8444,pid=PID2,tunnels=10000,targets=127.0.0.1:18090]
//! komugate-loadgen compare --title T --left squid.json --right komugate.json
//! komugate-loadgen steady --proxy 127.0.0.1:3128 --trust inspect-ca.pem [--inner-h2] \
//!     --warmup 200 --requests 2000 --before CMD --after CMD     # one inspected session
//! komugate-loadgen held --proxy 127.0.0.1:3128 --trust inspect-ca.pem --sessions 5000 --proxy-pid PID
//! ```

/// mimalloc, like the gateway: the load generator and origin share the
/// machine's cores with the proxy under test, so their own allocator cost
/// (glibc malloc under many threads) is taken from both proxies alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod idle;
mod inspected;
mod origin;
mod procstat;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "komugate-loadgen",
    about = "komugate school-morning load generator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fast local origin (HTTP and HTTPS) for benchmarks.
    Origin {
        #[arg(long)]
        http: Vec<SocketAddr>,
        #[arg(long)]
        https: Vec<SocketAddr>,
        /// Extra DNS names in the HTTPS certificate.
        #[arg(long)]
        san: Vec<String>,
        /// Write the origin CA certificate (PEM) here.
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// Default response delay in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Also answer DNS (UDP) on this address: every A query → 127.0.0.1.
        #[arg(long)]
        dns: Option<SocketAddr>,
        /// Mint HTTPS certificates at start for these host names (one per
        /// line; other SNI names are minted on first use).
        #[arg(long)]
        cert_hosts: Option<PathBuf>,
    },
    /// Run a workload through a proxy and report.
    Run(RunArgs),
    /// Hold idle CONNECT tunnels open and report proxy memory per tunnel.
    Idle {
        #[command(flatten)]
        common: RunArgs,
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        /// Tunnels (HTTP/2 streams) per device connection.
        #[arg(long, default_value_t = 200)]
        per_conn: usize,
        /// CONNECT targets, round robin (several ports avoid ephemeral-port exhaustion).
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Another proxy process to open tunnels to at the same time, with its
        /// own tunnel count and targets (repeatable): past one process's
        /// open-file limit the tunnels are spread over replicas.
        /// `mtls://IP:PORT,pid=PID,tunnels=N,targets=HOST:PORT[+HOST:PORT...]`
        #[arg(long)]
        replica: Vec<String>,
    },
    /// One inspected session in steady state: W warm-up GETs, then N
    /// measured GETs on the same keep-alive session (hooks around them).
    Steady {
        #[command(flatten)]
        session: SessionArgs,
        #[arg(long, default_value = "/bytes/1024")]
        path: String,
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        /// Shell command run just before the measured phase.
        #[arg(long)]
        before: Option<String>,
        /// Shell command run just after the measured phase.
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        proxy_pid: Option<u32>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Many inspected sessions open at once: proxy RSS per session, idle
    /// and with one request in flight on each.
    Held {
        #[command(flatten)]
        session: SessionArgs,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Sessions being opened at the same time.
        #[arg(long, default_value_t = 50)]
        parallel: usize,
        #[arg(long, default_value = "/bytes/1024")]
        path: String,
        /// The in-flight request of the busy phase (the origin delays it).
        #[arg(long, default_value = "/bytes/1024?delay=5000")]
        busy_path: String,
        /// Seconds every session stays quiet before the idle RSS sample
        /// (another sample is taken 2 s in).
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        #[arg(long)]
        proxy_pid: u32,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Markdown table of two reports side by side with the ratio right ÷ left.
    Compare {
        #[arg(long)]
        title: String,
        #[arg(long)]
        left: PathBuf,
        #[arg(long, default_value = "Squid")]
        left_name: String,
        #[arg(long)]
        right: PathBuf,
        #[arg(long, default_value = "komugate")]
        right_name: String,
    },
}

/// An inspected session through a plain proxy listener.
#[derive(Args, Clone)]
struct SessionArgs {
    /// The proxy's plain listener, IP:PORT.
    #[arg(long)]
    proxy: SocketAddr,
    /// CONNECT target (an inspected name the proxy resolves to the origin).
    #[arg(long, default_value = "outlook.office365.com:443")]
    target: String,
    /// Roots of the inner TLS (the inspection CA); repeatable.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// Offer `h2, http/1.1` inside, as a browser does.
    #[arg(long)]
    inner_h2: bool,
}

impl SessionArgs {
    fn spec(&self) -> inspected::SessionSpec {
        inspected::SessionSpec {
            proxy: self.proxy,
            target: self.target.clone(),
            trust: self.trust.clone(),
            inner_h2: self.inner_h2,
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long, default_value = "run")]
    label: String,
    /// plain://IP:PORT (HTTP forward proxy) or mtls://IP:PORT (device certificates).
    #[arg(long)]
    proxy: String,
    #[arg(long, default_value = "localhost")]
    proxy_name: String,
    /// CA of the proxy's server certificate (default PKI/inspect-ca.pem).
    #[arg(long)]
    proxy_ca: Option<PathBuf>,
    /// komugate PKI dir (device-ca.pem/.key) to issue device certificates from.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// Roots for TLS inside tunnels (origin CA, inspection CA); repeatable.
    #[arg(long)]
    trust: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:18080")]
    origin_http: String,
    #[arg(long, default_value = "127.0.0.1:18443")]
    origin_https: String,
    /// CONNECT target of inspected traffic (a Microsoft 365 name mapped to the origin by DNS).
    #[arg(long, default_value = "outlook.office365.com:443")]
    inspect_target: String,
    #[arg(long, default_value = "http://blocked.example/")]
    blocked_url: String,
    /// Status codes counted as the proxy's block answer, comma separated
    /// (403 = komugate's block page; squidGuard redirects with 302).
    #[arg(long, default_value = "403")]
    blocked_status: String,
    /// Host names (one per line) that `http` and `connect` operations address
    /// instead of the origin's address: `http://HOST:<--origin-http port>/…`,
    /// `CONNECT HOST:<--origin-https port>` with TLS verified for HOST. The
    /// proxy must resolve them to the origin.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Host names (one per line) the proxy must block; `http` / `connect`
    /// operations pick one with probability --blocked-share and expect a
    /// --blocked-status answer (recorded as `http_blocked` / `connect_blocked`).
    #[arg(long, requires = "hosts")]
    blocked_hosts: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    blocked_share: f64,
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// All devices wake within this many seconds.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Keep going this many seconds after the ramp (closed loop).
    #[arg(long)]
    duration: Option<f64>,
    /// Operations per device (default: unlimited with --duration, else 10).
    #[arg(long)]
    ops_per_device: Option<u64>,
    /// Concurrent operations per device.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Share of devices using HTTP/2 to the proxy (mTLS).
    #[arg(long, default_value_t = 0.5)]
    h2_share: f64,
    #[arg(long, default_value = "http=5,connect=3,blocked=1")]
    mix: String,
    /// Small response size (bytes).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Large body size (bytes) for upload/download.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    large: usize,
    #[arg(long, default_value_t = 1)]
    requests_per_tunnel: u32,
    /// Offer `h2, http/1.1` by ALPN inside tunnels, as a browser does, and
    /// speak HTTP/2 there when the proxy's session negotiates it.
    #[arg(long)]
    inner_h2: bool,
    /// Make every Nth operation fetch /status/500 from the origin (fault injection).
    #[arg(long, default_value_t = 0)]
    inject_error_every: u64,
    #[arg(long, default_value_t = 60.0)]
    op_timeout: f64,
    /// Pid of the proxy: CPU seconds and peak RSS are read from /proc, summed
    /// over the pid and its descendants (e.g. Squid's url_rewrite helpers).
    #[arg(long)]
    proxy_pid: Option<u32>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    md: Option<PathBuf>,
}

impl RunArgs {
    fn config(&self) -> Result<client::RunConfig> {
        let duration = self.duration.map(Duration::from_secs_f64);
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.blocked_share),
            "--blocked-share must be between 0 and 1 (got {})",
            self.blocked_share
        );
        let hosts = match &self.hosts {
            Some(p) => client::read_host_list(p, "--hosts")?,
            None => Vec::new(),
        };
        let blocked_hosts = match &self.blocked_hosts {
            Some(p) => client::read_host_list(p, "--blocked-hosts")?,
            None => Vec::new(),
        };
        Ok(client::RunConfig {
            label: self.label.clone(),
            proxy: client::ProxySpec::parse(&self.proxy)?,
            proxy_name: self.proxy_name.clone(),
            proxy_ca: self.proxy_ca.clone(),
            pki: self.pki.clone(),
            trust: self.trust.clone(),
            origin_http: self.origin_http.clone(),
            origin_https: self.origin_https.clone(),
            inspect_target: self.inspect_target.clone(),
            blocked_url: self.blocked_url.clone(),
            devices: self.devices,
            ramp: Duration::from_secs_f64(self.ramp),
            duration,
            ops_per_device: self.ops_per_device.or(if duration.is_some() {
                None
            } else {
                Some(10)
            }),
            concurrency: self.concurrency,
            h2_share: self.h2_share,
            mix: client::parse_mix(&self.mix)?,
            size: self.size,
            large: self.large,
            requests_per_tunnel: self.requests_per_tunnel,
            inner_h2: self.inner_h2,
            inject_error_every: self.inject_error_every,
            op_timeout: Duration::from_secs_f64(self.op_timeout),
            proxy_pid: self.proxy_pid,
            hosts: std::sync::Arc::new(hosts),
            blocked_hosts: std::sync::Arc::new(blocked_hosts),
            blocked_share: self.blocked_share,
            blocked_status: client::parse_status_list(&self.blocked_status)?,
        })
    }
}

fn write_out(
    json: &Option<PathBuf>,
    md: &Option<PathBuf>,
    value: &impl serde::Serialize,
    markdown: &str,
) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match json {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => println!("{text}"),
    }
    if let Some(p) = md {
        std::fs::write(p, markdown).with_context(|| format!("cannot write {}", p.display()))?;
    }
    eprintln!("{markdown}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Origin {
            http,
            https,
            san,
            ca_out,
            delay_ms,
            dns,
            cert_hosts,
        } => {
            let o = origin::start(origin::OriginOptions {
                http,
                https,
                sans: san,
                ca_out,
                default_delay: Duration::from_millis(delay_ms),
                dns,
                cert_hosts,
            })
            .await?;
            println!("origin ready: http {:?} https {:?}", o.http, o.https);
            tokio::signal::ctrl_c().await?;
        }
        Cmd::Run(args) => {
            let cfg = args.config()?;
            let sampler = cfg.proxy_pid.map(procstat::Sampler::start);
            let mut report = client::run(cfg).await?;
            if let Some(s) = sampler {
                report.proxy_usage = Some(s.finish().await);
            }
            write_out(&args.json, &args.md, &report, &report.markdown())?;
        }
        Cmd::Idle {
            common,
            tunnels,
            per_conn,
            targets,
            hold,
            replica,
        } => {
            let pid = common.proxy_pid.context("idle needs --proxy-pid")?;
            let targets = if targets.is_empty() {
                vec![common.origin_http.clone()]
            } else {
                targets
            };
            let cfg = common.config()?;
            let client::ProxySpec::Mtls(proxy) = cfg.proxy else {
                anyhow::bail!("idle tunnels use HTTP/2 over mTLS: --proxy mtls://...");
            };
            let mut shards = vec![idle::Shard {
                proxy,
                pid,
                tunnels,
                targets,
            }];
            for r in &replica {
                shards.push(idle::Shard::parse(r)?);
            }
            let r = idle::run(cfg, shards, per_conn, Duration::from_secs(hold)).await?;
            write_out(&common.json, &common.md, &r, &r.markdown())?;
        }
        Cmd::Steady {
            session,
            path,
            warmup,
            requests,
            before,
            after,
            proxy_pid,
            json,
        } => {
            let r = inspected::steady(
                &session.spec(),
                &path,
                warmup,
                requests,
                &before,
                &after,
                proxy_pid,
            )
            .await?;
            write_out(&json, &None, &r, &r.markdown())?;
        }
        Cmd::Held {
            session,
            sessions,
            parallel,
            path,
            busy_path,
            settle,
            proxy_pid,
            json,
        } => {
            let r = inspected::held(
                &session.spec(),
                proxy_pid,
                sessions,
                parallel,
                &path,
                &busy_path,
                Duration::from_secs_f64(settle),
            )
            .await?;
            write_out(&json, &None, &r, &r.markdown())?;
        }
        Cmd::Compare {
            title,
            left,
            left_name,
            right,
            right_name,
        } => {
            let l: stats::Report = serde_json::from_str(&std::fs::read_to_string(&left)?)?;
            let r: stats::Report = serde_json::from_str(&std::fs::read_to_string(&right)?)?;
            print!(
                "{}",
                stats::compare_markdown(&title, &left_name, &l, &right_name, &r)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
