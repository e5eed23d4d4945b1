//! The running gateway: the state shared by every connection. The
//! hot-reloadable part is one [`Generation`] behind one swap
//! ([`generation`], [`reload`]); [`start`] assembles the gateway from a
//! config and starts the listeners.

pub mod generation;
pub mod reload;
pub mod start;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::egress::upstream::UpstreamPools;
use crate::egress::Egress;
use crate::metrics::Metrics;
use generation::Generation;

/// State shared by every connection.
pub struct Gateway {
    pub config: Config,
    /// The mTLS listener's TLS state (device CA, revocations); rebuilt on reload.
    pub device_auth: Option<Arc<crate::device_auth::DeviceAuth>>,
    /// Policy, IPS rules and sites; replaced as a whole on reload. A
    /// request loads it once ([`Gateway::current`]).
    pub generation: ArcSwap<Generation>,
    /// Serialises reloads (see `reload.rs`) and holds the last one's
    /// outcome (for the console's dashboard).
    pub reload_lock: tokio::sync::Mutex<Option<reload::LastReload>>,
    /// Downloaded category lists: status and metrics (see `list_update.rs`).
    pub list_updates: crate::list_update::ListUpdates,
    pub egress: Arc<Egress>,
    pub pools: UpstreamPools,
    /// TLS inspection (minting, cache); None when the inspection CA is not configured.
    pub inspector: Option<Arc<crate::stages::inspect::Inspector>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Alerts on security events and faults (never waits; see `crate::alerts`).
    pub alerts: crate::alerts::Alerts,
    /// Site assertions seen on connections (replay cache, asserted sites).
    pub sites: crate::beacon::SiteAssertions,
    /// Access requests from block pages, queued for the console.
    pub unblock: Option<Arc<crate::unblock::UnblockRequests>>,
    /// Each device's last record (time, site), for the console.
    pub devices_seen: crate::device_seen::DevicesSeen,
    /// Users signed in on devices (`[users.oidc]`).
    pub users: crate::users::Sessions,
    /// Devices' posture reports.
    pub posture: crate::users::posture::PostureStore,
    /// Cancelled on SIGTERM / Ctrl-C: listeners stop accepting.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the drain time is over: remaining connections and
    /// tunnels are closed.
    pub hard_stop: CancellationToken,
    device_connections: Mutex<HashMap<String, usize>>,
    /// Each device's UDP flows and datagram budget (`[udp]`).
    pub udp_limits: Arc<crate::stages::udp_limits::UdpLimits>,
}

impl Gateway {
    /// The generation in force, for one request from start to end.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

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
        self.tasks.spawn(
            crate::egress::tunnel::HARD_STOP.scope(stop.clone(), async move {
                tokio::select! {
                    biased;
                    _ = fut => {}
                    _ = stop.cancelled() => {}
                }
            }),
        );
    }

    /// Devices with at least one open connection now (the console's dashboard).
    pub fn devices_connected(&self) -> usize {
        self.device_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
