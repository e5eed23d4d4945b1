//! Non-web firewall (`[firewall]` in the policy) on the tunnel data path.
//!
//! Applies to every CONNECT tunnel that will not be inspected as web traffic:
//! CONNECT to non-web ports, SOCKS flows from `komugate client` (HTTP/2
//! CONNECT streams) and bypassed tunnels; and to every UDP flow
//! (CONNECT-UDP, `flow::udp`). The verdict itself is the pure
//! [`komugate_policy::Policy::firewall`]; this module resolves the
//! destination, checks every address (deny if any is denied), and turns a
//! deny into a [`Refusal`].
//!
//! Without a policy file, or with a policy that has no `[firewall]` section,
//! the firewall is off for TCP; UDP flows to DNS and web (QUIC) ports are
//! refused all the same (see [`Policy::firewall`]).

use std::net::IpAddr;
use std::time::SystemTime;

use komugate_policy::{
    FirewallRequest, FirewallVerdict, Location, Policy, Protocol, UDP_DNS_RULE, UDP_QUIC_RULE,
};

use crate::egress::Resolver;
use crate::record::AccessRecord;
use crate::request::{ConnContext, Refusal};

/// Rule name recorded when no `[[firewall.rule]]` matched a non-web port.
pub const DEFAULT_RULE: &str = "firewall-default";

/// Evaluates the firewall for a tunnel to `host:port`, from `location`
/// (the flow's location: an asserted site, or `None` = by address).
///
/// `web_inspected`: the tunnel will be inspected as web traffic (then a web
/// port is left to the web policy and the firewall is skipped; never for UDP).
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
    protocol: Protocol,
    web_inspected: bool,
    target: &str,
    record: &mut AccessRecord,
) -> Result<Option<FirewallVerdict>, Refusal> {
    let tcp = protocol == Protocol::Tcp;
    if tcp && (!policy.has_firewall() || (web_inspected && policy.is_web_port(port))) {
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
            protocol,
            time: now,
        });
        if !v.allow {
            return Err(deny(conn, &v, target, dest_ip, protocol));
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
            protocol = protocol.label(),
            "firewall allow"
        );
    }
    Ok(Some(v))
}

fn deny(
    conn: &ConnContext,
    v: &FirewallVerdict,
    target: &str,
    dest_ip: Option<IpAddr>,
    protocol: Protocol,
) -> Refusal {
    if v.log {
        tracing::warn!(
            target: "komugate::firewall",
            rule = %v.rule,
            device = ?conn.device_id(),
            client = %conn.client,
            dest = target,
            dest_ip = ?dest_ip,
            protocol = protocol.label(),
            "firewall deny"
        );
    }
    let message = match v.rule.as_str() {
        UDP_DNS_RULE => {
            "DNS はゲートウェイの DNS over HTTPS (DoH) を通してのみ使えます。直接の DNS 通信 (UDP 53/853) は許可されていません。 / \
             DNS goes only through the gateway's DNS over HTTPS; direct DNS over UDP (ports 53 and 853) is not allowed."
        }
        UDP_QUIC_RULE => {
            "QUIC (HTTP/3, UDP) は使えません。ブラウザーは自動的に通常の HTTPS (TCP) で接続し直します。 / \
             QUIC (HTTP/3 over UDP) is not allowed; browsers fall back to HTTPS over TCP, where the web filter applies."
        }
        _ => {
            "ファイアウォールの設定により、この宛先・ポートへの通信は許可されていません。 / \
             This destination or port is not allowed by the firewall."
        }
    };
    Refusal::blocked(v.rule.clone(), message)
}
