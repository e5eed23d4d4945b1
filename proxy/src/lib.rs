//! komugate: secure web gateway / ZTNA edge proxy.
//!
//! Data path (see shared DESIGN.md): listener -> identity -> location ->
//! decision -> block / forward / tunnel -> egress -> access record.
//! One module per hop:
//! - [`server`]: accept loops, client admission, HTTP/1.1 or HTTP/2 by ALPN
//! - [`device_auth`]: device certificates on the mTLS listener
//! - [`http_proxy`]: forwarding and CONNECT, calling the one decision point
//! - [`decision`]: the decision point ([`decision::Runtime::decide`])
//! - [`egress`] / [`upstream`]: DNS, destination guard, bound connects, pools
//! - [`tunnel`]: bidirectional relay with half-close and idle timeout
//! - [`access_log`], [`metrics`], [`admin`]: observability
//! - [`pki`]: CA and certificate helpers; [`config`]: gateway configuration
//! - [`atomic_file`]: whole-file replacement for config, policy, list and state files

pub mod access_log;
pub mod admin;
pub mod atomic_file;
pub mod beacon;
pub mod block_page;
pub mod casb;
pub mod cli;
pub mod cli_policy;
pub mod client;
pub mod common;
pub mod config;
pub mod decision;
pub mod demo_origin;
pub mod device_auth;
pub mod doh;
pub mod egress;
pub mod explain;
pub mod firewall;
pub mod framing_guard;
pub mod gateway;
pub mod http_proxy;
pub mod inspect;
pub mod ips;
pub mod list_import_report;
pub mod list_update;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pac;
pub mod pki;
pub mod pki_audit;
pub mod proxy_protocol;
pub mod record;
pub mod reload;
pub mod replay_body;
pub mod server;
pub mod tunnel;
pub mod upstream;
