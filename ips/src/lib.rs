//! IPS signatures (a Suricata rule subset) and threat-intelligence lists,
//! as a pure library: parsing, compiling and scanning byte buffers. The
//! gateway's configuration, event logging and the hooks into its data
//! path stay in the `komugate` crate (`komugate::ips`).
//!
//! - [`rule`]: the rule parser; unsupported rules are skipped with a reason
//! - [`pcre`]: PCRE to `regex` translation
//! - [`engine`]: compiled rule set and the scanning API used by the data
//!   path (`scan_http_request`, `scan_http_request_body_chunk`,
//!   `scan_http_response_body_chunk`, `scan_tls_sni`, `scan_dns_query`,
//!   `scan_stream_prefix`)
//! - [`threat_intel`]: known-bad IPs/CIDRs and domains
//! - [`sni`]: ClientHello server-name parser for tunnels

pub mod engine;
pub mod pcre;
pub mod rule;
pub mod sni;
pub mod threat_intel;

pub use engine::{BodyScan, Direction, HttpRequestBuffers, IpsEngine, IpsMatch, LoadReport};
pub use rule::{Action, Buffer};
pub use threat_intel::{ThreatHit, ThreatIntel};
