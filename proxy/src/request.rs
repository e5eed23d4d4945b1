//! What every stage knows of a request, and how a stage stops one: the
//! connection it came on ([`ConnContext`]), where it goes ([`Target`]) and
//! the [`Refusal`] a stage returns instead of letting it continue. Plain
//! data below the stages; [`crate::flow`] turns a refusal into the answer
//! and the access record.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::Serialize;

use crate::device_auth::DeviceIdentity;
use crate::egress::EgressError;

/// The body of every answer the proxy listeners send.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

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

/// Who is on the other end of a client connection (the identity stage:
/// listener admission and, on the mTLS listener, the device certificate).
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub listener: ListenerKind,
    pub client: SocketAddr,
    pub device: Option<DeviceIdentity>,
    /// The device certificate (DER) of an mTLS connection: posture reports
    /// are verified with its key.
    pub device_cert: Option<std::sync::Arc<[u8]>>,
    /// `client` as the access record shows it, formatted once per connection.
    pub client_text: String,
}

impl ConnContext {
    pub fn new(
        listener: ListenerKind,
        client: SocketAddr,
        device: Option<DeviceIdentity>,
        device_cert: Option<std::sync::Arc<[u8]>>,
    ) -> ConnContext {
        ConnContext {
            listener,
            client,
            device,
            device_cert,
            client_text: client.to_string(),
        }
    }

    pub fn device_id(&self) -> Option<&str> {
        self.device.as_ref().map(|d| d.device_id.as_str())
    }

    pub fn cert_groups(&self) -> &[String] {
        self.device
            .as_ref()
            .map(|d| d.cert_groups.as_slice())
            .unwrap_or(&[])
    }
}

/// Where a request goes: scheme, host (lowercase, no brackets) and port.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `scheme://host[:port]` without a default port.
    pub fn origin(&self) -> String {
        self.origin_with("")
    }

    /// [`Target::origin`] followed by `path`, built in one allocation (the
    /// URL of every forwarded request: no intermediate strings).
    pub fn origin_with(&self, path: &str) -> String {
        let mut s = String::with_capacity(self.scheme.len() + self.host.len() + path.len() + 16);
        s.push_str(self.scheme);
        s.push_str("://");
        push_bracketed(&mut s, &self.host);
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port != default {
            push_port(&mut s, self.port);
        }
        s.push_str(path);
        s
    }

    /// `host:port` (IPv6 in brackets), as tunnels are logged.
    pub fn authority(&self) -> String {
        let mut s = String::with_capacity(self.host.len() + 8);
        push_bracketed(&mut s, &self.host);
        push_port(&mut s, self.port);
        s
    }
}

/// Appends `host`, an IPv6 literal in brackets.
fn push_bracketed(s: &mut String, host: &str) {
    if host.contains(':') {
        s.push('[');
        s.push_str(host);
        s.push(']');
    } else {
        s.push_str(host);
    }
}

/// Appends `:port` (without the formatting machinery: this runs per request).
fn push_port(s: &mut String, port: u16) {
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push(':');
    s.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

/// An IPv6 literal in brackets; names and IPv4 as they are.
pub fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Why a stage stopped a request. [`crate::flow`] maps each to its answer
/// (block page or error status) and its access-record fields in one place.
#[derive(Debug)]
pub enum Refusal {
    /// A rule refused it: the 403 block page.
    Blocked(Block),
    /// The request is malformed: 400, and the connection is closed.
    BadRequest { ja: String, en: String },
    /// The request head is over `[limits] max_header_bytes`: 431, closed.
    HeadTooLarge,
    /// The request body could not be read: 400.
    BodyUnreadable(String),
    /// The upstream could not be reached (or the destination guard refused it).
    Egress(EgressError),
    /// The upstream's certificate failed verification: never re-signed.
    UpstreamCertificate(rustls::Error),
    /// No response head within `[egress] response_header_timeout_ms` (ms)
    /// after the request was sent: 504.
    UpstreamTimeout(u128),
    /// The upstream did not answer properly: 502.
    UpstreamFailed(String),
    /// Over a per-device limit (`rule` names it): 429, the request is
    /// refused, the connection stays.
    Limited {
        rule: String,
        ja: String,
        en: String,
    },
}

/// A block: the rule that decided and what the user is told.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub rule: String,
    pub message: Option<String>,
    /// Categories of the destination, comma-separated, for the block page.
    pub category: Option<String>,
}

impl Refusal {
    pub fn blocked(rule: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal::Blocked(Block {
            rule: rule.into(),
            message: Some(message.into()),
            category: None,
        })
    }

    pub fn bad_request(ja: impl Into<String>, en: impl Into<String>) -> Refusal {
        Refusal::BadRequest {
            ja: ja.into(),
            en: en.into(),
        }
    }
}
