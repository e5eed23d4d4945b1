//! The decision stage: [`Runtime::decide`], called once per request by the
//! flow (plain requests, CONNECT tunnels and their SNI, inspected inner
//! requests, DoH queries) after the location stage. The answer says allow
//! or block (with the deciding rule's name), inspect or bypass for tunnels,
//! which egress source address to use, and what the access record notes
//! (site, user, groups, categories, app, CASB controls).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::device_auth::DeviceIdentity;
use crate::request::Block;
pub use crate::request::ListenerKind;

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
    /// The user signed in on the device and its posture (`crate::users`).
    pub subject: komugate_policy::Subject<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Block,
}

/// What to do with an allowed CONNECT tunnel: inspect, or relay untouched.
pub use komugate_policy::TunnelMode;

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
    /// `user` signed in through OpenID Connect on the device.
    pub signed_in: bool,
    /// The signed-in user's groups (the token's group claim).
    pub user_groups: Vec<String>,
    pub groups: Vec<String>,
    /// For a block: the rule the device's posture kept from applying, and why.
    pub posture_failure: Option<komugate_policy::PostureFailure>,
    pub app: Option<String>,
    /// Whom to contact, for the block page (from the policy's `[contact]`).
    pub contact: Option<String>,
    /// CASB controls of the matching rules (`crate::stages::casb`).
    pub casb: Option<komugate_policy::CasbHook>,
}

impl Decision {
    pub fn is_blocked(&self) -> bool {
        self.verdict == Verdict::Block
    }

    /// The block this decision stands for (rule, message, categories).
    pub fn block(&self) -> Block {
        // Out of posture: the block page says why, in Japanese first.
        let message = match &self.posture_failure {
            Some(p) => Some(format!(
                "この端末の状態がルール「{}」の条件を満たしていません: {} / The device's posture does not meet rule {}: {}",
                p.rule, p.ja, p.rule, p.en
            )),
            None => self.message.clone(),
        };
        Block {
            rule: self.rule.clone(),
            message,
            category: (!self.categories.is_empty()).then(|| self.categories.join(", ")),
        }
    }
}

/// The running decision state: swapped atomically on reload (as part of
/// the generation).
pub struct Runtime {
    pub generation: u64,
    /// The compiled policy (categories and registry included): the
    /// `[policy] file`, or without one the built-in policy compiled from the
    /// config's simple lists ([`builtin_policy_text`]).
    pub policy: Arc<komugate_policy::Policy>,
    /// True when the policy is the built-in one (no `[policy] file`).
    pub builtin: bool,
    /// Digest of every input of this generation (audit log).
    pub digest: String,
    /// (rule name, canonical text) for the reload audit's diff summary.
    pub rule_digests: Vec<(String, String)>,
    contact: Option<String>,
    /// Hosts never inspected, whatever the rule says.
    bypass_hosts: Vec<komugate_policy::HostPattern>,
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

/// Where the built-in policy's rules come from, for error messages.
const BUILTIN_SOURCE: &str =
    "built-in policy from the gateway config ([decision], [egress.fixed], [inspect] hosts)";

impl Runtime {
    /// Builds the decision state for `config`: the `[policy] file` when one
    /// is configured, else the built-in policy of the simple lists; both
    /// are compiled and run by the same policy engine. Slow (blocklists):
    /// call it off the hot path.
    pub fn build(config: &Config, generation: u64) -> Result<Runtime, String> {
        let (policy, builtin) = match policy_path(config) {
            Some(path) => (
                komugate_policy::Policy::load(&path).map_err(|e| e.to_string())?,
                false,
            ),
            None => {
                let text = builtin_policy_text(config);
                let policy =
                    komugate_policy::Policy::from_str(&text, std::path::Path::new(BUILTIN_SOURCE))
                        .map_err(|e| {
                            format!("the [decision], [egress.fixed] or [inspect] hosts lists of the gateway config are not valid:\n{e}")
                        })?;
                (policy, true)
            }
        };
        let mut bypass_hosts = Vec::new();
        let builtin_bypass: &[&str] = if config.inspect.builtin_bypass {
            BUILTIN_BYPASS
        } else {
            &[]
        };
        for h in config
            .inspect
            .bypass_hosts
            .iter()
            .map(String::as_str)
            .chain(builtin_bypass.iter().copied())
        {
            bypass_hosts.push(
                komugate_policy::HostPattern::parse(h)
                    .map_err(|e| format!("[inspect] bypass_hosts: {e}"))?,
            );
        }
        Ok(Runtime {
            generation,
            contact: format_contact(policy.contact()),
            digest: policy.generation_digest(),
            rule_digests: policy.rule_summaries(),
            policy: Arc::new(policy),
            builtin,
            bypass_hosts,
        })
    }

    /// Whether `host` is on the inspection bypass lists (pinned apps, OS
    /// updates): never intercepted, not even for a block page.
    pub fn never_inspected(&self, host: &str) -> bool {
        self.bypass_hosts.iter().any(|p| p.matches(host))
    }

    /// Whom to contact (the policy's `[contact]`), for block pages.
    pub fn contact(&self) -> Option<&str> {
        self.contact.as_deref()
    }

    /// The decision for one request or tunnel. Pure: no I/O. The data
    /// path's one caller is the flow's decision stage (`crate::flow`).
    pub fn decide(&self, req: &RequestInfo) -> Decision {
        let decision = self
            .policy
            .decide_as(&policy_request(req, SystemTime::now()), &req.subject);
        self.from_policy(req, decision)
    }

    /// Maps the policy's decision onto the data path's; inspection is
    /// refused for hosts on the bypass lists whatever the rule says.
    pub fn from_policy(&self, req: &RequestInfo, d: komugate_policy::Decision) -> Decision {
        let tunnel = match d.tunnel {
            Some(TunnelMode::Inspect) if !self.never_inspected(req.host) => TunnelMode::Inspect,
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
            egress_source: d.egress.as_ref().and_then(|e| e.source),
            egress_name: d.egress.map(|e| e.pool),
            tunnel,
            categories: d.categories,
            generation: self.generation,
            site: Some(match d.location {
                komugate_policy::Location::Site(s) => s,
                komugate_policy::Location::Offsite => "offsite".to_string(),
            }),
            user: d.user,
            signed_in: d.signed_in,
            user_groups: d.user_groups,
            groups: d.groups,
            posture_failure: d.posture_failure,
            app: d.app,
            contact: self.contact.clone(),
            casb: d.casb,
        }
    }
}

/// The built-in policy document for a config without a `[policy] file`:
/// `[decision] allowed_ports` (as the ranges outside them, blocked),
/// `[decision] blocked_hosts`, `[[egress.fixed]]` pools and `[inspect]
/// hosts` (CONNECT to them is inspected). Everything else is allowed.
pub fn builtin_policy_text(config: &Config) -> String {
    use toml::{Table, Value};
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let mut doc = Table::new();
    doc.insert("version".into(), Value::Integer(1));
    let mut defaults = Table::new();
    defaults.insert("action".into(), Value::String("allow".into()));
    doc.insert("defaults".into(), Value::Table(defaults));
    let egress: Vec<Value> = config
        .egress
        .fixed
        .iter()
        .map(|f| {
            let mut t = Table::new();
            t.insert("name".into(), Value::String(f.name.clone()));
            t.insert("source".into(), Value::String(f.source.to_string()));
            t.insert("hosts".into(), strings(&f.hosts));
            Value::Table(t)
        })
        .collect();
    if !egress.is_empty() {
        doc.insert("egress".into(), Value::Array(egress));
    }
    let mut rules = Vec::new();
    let outside = ports_outside(&config.decision.allowed_ports);
    if !config.decision.allowed_ports.is_empty() && !outside.is_empty() {
        let mut t = Table::new();
        t.insert("name".into(), Value::String("allowed-ports".into()));
        t.insert("ports".into(), strings(&outside));
        t.insert("action".into(), Value::String("block".into()));
        t.insert(
            "message".into(),
            Value::String("the destination port is not an allowed destination port".into()),
        );
        rules.push(Value::Table(t));
    }
    if !config.decision.blocked_hosts.is_empty() {
        let mut t = Table::new();
        t.insert("name".into(), Value::String("blocked-hosts".into()));
        t.insert("hosts".into(), strings(&config.decision.blocked_hosts));
        t.insert("action".into(), Value::String("block".into()));
        t.insert(
            "message".into(),
            Value::String("the host is on the blocked host list".into()),
        );
        rules.push(Value::Table(t));
    }
    if !config.inspect.hosts.is_empty() {
        let mut t = Table::new();
        t.insert("name".into(), Value::String("inspect-hosts".into()));
        t.insert("hosts".into(), strings(&config.inspect.hosts));
        t.insert("scheme".into(), Value::String("connect".into()));
        t.insert("action".into(), Value::String("allow".into()));
        t.insert("tunnel".into(), Value::String("inspect".into()));
        rules.push(Value::Table(t));
    }
    if !rules.is_empty() {
        doc.insert("rule".into(), Value::Array(rules));
    }
    toml::to_string(&doc).expect("a TOML table serialises")
}

/// The port ranges (`"a-b"`) not in `allowed`.
fn ports_outside(allowed: &[u16]) -> Vec<String> {
    let mut ports: Vec<u16> = allowed.iter().copied().filter(|p| *p > 0).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for p in ports {
        if u32::from(p) > next {
            out.push(format!("{next}-{}", p - 1));
        }
        next = u32::from(p) + 1;
    }
    if next <= 65535 {
        out.push(format!("{next}-65535"));
    }
    out
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
    let client_ip = req.client.ip().to_canonical();
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
            subject: Default::default(),
        }
    }

    #[test]
    fn default_config_decisions() {
        let rt = Runtime::build(&Config::embedded_default(), 1).unwrap();
        assert!(rt.builtin);
        let d = rt.decide(&req("blocked.example", 80));
        assert!(d.is_blocked());
        assert_eq!(d.rule, "blocked-hosts");
        assert!(rt.decide(&req("www.gambling.example", 80)).is_blocked());
        assert!(!rt.decide(&req("ok.example", 80)).is_blocked());
        let d = rt.decide(&req("ok.example", 25));
        assert_eq!(d.rule, "allowed-ports");
        assert!(d.is_blocked());
        let d = rt.decide(&req("www.c4th.example", 443));
        assert_eq!(d.egress_name.as_deref(), Some("city-fixed-ip"));
        assert_eq!(d.egress_source, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn inspect_hosts_and_bypass_lists() {
        let mut config = Config::embedded_default();
        config.inspect.hosts = vec!["*".into()];
        config.inspect.bypass_hosts = vec!["pinned.example".into()];
        let rt = Runtime::build(&config, 1).unwrap();
        let connect = |host| {
            let mut r = req(host, 443);
            r.kind = RequestKind::Connect;
            r.scheme = "";
            r.method = "CONNECT";
            rt.decide(&r)
        };
        assert_eq!(connect("ok.example").tunnel, TunnelMode::Inspect);
        assert_eq!(connect("pinned.example").tunnel, TunnelMode::Bypass);
        assert_eq!(connect("x.windowsupdate.com").tunnel, TunnelMode::Bypass);
        assert!(connect("blocked.example").is_blocked());
    }

    #[test]
    fn invalid_simple_lists_are_reported() {
        let mut config = Config::embedded_default();
        config.decision.blocked_hosts = vec!["bad/host".into()];
        let e = Runtime::build(&config, 1).err().expect("refused");
        assert!(e.contains("[decision]"), "{e}");
        assert!(e.contains("bad/host"), "{e}");
    }

    #[test]
    fn ports_outside_the_allowed_list() {
        assert_eq!(ports_outside(&[80, 443]), ["1-79", "81-442", "444-65535"]);
        assert_eq!(ports_outside(&[1, 65535]), ["2-65534"]);
        assert!(ports_outside(&(1..=65535).collect::<Vec<u16>>()).is_empty());
    }
}
