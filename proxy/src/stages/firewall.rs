//! Non-web firewall (`[firewall]` in the policy) on the tunnel data path.
//!
//! Applies to every CONNECT tunnel that will not be inspected as web traffic:
//! CONNECT to non-web ports, SOCKS flows from `komugate client` (HTTP/2
//! CONNECT streams) and bypassed tunnels. The verdict itself is the pure
//! [`komugate_policy::Policy::firewall`]; this module resolves the
//! destination, checks every address (deny if any is denied), and turns a
//! deny into a [`Refusal`].
//!
//! Without a policy file, or with a policy that has no `[firewall]` section,
//! the firewall is off.

use std::net::IpAddr;
use std::time::SystemTime;

use komugate_policy::{FirewallRequest, FirewallVerdict, Location, Policy};

use crate::egress::Resolver;
use crate::record::AccessRecord;
use crate::request::{ConnContext, Refusal};

/// Rule name recorded when no `[[firewall.rule]]` matched a non-web port.
pub const DEFAULT_RULE: &str = "firewall-default";

/// Evaluates the firewall for a tunnel to `host:port`, from `location`
/// (the flow's location: an asserted site, or `None` = by address).
///
/// `web_inspected`: the tunnel will be inspected as web traffic (then a web
/// port is left to the web policy and the firewall is skipped).
/// `Ok(None)`: the firewall is off or does not apply. `Ok(Some(v))`: allowed;
/// `record.rule` is set to the firewall rule when one matched. `Err`: denied
/// by the rule in the refusal.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    policy: &Policy,
    resolver: &Resolver,
    conn: &ConnContext,
    location: Option<&Location>,
    host: &str,
    port: u16,
    web_inspected: bool,
    target: &str,
    record: &mut AccessRecord,
) -> Result<Option<FirewallVerdict>, Refusal> {
    if !policy.has_firewall() || (web_inspected && policy.is_web_port(port)) {
        return Ok(None);
    }
    // Resolve names so CIDR rules see the real destination; a failed lookup
    // still lets host/port rules decide (the connect then fails on its own).
    let addrs: Vec<Option<IpAddr>> = match resolver.resolve(host).await {
        Ok(a) if !a.is_empty() => a.iter().copied().map(Some).collect(),
        _ => vec![None],
    };
    let now = SystemTime::now();
    let mut allowed: Option<FirewallVerdict> = None;
    for dest_ip in addrs {
        let v = policy.firewall(&FirewallRequest {
            device: conn.device_id(),
            cert_groups: conn.cert_groups(),
            client_ip: conn.client.ip(),
            location: location.cloned(),
            host,
            dest_ip,
            port,
            time: now,
        });
        if !v.allow {
            return Err(deny(conn, &v, target, dest_ip));
        }
        allowed.get_or_insert(v);
    }
    let v = allowed.expect("at least one address evaluated");
    if v.rule_origin.is_some() {
        record.rule = v.rule.clone();
    }
    if v.log {
        tracing::info!(
            target: "komugate::firewall",
            rule = %v.rule,
            device = ?conn.device_id(),
            client = %conn.client,
            dest = target,
            "firewall allow"
        );
    }
    Ok(Some(v))
}

fn deny(conn: &ConnContext, v: &FirewallVerdict, target: &str, dest_ip: Option<IpAddr>) -> Refusal {
    if v.log {
        tracing::warn!(
            target: "komugate::firewall",
            rule = %v.rule,
            device = ?conn.device_id(),
            client = %conn.client,
            dest = target,
            dest_ip = ?dest_ip,
            "firewall deny"
        );
    }
    Refusal::blocked(
        v.rule.clone(),
        "ファイアウォールの設定により、この宛先・ポートへの通信は許可されていません。 / \
         This destination or port is not allowed by the firewall.",
    )
}
