//! The running gateway: shared state, listeners started from a config,
//! graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::decision::Runtime;
use crate::egress::Egress;
use crate::metrics::Metrics;
use crate::upstream::UpstreamPools;

/// State shared by every connection.
pub struct Gateway {
    pub config: Config,
    /// The mTLS listener's TLS state (device CA, revocations); rebuilt on reload.
    pub device_auth: Option<Arc<crate::device_auth::DeviceAuth>>,
    /// The decision state; replaced atomically on reload.
    pub runtime: ArcSwap<Runtime>,
    /// Serialises reloads (see `reload.rs`).
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Downloaded category lists: status and metrics (see `list_update.rs`).
    pub list_updates: crate::list_update::ListUpdates,
    pub egress: Arc<Egress>,
    pub pools: UpstreamPools,
    /// TLS inspection (minting, cache); None when the inspection CA is not configured.
    pub inspector: Option<Arc<crate::inspect::Inspector>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Sites, site assertions (beacon keys, replay cache) and PAC lists.
    pub sites: crate::beacon::SiteAssertions,
    /// IPS rules and threat-intel lists (`crate::ips`); swap on reload.
    pub ips: ArcSwap<crate::ips::Security>,
    /// Cancelled on SIGTERM / Ctrl-C: listeners stop accepting.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the drain time is over: remaining connections and
    /// tunnels are closed.
    pub hard_stop: CancellationToken,
    device_connections: Mutex<HashMap<String, usize>>,
}

/// Addresses the listeners actually bound (port 0 in tests becomes real).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub plain: Option<SocketAddr>,
    pub mtls: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
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

impl Gateway {
    /// Spawns a connection or tunnel task that shutdown waits for, and that
    /// is dropped (closing its sockets) when the drain time is over.
    pub fn spawn_tracked<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.hard_stop.clone();
        // Boxed: an async block keeps a moved-in future twice (as its
        // captured argument and as the select!'s operand), which for a
        // relay or connection state is kilobytes per open tunnel.
        let fut = Box::pin(fut);
        // Relays see the token (task-local) and end with `cut`, so their
        // access records are still written; anything else still running at
        // the hard stop is dropped, which closes its sockets.
        self.tasks
            .spawn(crate::tunnel::HARD_STOP.scope(stop.clone(), async move {
                tokio::select! {
                    biased;
                    _ = fut => {}
                    _ = stop.cancelled() => {}
                }
            }));
    }

    /// Counts a connection of `device`; `None` if it is over its limit.
    pub fn device_connection(self: &Arc<Self>, device: &str) -> Option<DeviceConnectionGuard> {
        let mut map = self
            .device_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(device.to_string()).or_insert(0);
        if *n >= self.config.limits.max_connections_per_device {
            return None;
        }
        *n += 1;
        Some(DeviceConnectionGuard {
            gateway: self.clone(),
            device: device.to_string(),
        })
    }
}

pub struct DeviceConnectionGuard {
    gateway: Arc<Gateway>,
    device: String,
}

impl Drop for DeviceConnectionGuard {
    fn drop(&mut self) {
        let mut map = self
            .gateway
            .device_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.device);
            }
        }
    }
}

/// Binds the configured listeners and starts serving.
pub async fn start(config: Config) -> Result<Running> {
    restrict_umask();
    let metrics = Arc::new(Metrics::new());
    let egress = Arc::new(Egress::new(&config.dns, &config.egress, metrics.clone())?);
    let (access_log, log_writer) = AccessLog::start(&config, metrics.clone()).await?;
    let runtime = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let built = Runtime::build(&config, 1);
            crate::memory::release_thread_cache();
            built
        })
        .await
        .context("building the policy")?
        .map_err(|e| {
            anyhow::anyhow!("the policy is not valid; komugate will not start with it:\n{e}")
        })?
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
    let upstream_tls = crate::upstream::upstream_tls_config(upstream_ca.as_deref())
        .context("[inspect] upstream_ca")?;
    let inspector = if config.data_path(&config.inspect.ca_key).exists() {
        Some(Arc::new(crate::inspect::Inspector::new(&config, &metrics)?))
    } else {
        if !config.inspect.hosts.is_empty() {
            anyhow::bail!(
                "[inspect] hosts is set but the inspection CA key {} does not exist; run `komugate pki init`",
                config.data_path(&config.inspect.ca_key).display()
            );
        }
        None
    };
    // Empty until the policy is loaded: below and on every reload the
    // directory is replaced with the policy's sites.
    let sites = crate::beacon::SiteAssertions::new(
        crate::beacon::SiteDirectory::default(),
        &metrics.registry,
    );
    let ips = crate::ips::Security::from_config(&config)?;
    let gateway = Arc::new(Gateway {
        device_auth,
        sites,
        ips: ArcSwap::from_pointee(ips),
        pools: UpstreamPools::new(
            egress.clone(),
            upstream_tls,
            config.limits.upstream_idle_per_host,
        ),
        inspector,
        egress,
        runtime: ArcSwap::from_pointee(runtime),
        reload_lock: tokio::sync::Mutex::new(()),
        list_updates: crate::list_update::ListUpdates::new(&metrics.registry),
        metrics,
        access_log,
        shutdown: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        device_connections: Mutex::new(HashMap::new()),
        config,
    });

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
    let own: Vec<SocketAddr> = [addrs.plain, addrs.mtls, addrs.admin]
        .into_iter()
        .flatten()
        .collect();
    let _ = gateway
        .egress
        .own_listeners
        .set(crate::egress::OwnListeners::new(own));
    if let Some(listener) = plain {
        tokio::spawn(crate::server::serve_plain(gateway.clone(), listener));
    }
    if let Some((listener, auth)) = mtls {
        tokio::spawn(crate::server::serve_mtls(gateway.clone(), listener, auth));
    }
    if let Some(listener) = admin {
        tokio::spawn(crate::admin::serve_admin(gateway.clone(), listener));
    }
    if let Some(policy) = &gateway.runtime.load().policy {
        // The policy's sites also drive site assertions and PAC files.
        gateway
            .sites
            .set_directory(crate::beacon::SiteDirectory::from_policy(policy));
        gateway
            .metrics
            .list_imports
            .publish(policy.import_report(), 1);
    }
    gateway.metrics.policy_generation.set(1);
    crate::reload::spawn_sighup(gateway.clone());
    crate::reload::spawn_file_watch(gateway.clone());
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
