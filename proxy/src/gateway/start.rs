//! Assembling a gateway from its config: the shared state, the first
//! generation, and the listeners (`listen` for the proxy ports, `admin`
//! with the console, over TLS unless on loopback).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::generation::Generation;
use super::Gateway;
use crate::access_log::AccessLog;
use crate::config::Config;
use crate::egress::upstream::UpstreamPools;
use crate::egress::Egress;
use crate::metrics::Metrics;

/// Addresses the listeners actually bound (port 0 in tests becomes real).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub plain: Option<SocketAddr>,
    pub mtls: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The admin listener speaks TLS (`https://`).
    pub admin_tls: bool,
}

/// A started gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub addrs: BoundAddrs,
    log_writer: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, waits up to `drain` for connections and tunnels to
    /// finish, then flushes the access log.
    pub async fn shutdown(self, drain: Duration) {
        let Running {
            gateway,
            log_writer,
            ..
        } = self;
        gateway.shutdown.cancel();
        gateway.tasks.close();
        if tokio::time::timeout(drain, gateway.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "drain time of {drain:?} over; closing the remaining connections and tunnels"
            );
            gateway.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), gateway.tasks.wait()).await;
        }
        drop(gateway);
        // The writer ends when the last access-log handle is gone; every
        // task holding one has finished or been dropped by now.
        if tokio::time::timeout(Duration::from_secs(5), log_writer)
            .await
            .is_err()
        {
            tracing::warn!("the access log writer did not finish within 5 s");
        }
    }
}

/// Binds the configured listeners and starts serving.
pub async fn start(config: Config) -> Result<Running> {
    restrict_umask();
    let metrics = Arc::new(Metrics::new());
    let egress = Arc::new(Egress::new(&config.dns, &config.egress, metrics.clone())?);
    let (access_log, log_writer) = AccessLog::start(&config, metrics.clone()).await?;
    let generation = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let built = Generation::first(&config);
            crate::memory::release_thread_cache();
            built
        })
        .await
        .context("building the policy")?
        .map_err(anyhow::Error::msg)?
    };

    let device_auth = if Config::listen_addr(&config.listen.mtls).is_some() {
        Some(Arc::new(
            crate::device_auth::DeviceAuth::load(crate::device_auth::DeviceAuthConfig {
                server_cert: config.data_path(&config.tls.server_cert),
                server_key: config.data_path(&config.tls.server_key),
                device_ca: config.data_path(&config.tls.device_ca),
                crls: config
                    .tls
                    .crls
                    .iter()
                    .map(|p| config.data_path(p))
                    .collect(),
                revoked_serials: (!config.tls.revoked_serials.is_empty())
                    .then(|| config.data_path(std::path::Path::new(&config.tls.revoked_serials))),
            })
            .context("cannot set up the mTLS listener's TLS")?,
        ))
    } else {
        None
    };

    let upstream_ca = (!config.inspect.upstream_ca.is_empty())
        .then(|| config.data_path(std::path::Path::new(&config.inspect.upstream_ca)));
    let upstream_tls = crate::egress::upstream::upstream_tls_config(upstream_ca.as_deref())
        .context("[inspect] upstream_ca")?;
    let inspector = if config.data_path(&config.inspect.ca_key).exists() {
        Some(Arc::new(crate::stages::inspect::Inspector::new(
            &config, &metrics,
        )?))
    } else {
        if !config.inspect.hosts.is_empty() {
            anyhow::bail!(
                "[inspect] hosts is set but the inspection CA key {} does not exist; run `komugate pki init`",
                config.data_path(&config.inspect.ca_key).display()
            );
        }
        None
    };
    let sites = crate::beacon::SiteAssertions::new(&metrics.registry);
    let users = crate::users::Sessions::new(&config, &metrics.registry)?;
    let posture = crate::users::posture::PostureStore::new(
        config.users.posture_max_age_secs,
        config.users.posture_max_future_secs,
        &metrics.registry,
    );
    let (alerts, alerts_rx) = crate::alerts::Alerts::new(&config.alerts, &metrics.registry);
    let unblock = Some(Arc::new(
        crate::unblock::UnblockRequests::open(
            config.data_path(std::path::Path::new(crate::unblock::QUEUE_FILE)),
        )
        .context("the unblock request queue")?,
    ));
    let gateway = Arc::new(Gateway {
        alerts,
        device_auth,
        sites,
        users,
        posture,
        pools: UpstreamPools::new(
            egress.clone(),
            upstream_tls,
            config.limits.upstream_idle_per_host,
            config.limits.upstream_idle(),
            config.limits.upstream_idle_total(),
            crate::egress::idle_cap::IdleMetrics::new(&metrics.registry),
        ),
        inspector,
        egress,
        generation: ArcSwap::from_pointee(generation),
        reload_lock: tokio::sync::Mutex::new(None),
        list_updates: crate::list_update::ListUpdates::new(&metrics.registry),
        metrics,
        access_log,
        shutdown: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        device_connections: Mutex::new(HashMap::new()),
        udp_limits: Arc::new(crate::stages::udp_limits::UdpLimits::new(&config.udp)),
        devices_seen: Default::default(),
        unblock,
        config,
    });

    if let Some(rx) = alerts_rx {
        let c = &gateway.config;
        let certs: crate::alerts::faults::Certificates = [
            ("server certificate / サーバー証明書", &c.tls.server_cert),
            ("device CA / 端末 CA", &c.tls.device_ca),
            ("inspection CA / 検査用 CA", &c.inspect.ca_cert),
        ]
        .into_iter()
        .map(|(what, p)| (what, c.data_path(p)))
        .filter(|(_, p)| p.exists())
        .collect();
        tokio::spawn(crate::alerts::faults::watch(
            gateway.alerts.clone(),
            gateway.access_log.log_metrics().spilled.clone(),
            gateway.access_log.log_metrics().ship_errors.clone(),
            certs,
            gateway.shutdown.clone(),
        ));
        let data =
            |p: &str| std::fs::read_to_string(gateway.config.data_path(std::path::Path::new(p)));
        let mailer = crate::alerts::Mailer::new(&gateway.config.alerts, data)?;
        tokio::spawn(crate::alerts::run(
            gateway.alerts.clone(),
            gateway.config.alerts.clone(),
            crate::alerts::Client::new(&gateway.pools, &gateway.config.alerts.webhook_url),
            mailer,
            rx,
            gateway.shutdown.clone(),
        ));
    }

    // Bind everything first, so the own-listener guard (egress::OwnListeners)
    // is in place before the first connection is accepted.
    let mut addrs = BoundAddrs::default();
    let plain = match Config::listen_addr(&gateway.config.listen.plain) {
        Some(addr) => Some(bind(addr, "plain").await?),
        None => None,
    };
    let mtls = match (
        Config::listen_addr(&gateway.config.listen.mtls),
        gateway.device_auth.clone(),
    ) {
        (Some(addr), Some(auth)) => Some((bind(addr, "mtls").await?, auth)),
        _ => None,
    };
    let admin = match Config::listen_addr(&gateway.config.listen.admin) {
        Some(addr) => Some(bind(addr, "admin").await?),
        None => None,
    };
    addrs.plain = plain.as_ref().map(|l| l.local_addr()).transpose()?;
    addrs.mtls = mtls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    addrs.admin = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_tls = match addrs.admin {
        Some(addr) => crate::console::tls::acceptor(&gateway.config, addr)?,
        None => None,
    };
    addrs.admin_tls = admin_tls.is_some();
    let own: Vec<SocketAddr> = [addrs.plain, addrs.mtls, addrs.admin]
        .into_iter()
        .flatten()
        .collect();
    let _ = gateway
        .egress
        .own_listeners
        .set(crate::egress::OwnListeners::new(own));
    if let Some(listener) = plain {
        tokio::spawn(crate::listen::serve_plain(gateway.clone(), listener));
    }
    if let Some((listener, auth)) = mtls {
        tokio::spawn(crate::listen::serve_mtls(gateway.clone(), listener, auth));
    }
    if let Some(listener) = admin {
        tokio::spawn(crate::admin::serve_admin(
            gateway.clone(),
            listener,
            admin_tls,
        ));
    }
    gateway
        .metrics
        .list_imports
        .publish(gateway.generation.load().runtime.policy.import_report(), 1);
    gateway.metrics.policy_generation.set(1);
    crate::gateway::reload::spawn_sighup(gateway.clone());
    crate::gateway::reload::spawn_file_watch(gateway.clone());
    crate::list_update::spawn(gateway.clone());
    Ok(Running {
        gateway,
        addrs,
        log_writer,
    })
}

/// Access logs, their spill and shipping queues and the audit log hold
/// personal data: whatever umask komugate was started with, what it creates
/// is at most 0640 (files) / 0750 (directories). Keys are 0600 explicitly.
fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe {
        let old = libc::umask(0o027);
        libc::umask(old | 0o027);
    }
}

async fn bind(addr: SocketAddr, name: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ([listen] {name}); is another process using the port?")
    })
}
