//! komugate: secure web gateway / ZTNA edge proxy.
//!
//! The data path, from `main.rs`: [`cli`] → [`gateway::start`] (assembles
//! the gateway, starts the listeners) → [`listen`] (accept, admission,
//! device identity, the one HTTP server) → [`flow`] (every request, every
//! kind of traffic, stage by stage, to its access record). See
//! `docs/ARCHITECTURE.md` for the picture.
//!
//! Layout, from the bottom up:
//! - [`record`], [`request`], [`config`], [`metrics`]: plain data every
//!   layer uses (the access record, a request's connection, target and
//!   refusal, the configuration)
//! - [`stages`]: one module per stage of the data path (decision,
//!   firewall, IPS, CASB / DLP, TLS inspection, DoH); they take the state
//!   they need, never the whole gateway
//! - [`egress`]: DNS, destination guard, bound connects, upstream pools,
//!   the tunnel relay
//! - [`flow`]: the order of the stages, the refusal → answer mapping, the
//!   one place a record is finished
//! - [`listen`]: accept loops and the HTTP server for client connections
//! - [`gateway`]: shared state, the reloadable [`gateway::generation`],
//!   reload, start
//! - beside the data path: [`admin`] (admin listener) and [`console`]
//!   (the web console on it), [`logs`] and
//!   [`access_log`] (log storage, search, shipping), [`aggregate`] (grouped
//!   counts of the logs, local or shared) and [`report`] (the monthly
//!   report), [`ips`] (IPS rules and
//!   threat-intel lists), [`beacon`] (site assertions), [`pac`],
//!   [`list_update`], [`pki`], [`device_auth`], [`device_seen`], [`client`] (the laptop-side
//!   `komugate client`), [`cli`] and the `cli_*` / `explain` commands

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod alerts;
pub mod atomic_file;
pub mod background;
pub mod beacon;
pub mod cli;
pub mod cli_policy;
pub mod client;
pub mod common;
pub mod config;
pub mod console;
pub mod demo_origin;
pub mod device_auth;
pub mod device_seen;
pub mod doctor;
pub mod egress;
pub mod explain;
pub mod flow;
pub mod gateway;
pub mod ips;
pub mod list_import_report;
pub mod list_update;
pub mod listen;
pub mod local_time;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod multiplexed_socket;
pub mod oidc;
pub mod pac;
pub mod pki;
pub mod pki_audit;
pub mod policy_document;
pub mod policy_edit;
pub mod record;
pub mod replay_body;
pub mod report;
pub mod request;
pub mod stages;
pub mod unblock;
pub mod users;
