//! What the data path writes down about a request: the access record and
//! the notes features add to it (IPS events, CASB). Plain data at the
//! bottom of the crate: features fill these, the log writer serialises them.

use std::time::SystemTime;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessRecord {
    /// RFC 3339 UTC time the request started.
    pub time: String,
    pub listener: &'static str,
    pub device: Option<String>,
    pub groups: Vec<String>,
    pub client: String,
    /// `CONNECT` for tunnels, `CONNECT-UDP` for UDP flows, otherwise the
    /// HTTP method.
    pub method: String,
    /// Full URL for forwarded requests, `host:port` for tunnels and UDP flows.
    pub target: String,
    /// `allow`, `block` or `error`.
    pub decision: &'static str,
    pub rule: String,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Local address of the upstream socket (the egress IP the upstream sees).
    pub egress: Option<String>,
    pub error: Option<String>,
    /// `udp` for UDP flows (CONNECT-UDP); absent for TCP and HTTP. For a
    /// UDP flow `bytes_up` / `bytes_down` count UDP payload bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// UDP flows: datagrams relayed device to origin, and back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_up: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_down: u64,
    /// UDP flows: datagrams dropped (over the device's rate or the size
    /// limit, unknown context, refused by the origin's socket).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_dropped: u64,
    /// The device's user: the one signed in (OpenID Connect) when
    /// `signed_in`, else the registry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `user` signed in on the device, so explain can replay the decision
    /// with the user's rules.
    #[serde(default, skip_serializing_if = "is_false")]
    pub signed_in: bool,
    /// The signed-in user's groups (the token's group claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_groups: Vec<String>,
    /// Site name from location ("offsite" outside the sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// URL categories of the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// CASB application (m365, google, c4th ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Policy generation that decided (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// IPS signature id(s) that fired, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<String>,
    /// IPS / threat-intel events in detail (sid, msg, action, list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips_events: Vec<IpsEvent>,
    /// CASB / DLP: upload, download, DLP pattern names (never the data), tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub casb: Option<CasbNote>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What CASB saw of one request, for the access record. Pattern names
/// only: never the matched data, never file names.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CasbNote {
    /// `own` (the board's tenant / system) or `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The request was an upload (file part, upload endpoint or large body).
    #[serde(skip_serializing_if = "is_false")]
    pub upload: bool,
    /// The request or response was a download (endpoint, parameter, sync client, attachment).
    #[serde(skip_serializing_if = "is_false")]
    pub download: bool,
    /// Multipart parts with a file name.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub files: usize,
    /// DLP patterns that matched (names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<String>,
    /// Tenant-restriction entries applied (catalog names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenant_restriction: Vec<String>,
    /// The body was larger than the inspection cap (only its start was inspected).
    #[serde(skip_serializing_if = "is_false")]
    pub over_cap: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// One IPS or threat-intel hit, as written in the access record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpsEvent {
    /// Where it was seen: `http`, `http-body`, `sni`, `dns`, `stream`, or for
    /// threat intel the checked name/address kind (`host`, `address`, `sni`, `dns-answer`).
    pub source: &'static str,
    /// `alert` or `drop` (threat-intel hits are always `drop`).
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rev: Option<u32>,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classtype: Option<String>,
    /// Threat intel: the list and the entry that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

impl IpsEvent {
    pub fn is_drop(&self) -> bool {
        self.action == "drop"
    }

    /// The rule name written to the access record and block page when
    /// this event blocks: `ips:<sid>` or `threat-intel`.
    pub fn rule_name(&self) -> String {
        match self.sid {
            Some(sid) => format!("ips:{sid}"),
            None => "threat-intel".to_string(),
        }
    }

    /// The reason shown on the block page.
    pub fn message(&self) -> String {
        match (&self.list, &self.entry) {
            (Some(list), Some(entry)) => format!("{} ({list}: {entry})", self.msg),
            _ => match self.sid {
                Some(sid) => format!("IPS signature {sid}: {}", self.msg),
                None => self.msg.clone(),
            },
        }
    }
}
