//! Evaluation: one pure function from a request context to a [`Decision`].

use crate::pattern::{local_day_minute, PortRange};
use crate::registry::GroupBits;
use crate::subject::{Miss, PostureFailure, Subject};
use crate::{Action, CasbHook, FirewallHook, ListMasks, Policy, Rule, ScopedEntry, TunnelMode};
use crate::{SCHEME_CONNECT, SCHEME_HTTP, SCHEME_HTTPS};
use std::borrow::Cow;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Scheme {
    Http,
    Https,
    Connect,
}

impl Scheme {
    fn bit(self) -> u8 {
        match self {
            Scheme::Http => SCHEME_HTTP,
            Scheme::Https => SCHEME_HTTPS,
            Scheme::Connect => SCHEME_CONNECT,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Connect => "connect",
        }
    }
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// From the device certificate; `None` on the plain in-site listener.
    pub device: Option<&'a str>,
    /// Groups carried in the device certificate (used only when the policy has
    /// no `[registry]`; see [`Policy::device_groups`]).
    pub cert_groups: &'a [String],
    pub client_ip: IpAddr,
    /// `Some` = already established (site assertion); `None` = `policy.locate(client_ip)`.
    pub location: Option<Location>,
    pub scheme: Scheme,
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Path + query ("" or "/" for CONNECT).
    pub path: &'a str,
    pub time: std::time::SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Location {
    Site(String),
    Offsite,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Site(s) => write!(f, "site {s}"),
            Location::Offsite => write!(f, "offsite"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Egress {
    pub pool: String,
    /// The bound source address (None: the network translates, see `seen_as`).
    pub source: Option<IpAddr>,
    pub seen_as: Option<IpAddr>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule's name; `"default"`, `"allow-list"`, `"deny-list"`,
    /// `"deny-list:<group>"`, `"policy-deny-list:<policy>"` or
    /// `"category-block:<policy>"` for the built-in steps.
    pub rule: String,
    /// `file:line` of the deciding rule (None for built-in steps).
    pub rule_origin: Option<String>,
    /// The `[[policy]]` selected by the user's groups, if the document has any.
    pub policy: Option<String>,
    pub message: Option<String>,
    pub location: Location,
    pub device: Option<String>,
    /// The registry's user of the device, or the signed-in user when there is one.
    pub user: Option<String>,
    /// `user` is the OpenID Connect user signed in on the device.
    pub signed_in: bool,
    /// The signed-in user's groups from the provider.
    pub user_groups: Vec<String>,
    /// For a block: a rule that would have applied but for the device's posture.
    pub posture_failure: Option<PostureFailure>,
    pub groups: Vec<String>,
    pub categories: Vec<String>,
    pub app: Option<String>,
    /// The app's category (storage, mail, ...).
    pub app_category: Option<String>,
    /// Whether the app instance is the board's own (`own`) or not (`other`).
    pub app_tenant: Option<&'static str>,
    pub egress: Option<Egress>,
    pub tunnel: Option<TunnelMode>,
    pub casb: Option<CasbHook>,
    pub firewall: Option<FirewallHook>,
    /// The request as evaluated (for explain); empty from [`Policy::decide`].
    pub request: String,
}

impl Decision {
    pub fn is_blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// Human-readable multi-line explanation (English; other languages:
    /// [`crate::wording::Wording::explain`]).
    pub fn explain(&self) -> String {
        crate::wording::EN.explain(self)
    }
}

fn norm_host(h: &str) -> Cow<'_, str> {
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    let trimmed = h.strip_suffix('.').unwrap_or(h);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

struct Ctx<'a> {
    device: Option<&'a str>,
    groups: GroupBits,
    site: Option<usize>,
    offsite: bool,
    cats: komugate_categories::CategorySet,
    app: Option<usize>,
    app_category: u16,
    app_own: bool,
    host: &'a str,
    /// The host normalised like list entries, only when some list has
    /// scoped entries ([`ScopedEntry`]).
    list_host: Option<String>,
    port: u16,
    scheme: u8,
    method: &'a str,
    path: &'a str,
    day: u8,
    minute: u16,
}

impl Rule {
    #[inline]
    fn matches(&self, c: &Ctx<'_>) -> bool {
        if let Some(g) = &self.groups {
            if !g.intersects(&c.groups) {
                return false;
            }
        }
        if let Some(s) = self.schemes {
            if s & c.scheme == 0 {
                return false;
            }
        }
        if let Some(l) = &self.locations {
            if !l.admits(c.site, c.offsite) {
                return false;
            }
        }
        if let Some(a) = &self.apps {
            if !c.app.is_some_and(|i| a.contains(&i)) {
                return false;
            }
        }
        if let Some(bits) = self.app_categories {
            if c.app.is_none() || bits & c.app_category == 0 {
                return false;
            }
        }
        if let Some(own) = self.app_tenant {
            if c.app.is_none() || own != c.app_own {
                return false;
            }
        }
        if let Some(p) = &self.ports {
            if !p.iter().any(|r| r.contains(c.port)) {
                return false;
            }
        }
        if let Some(m) = &self.methods {
            if !m.iter().any(|m| m.eq_ignore_ascii_case(c.method)) {
                return false;
            }
        }
        if let Some(d) = &self.devices {
            if !c.device.is_some_and(|dev| d.iter().any(|x| x == dev)) {
                return false;
            }
        }
        if let Some(cs) = &self.categories {
            if !cs.intersects(&c.cats) {
                return false;
            }
        }
        if let Some(h) = &self.hosts {
            if !h.iter().any(|p| p.matches(c.host)) {
                return false;
            }
        }
        if let Some(p) = &self.paths {
            if !p.iter().any(|p| c.path.starts_with(p.as_str())) {
                return false;
            }
        }
        if self.time.is_some() || self.days.is_some() {
            let days = self.days.unwrap_or(crate::Weekdays::ALL);
            match self.time {
                None => {
                    if !days.contains(c.day) {
                        return false;
                    }
                }
                Some(w) if !w.overnight() => {
                    if !(days.contains(c.day) && w.start <= c.minute && c.minute < w.end) {
                        return false;
                    }
                }
                Some(w) => {
                    // Overnight: the part after midnight belongs to the previous day's window.
                    let late = c.minute >= w.start && days.contains(c.day);
                    let early = c.minute < w.end && days.contains((c.day + 6) % 7);
                    if !(late || early) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// What the decision reads of a request's host (see [`Policy::host_view`]).
pub(crate) struct HostView<'a> {
    /// Lowercase, without brackets or a trailing dot.
    pub host: Cow<'a, str>,
    /// Normalised like list entries, only when some list has scoped entries.
    pub list_host: Option<String>,
    pub cats: komugate_categories::CategorySet,
    pub app: Option<usize>,
    pub app_own: bool,
}

impl Policy {
    /// The host's categories (for `scheme` and `path`), app and the forms
    /// the matchers take: the one place [`Policy::decide_as`] and
    /// [`Policy::host_key`] read the host.
    pub(crate) fn host_view<'a>(&self, scheme: Scheme, host: &'a str, path: &str) -> HostView<'a> {
        let host = norm_host(host);
        // A CONNECT tunnel is an https URL with no path for the adblock
        // patterns that name a scheme.
        let url_scheme = match scheme {
            Scheme::Http => "http",
            Scheme::Https | Scheme::Connect => "https",
        };
        let cats = self.matcher.lookup_request(url_scheme, &host, path);
        let app = self
            .apps
            .iter()
            .position(|a| a.patterns.iter().any(|p| p.matches(&host)));
        let app_own = app.is_some_and(|i| self.apps[i].is_own(&host, &self.tenants));
        let list_host = self
            .scoped_lists
            .then(|| komugate_categories::normalize_host(&host).ok())
            .flatten();
        HostView {
            host,
            list_host,
            cats,
            app,
            app_own,
        }
    }
}

impl ListMasks {
    /// Whether the request in `c` at `t_ms` is on the list.
    #[inline]
    fn hits(&self, c: &Ctx<'_>, t_ms: i64) -> bool {
        c.cats.intersects(&self.permanent)
            || self
                .expiring
                .iter()
                .any(|(until, s)| t_ms < *until && c.cats.intersects(s))
            || self.scoped.iter().any(|e| e.applies(c, t_ms))
    }
}

impl ScopedEntry {
    #[inline]
    fn applies(&self, c: &Ctx<'_>, t_ms: i64) -> bool {
        self.until.is_none_or(|u| t_ms < u)
            && c.list_host.as_deref().is_some_and(|h| self.covers(h))
            && self
                .devices
                .as_ref()
                .is_none_or(|d| c.device.is_some_and(|dev| d.iter().any(|x| x == dev)))
            && self
                .locations
                .as_ref()
                .is_none_or(|l| l.admits(c.site, c.offsite))
    }
}

/// A device's groups and user, as [`Policy::device_groups`] decides them.
pub(crate) struct DeviceGroups {
    pub groups: GroupBits,
    pub user: Option<String>,
    /// Certificate groups the policy does not define (shown, never matched).
    pub extra: Vec<String>,
}

impl Policy {
    /// The groups of a device. The registry is authoritative: when the
    /// policy has a `[registry]`, the registry's row alone gives the groups
    /// and the certificate's groups are ignored (a device missing from the
    /// registry has no group), so a group removed from the CSV is gone at
    /// the next reload whatever a two-year certificate says. Without a
    /// `[registry]`, the certificate's groups are the only source.
    pub(crate) fn device_groups(
        &self,
        device: Option<&str>,
        cert_groups: &[String],
    ) -> DeviceGroups {
        let mut out = DeviceGroups {
            groups: GroupBits::default(),
            user: None,
            extra: Vec::new(),
        };
        if self.registry.configured {
            if let Some(e) = device.and_then(|d| self.registry.devices.get(d)) {
                out.groups = e.groups;
                out.user = Some(e.user.clone());
            }
            return out;
        }
        for g in cert_groups {
            match self.group_index.get(g.as_str()) {
                Some(i) => out.groups.insert(*i),
                None => out.extra.push(g.clone()),
            }
        }
        out
    }

    /// The decision for one request, with the request described for
    /// explain. Pure; the same evaluation backs the proxy ([`Policy::decide_as`]),
    /// `komugate policy explain` and `/admin/explain`.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        self.evaluate_as(req, &Subject::default())
    }

    /// [`Policy::evaluate`] for a device with a signed-in user and / or a
    /// posture report (`subject`).
    pub fn evaluate_as(&self, req: &Request<'_>, subject: &Subject<'_>) -> Decision {
        let mut d = self.decide_as(req, subject);
        d.request = describe(req, &norm_host(req.host));
        d
    }

    /// [`Policy::evaluate_as`] without the request description (`request`
    /// is empty): the data path never shows it, and formatting it was a
    /// third of the evaluation's cost.
    pub fn decide_as(&self, req: &Request<'_>, subject: &Subject<'_>) -> Decision {
        let (site, location) = match &req.location {
            Some(Location::Site(name)) => (
                self.site_index.get(name).copied(),
                Location::Site(name.clone()),
            ),
            Some(Location::Offsite) => (None, Location::Offsite),
            None => match self.locate_index(req.client_ip) {
                Some(i) => (Some(i), Location::Site(self.sites[i].name.clone())),
                None => (None, Location::Offsite),
            },
        };
        let offsite = location == Location::Offsite;
        let DeviceGroups {
            groups,
            user,
            extra: extra_groups,
        } = self.device_groups(req.device, req.cert_groups);
        let HostView {
            host,
            list_host,
            cats,
            app,
            app_own,
        } = self.host_view(req.scheme, req.host, req.path);
        let (day, minute) = local_day_minute(req.time, self.tz_offset);
        let app_ref = app.map(|i| &self.apps[i]);
        let ctx = Ctx {
            device: req.device,
            groups,
            site,
            offsite,
            cats,
            app,
            app_category: app_ref
                .and_then(|a| crate::casb::category_bit(&a.category))
                .unwrap_or(0),
            app_own,
            host: &host,
            list_host,
            port: req.port,
            scheme: req.scheme.bit(),
            method: req.method,
            path: req.path,
            day,
            minute,
        };

        // 1. deny lists, 2. allow lists, 3. the policy's blocked categories,
        // 4. the user's policy rules, 5. default.
        let t_ms = unix_ms(req.time);
        let policy = self
            .policies
            .iter()
            .find(|p| p.groups.as_ref().is_none_or(|g| g.intersects(&groups)));
        let mut decided: Option<(Action, String, Option<&Rule>)> = None;
        if self.deny_global.hits(&ctx, t_ms) {
            decided = Some((Action::Block, "deny-list".into(), None));
        }
        if decided.is_none() {
            for (g, _, deny) in &self.group_lists {
                if groups.contains(*g) && deny.hits(&ctx, t_ms) {
                    decided = Some((
                        Action::Block,
                        format!("deny-list:{}", self.groups[*g].name),
                        None,
                    ));
                    break;
                }
            }
        }
        if decided.is_none() {
            if let Some(p) = policy.filter(|p| p.deny.hits(&ctx, t_ms)) {
                decided = Some((Action::Block, format!("policy-deny-list:{}", p.name), None));
            }
        }
        // With a `[firewall]`, a CONNECT to a port outside `web_ports` is not
        // web traffic: after the deny lists it is the firewall's to decide
        // (the data path runs it next), relayed, never inspected. Allow lists
        // and `[[rule]]`s decide web traffic only, so a web rule such as
        // "no CONNECT except 443" cannot shadow a firewall exception.
        let firewall_decides =
            req.scheme == Scheme::Connect && self.has_firewall() && !self.is_web_port(req.port);
        if decided.is_none() && firewall_decides {
            decided = Some((Action::Allow, FIREWALL_DECIDES.into(), None));
        }
        if decided.is_none() {
            let allowed = self.allow_global.hits(&ctx, t_ms)
                || self
                    .group_lists
                    .iter()
                    .any(|(g, allow, _)| groups.contains(*g) && allow.hits(&ctx, t_ms))
                || policy.is_some_and(|p| p.allow.hits(&ctx, t_ms));
            if allowed {
                decided = Some((Action::Allow, "allow-list".into(), None));
            }
        }
        if decided.is_none() {
            if let Some(p) = policy.filter(|p| p.block_categories.intersects(&cats)) {
                decided = Some((Action::Block, format!("category-block:{}", p.name), None));
            }
        }
        // The policy's ignored categories are invisible to its rules.
        let mut ctx = ctx;
        if let Some(p) = policy {
            ctx.cats = ctx.cats.difference(p.ignore_categories);
        }
        // The first rule whose conditions other than posture held but whose
        // posture requirement failed: the block page says why.
        let mut posture_miss: Option<PostureFailure> = None;
        if decided.is_none() {
            if let Some(p) = policy {
                for &ri in &p.rules {
                    let r = &self.rules[ri];
                    if !(r.decides && r.matches(&ctx)) {
                        continue;
                    }
                    match r.subject.check(subject) {
                        Ok(()) => {
                            decided = Some((r.action, r.name.clone(), Some(r)));
                            break;
                        }
                        Err(Miss::Posture(ja, en)) => {
                            posture_miss.get_or_insert(PostureFailure {
                                rule: r.name.clone(),
                                ja,
                                en,
                            });
                        }
                        Err(Miss::Subject) => {}
                    }
                }
            }
        }
        // CASB controls: every matching rule with `casb` counts, first per field wins.
        let mut casb: Option<CasbHook> = None;
        if self.has_casb_rules {
            if let Some(p) = policy {
                for &ri in &p.rules {
                    let r = &self.rules[ri];
                    if let Some(h) = &r.casb {
                        if r.matches(&ctx) && r.subject.check(subject).is_ok() {
                            casb.get_or_insert_with(CasbHook::default).merge(h);
                        }
                    }
                }
            }
        }
        let (action, rule_name, rule) = decided.unwrap_or_else(|| {
            let a = policy
                .and_then(|p| p.default_action)
                .unwrap_or(self.default_action);
            (a, "default".into(), None)
        });
        let message = match rule.and_then(|r| r.message.clone()) {
            Some(m) => Some(m),
            None if action == Action::Block => self.default_message.clone(),
            None => None,
        };
        let egress_idx = rule.and_then(|r| r.egress).or_else(|| {
            self.egress
                .iter()
                .position(|e| e.patterns.iter().any(|p| p.matches(&host)))
        });
        // The signed-in user, when there is one, is who is at the device.
        let signed_in = subject.user.is_some();
        let user = subject.user.map(str::to_string).or(user);
        let mut group_names: Vec<String> =
            groups.iter().map(|g| self.groups[g].name.clone()).collect();
        group_names.extend(extra_groups);
        let categories: Vec<String> = cats
            .iter()
            .filter(|c| self.visible.contains(*c))
            .map(|c| self.matcher.category_name(c).to_string())
            .collect();
        Decision {
            action,
            rule: rule_name,
            rule_origin: rule.map(|r| r.origin.clone()),
            policy: policy
                .filter(|_| {
                    self.policies.len() > 1
                        || self.policies.first().is_some_and(|p| p.name != "main")
                })
                .map(|p| p.name.clone()),
            message,
            location,
            device: req.device.map(str::to_string),
            user,
            signed_in,
            user_groups: subject.user_groups.to_vec(),
            posture_failure: posture_miss.filter(|_| action == Action::Block),
            groups: group_names,
            categories,
            app: app_ref.map(|a| a.name.clone()),
            app_category: app_ref.map(|a| a.category.clone()),
            app_tenant: app_ref.map(|_| if app_own { "own" } else { "other" }),
            egress: egress_idx.map(|i| crate::Egress {
                pool: self.egress[i].name.clone(),
                source: self.egress[i].source,
                seen_as: self.egress[i].seen_as,
            }),
            tunnel: if firewall_decides {
                Some(TunnelMode::Bypass)
            } else {
                rule.and_then(|r| r.tunnel).or(self.default_tunnel)
            },
            casb: casb.filter(|_| !firewall_decides),
            firewall: rule.and_then(|r| r.firewall.clone()),
            request: String::new(),
        }
    }
}

/// `GET https://host:port/path from 10.0.0.1` (`CONNECT host:port from …`):
/// the request line explain shows; `host` normalised.
fn describe(req: &Request<'_>, host: &str) -> String {
    match req.scheme {
        Scheme::Connect => format!("CONNECT {}:{} from {}", host, req.port, req.client_ip),
        s => {
            let default_port = if s == Scheme::Http { 80 } else { 443 };
            let port = if req.port == default_port || req.port == 0 {
                String::new()
            } else {
                format!(":{}", req.port)
            };
            format!(
                "{} {}://{}{}{} from {}",
                req.method,
                s.as_str(),
                host,
                port,
                req.path,
                req.client_ip
            )
        }
    }
}

/// Unix time in milliseconds (negative before 1970).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The rule a [`Decision`] names when a CONNECT to a non-web port is left
/// to the `[firewall]` (whose verdict then names the firewall rule).
pub const FIREWALL_DECIDES: &str = "firewall";

/// One non-web flow (a tunnel that will not be inspected) for [`Policy::firewall`].
#[derive(Clone, Debug)]
pub struct FirewallRequest<'a> {
    pub device: Option<&'a str>,
    pub cert_groups: &'a [String],
    pub client_ip: IpAddr,
    /// `Some` = already established (site assertion); `None` = `policy.locate(client_ip)`.
    pub location: Option<Location>,
    /// The destination as requested (name or address literal).
    pub host: &'a str,
    /// One resolved destination address (CIDR rules never match without one,
    /// unless `host` is itself an address literal).
    pub dest_ip: Option<IpAddr>,
    pub port: u16,
    /// A TCP tunnel (CONNECT) or a UDP flow (CONNECT-UDP).
    pub protocol: Protocol,
    pub time: std::time::SystemTime,
}

/// The transport of a non-web flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// UDP ports of DNS (53) and DNS over TLS/QUIC (853): refused for UDP
/// flows unless a rule with `protocol = "udp"` allows them. Devices resolve
/// through the gateway's DoH, where names are filtered and logged.
pub const UDP_DNS_PORTS: &[u16] = &[53, 853];

/// Rule named when a UDP flow to a DNS port is refused by default.
pub const UDP_DNS_RULE: &str = "firewall-udp-dns";

/// Rule named when a UDP flow to a web port (QUIC, HTTP/3) is refused by
/// default: browsers then fall back to TCP, where inspection and the
/// category filter apply.
pub const UDP_QUIC_RULE: &str = "firewall-udp-quic";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FirewallVerdict {
    pub allow: bool,
    /// The matching `[[firewall.rule]]`'s name, `"firewall-web"` (a web port
    /// left to the web policy) or `"firewall-default"`.
    pub rule: String,
    /// `file:line` of the matching rule.
    pub rule_origin: Option<String>,
    pub log: bool,
}

impl Policy {
    /// Whether the document has a `[firewall]` section (no section = no firewall).
    pub fn has_firewall(&self) -> bool {
        self.firewall.is_some()
    }

    /// Whether `port` is one of `[firewall] web_ports` (false without a firewall).
    pub fn is_web_port(&self, port: u16) -> bool {
        self.firewall
            .as_ref()
            .is_some_and(|f| f.web_ports.iter().any(|r| r.contains(port)))
    }

    /// The firewall verdict for one non-web flow. Pure. First matching
    /// `[[firewall.rule]]` of the flow's protocol (or of any protocol)
    /// wins; otherwise a TCP flow to a web port is allowed (left to the web
    /// policy) and any other flow gets `[firewall] default`. Without a
    /// `[firewall]` section everything is allowed (rule `"firewall-off"`).
    ///
    /// UDP flows to DNS ports ([`UDP_DNS_PORTS`]) and to web ports (QUIC)
    /// are refused ([`UDP_DNS_RULE`], [`UDP_QUIC_RULE`]), with or without a
    /// `[firewall]`, unless a rule that says `protocol = "udp"` allows them:
    /// allow rules for any protocol are passed over for those flows, so
    /// they do not open them by accident.
    pub fn firewall(&self, req: &FirewallRequest<'_>) -> FirewallVerdict {
        let web_ports = self.firewall.as_ref().map(|fw| fw.web_ports.as_slice());
        let udp_default = (req.protocol == Protocol::Udp)
            .then(|| udp_refusal(req.port, web_ports))
            .flatten();
        let Some(fw) = &self.firewall else {
            return udp_default.unwrap_or(FirewallVerdict {
                allow: true,
                rule: "firewall-off".into(),
                rule_origin: None,
                log: false,
            });
        };
        let host = norm_host(req.host);
        let (site, offsite) = match &req.location {
            Some(Location::Site(name)) => (self.site_index.get(name).copied(), false),
            Some(Location::Offsite) => (None, true),
            None => match self.locate_index(req.client_ip) {
                Some(i) => (Some(i), false),
                None => (None, true),
            },
        };
        let groups = self.device_groups(req.device, req.cert_groups).groups;
        let dest_ip = req
            .dest_ip
            .or_else(|| host.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical());
        let (day, minute) = local_day_minute(req.time, self.tz_offset);
        let ctx = Ctx {
            device: req.device,
            groups,
            site,
            offsite,
            cats: komugate_categories::CategorySet::empty(),
            app: None,
            app_category: 0,
            app_own: false,
            host: &host,
            list_host: None,
            port: req.port,
            scheme: SCHEME_CONNECT,
            method: "",
            path: "",
            day,
            minute,
        };
        for r in &fw.rules {
            if r.protocol.is_some_and(|p| p != req.protocol) {
                continue;
            }
            if let Some(nets) = &r.cidrs {
                if !dest_ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) {
                    continue;
                }
            }
            // Only an explicit UDP rule opens DNS or QUIC over UDP: an
            // allow for any protocol is passed over for those flows.
            if udp_default.is_some() && r.allow && r.protocol != Some(Protocol::Udp) {
                continue;
            }
            if r.cond.matches(&ctx) {
                return FirewallVerdict {
                    allow: r.allow,
                    rule: r.cond.name.clone(),
                    rule_origin: Some(r.cond.origin.clone()),
                    log: r.log,
                };
            }
        }
        if let Some(refused) = udp_default {
            return refused;
        }
        if req.protocol == Protocol::Tcp && fw.web_ports.iter().any(|r| r.contains(req.port)) {
            return FirewallVerdict {
                allow: true,
                rule: "firewall-web".into(),
                rule_origin: None,
                log: false,
            };
        }
        FirewallVerdict {
            allow: fw.default_allow,
            rule: "firewall-default".into(),
            rule_origin: None,
            log: fw.default_log,
        }
    }
}

/// The default refusal of a UDP flow to `port`, if any: DNS ports, and web
/// ports (`[firewall] web_ports`; the default web ports when `web_ports`
/// is `None`, without a `[firewall]`). Always logged.
fn udp_refusal(port: u16, web_ports: Option<&[PortRange]>) -> Option<FirewallVerdict> {
    let web = match web_ports {
        Some(ports) => ports.iter().any(|r| r.contains(port)),
        None => crate::FIREWALL_WEB_PORTS.contains(&port),
    };
    let rule = if UDP_DNS_PORTS.contains(&port) {
        UDP_DNS_RULE
    } else if web {
        UDP_QUIC_RULE
    } else {
        return None;
    };
    Some(FirewallVerdict {
        allow: false,
        rule: rule.into(),
        rule_origin: None,
        log: true,
    })
}
