//! komugate policy: the policy document model, validation with
//! `file:line:column` errors, compilation, evaluation, explain, and the
//! squidGuard importer.
//!
//! Pure library: no async, no network; the only I/O is reading the policy
//! file and the files it names (registry CSV, block/allow lists).
//!
//! The document format is described in `examples/policy.toml` (a complete,
//! commented example) and in the module docs of `compile` (one submodule
//! per policy section). [`pattern`] holds the small matchers (hosts, ports,
//! times, wildcards), [`casb`] the app catalog and DLP.

pub mod casb;
mod compile;
mod dependence;
mod diag;
mod eval;
pub mod pattern;
mod registry;
mod squidguard;
pub mod subject;
pub mod wording;

pub use casb::{CasbSettings, Dlp, DlpPattern, TenantRestriction};
pub use compile::{builtin_apps, check, Summary};
pub use dependence::{HostKey, SubjectKey};
pub use diag::{Diagnostic, PolicyErrors};
pub use eval::{
    Decision, Egress, FirewallRequest, FirewallVerdict, Location, Protocol, Request, Scheme,
    FIREWALL_DECIDES, UDP_DNS_PORTS, UDP_DNS_RULE, UDP_QUIC_RULE,
};
pub use pattern::{HostPattern, PortRange, TimeWindow, Weekdays};
pub use registry::{
    decode_csv, diff_registry, encode_csv, parse_registry_csv, write_registry_csv, CsvEncoding,
    DecodeError, GroupBits, RegistryChanges, RegistryRow, MAX_GROUPS,
};
pub use squidguard::import_squidguard;
pub use subject::{Posture, PostureFailure, Subject};
pub use wording::Wording;

use komugate_categories::{CategorySet, Matcher};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What a rule (or the default) does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Action {
    Allow,
    Block,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Block => "block",
        })
    }
}

/// How a CONNECT tunnel is handled (filled by the TLS-inspection issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TunnelMode {
    Inspect,
    Bypass,
}

/// Reserved hook for the CASB issue: `casb = { tenant_restriction = true, upload = "block", download = "allow" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
///
/// `dlp = true` applies the `[[casb.dlp]]` patterns to request bodies. A rule
/// with `casb` and no `action` only sets these (it does not decide allow or
/// block); every matching rule's `casb` counts, the first to set a field wins.
pub struct CasbHook {
    pub tenant_restriction: Option<bool>,
    pub upload: Option<Action>,
    pub download: Option<Action>,
    pub dlp: Option<bool>,
}

impl CasbHook {
    /// Fills the fields not yet set from `other`.
    pub fn merge(&mut self, other: &CasbHook) {
        self.tenant_restriction = self.tenant_restriction.or(other.tenant_restriction);
        self.upload = self.upload.or(other.upload);
        self.download = self.download.or(other.download);
        self.dlp = self.dlp.or(other.dlp);
    }
}

/// Reserved hook for the firewall/IPS issue: `firewall = { ips = true }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FirewallHook {
    pub ips: Option<bool>,
}

/// Whom to contact, shown on the block page (`[contact]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Contact {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub url: Option<String>,
}

/// `[tenant]`: the board's cloud tenants (used by tenant restriction later).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tenants {
    /// Microsoft tenant ids (GUIDs) and/or tenant domains.
    pub microsoft: Vec<String>,
    /// Google Workspace domains.
    pub google: Vec<String>,
    /// SharePoint / OneDrive for Business tenant names (`azumino` for
    /// `azumino.sharepoint.com`, `azumino-my.sharepoint.com`).
    pub sharepoint: Vec<String>,
    /// Directory id for `Restrict-Access-Context` (default: the first GUID in `microsoft`).
    pub microsoft_context: Option<String>,
    /// Tenant restrictions v2 header value `<tenant-id>:<policy-id>`.
    pub tenant_restrictions_v2: Option<String>,
    /// `YouTube-Restrict` value (`Strict` or `Moderate`).
    pub youtube_restrict: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Site {
    pub name: String,
    pub cidrs: Vec<ipnet::IpNet>,
    /// Recognised by a signed site assertion rather than (only) by CIDRs.
    pub assertion: bool,
    /// Ed25519 public key (32 bytes) of the site's beacon (`beacon_key`,
    /// base64 as printed by `komugate pki beacon-key`).
    pub beacon_key: Option<[u8; 32]>,
    /// Extra PAC `DIRECT` entries for requesters at this site (`pac_direct`).
    pub pac_direct: Vec<String>,
}

/// `[pac]`: what the generated PAC files send `DIRECT` (host patterns
/// `*.school.local` / `.x` / `x`, IPs or CIDRs); everything else goes to
/// `proxy` (e.g. `"HTTPS gw.example.jp:8443"`; unset = the gateway's own
/// mTLS listener address).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pac {
    pub direct: Vec<String>,
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Group {
    pub name: String,
    pub aliases: Vec<String>,
}

/// A cloud app: from the built-in catalog (`catalog/apps.toml`), a policy
/// `[[app]]`, or a catalog entry overridden by one.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct App {
    pub name: String,
    pub hosts: Vec<String>,
    #[serde(skip)]
    pub(crate) patterns: Vec<HostPattern>,
    pub title: String,
    pub vendor: String,
    /// storage, mail, collaboration, ai, transfer, school, identity, developer
    pub category: String,
    /// ISMAP, ISO27001, ISO27017, ISO27018 ... (risk attributes, data).
    pub certifications: Vec<String>,
    /// `microsoft` or `google`: the app is multi-tenant and the board's
    /// tenant restriction keeps it on the board's tenant (when `[tenant]` has it).
    pub tenant_provider: Option<String>,
    /// Templates like `{tenant}.sharepoint.com`: the board's instance.
    pub tenant_hosts: Vec<String>,
    #[serde(skip)]
    pub(crate) own_patterns: Vec<HostPattern>,
    /// The board's own system (school systems).
    pub own: bool,
    pub upload_paths: Vec<String>,
    pub download_paths: Vec<String>,
    pub download_params: Vec<String>,
    pub sync_paths: Vec<String>,
    pub sync_user_agents: Vec<String>,
    /// From the built-in catalog (possibly overridden by the policy).
    pub builtin: bool,
}

impl App {
    /// Does `host` (lowercase) belong to this app?
    pub fn matches(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }

    /// Is the app instance at `host` the board's own (its tenant, its
    /// system, or a tenant-restricted multi-tenant service)?
    pub fn is_own(&self, host: &str, tenants: &Tenants) -> bool {
        if self.own || self.own_patterns.iter().any(|p| p.matches(host)) {
            return true;
        }
        if !self.tenant_hosts.is_empty() {
            return false;
        }
        match self.tenant_provider.as_deref() {
            Some("microsoft") => !tenants.microsoft.is_empty(),
            Some("google") => !tenants.google.is_empty(),
            _ => false,
        }
    }

    pub fn is_upload_path(&self, path: &str) -> bool {
        self.upload_paths.iter().any(|p| casb::glob_match(p, path))
    }

    /// A download endpoint or a download query parameter.
    pub fn is_download(&self, path: &str, query: &str) -> bool {
        self.download_paths
            .iter()
            .any(|p| casb::glob_match(p, path))
            || query.split('&').any(|kv| {
                self.download_params
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(kv))
            })
    }

    /// A sync-client request (path or User-Agent).
    pub fn is_sync(&self, path: &str, user_agent: &str) -> bool {
        self.sync_paths.iter().any(|p| casb::glob_match(p, path))
            || self
                .sync_user_agents
                .iter()
                .any(|a| !a.is_empty() && user_agent.contains(a.as_str()))
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EgressPool {
    pub name: String,
    /// Address the upstream socket is bound to; None when the network
    /// translates (a cloud NAT or egress gateway on Kubernetes).
    pub source: Option<IpAddr>,
    /// Address the destination sees (what C4th / 百問繚乱 allow-list), when
    /// it differs from `source`; `komugate doctor` checks it.
    pub seen_as: Option<IpAddr>,
    pub hosts: Vec<String>,
    #[serde(skip)]
    pub(crate) patterns: Vec<HostPattern>,
}

/// Counts from loading block/allow lists (invalid lines are warnings, not errors,
/// for third-party blocklists).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    pub sources: Vec<SourceReport>,
    pub files: usize,
    pub domains: usize,
    pub urls: usize,
    pub expressions: usize,
    pub invalid_lines: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceReport {
    pub path: PathBuf,
    pub format: String,
    pub categories: Vec<String>,
    pub files: usize,
    pub domains: usize,
    pub urls: usize,
    pub expressions: usize,
    pub invalid_lines: usize,
    /// Valid rules not honoured (adblock options a gateway cannot apply).
    pub skipped_lines: usize,
    /// The first few invalid or skipped lines, as `file:line: reason`.
    pub first_errors: Vec<String>,
    /// Counts per list file (a split list counts once).
    pub lists: Vec<ListCounts>,
}

/// What one list file of a source gave (logged at start and on every
/// reload, exported as metrics).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ListCounts {
    pub path: PathBuf,
    pub category: String,
    pub format: String,
    pub entries: usize,
    pub skipped: usize,
    pub invalid: usize,
}

/// A `[[categories.source]]` with a `url`: the gateway downloads it every
/// `refresh` into `path` (a directory for `format = "squidguard"`, unpacked
/// from a tar.gz; a file otherwise) and reloads. See `komugate::list_update`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RemoteSource {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Absolute local path the list is stored at and loaded from.
    pub path: PathBuf,
    pub format: String,
    /// `only` of a squidguard source (None = every category in the archive).
    pub only: Option<Vec<String>>,
    /// `category` of a single-list source.
    pub category: Option<String>,
    pub refresh: std::time::Duration,
    /// Expected SHA-256 of the download (lowercase hex).
    pub sha256: Option<String>,
    /// URL of a checksum file (`<hex>` or `<hex>  name`) fetched with the list.
    pub sha256_url: Option<String>,
    pub max_bytes: u64,
    /// Refuse a download when invalid lines / all lines exceeds this.
    pub max_invalid_ratio: f64,
    /// Refuse a download with fewer than (1 - max_shrink) × the current entries.
    pub max_shrink: f64,
    /// Entries (domains + urls + expressions) loaded from `path` by this policy.
    pub entries: usize,
    /// False when `path` did not exist yet (the source is empty until the first download).
    pub present: bool,
}

pub const REMOTE_DEFAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
pub const REMOTE_MIN_REFRESH: std::time::Duration = std::time::Duration::from_secs(5 * 60);
pub const REMOTE_DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
pub const REMOTE_DEFAULT_MAX_INVALID_RATIO: f64 = 0.01;
pub const REMOTE_DEFAULT_MAX_SHRINK: f64 = 0.5;

/// Where the matching conditions on location point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct LocSet {
    pub sites: Vec<usize>,
    pub any_site: bool,
    pub offsite: bool,
}

impl LocSet {
    /// Whether a requester at `site` (or off-site) is in the set.
    #[inline]
    pub fn admits(&self, site: Option<usize>, offsite: bool) -> bool {
        if offsite {
            self.offsite
        } else {
            self.any_site || site.is_some_and(|i| self.sites.contains(&i))
        }
    }
}

pub(crate) const SCHEME_HTTP: u8 = 1;
pub(crate) const SCHEME_HTTPS: u8 = 2;
pub(crate) const SCHEME_CONNECT: u8 = 4;

/// A compiled rule. Every `Option` condition is "any" when `None`.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub name: String,
    /// `file:line` where the rule is defined.
    pub origin: String,
    pub groups: Option<GroupBits>,
    pub devices: Option<Vec<String>>,
    pub locations: Option<LocSet>,
    pub categories: Option<CategorySet>,
    pub category_names: Option<Vec<String>>,
    pub apps: Option<Vec<usize>>,
    /// Bits of [`casb::APP_CATEGORIES`].
    pub app_categories: Option<u16>,
    /// `app_tenant = "own"` (true) or `"other"` (false).
    pub app_tenant: Option<bool>,
    pub hosts: Option<Vec<HostPattern>>,
    pub ports: Option<Vec<PortRange>>,
    pub schemes: Option<u8>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub time: Option<TimeWindow>,
    pub days: Option<Weekdays>,
    /// Conditions on the signed-in user and the device's posture.
    pub subject: subject::SubjectConds,
    pub action: Action,
    pub message: Option<String>,
    pub tunnel: Option<TunnelMode>,
    pub egress: Option<usize>,
    pub casb: Option<CasbHook>,
    pub firewall: Option<FirewallHook>,
    /// False for a CASB-only rule (`casb` without `action`): it never decides.
    pub decides: bool,
}

/// One compiled `[[firewall.rule]]`: the shared conditions (groups, devices,
/// location, hosts, ports, time, days) in `cond`, plus destination CIDRs.
#[derive(Clone, Debug)]
pub(crate) struct FirewallRule {
    pub cond: Rule,
    pub cidrs: Option<Vec<ipnet::IpNet>>,
    /// `protocol = "tcp"` / `"udp"`; `None` = any (absent or `"any"`).
    pub protocol: Option<Protocol>,
    pub allow: bool,
    pub log: bool,
}

/// The `[firewall]` section (non-web flows). Absent section = no firewall.
#[derive(Clone, Debug)]
pub(crate) struct FirewallSettings {
    pub web_ports: Vec<PortRange>,
    pub default_allow: bool,
    pub default_log: bool,
    pub rules: Vec<FirewallRule>,
}

/// Default `web_ports` of `[firewall]`.
pub const FIREWALL_WEB_PORTS: &[u16] = &[80, 443, 8080, 8443];

/// One allow or deny list: the entries that apply to everyone as internal
/// categories of the matcher (those without `until` in `permanent`, those
/// with one grouped by date, each applying while the request's time is
/// before its end, ms), and the entries scoped to some devices or
/// locations in `scoped` (see [`ScopedEntry`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct ListMasks {
    pub permanent: CategorySet,
    pub expiring: Vec<(i64, CategorySet)>,
    pub scoped: Vec<ScopedEntry>,
}

/// A list entry for some devices and / or locations only, e.g. an approved
/// unblock request: `{ entry = "example.com", devices = ["PC-001"],
/// until = "2026-03-31" }`. Domain entries only (the domain and its
/// subdomains). Matched by host here rather than through the category
/// matcher: one internal category per entry would soon use up the
/// matcher's 256 categories, and the few such entries a board has are a
/// short scan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ScopedEntry {
    /// Normalised (lowercase, punycode) domain.
    pub domain: String,
    /// End of the entry's last day (ms), when it has `until`.
    pub until: Option<i64>,
    pub devices: Option<Vec<String>>,
    pub locations: Option<LocSet>,
}

impl ScopedEntry {
    /// Whether the entry covers `host` (normalised like `domain`).
    #[inline]
    pub fn covers(&self, host: &str) -> bool {
        host.len() >= self.domain.len()
            && host.ends_with(self.domain.as_str())
            && (host.len() == self.domain.len()
                || host.as_bytes()[host.len() - self.domain.len() - 1] == b'.')
    }
}

/// A per-group policy: the concatenation of the rule sets it names.
#[derive(Clone, Debug)]
pub(crate) struct GroupPolicy {
    pub name: String,
    /// `None` = applies to everyone (a catch-all policy).
    pub groups: Option<GroupBits>,
    pub rules: Vec<usize>,
    pub default_action: Option<Action>,
    /// The policy's own allow / deny lists (`allow`, `deny`, `*_files`).
    pub allow: ListMasks,
    pub deny: ListMasks,
    /// `block_categories`: blocked for this policy's users before its rules.
    pub block_categories: CategorySet,
    /// `ignore_categories`: the policy's rules do not see these categories.
    pub ignore_categories: CategorySet,
}

/// A compiled, immutable policy (Send + Sync). Cheap to share behind an `Arc`.
pub struct Policy {
    pub(crate) file: PathBuf,
    pub(crate) tz_offset: i32,
    pub(crate) default_action: Action,
    pub(crate) default_message: Option<String>,
    pub(crate) default_tunnel: Option<TunnelMode>,
    pub(crate) contact: Contact,
    pub(crate) tenants: Tenants,
    pub(crate) sites: Vec<Site>,
    pub(crate) pac: Pac,
    pub(crate) site_index: HashMap<String, usize>,
    /// (network, site index) in document order; first match wins.
    pub(crate) site_nets: Vec<(ipnet::IpNet, usize)>,
    pub(crate) groups: Vec<Group>,
    /// group names and aliases → index
    pub(crate) group_index: HashMap<String, usize>,
    pub(crate) registry: registry::Registry,
    pub(crate) apps: Vec<App>,
    pub(crate) egress: Vec<EgressPool>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) policies: Vec<GroupPolicy>,
    pub(crate) matcher: Matcher,
    /// Visible (blocklist) categories, i.e. not the internal `@allow`/`@deny` ones.
    pub(crate) visible: CategorySet,
    pub(crate) allow_global: ListMasks,
    pub(crate) deny_global: ListMasks,
    /// (group index, allow, deny)
    pub(crate) group_lists: Vec<(usize, ListMasks, ListMasks)>,
    /// Some list has entries scoped to devices or locations.
    pub(crate) scoped_lists: bool,
    pub(crate) source_files: Vec<PathBuf>,
    pub(crate) digest: String,
    pub(crate) import: ImportSummary,
    pub(crate) remote_sources: Vec<RemoteSource>,
    pub(crate) casb: CasbSettings,
    /// Some rule has a `casb` hook (evaluation collects them).
    pub(crate) has_casb_rules: bool,
    /// `[firewall]`; `None` when the document has no such section.
    pub(crate) firewall: Option<FirewallSettings>,
    /// When decisions can change with the time (see `dependence`).
    pub(crate) time_profile: dependence::TimeProfile,
}

impl Policy {
    /// Reads, validates and compiles a policy file (and the files it names).
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_str(&text, path),
            Err(e) => Err(PolicyErrors(vec![Diagnostic::new(
                path,
                0,
                0,
                format!("cannot read policy file: {e}"),
            )])),
        }
    }

    /// Validates and compiles policy text; `file` names it in errors and is the
    /// base for relative paths.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file: &Path) -> Result<Policy, PolicyErrors> {
        compile::compile(text, file).map(|(p, _)| p)
    }

    /// Which site a client address belongs to (first site in document order
    /// whose CIDRs contain it), or `Offsite`.
    pub fn locate(&self, client_ip: IpAddr) -> Location {
        match self.locate_index(client_ip) {
            Some(i) => Location::Site(self.sites[i].name.clone()),
            None => Location::Offsite,
        }
    }

    pub(crate) fn locate_index(&self, ip: IpAddr) -> Option<usize> {
        let ip = ip.to_canonical();
        self.site_nets
            .iter()
            .find(|(n, _)| n.contains(&ip))
            .map(|(_, i)| *i)
    }

    /// Every file read to build this policy (for file-watch reload).
    pub fn source_files(&self) -> Vec<PathBuf> {
        self.source_files.clone()
    }

    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The `[pac]` section (PAC files generated by the gateway and client).
    pub fn pac(&self) -> &Pac {
        &self.pac
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// The app named `name` (catalog or policy).
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// `[casb]` settings, DLP patterns and tenant-restriction headers.
    pub fn casb(&self) -> &CasbSettings {
        &self.casb
    }

    pub fn egress_pools(&self) -> &[EgressPool] {
        &self.egress
    }

    /// The policy file this was built from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 64-bit FNV-1a (hex) over the policy text and every file it read.
    /// Each rule as (name, a canonical text of its conditions and actions),
    /// in document order, for the reload audit's "rules changed" summary.
    /// The text leaves out where the rule is written, so moving a rule
    /// within the file is not a change.
    pub fn rule_summaries(&self) -> Vec<(String, String)> {
        self.rules
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.origin.clear();
                (r.name.clone(), format!("{r:?}"))
            })
            .collect()
    }

    pub fn generation_digest(&self) -> String {
        self.digest.clone()
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    pub fn import_report(&self) -> &ImportSummary {
        &self.import
    }

    /// The `[[categories.source]]` entries with a `url` (downloaded by the gateway).
    pub fn remote_sources(&self) -> &[RemoteSource] {
        &self.remote_sources
    }

    /// Number of devices in the registry.
    pub fn device_count(&self) -> usize {
        self.registry.devices.len()
    }

    /// The registry CSV, when the policy has a `[registry]` (then it alone
    /// gives devices their groups).
    pub fn registry_path(&self) -> Option<&Path> {
        self.registry.path.as_deref()
    }

    /// Every registry row, by device id.
    pub fn registry_rows(&self) -> Vec<RegistryRow> {
        self.rows_of(&self.registry)
    }

    fn rows_of(&self, registry: &registry::Registry) -> Vec<RegistryRow> {
        let mut rows: Vec<RegistryRow> = registry
            .devices
            .iter()
            .map(|(id, d)| RegistryRow {
                device: id.clone(),
                user: d.user.clone(),
                groups: d
                    .groups
                    .iter()
                    .map(|g| self.groups[g].name.clone())
                    .collect(),
                line: d.line,
            })
            .collect();
        rows.sort_by(|a, b| a.device.cmp(&b.device));
        rows
    }

    /// Parses registry CSV text against this policy's groups (names and
    /// aliases; rows get canonical names): every row by device id, or every
    /// problem with its line. What an import is checked with before it is
    /// written.
    pub fn parse_registry_rows(
        &self,
        file: &Path,
        text: &str,
    ) -> Result<Vec<RegistryRow>, PolicyErrors> {
        let names: Vec<String> = self.groups.iter().map(|g| g.name.clone()).collect();
        let mut diags = Vec::new();
        let reg = registry::parse_registry(file, text, &self.group_index, &names, &mut diags);
        if !diags.is_empty() {
            diags.sort_by_key(|d| (d.line, d.column));
            return Err(PolicyErrors(diags));
        }
        Ok(self.rows_of(&reg))
    }

    /// The user and group names the registry gives a device.
    pub fn device(&self, id: &str) -> Option<(&str, Vec<&str>)> {
        self.registry.devices.get(id).map(|d| {
            (
                d.user.as_str(),
                d.groups
                    .iter()
                    .map(|g| self.groups[g].name.as_str())
                    .collect(),
            )
        })
    }
}

/// How one category stands in one `[[policy]]` (the console's switches).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CategoryState {
    pub category: String,
    /// In the policy's `block_categories`.
    pub blocked_by_policy: bool,
    /// In the policy's `ignore_categories` (its rules do not see it).
    pub ignored: bool,
    /// Blocking rules of the policy that name the category (in order).
    pub blocking_rules: Vec<String>,
}

impl CategoryState {
    /// Whether requests in this category (and no other) are blocked for the
    /// policy's users by the category itself.
    pub fn blocked(&self) -> bool {
        self.blocked_by_policy || (!self.ignored && !self.blocking_rules.is_empty())
    }
}

impl Policy {
    /// The names of the document's `[[policy]]` sections, in order (empty
    /// when it has none and its top-level rules apply to everyone).
    pub fn policy_names(&self) -> Vec<String> {
        if self.policies.len() == 1
            && self.policies[0].name == "main"
            && self.policies[0].groups.is_none()
        {
            return Vec::new();
        }
        self.policies.iter().map(|p| p.name.clone()).collect()
    }

    /// Every blocklist category (not the internal list categories), sorted.
    pub fn category_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .visible
            .iter()
            .map(|c| self.matcher.category_name(c).to_string())
            .collect();
        v.sort();
        v
    }

    /// Each blocklist category's state in `[[policy]]` `name`; `None` when
    /// there is no such policy.
    pub fn category_states(&self, name: &str) -> Option<Vec<CategoryState>> {
        let p = self.policies.iter().find(|p| p.name == name)?;
        Some(
            self.category_names()
                .into_iter()
                .map(|category| {
                    let id = self.matcher.category_id(&category);
                    let has = |set: &CategorySet| id.is_some_and(|i| set.contains(i));
                    let blocking_rules = p
                        .rules
                        .iter()
                        .map(|&i| &self.rules[i])
                        .filter(|r| r.decides && r.action == Action::Block)
                        .filter(|r| r.categories.as_ref().is_some_and(&has))
                        .map(|r| r.name.clone())
                        .collect();
                    CategoryState {
                        blocked_by_policy: has(&p.block_categories),
                        ignored: has(&p.ignore_categories),
                        blocking_rules,
                        category,
                    }
                })
                .collect(),
        )
    }
}

/// 64-bit FNV-1a.
pub(crate) struct Fnv(u64);
impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("file", &self.file)
            .field("generation", &self.digest)
            .field("sites", &self.sites.len())
            .field("groups", &self.groups.len())
            .field("rules", &self.rules.len())
            .field("devices", &self.registry.devices.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn policy_is_send_sync() {
        assert_send_sync::<super::Policy>();
    }
}
