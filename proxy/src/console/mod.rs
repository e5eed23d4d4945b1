//! The admin console: server-rendered pages under `/console/` on the admin
//! listener (the same process, no extra service), for the board's staff.
//! Japanese first with an English switch, times in the zone people read
//! times in (`[block_page] time_zone`, Asia/Tokyo by default; the same
//! `crate::local_time` zone as the block page).
//!
//! - [`routes`]: which path is which page, the role each page needs, the
//!   session and CSRF checks every request passes
//! - [`respond`]: HTML, redirects, cookies and the security headers
//! - [`templates`], [`text`], [`text_devices`], `text_policy`: the embedded minijinja
//!   templates and the Japanese / English wording
//! - [`assets`]: the vendored htmx and uPlot, the stylesheets, embedded
//! - [`activity`]: this process's counters for the dashboard
//! - [`accounts`]: local accounts (argon2id hashes in a file) and roles
//! - [`auth`]: sessions (idle expiry), CSRF tokens, the sign-in rate limit
//! - [`oidc_signin`]: sign-in through an OpenID provider (`[admin.oidc]`),
//!   roles from a group claim
//! - [`form`]: query strings, form bodies, file uploads and cookies
//! - [`pending`]: a registry import between preview and apply, a `.pfx`
//!   between issue and download (per account, short-lived, taken once)
//! - [`pages`]: one module per page (policy changes: `pages::policy`,
//!   wording in `text_policy`)
//! - [`tls`]: TLS for the admin listener
//! - [`cli`]: `komugate admin user add|passwd|remove|list`

pub mod accounts;
pub mod activity;
pub mod assets;
pub mod auth;
pub mod cli;
pub mod form;
pub mod oidc_signin;
pub mod pages;
pub mod pending;
pub mod respond;
pub mod routes;
pub mod templates;
pub mod text;
pub mod text_devices;
mod text_policy;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;

/// The console's state, shared by the admin listener's connections.
pub struct Console {
    pub sessions: auth::Sessions,
    pub limiter: auth::SignInLimiter,
    pub accounts: accounts::AccountCache,
    /// Bounds the password verifications running at once.
    pub verifications: tokio::sync::Semaphore,
    /// Bounds the log searches and exports running at once.
    pub searches: Arc<tokio::sync::Semaphore>,
    /// The admin listener speaks TLS: cookies are `Secure`.
    pub secure: bool,
    /// Display offset in minutes east of UTC (540 = JST).
    pub offset_min: i32,
    /// How the zone is named on every page (`JST (Asia/Tokyo)`).
    pub zone_label: String,
    /// Where the dashboard's and the report's counts come from.
    pub aggregates: Arc<dyn crate::aggregate::LogAggregates>,
    /// Sign-in through an OpenID provider, when `[admin.oidc]` is set.
    pub oidc: Option<oidc_signin::OidcSignIn>,
    pub oidc_metrics: crate::oidc::metrics::OidcMetrics,
    /// Registry imports between their preview and "apply" (15 minutes).
    pub registry_imports: pending::Pending<pages::devices::RegistryImport>,
    /// Issued `.pfx` / zip files until downloaded (10 minutes, once).
    pub downloads: pending::Pending<pages::certs::Download>,
}

impl Console {
    pub fn new(config: &Config, secure: bool) -> Console {
        let a = &config.admin;
        let searches = Arc::new(tokio::sync::Semaphore::new(a.max_searches));
        Console {
            sessions: auth::Sessions::new(std::time::Duration::from_secs(a.session_idle_secs)),
            limiter: auth::SignInLimiter::new(
                a.signin_max_failures,
                std::time::Duration::from_secs(a.signin_window_secs),
            ),
            accounts: accounts::AccountCache::new(users_file(config)),
            verifications: tokio::sync::Semaphore::new(4),
            aggregates: crate::aggregate::for_config(config, Some(searches.clone())),
            searches,
            secure,
            offset_min: config.block_page.time_zone.offset_minutes(),
            zone_label: zone_label(&config.block_page.time_zone),
            oidc: a
                .oidc
                .as_ref()
                .map(|o| oidc_signin::OidcSignIn::new(config, o)),
            oidc_metrics: Default::default(),
            registry_imports: pending::Pending::new(std::time::Duration::from_secs(15 * 60)),
            downloads: pending::Pending::new(std::time::Duration::from_secs(10 * 60)),
        }
    }
}

/// The accounts file of a configuration.
pub fn users_file(config: &Config) -> PathBuf {
    config.data_path(&config.admin.users_file)
}

/// `JST (Asia/Tokyo)`, or the offset alone for a bare offset.
pub fn zone_label(zone: &crate::local_time::LocalZone) -> String {
    if zone.abbreviation() == zone.name() || zone.abbreviation().ends_with(zone.name()) {
        zone.abbreviation().to_string()
    } else {
        format!("{} ({})", zone.abbreviation(), zone.name())
    }
}
