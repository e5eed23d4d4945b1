//! Gateway configuration: listeners, TLS material, DNS, egress, limits.
//!
//! The file is TOML; unknown keys are errors so a typo never silently turns
//! a security setting off. The embedded default (`default_config.toml`) is
//! what `komugate serve` runs with no `--config`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

/// The embedded default configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    pub egress: EgressConfig,
    #[serde(default)]
    pub decision: DecisionConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub inspect: InspectConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[ips]`: Suricata rules files.
    #[serde(default)]
    pub ips: IpsConfig,
    /// `[threat_intel]`: known-bad IP/CIDR and domain lists.
    #[serde(default)]
    pub threat_intel: ThreatIntelConfig,
    /// `[doh]`: DNS over HTTPS on the mTLS listener.
    #[serde(default)]
    pub doh: DohConfig,
    /// `[udp]`: UDP flows (CONNECT-UDP) on the mTLS listener.
    #[serde(default)]
    pub udp: UdpConfig,
    /// `[block_page]`: what the block page shows and where.
    #[serde(default)]
    pub block_page: BlockPageConfig,
    /// `[alerts]`: notifications of security events and faults.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// `[doctor]`: what `komugate doctor` compares the deployment against.
    #[serde(default)]
    pub doctor: DoctorConfig,
    /// `[users]`: users signed in on devices through OpenID Connect, and
    /// the devices' posture reports (`crate::users`).
    #[serde(default)]
    pub users: UsersConfig,
}

/// `[doctor]`: expectations `komugate doctor` checks (see `crate::doctor`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoctorConfig {
    /// A URL that answers with the client address it sees (plain text or
    /// JSON with an "ip" field); "" = the egress address is not checked.
    pub echo_url: String,
    /// The address(es) the fixed-egress traffic must be seen from (the
    /// city's registered IP); empty = only report what is seen.
    pub expected_egress: Vec<IpAddr>,
    /// A blocklist, IPS rules file or threat list older than this is a warning.
    pub list_max_age_days: u64,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            echo_url: String::new(),
            expected_egress: Vec::new(),
            list_max_age_days: 8,
        }
    }
}

/// `[users]`: who is at a device besides its certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// `[users.oidc]`: the provider `komugate client` signs users in with.
    pub oidc: Option<UserOidcConfig>,
    /// A posture report older than this no longer counts (the client sends
    /// one at link setup and every `posture_interval_secs`).
    pub posture_max_age_secs: u64,
    /// A posture report stamped further in the future than this is refused.
    pub posture_max_future_secs: u64,
}

impl Default for UsersConfig {
    fn default() -> UsersConfig {
        UsersConfig {
            oidc: None,
            posture_max_age_secs: 900,
            posture_max_future_secs: 60,
        }
    }
}

/// `[users.oidc]`: ID tokens from `komugate client` sign-ins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOidcConfig {
    /// The provider's issuer, exactly as its discovery document names it
    /// (`https://login.microsoftonline.com/TENANT/v2.0`).
    pub issuer: String,
    /// The application (client) id `komugate client` signs in as (a
    /// public client: no secret, redirect `http://127.0.0.1/callback`).
    pub client_id: String,
    /// `offline_access` asks for a refresh token, with which the client
    /// renews the ID token before it expires (silent renewal).
    #[serde(default = "default_user_scopes")]
    pub scopes: Vec<String>,
    /// The claim listing the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claims naming the user (policy `users`, logs), first present
    /// one wins.
    #[serde(default = "default_user_claims")]
    pub user_claims: Vec<String>,
    /// Extra CA certificates (PEM) trusted for the provider's TLS, relative
    /// to the data directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
    #[serde(default = "default_jwks_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
}

fn default_user_claims() -> Vec<String> {
    vec![
        "preferred_username".into(),
        "upn".into(),
        "email".into(),
        "sub".into(),
    ]
}

impl UserOidcConfig {
    pub fn validate(&self, origin: &str) -> Result<()> {
        let at = |e: String| anyhow::anyhow!("{origin}: [users.oidc] {e}");
        crate::oidc::check_url("issuer", &self.issuer).map_err(at)?;
        if self.client_id.trim().is_empty() {
            bail!("{origin}: [users.oidc] client_id is empty: set the application (client) id of the app registered for komugate client");
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            bail!("{origin}: [users.oidc] scopes must include \"openid\"");
        }
        if self.user_claims.is_empty() {
            bail!("{origin}: [users.oidc] user_claims is empty: name at least one claim, e.g. [\"preferred_username\"]");
        }
        if self.clock_skew_secs > 600 {
            bail!("{origin}: [users.oidc] clock_skew_secs = {} is more than 600; fix the clocks (NTP) instead", self.clock_skew_secs);
        }
        Ok(())
    }
}

/// `[alerts]` in the gateway configuration (see `crate::alerts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Incoming-webhook URL (Teams or Slack); "" = no webhook.
    pub webhook_url: String,
    /// At most one message per kind per this many minutes.
    pub interval_minutes: u64,
    /// The first event of a kind waits this long for more before its message goes out.
    pub gather_secs: u64,
    /// Events queued between the data path and the notifier (beyond: dropped, counted).
    pub queue: usize,
    /// SMTP submission server for alert mails; "" = no mail. STARTTLS is required.
    pub smtp_host: String,
    pub smtp_port: u16,
    /// Sender and recipients (`"ICT 担当 <ict@example.jp>"` or a bare address).
    pub smtp_from: String,
    pub smtp_to: Vec<String>,
    /// Login (empty = none) and a file holding the password (relative to the data dir).
    pub smtp_username: String,
    pub smtp_password_file: String,
    /// Extra CA (PEM) trusted for the SMTP server besides the public roots; "" = none.
    pub smtp_ca: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: String::new(),
            interval_minutes: 15,
            gather_secs: 30,
            queue: 1024,
            smtp_host: String::new(),
            smtp_port: 587,
            smtp_from: String::new(),
            smtp_to: Vec::new(),
            smtp_username: String::new(),
            smtp_password_file: String::new(),
            smtp_ca: String::new(),
        }
    }
}

impl AlertsConfig {
    /// Whether any channel is configured (otherwise events are only counted).
    pub fn enabled(&self) -> bool {
        !self.webhook_url.is_empty() || !self.smtp_host.is_empty()
    }

    fn validate(&self) -> Result<()> {
        if !self.webhook_url.is_empty() {
            let uri: http::Uri = self.webhook_url.parse().map_err(|e| {
                anyhow::anyhow!(
                    "[alerts] webhook_url {:?} is not a URL: {e}",
                    self.webhook_url
                )
            })?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
                anyhow::bail!(
                    "[alerts] webhook_url {:?} must be an http(s) URL with a host, e.g. the Teams or Slack incoming-webhook URL",
                    self.webhook_url
                );
            }
        }
        if !self.smtp_host.is_empty() {
            if self.smtp_from.is_empty() || self.smtp_to.is_empty() {
                anyhow::bail!(
                    "[alerts] smtp_host is set: give smtp_from and at least one smtp_to address"
                );
            }
            if !self.smtp_username.is_empty() && self.smtp_password_file.is_empty() {
                anyhow::bail!("[alerts] smtp_username is set: give smtp_password_file (a file holding the password)");
            }
        }
        if self.interval_minutes == 0 {
            anyhow::bail!(
                "[alerts] interval_minutes must be at least 1 (one message per kind per interval)"
            );
        }
        Ok(())
    }
}

/// `[block_page]` in the gateway configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockPageConfig {
    /// Zone of the time shown on the page (`Asia/Tokyo`, `UTC`, `+09:00`).
    pub time_zone: crate::local_time::LocalZone,
    /// Whom to contact, shown when the policy has no `[contact]`; "" = a generic line.
    pub contact: String,
    /// Answer blocked HTTPS on the plain listener inside TLS with a
    /// certificate from the inspection CA, so the browser shows the page.
    /// Only for networks whose devices all trust that CA (the mTLS
    /// listener always does it: its devices are managed).
    pub https_on_plain: bool,
}

/// `[ips]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpsConfig {
    /// Suricata rules files (relative to the data directory).
    pub rules: Vec<PathBuf>,
    /// `[[ips.feed]]`: rules downloaded on a timer (see `crate::list_update`).
    #[serde(rename = "feed")]
    pub feeds: Vec<FeedConfig>,
    /// Bytes inspected at the start of each direction of a raw tunnel.
    pub stream_depth: usize,
    /// Bytes of a request or response body inspected.
    pub body_depth: usize,
}

impl Default for IpsConfig {
    fn default() -> Self {
        IpsConfig {
            rules: Vec::new(),
            feeds: Vec::new(),
            stream_depth: 8192,
            body_depth: 65536,
        }
    }
}

/// `[threat_intel]` in the gateway configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreatIntelConfig {
    /// Lists of IPs / CIDRs / domains (relative to the data directory).
    pub lists: Vec<PathBuf>,
    /// `[[threat_intel.feed]]`: lists downloaded on a timer.
    #[serde(rename = "feed")]
    pub feeds: Vec<FeedConfig>,
}

/// A feed the gateway downloads every `refresh_secs` into `path` and
/// reloads (`[[ips.feed]]`, `[[threat_intel.feed]]`); the download is
/// checked like a downloaded category list (see `crate::list_update`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// `https://` (or `http://` with `sha256`/`sha256_url`) URL.
    pub url: String,
    /// Where the feed is kept (relative to the data directory): a file, or
    /// for an IPS rules tarball a directory of `.rules` files.
    pub path: PathBuf,
    #[serde(default = "FeedConfig::default_refresh_secs")]
    pub refresh_secs: u64,
    /// Expected SHA-256 of the download (hex).
    #[serde(default)]
    pub sha256: Option<String>,
    /// URL of a checksum file (`<hex>` or `<hex>  name`) published with the feed.
    #[serde(default)]
    pub sha256_url: Option<String>,
    #[serde(default = "FeedConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Refuse a download when this share of it cannot be used: invalid
    /// lines of a threat list, rules the IPS engine cannot load. Default
    /// 0.01 for threat lists, 0.5 for IPS rules (the engine loads a subset
    /// of Suricata's language; see `komugate ips check FILE`).
    #[serde(default)]
    pub max_invalid_ratio: Option<f64>,
    /// Refuse a download with fewer than (1 − max_shrink) × the entries in force.
    #[serde(default = "FeedConfig::default_max_shrink")]
    pub max_shrink: f64,
}

impl FeedConfig {
    pub const MIN_REFRESH_SECS: u64 = 300;
    fn default_refresh_secs() -> u64 {
        24 * 3600
    }
    fn default_max_bytes() -> u64 {
        256 * 1024 * 1024
    }
    fn default_max_shrink() -> f64 {
        0.5
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        let url = self.url.as_str();
        let at = format!("{what} {url:?}");
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "{at}: `url` must start with https:// (or http:// with a checksum)"
            ));
        }
        if url.starts_with("http://") && self.sha256.is_none() && self.sha256_url.is_none() {
            return Err(format!(
                "{at}: a feed over plain http:// needs `sha256` or `sha256_url` (or use https://)"
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(format!(
                "{at}: `path` is empty; name the file the feed is kept in"
            ));
        }
        if self.refresh_secs < Self::MIN_REFRESH_SECS {
            return Err(format!(
                "{at}: `refresh_secs` = {} is too short (at least {}; feed servers are shared)",
                self.refresh_secs,
                Self::MIN_REFRESH_SECS
            ));
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{at}: `sha256` must be 64 hex digits"));
            }
            if self.sha256_url.is_some() {
                return Err(format!(
                    "{at}: use either `sha256` or `sha256_url`, not both"
                ));
            }
        }
        if self.max_bytes == 0 {
            return Err(format!("{at}: `max_bytes` must be at least 1"));
        }
        let ratios = [
            ("max_invalid_ratio", self.max_invalid_ratio.unwrap_or(0.0)),
            ("max_shrink", self.max_shrink),
        ];
        for (key, v) in ratios {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{at}: `{key}` must be a number from 0 to 1"));
            }
        }
        Ok(())
    }
}

/// `[doh]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DohConfig {
    /// Answer DoH at `/dns-query` on the mTLS listener.
    pub enabled: bool,
    /// `"nxdomain"`, or an IP address (the block page server) returned for
    /// A (IPv4) / AAAA (IPv6) queries of blocked names.
    pub blocked_answer: String,
    /// TTL of blocked answers, seconds.
    pub blocked_ttl: u32,
}

impl Default for DohConfig {
    fn default() -> Self {
        DohConfig {
            enabled: true,
            blocked_answer: "nxdomain".into(),
            blocked_ttl: 60,
        }
    }
}

/// `[udp]`: UDP flows devices open with CONNECT-UDP (RFC 9298) on the
/// mTLS listener; per-device limits, so one device cannot flood the
/// gateway's sockets or its upstream link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Accept CONNECT-UDP at all.
    pub enabled: bool,
    /// UDP flows one device may hold open at once; more are refused (429).
    pub max_flows_per_device: usize,
    /// Datagrams per second one device may send and receive, all its flows
    /// together (token bucket); datagrams over it are dropped and counted.
    pub datagrams_per_second: u32,
    /// Datagrams a device may send in a burst above that rate.
    pub datagram_burst: u32,
    /// Largest UDP payload carried (bytes, at most 65527); larger datagrams
    /// are dropped and counted.
    pub max_datagram_bytes: usize,
    /// A flow with no datagram either way for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            enabled: true,
            max_flows_per_device: 64,
            datagrams_per_second: 2000,
            datagram_burst: 4000,
            max_datagram_bytes: 16384,
            idle_timeout_secs: 60,
        }
    }
}

impl UdpConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_datagram_bytes == 0 || self.max_datagram_bytes > masque::MAX_UDP_PAYLOAD {
            return Err(format!(
                "[udp] max_datagram_bytes = {} must be from 1 to {} (the largest UDP payload)",
                self.max_datagram_bytes,
                masque::MAX_UDP_PAYLOAD
            ));
        }
        if self.datagrams_per_second == 0 || self.datagram_burst == 0 {
            return Err("[udp] datagrams_per_second and datagram_burst must be at least 1; set enabled = false to refuse UDP".into());
        }
        Ok(())
    }
}

/// What a blocked name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedAnswer {
    NxDomain,
    Address(IpAddr),
}

impl DohConfig {
    pub fn blocked_answer(&self) -> Result<BlockedAnswer, String> {
        let v = self.blocked_answer.trim();
        if v.eq_ignore_ascii_case("nxdomain") {
            return Ok(BlockedAnswer::NxDomain);
        }
        v.parse::<IpAddr>().map(BlockedAnswer::Address).map_err(|_| {
            format!("[doh] blocked_answer = {v:?} must be \"nxdomain\" or an IP address (the block page server)")
        })
    }
}

/// TLS inspection (`[inspect]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// The inspection CA that signs minted leaves (laptops trust it).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Lifetime of a minted leaf certificate.
    pub leaf_validity_hours: u64,
    /// Minted certificates kept in memory.
    pub cache_entries: usize,
    /// Extra CA bundle (PEM) trusted for upstream servers besides the webpki roots; "" = none.
    pub upstream_ca: String,
    /// Bytes that are not TLS on a tunnel marked for inspection: "block" or "tunnel".
    pub non_tls: NonTlsAction,
    /// CONNECT hosts to inspect when no policy file decides it ("*" = all).
    pub hosts: Vec<String>,
    /// Hosts never inspected (added to the built-in list).
    pub bypass_hosts: Vec<String>,
    /// Use the built-in list of hosts that break under inspection.
    pub builtin_bypass: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonTlsAction {
    Block,
    Tunnel,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            ca_cert: PathBuf::from("pki/inspect-ca.pem"),
            ca_key: PathBuf::from("pki/inspect-ca.key"),
            leaf_validity_hours: 24 * 7,
            cache_entries: 10_000,
            upstream_ca: String::new(),
            non_tls: NonTlsAction::Block,
            hosts: Vec::new(),
            bypass_hosts: Vec::new(),
            builtin_bypass: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dir: PathBuf,
    #[serde(default)]
    pub create_pki: bool,
    #[serde(default)]
    pub demo_device: String,
    /// The demo's origin web server (`crate::demo_origin`); "" = off.
    #[serde(default)]
    pub demo_origin: String,
    /// Console account created (role admin, generated password printed
    /// once) on first start when the accounts file does not have it; "" = none.
    #[serde(default)]
    pub demo_console_user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    #[serde(default)]
    pub plain: String,
    #[serde(default)]
    pub plain_clients: Vec<IpNet>,
    #[serde(default)]
    pub mtls: String,
    #[serde(default)]
    pub admin: String,
    /// Load balancer addresses that put a PROXY protocol (v2 or v1) header in
    /// front of every connection; only from these is a header read (and
    /// required), and its source address becomes the client address.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub device_ca: PathBuf,
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    #[serde(default)]
    pub revoked_serials: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// How long one query to one server may take before it is retried.
    #[serde(default = "default_dns_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per server before the lookup fails.
    #[serde(default = "default_dns_attempts")]
    pub attempts: usize,
}

fn default_dns_timeout_ms() -> u64 {
    3000
}

fn default_dns_attempts() -> usize {
    2
}

fn default_cache_entries() -> usize {
    4096
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            cache_entries: default_cache_entries(),
            timeout_ms: default_dns_timeout_ms(),
            attempts: default_dns_attempts(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time an upstream has to send its whole response head once the
    /// request (with its body) has been sent; then the client gets a 504.
    #[serde(default = "default_response_header_timeout_ms")]
    pub response_header_timeout_ms: u64,
    #[serde(default)]
    pub allow_destinations: Vec<IpNet>,
    #[serde(default)]
    pub fixed: Vec<FixedEgress>,
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

fn default_response_header_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedEgress {
    pub name: String,
    pub hosts: Vec<String>,
    pub source: IpAddr,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionConfig {
    #[serde(default)]
    pub blocked_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_ports: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    pub max_connections_per_device: usize,
    pub max_streams_per_connection: u32,
    /// HTTP/2 streams per connection on the mTLS listener. A device link
    /// carries every flow of the device (`komugate client`, full-device
    /// mode), so this is the device's concurrent flow budget on one link.
    pub max_streams_per_device_link: u32,
    pub drain_secs: u64,
    /// Idle keep-alive connections kept per upstream host (and egress address).
    pub upstream_idle_per_host: usize,
    /// Idle keep-alive connections kept across all upstream hosts; 0 =
    /// derived from the memory limit (`egress::idle_cap::default_cap`).
    pub upstream_idle_total: usize,
    /// An upstream connection that carried nothing for this long is closed:
    /// an idle one in the pools, and the one a quiet inspected session keeps.
    pub upstream_idle_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 65536,
            max_headers: 100,
            header_read_timeout_ms: 10_000,
            idle_timeout_secs: 300,
            max_connections_per_device: 256,
            max_streams_per_connection: 256,
            max_streams_per_device_link: 4096,
            drain_secs: 30,
            upstream_idle_per_host: 1024,
            upstream_idle_total: 0,
            upstream_idle_secs: 60,
        }
    }
}

impl Limits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// The cap on idle pooled upstream connections across all hosts.
    pub fn upstream_idle_total(&self) -> usize {
        match self.upstream_idle_total {
            0 => crate::egress::idle_cap::default_cap(),
            n => n,
        }
    }
    pub fn upstream_idle(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_secs.max(1))
    }
}

/// `[log]`: access logs kept a year (see `crate::logs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The live file (this hour, JSON lines); its folder is the log directory
    /// (closed hours in `segments/`, spill and shipping queues).
    pub access_log: PathBuf,
    /// Closed hours older than this many days are deleted by the daily sweep.
    pub retention_days: u32,
    /// The live file is fsynced at least this often.
    pub fsync_interval_ms: u64,
    /// Rotation period in seconds, aligned to the clock (3600 = on the hour).
    pub rotate_secs: u64,
    /// Records queued for the writer before the on-disk spill queue is used.
    pub channel_capacity: usize,
    /// Records queued for the spill queue before records are dropped (counted).
    pub spill_capacity: usize,
    /// zstd level for closed hours (1-19).
    pub zstd_level: i32,
    /// Hash-chained audit log of administration (`komugate audit verify`).
    pub audit_log: PathBuf,
    /// Display offset for times in search output and the admin export.
    pub display_utc_offset: String,
    pub syslog: crate::logs::ship::SyslogTarget,
    pub clickhouse: crate::logs::ship::ClickHouseTarget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access_log: PathBuf::from("logs/access.log"),
            retention_days: 365,
            fsync_interval_ms: 1000,
            rotate_secs: 3600,
            channel_capacity: 65_536,
            spill_capacity: 1_000_000,
            zstd_level: 6,
            audit_log: PathBuf::from("audit.log"),
            display_utc_offset: "+09:00".into(),
            syslog: Default::default(),
            clickhouse: Default::default(),
        }
    }
}

/// `[policy]`: the policy document that decides (replaces `[decision]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Policy file (TOML, see examples/policy.toml); "" = the simple `[decision]` lists.
    pub file: String,
    /// Reload when the policy file or any file it includes changes.
    pub watch: bool,
    /// How often the watched files are checked.
    pub watch_interval_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            file: String::new(),
            watch: true,
            watch_interval_ms: 2000,
        }
    }
}

/// `[admin]`: the admin API and the console on the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*` API endpoints (`GET /admin/logs`), named
    /// "admin" in the audit log; "" = that token is off.
    pub token: String,
    /// More API tokens, by name (`ci-backup = "..."`): audit entries carry the name.
    pub tokens: std::collections::BTreeMap<String, String>,
    /// "auto": TLS with `[tls] server_cert` unless the admin listener is on
    /// a loopback address; "on": TLS always.
    pub tls: String,
    /// Console accounts (argon2id hashes), relative to the data directory.
    pub users_file: PathBuf,
    /// A console session ends after this long without a request.
    pub session_idle_secs: u64,
    /// Failed sign-ins allowed per account and per client address within
    /// `signin_window_secs` before further attempts are refused.
    pub signin_max_failures: u32,
    pub signin_window_secs: u64,
    /// Console log searches and exports running at once (each on a blocking thread).
    pub max_searches: usize,
    /// `[admin.oidc]`: console sign-in through an OpenID provider (Entra ID).
    pub oidc: Option<OidcConfig>,
}

/// `[admin.oidc]`: console sign-in with OpenID Connect (authorization code
/// flow with PKCE), roles from a group claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer, exactly as its discovery document names it
    /// (`https://login.microsoftonline.com/TENANT/v2.0`); https, or plain
    /// http to a loopback address only.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (one line), relative to the data
    /// directory; kept out of the configuration file.
    pub client_secret_file: PathBuf,
    /// This console's callback, registered at the provider:
    /// `https://HOST:PORT/console/oidc/callback`.
    pub redirect_uri: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claims naming the person in the audit log and on pages, the
    /// first present one wins (`sub` when none is).
    #[serde(default = "default_name_claims")]
    pub name_claims: Vec<String>,
    /// Group → role (`viewer`, `operator`, `admin`); the highest role of
    /// the person's groups applies; no mapped group, no sign-in.
    pub roles: std::collections::BTreeMap<String, String>,
    /// Extra CA certificates (PEM) trusted for the provider's TLS, besides
    /// the public roots; relative to the data directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Clock difference tolerated with the provider (token times).
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
    /// The provider's keys are fetched again for an unknown key id at most
    /// this often.
    #[serde(default = "default_jwks_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// The sign-in button's label (`Entra ID でサインイン`).
    #[serde(default = "default_oidc_label")]
    pub label: String,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_user_scopes() -> Vec<String> {
    let mut s = default_oidc_scopes();
    s.push("offline_access".into());
    s
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_name_claims() -> Vec<String> {
    vec!["name".into(), "preferred_username".into(), "email".into()]
}
fn default_clock_skew_secs() -> u64 {
    60
}
fn default_jwks_refetch_secs() -> u64 {
    60
}
fn default_oidc_label() -> String {
    "Entra ID".into()
}

impl OidcConfig {
    /// Checks what can be checked without the provider.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let at = |e: String| anyhow::anyhow!("{origin}: [admin.oidc] {e}");
        crate::oidc::check_url("issuer", &self.issuer).map_err(at)?;
        crate::oidc::check_url("redirect_uri", &self.redirect_uri).map_err(at)?;
        if !self.redirect_uri.ends_with("/console/oidc/callback") {
            bail!("{origin}: [admin.oidc] redirect_uri {:?} must end with /console/oidc/callback (this console's callback, as registered at the provider)", self.redirect_uri);
        }
        if self.client_id.trim().is_empty() {
            bail!("{origin}: [admin.oidc] client_id is empty: set the application (client) id registered at the provider");
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            bail!("{origin}: [admin.oidc] scopes must include \"openid\"");
        }
        if self.roles.is_empty() {
            bail!("{origin}: [admin.oidc] roles is empty: map at least one group, e.g. roles = {{ \"komugate-admins\" = \"admin\" }}");
        }
        for (group, role) in &self.roles {
            if !matches!(role.as_str(), "viewer" | "operator" | "admin") {
                bail!("{origin}: [admin.oidc] roles: group {group:?} maps to {role:?}; use viewer, operator or admin");
            }
        }
        if self.clock_skew_secs > 600 {
            bail!("{origin}: [admin.oidc] clock_skew_secs = {} is more than 600; fix the clocks (NTP) instead", self.clock_skew_secs);
        }
        Ok(())
    }
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            token: String::new(),
            tokens: Default::default(),
            tls: "auto".into(),
            users_file: PathBuf::from("console-users.json"),
            session_idle_secs: 1800,
            signin_max_failures: 5,
            signin_window_secs: 900,
            max_searches: 2,
            oidc: None,
        }
    }
}

impl Config {
    /// Parses configuration text; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("{origin}:{line}:{col}")
                }
                None => origin.to_string(),
            };
            anyhow::anyhow!("{place}: invalid configuration: {}", e.message())
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG, "<embedded default>")
            .expect("the embedded default configuration is valid (tested)")
    }

    fn validate(&self, origin: &str) -> Result<()> {
        self.doh
            .blocked_answer()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        self.alerts
            .validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        self.udp
            .validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        for (name, addr) in [
            ("plain", &self.listen.plain),
            ("mtls", &self.listen.mtls),
            ("admin", &self.listen.admin),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                bail!("{origin}: [listen] {name} = {addr:?} is not an address like \"127.0.0.1:3128\"");
            }
        }
        if !self.listen.plain.is_empty() && self.listen.plain_clients.is_empty() {
            bail!("{origin}: [listen] plain is enabled but plain_clients is empty; list the in-site CIDRs allowed to use it (no open proxy)");
        }
        if self.egress.connect_timeout_ms == 0 || self.egress.response_header_timeout_ms == 0 {
            bail!("{origin}: [egress] connect_timeout_ms and response_header_timeout_ms must be at least 1");
        }
        if self.dns.timeout_ms == 0 || self.dns.attempts == 0 {
            bail!("{origin}: [dns] timeout_ms and attempts must be at least 1");
        }
        for fixed in &self.egress.fixed {
            if fixed.hosts.is_empty() {
                bail!("{origin}: [[egress.fixed]] {:?} has no hosts", fixed.name);
            }
        }
        if self.log.retention_days == 0
            || self.log.fsync_interval_ms == 0
            || self.log.fsync_interval_ms > 1000
        {
            bail!("{origin}: [log] retention_days must be at least 1 and fsync_interval_ms between 1 and 1000");
        }
        if self.log.rotate_secs == 0 || 86_400 % self.log.rotate_secs != 0 {
            bail!("{origin}: [log] rotate_secs must divide a day (3600 = hourly)");
        }
        crate::logs::query::parse_offset(&self.log.display_utc_offset)
            .map_err(|e| anyhow::anyhow!("{origin}: [log] display_utc_offset: {e}"))?;
        if self.log.syslog.enabled && self.log.syslog.address.is_empty() {
            bail!("{origin}: [log.syslog] enabled but address is empty; set it to the receiver's \"host:port\"");
        }
        if self.log.clickhouse.enabled && !self.log.clickhouse.url.starts_with("http://") {
            bail!(
                "{origin}: [log.clickhouse] enabled but url is not like \"http://127.0.0.1:8123\""
            );
        }
        if !matches!(self.admin.tls.as_str(), "auto" | "on") {
            bail!(
                "{origin}: [admin] tls = {:?}: use \"auto\" (TLS unless the admin listener is on loopback) or \"on\"",
                self.admin.tls
            );
        }
        if self.admin.session_idle_secs == 0
            || self.admin.signin_max_failures == 0
            || self.admin.signin_window_secs == 0
            || self.admin.max_searches == 0
        {
            bail!("{origin}: [admin] session_idle_secs, signin_max_failures, signin_window_secs and max_searches must be at least 1");
        }
        if let Some(o) = &self.admin.oidc {
            o.validate(origin)?;
        }
        if let Some(o) = &self.users.oidc {
            o.validate(origin)?;
        }
        if self.users.posture_max_age_secs == 0 {
            bail!("{origin}: [users] posture_max_age_secs must be at least 1");
        }
        for (name, token) in &self.admin.tokens {
            if token.trim().len() < 16 {
                bail!("{origin}: [admin.tokens] {name:?}: a token must be at least 16 characters (e.g. `openssl rand -hex 24`)");
            }
        }
        for (what, feeds) in [
            ("[[ips.feed]]", &self.ips.feeds),
            ("[[threat_intel.feed]]", &self.threat_intel.feeds),
        ] {
            for feed in feeds {
                feed.validate(what)
                    .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            }
        }
        if self.limits.max_header_bytes < 8192 {
            bail!("{origin}: [limits] max_header_bytes must be at least 8192");
        }
        for (key, v) in [
            (
                "max_streams_per_connection",
                self.limits.max_streams_per_connection,
            ),
            (
                "max_streams_per_device_link",
                self.limits.max_streams_per_device_link,
            ),
        ] {
            if v == 0 {
                bail!("{origin}: [limits] {key} = 0 would refuse every request on HTTP/2: set at least 1 (default 256 / 4096)");
            }
        }
        Ok(())
    }

    /// Resolves a path from the config against the data directory.
    pub fn data_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.data.dir.join(p)
        }
    }

    pub fn listen_addr(spec: &str) -> Option<SocketAddr> {
        if spec.is_empty() {
            None
        } else {
            spec.parse().ok()
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default();
        assert_eq!(c.listen.plain, "127.0.0.1:3128");
        assert_eq!(c.listen.mtls, "127.0.0.1:8443");
        assert_eq!(c.listen.admin, "127.0.0.1:9090");
        assert_eq!(c.block_page.time_zone.name(), "Asia/Tokyo");
        assert!(
            !c.block_page.https_on_plain,
            "off by default on the plain listener"
        );
    }

    #[test]
    fn block_page_zone_with_daylight_saving_is_refused_with_position() {
        let text =
            DEFAULT_CONFIG.replace("time_zone = \"Asia/Tokyo\"", "time_zone = \"Europe/Paris\"");
        let err = Config::parse(&text, "gw.toml").unwrap_err().to_string();
        assert!(err.contains("gw.toml:"), "{err}");
        assert!(
            err.contains("Europe/Paris") && err.contains("+09:00"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_position() {
        let text = DEFAULT_CONFIG.replace("[limits]\n", "[limits]\nmax_headerz = 3\n");
        let err = Config::parse(&text, "gw.toml").unwrap_err().to_string();
        assert!(err.contains("gw.toml:"), "{err}");
        assert!(err.contains("max_headerz"), "{err}");
    }

    #[test]
    fn plain_listener_needs_client_cidrs() {
        let text = DEFAULT_CONFIG.replace(
            "plain_clients = [\"127.0.0.0/8\", \"::1/128\"]",
            "plain_clients = []",
        );
        let err = Config::parse(&text, "gw.toml").unwrap_err().to_string();
        assert!(err.contains("no open proxy"), "{err}");
    }
}
