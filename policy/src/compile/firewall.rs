//! `[firewall]` and `[[firewall.rule]]`: which non-web ports devices may
//! reach through tunnels, and which UDP flows (CONNECT-UDP) they may open.

use toml_edit::TableLike;

use super::conditions::{parse_conds, Conds, Names};
use super::cx::{port_list, Cx, Span};
use super::reachability::covers;
use crate::diag::suggest;
use crate::pattern::PortRange;
use crate::*;

const FIREWALL_KEYS: &[&str] = &["web_ports", "default", "log", "rule"];
const FIREWALL_RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "cidr",
    "cidrs",
    "host",
    "hosts",
    "port",
    "ports",
    "protocol",
    "group",
    "groups",
    "device",
    "devices",
    "location",
    "locations",
    "time",
    "days",
    "action",
    "log",
];

/// `[firewall]`: web ports, default for non-web ports, ordered `[[firewall.rule]]`.
pub(super) fn section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
    n: &Names<'_>,
) -> Option<FirewallSettings> {
    let (ft, _) = cx.table(root, "firewall")?;
    cx.keys(ft, "[firewall]", FIREWALL_KEYS);
    let web_ports = port_list(cx, ft, "web_ports").unwrap_or_else(|| {
        FIREWALL_WEB_PORTS
            .iter()
            .map(|p| PortRange(*p, *p))
            .collect()
    });
    let default_allow = match cx.str(ft, "default", "[firewall]") {
        None => false,
        Some((s, sp)) => match s.as_str() {
            "allow" => true,
            "deny" | "block" => false,
            _ => {
                cx.err(
                    &sp,
                    format!(
                        "invalid default `{s}` in [firewall] (use \"allow\" or \"deny\"){}",
                        suggest(&s, ["allow", "deny"])
                    ),
                );
                false
            }
        },
    };
    let default_log = cx.bool(ft, "log", "[firewall]").unwrap_or(true);
    let mut rules = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (t, tsp) in cx.tables(ft, "rule", "firewall.rule") {
        let name = cx.req_str(t, "name", "[[firewall.rule]]", &tsp);
        let what = match &name {
            Some((n, _)) => format!("firewall rule `{n}`"),
            None => "[[firewall.rule]]".to_string(),
        };
        cx.keys(t, &what, FIREWALL_RULE_KEYS);
        let mut c = Conds::default();
        parse_conds(cx, t, &what, n, &mut c);
        let cidrs = match cx.cond_strs(t, "cidr", "cidrs", &what) {
            Some(v) => {
                let mut nets = Vec::new();
                for (c, sp) in v {
                    let parsed = c
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from));
                    match parsed {
                        Ok(net) => nets.push(net.trunc()),
                        Err(_) => cx.err(
                            &sp,
                            format!("invalid CIDR `{c}` in {what} (e.g. \"10.0.0.0/8\" or \"2001:db8::/32\")"),
                        ),
                    }
                }
                Some(nets)
            }
            None => None,
        };
        let protocol = match cx.str(t, "protocol", &what) {
            None => None,
            Some((p, sp)) => match p.to_ascii_lowercase().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                "any" => None,
                "icmp" | "sctp" => {
                    cx.err(
                        &sp,
                        format!("protocol `{p}` in {what} is not carried by komugate (only TCP and UDP flows are); use \"tcp\", \"udp\" or \"any\""),
                    );
                    None
                }
                _ => {
                    cx.err(
                        &sp,
                        format!(
                            "invalid protocol `{p}` in {what} (use \"tcp\", \"udp\" or \"any\"){}",
                            suggest(&p, ["tcp", "udp", "any"])
                        ),
                    );
                    None
                }
            },
        };
        let allow = if t.contains_key("action") {
            match cx.str(t, "action", &what) {
                Some((a, sp)) => match a.as_str() {
                    "allow" => true,
                    "deny" | "block" => false,
                    _ => {
                        cx.err(
                            &sp,
                            format!(
                                "invalid action `{a}` in {what} (use \"allow\" or \"deny\"){}",
                                suggest(&a, ["allow", "deny"])
                            ),
                        );
                        false
                    }
                },
                None => false,
            }
        } else {
            cx.err(
                &tsp,
                format!("missing `action` in {what} (\"allow\" or \"deny\")"),
            );
            false
        };
        let log = cx.bool(t, "log", &what).unwrap_or(default_log);
        let Some((name, nspan)) = name else { continue };
        let origin = cx.s.at(&nspan);
        if let Some(first) = seen.get(&name) {
            cx.err(
                &nspan,
                format!("duplicate firewall rule name `{name}` (first defined at {first})"),
            );
            continue;
        }
        seen.insert(name.clone(), origin.clone());
        spans.push(nspan);
        rules.push(FirewallRule {
            cond: Rule {
                name,
                origin,
                groups: c.groups,
                devices: c.devices,
                locations: c.locations,
                categories: None,
                category_names: None,
                apps: None,
                app_categories: None,
                app_tenant: None,
                hosts: c.hosts,
                ports: c.ports,
                schemes: None,
                methods: None,
                paths: None,
                time: c.time,
                days: c.days,
                subject: Default::default(),
                action: if allow { Action::Allow } else { Action::Block },
                message: None,
                tunnel: None,
                egress: None,
                casb: None,
                firewall: None,
                decides: true,
            },
            cidrs,
            protocol,
            allow,
            log,
        });
    }
    report_unreachable(cx, &rules, &spans);
    Some(FirewallSettings {
        web_ports,
        default_allow,
        default_log,
        rules,
    })
}

/// Warns at every firewall rule that can never be reached: an earlier rule
/// matches every flow it matches (first match wins).
fn report_unreachable(cx: &mut Cx<'_>, rules: &[FirewallRule], spans: &[Span]) {
    for (j, b) in rules.iter().enumerate() {
        let Some(a) = rules[..j].iter().find(|a| fw_covers(a, b)) else {
            continue;
        };
        let outcome = if a.allow == b.allow {
            "the same action"
        } else if a.allow {
            "allow"
        } else {
            "deny"
        };
        cx.warn(
            &spans[j],
            format!(
                "firewall rule `{}` can never be reached: firewall rule `{}` ({}) matches every flow it matches and comes first ({outcome}); move it above, narrow the earlier rule, or remove it",
                b.cond.name, a.cond.name, a.cond.origin
            ),
        );
    }
}

/// Does firewall rule `a` match every flow `b` matches? (sound, not complete)
fn fw_covers(a: &FirewallRule, b: &FirewallRule) -> bool {
    let cidrs = match (&a.cidrs, &b.cidrs) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|n| {
            a.iter()
                .any(|m| m.contains(&n.network()) && m.prefix_len() <= n.prefix_len())
        }),
    };
    let protocol = a.protocol.is_none() || a.protocol == b.protocol;
    cidrs && protocol && covers(&a.cond, &b.cond)
}

/// Warns at every `[[rule]]` that can only match CONNECTs to non-web
/// ports: with a `[firewall]` those are the firewall's to decide, so the
/// rule never applies.
pub(super) fn report_web_rules_left_to_firewall(
    cx: &mut Cx<'_>,
    rules: &[Rule],
    spans: &[Span],
    fw: &FirewallSettings,
) {
    for (r, sp) in rules.iter().zip(spans) {
        let (Some(schemes), Some(ports)) = (r.schemes, &r.ports) else {
            continue;
        };
        let non_web = |p: &PortRange| !fw.web_ports.iter().any(|w| w.0 <= p.1 && p.0 <= w.1);
        if schemes == SCHEME_CONNECT && ports.iter().all(non_web) {
            cx.warn(
                sp,
                format!(
                    "rule `{}` never applies: it matches only CONNECTs to ports outside [firewall] web_ports, and those are decided by the [firewall] (after the deny lists); write it as a [[firewall.rule]]",
                    r.name
                ),
            );
        }
    }
}
