//! Routes for full-device mode, set with iproute2's `ip` command (Linux):
//! it is on every distribution, shows exactly what was changed in the
//! client's log, and keeps a netlink crate out of the client for a
//! handful of routes set once.
//!
//! - `0.0.0.0/1`, `128.0.0.0/1` (and `::/1`, `8000::/1`) into the TUN
//!   device: more specific than any default route, which stays in place
//!   (the uplink), so nothing has to be restored if the client dies; the
//!   directly connected networks stay direct (more specific still).
//! - The gateway's addresses and the policy's direct networks (the PAC
//!   file's `DIRECT` networks: printers, in-school servers) via the uplink.
//!
//! The TUN routes go with the device; the others are deleted on drop
//! (routes that were there before are left alone).

use std::net::IpAddr;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

/// How a destination is reached without the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub via: Option<IpAddr>,
    pub dev: String,
}

/// The kernel's route to `ip` (`ip -j route get`).
pub fn route_to(ip: IpAddr) -> Result<Uplink> {
    let out = ip_cmd(&["-j", "route", "get", &ip.to_string()])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -j route get {ip}` printed {out:?}"))?;
    let r = &v[0];
    let dev = r["dev"]
        .as_str()
        .ok_or_else(|| anyhow!("no route to {ip} (is the network up?)"))?;
    Ok(Uplink {
        via: r["gateway"].as_str().and_then(|g| g.parse().ok()),
        dev: dev.to_string(),
    })
}

pub struct Routes {
    tun: String,
    /// The route to the gateway (direct sockets use its interface).
    uplink: Uplink,
    /// The default routes before the device took over (for the policy's
    /// direct networks), IPv4 and IPv6.
    before: [Option<Uplink>; 2],
    /// Routes we added via the uplink (deleted on drop).
    added: Vec<IpNet>,
}

impl Routes {
    /// Keeps `gateway` (its addresses) on the uplink, then sends everything
    /// else into `tun`.
    pub fn setup(tun: &str, gateway: &[IpAddr]) -> Result<Routes> {
        let first = *gateway
            .first()
            .ok_or_else(|| anyhow!("the gateway's address is unknown"))?;
        let uplink = route_to(first)?;
        if uplink.dev == tun {
            bail!("the route to the gateway {first} already goes into {tun}: is another komugate client --tun running?");
        }
        // Documentation addresses: where anything went before (the default routes).
        let before = [
            route_to("192.0.2.1".parse()?).ok(),
            route_to("2001:db8::1".parse()?).ok(),
        ];
        let mut routes = Routes {
            tun: tun.to_string(),
            uplink,
            before,
            added: Vec::new(),
        };
        for ip in gateway {
            let route = route_to(*ip)?;
            routes.add_via(IpNet::from(*ip), &route)?;
        }
        for net in ["0.0.0.0/1", "128.0.0.0/1"] {
            ip_cmd(&["route", "replace", net, "dev", tun])?;
        }
        // IPv6 goes in too (fail closed); a host without IPv6 refuses the routes.
        for net in ["::/1", "8000::/1"] {
            if let Err(e) = ip_cmd(&["-6", "route", "replace", net, "dev", tun]) {
                tracing::info!("no IPv6 routes into {tun}: {e:#}");
            }
        }
        Ok(routes)
    }

    /// The interface direct sockets use (the captive-portal window).
    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }

    /// How `ip` was reached before the device took over (asking the
    /// kernel now would answer the device).
    fn uplink_for(&self, ip: IpAddr) -> Result<Uplink> {
        self.before[ip.is_ipv6() as usize]
            .clone()
            .ok_or_else(|| anyhow!("no route to {ip} outside the device"))
    }

    /// Makes the direct networks exactly `nets` (the policy's, for this site).
    pub fn set_direct(&mut self, gateway: &[IpAddr], nets: &[IpNet]) {
        let keep = |n: &IpNet| gateway.iter().any(|g| IpNet::from(*g) == *n);
        let stale: Vec<IpNet> = self
            .added
            .iter()
            .filter(|n| !keep(n) && !nets.contains(n))
            .copied()
            .collect();
        for n in stale {
            self.delete(n);
        }
        for n in nets {
            if self.added.contains(n) {
                continue;
            }
            let added = self
                .uplink_for(n.network())
                .and_then(|up| self.add_via(*n, &up));
            match added {
                Ok(()) => tracing::info!("direct (policy): {n} around {}", self.tun),
                Err(e) => tracing::warn!(
                    "cannot route the policy's direct network {n} around {}: {e:#}",
                    self.tun
                ),
            }
        }
    }

    fn add_via(&mut self, net: IpNet, up: &Uplink) -> Result<()> {
        let net_s = net.to_string();
        if !ip_cmd(&["route", "show", "exact", &net_s])?
            .trim()
            .is_empty()
        {
            tracing::info!("route {net_s} exists already; left as it is");
            return Ok(());
        }
        let mut args = vec!["route".to_string(), "replace".into(), net_s];
        if let Some(v) = up.via {
            args.extend(["via".into(), v.to_string()]);
        }
        args.extend(["dev".into(), up.dev.clone()]);
        ip_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        self.added.push(net);
        Ok(())
    }

    fn delete(&mut self, net: IpNet) {
        if let Err(e) = ip_cmd(&["route", "del", &net.to_string()]) {
            tracing::debug!("route {net}: {e:#}");
        }
        self.added.retain(|n| *n != net);
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for n in self.added.clone() {
            self.delete(n);
        }
    }
}

fn ip_cmd(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2 is needed for komugate client --tun)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
