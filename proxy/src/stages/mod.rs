//! The stages of the data path; [`crate::flow`] states their order. Each
//! takes the state it needs (a policy, IPS rules, a resolver, metrics),
//! never the whole gateway, notes what it saw in the access record, and
//! answers continue or a [`crate::request::Refusal`].
//!
//! - [`decide`]: the decision (policy, or the built-in policy of the
//!   config's simple lists)
//! - [`firewall`]: non-web flows (`[firewall]` in the policy)
//! - [`ips`]: threat intel and IPS signatures on HTTP requests and SNIs
//!   (raw tunnels: `crate::ips::tunnel`)
//! - [`casb`]: cloud apps, tenant restriction, uploads, downloads, DLP
//! - [`inspect`]: TLS inspection (ClientHello peek, minted certificates)
//! - [`doh`]: DNS over HTTPS queries to the gateway

pub mod casb;
pub mod decide;
pub mod doh;
pub mod firewall;
pub mod inspect;
pub mod ips;
pub mod udp_limits;
