//! The one decision point. Every plain request, every CONNECT tunnel (and
//! later every inspected inner request) calls [`Runtime::decide`]; the
//! answer says allow or block (with the deciding rule's name) and which
//! egress source address to use. What is inside `decide` is replaced by the
//! policy engine; the call sites stay.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::device_auth::DeviceIdentity;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Plain HTTP/1.1 forward proxy, in-site CIDRs only; anonymous clients.
    Plain,
    /// HTTPS proxy with a device certificate.
    Mtls,
}

impl ListenerKind {
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Plain => "plain",
            ListenerKind::Mtls => "mtls",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// A forwarded HTTP request (absolute-form URL).
    Http,
    /// A CONNECT tunnel to host:port.
    Connect,
}

/// What the decision point sees of a request.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    pub listener: ListenerKind,
    pub device: Option<&'a DeviceIdentity>,
    pub client: SocketAddr,
    pub kind: RequestKind,
    pub method: &'a str,
    /// Lowercase host name or IP literal, without brackets or port.
    pub host: &'a str,
    pub port: u16,
    /// Path and query ("" for CONNECT).
    pub path: &'a str,
    /// `http`, `https` (an inspected inner request) or `` for CONNECT.
    pub scheme: &'a str,
    /// `Some(Site)` when a valid site assertion placed the device at a site
    /// (see `crate::beacon`); `None` = locate by the client address.
    pub location: Option<komugate_policy::Location>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Block,
}

/// What to do with an allowed CONNECT tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    /// Decrypt with a minted certificate and decide every inner request.
    Inspect,
    /// Relay the bytes untouched.
    Bypass,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Name of the rule that decided (`default` when none matched).
    pub rule: String,
    /// Shown on the block page.
    pub message: Option<String>,
    /// Source address the upstream socket is bound to (fixed egress).
    pub egress_source: Option<IpAddr>,
    /// Name of the egress pool that chose `egress_source`.
    pub egress_name: Option<String>,
    /// For tunnels: inspect or bypass.
    pub tunnel: TunnelMode,
    /// Categories of the destination (names), for the block page and logs.
    pub categories: Vec<String>,
    /// Policy generation that decided.
    pub generation: u64,
    /// Location (site name or `offsite`), user, groups and app when a policy decided.
    pub site: Option<String>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub app: Option<String>,
    /// Whom to contact, for the block page (from the policy's `[contact]`).
    pub contact: Option<String>,
    /// CASB controls of the matching rules (`crate::casb`).
    pub casb: Option<komugate_policy::CasbHook>,
}

impl Decision {
    pub fn is_blocked(&self) -> bool {
        self.verdict == Verdict::Block
    }
}

/// A host pattern: `*.example.com` (subdomains only), `.example.com`
/// (domain and subdomains) or `example.com` (exactly).
#[derive(Debug, Clone)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
    DomainAndSubdomains(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> HostPattern {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if s == "*" {
            return HostPattern::DomainAndSubdomains(String::new());
        }
        if let Some(rest) = s.strip_prefix("*.") {
            HostPattern::Subdomains(rest.to_string())
        } else if let Some(rest) = s.strip_prefix('.') {
            HostPattern::DomainAndSubdomains(rest.to_string())
        } else {
            HostPattern::Exact(s)
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let is_sub = |d: &str| {
            d.is_empty()
                || host.len() > d.len()
                    && host.ends_with(d)
                    && host.as_bytes()[host.len() - d.len() - 1] == b'.'
        };
        match self {
            HostPattern::Exact(d) => host == d,
            HostPattern::Subdomains(d) => is_sub(d),
            HostPattern::DomainAndSubdomains(d) => host == d || is_sub(d),
        }
    }
}

struct FixedEgressRule {
    name: String,
    hosts: Vec<HostPattern>,
    source: IpAddr,
}

/// The running decision state: swapped atomically on reload.
pub struct Runtime {
    pub generation: u64,
    /// The compiled policy (categories and registry included), when `[policy] file` is set.
    pub policy: Option<Arc<komugate_policy::Policy>>,
    /// Digest of every input of this generation (audit log).
    pub digest: String,
    /// (rule name, canonical text) for the reload audit's diff summary.
    pub rule_digests: Vec<(String, String)>,
    contact: Option<String>,
    blocked_hosts: Vec<HostPattern>,
    allowed_ports: Vec<u16>,
    fixed_egress: Vec<FixedEgressRule>,
    inspect_hosts: Vec<HostPattern>,
    bypass_hosts: Vec<HostPattern>,
}

/// Hosts that break under inspection (certificate pinning, OS update
/// channels, device management). Policy can extend or override this list.
pub const BUILTIN_BYPASS: &[&str] = &[
    ".windowsupdate.com",
    ".update.microsoft.com",
    ".delivery.mp.microsoft.com",
    ".do.dsp.mp.microsoft.com",
    ".manage.microsoft.com",
    ".wns.windows.com",
    ".notify.windows.com",
    ".events.data.microsoft.com",
    ".smartscreen.microsoft.com",
    ".push.apple.com",
    ".ess.apple.com",
    "gdmf.apple.com",
    "mesu.apple.com",
    "android.clients.google.com",
    "mtalk.google.com",
];

impl Runtime {
    /// Builds the decision state for `config`: loads and validates the
    /// policy file when one is configured. Slow (blocklists): call it off
    /// the hot path.
    pub fn build(config: &Config, generation: u64) -> Result<Runtime, String> {
        let mut runtime = Runtime::from_config(config, generation);
        if let Some(path) = policy_path(config) {
            let policy = komugate_policy::Policy::load(&path).map_err(|e| e.to_string())?;
            runtime.contact = format_contact(policy.contact());
            runtime.digest = policy.generation_digest();
            runtime.rule_digests = policy.rule_summaries();
            runtime.policy = Some(Arc::new(policy));
        }
        Ok(runtime)
    }

    /// The simple-lists runtime (no policy file).
    pub fn from_config(config: &Config, generation: u64) -> Runtime {
        Runtime {
            generation,
            policy: None,
            digest: String::from("simple-lists"),
            rule_digests: Vec::new(),
            contact: None,
            blocked_hosts: config
                .decision
                .blocked_hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect(),
            allowed_ports: config.decision.allowed_ports.clone(),
            fixed_egress: config
                .egress
                .fixed
                .iter()
                .map(|f| FixedEgressRule {
                    name: f.name.clone(),
                    hosts: f.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
                    source: f.source,
                })
                .collect(),
            inspect_hosts: config
                .inspect
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect(),
            bypass_hosts: config
                .inspect
                .bypass_hosts
                .iter()
                .map(String::as_str)
                .chain(
                    config
                        .inspect
                        .builtin_bypass
                        .then_some(BUILTIN_BYPASS)
                        .unwrap_or_default()
                        .iter()
                        .copied(),
                )
                .map(HostPattern::parse)
                .collect(),
        }
    }

    /// The decision for one request or tunnel. Pure: no I/O.
    pub fn decide(&self, req: &RequestInfo) -> Decision {
        match &self.policy {
            Some(policy) => {
                let decision = policy.evaluate(&policy_request(req, SystemTime::now()));
                self.from_policy(req, decision)
            }
            None => self.decide_simple(req),
        }
    }

    /// Maps the policy's decision onto the data path's; inspection is
    /// refused for hosts on the bypass lists whatever the rule says.
    pub fn from_policy(&self, req: &RequestInfo, d: komugate_policy::Decision) -> Decision {
        let tunnel = match d.tunnel {
            Some(komugate_policy::TunnelMode::Inspect)
                if !self.bypass_hosts.iter().any(|p| p.matches(req.host)) =>
            {
                TunnelMode::Inspect
            }
            _ => TunnelMode::Bypass,
        };
        Decision {
            verdict: if d.is_blocked() {
                Verdict::Block
            } else {
                Verdict::Allow
            },
            rule: d.rule,
            message: d.message,
            egress_source: d.egress.as_ref().map(|e| e.source),
            egress_name: d.egress.map(|e| e.pool),
            tunnel,
            categories: d.categories,
            generation: self.generation,
            site: Some(match d.location {
                komugate_policy::Location::Site(s) => s,
                komugate_policy::Location::Offsite => "offsite".to_string(),
            }),
            user: d.user,
            groups: d.groups,
            app: d.app,
            contact: self.contact.clone(),
            casb: d.casb,
        }
    }

    fn decide_simple(&self, req: &RequestInfo) -> Decision {
        let egress = self
            .fixed_egress
            .iter()
            .find(|f| f.hosts.iter().any(|p| p.matches(req.host)));
        let mut decision = Decision {
            verdict: Verdict::Allow,
            rule: "default".to_string(),
            message: None,
            egress_source: egress.map(|e| e.source),
            egress_name: egress.map(|e| e.name.clone()),
            tunnel: TunnelMode::Bypass,
            categories: Vec::new(),
            generation: self.generation,
            site: None,
            user: None,
            groups: Vec::new(),
            app: None,
            contact: None,
            casb: None,
        };
        if req.kind == RequestKind::Connect
            && self.inspect_hosts.iter().any(|p| p.matches(req.host))
            && !self.bypass_hosts.iter().any(|p| p.matches(req.host))
        {
            decision.tunnel = TunnelMode::Inspect;
        }
        if !self.allowed_ports.is_empty() && !self.allowed_ports.contains(&req.port) {
            decision.verdict = Verdict::Block;
            decision.rule = "allowed-ports".into();
            decision.message = Some(format!(
                "port {} is not an allowed destination port",
                req.port
            ));
        } else if self.blocked_hosts.iter().any(|p| p.matches(req.host)) {
            decision.verdict = Verdict::Block;
            decision.rule = "blocked-hosts".into();
            decision.message = Some(format!("{} is on the blocked host list", req.host));
        }
        decision
    }
}

/// The policy file configured in `[policy] file`, resolved against the data dir.
pub fn policy_path(config: &Config) -> Option<std::path::PathBuf> {
    (!config.policy.file.is_empty())
        .then(|| config.data_path(std::path::Path::new(&config.policy.file)))
}

/// The policy engine's view of a request; the one conversion used by the
/// proxy, `/admin/explain` and `komugate policy explain`.
pub fn policy_request<'a>(
    req: &'a RequestInfo<'a>,
    time: SystemTime,
) -> komugate_policy::Request<'a> {
    let client_ip = match req.client.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(req.client.ip()),
        v4 => v4,
    };
    komugate_policy::Request {
        device: req.device.map(|d| d.device_id.as_str()),
        cert_groups: req.device.map(|d| d.cert_groups.as_slice()).unwrap_or(&[]),
        client_ip,
        location: req.location.clone(),
        scheme: match (req.kind, req.scheme) {
            (RequestKind::Connect, _) => komugate_policy::Scheme::Connect,
            (_, "https") => komugate_policy::Scheme::Https,
            _ => komugate_policy::Scheme::Http,
        },
        method: req.method,
        host: req.host,
        port: req.port,
        path: req.path,
        time,
    }
}

fn format_contact(c: &komugate_policy::Contact) -> Option<String> {
    let parts: Vec<&str> = [&c.name, &c.phone, &c.email, &c.url]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, port: u16) -> RequestInfo<'_> {
        RequestInfo {
            listener: ListenerKind::Plain,
            device: None,
            client: "127.0.0.1:1".parse().unwrap(),
            kind: RequestKind::Http,
            method: "GET",
            host,
            port,
            path: "/",
            scheme: "http",
            location: None,
        }
    }

    #[test]
    fn host_patterns() {
        assert!(HostPattern::parse("*.c4th.example").matches("a.c4th.example"));
        assert!(!HostPattern::parse("*.c4th.example").matches("c4th.example"));
        assert!(!HostPattern::parse("*.c4th.example").matches("xc4th.example"));
        assert!(HostPattern::parse(".g.example").matches("g.example"));
        assert!(HostPattern::parse(".g.example").matches("x.g.example"));
        assert!(!HostPattern::parse("g.example").matches("x.g.example"));
        assert!(HostPattern::parse("G.Example.").matches("g.example"));
    }

    #[test]
    fn default_config_decisions() {
        let rt = Runtime::from_config(&Config::embedded_default(), 1);
        let d = rt.decide(&req("blocked.example", 80));
        assert!(d.is_blocked());
        assert_eq!(d.rule, "blocked-hosts");
        assert!(rt.decide(&req("www.gambling.example", 80)).is_blocked());
        assert!(!rt.decide(&req("ok.example", 80)).is_blocked());
        let d = rt.decide(&req("ok.example", 25));
        assert_eq!(d.rule, "allowed-ports");
        let d = rt.decide(&req("www.c4th.example", 443));
        assert_eq!(d.egress_name.as_deref(), Some("city-fixed-ip"));
        assert_eq!(d.egress_source, Some("127.0.0.1".parse().unwrap()));
    }
}
