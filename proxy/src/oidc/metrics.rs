//! `komugate_oidc_*`: sign-ins and tokens accepted and refused, by where
//! the token was used (`console`) and, for refusals, why.

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct OidcMetrics {
    pub accepted: IntCounterVec,
    pub refused: IntCounterVec,
}

impl Default for OidcMetrics {
    fn default() -> OidcMetrics {
        OidcMetrics {
            accepted: IntCounterVec::new(
                Opts::new(
                    "komugate_oidc_accepted_total",
                    "OpenID Connect tokens accepted, by use",
                ),
                &["use"],
            )
            .expect("metric"),
            refused: IntCounterVec::new(
                Opts::new(
                    "komugate_oidc_refused_total",
                    "OpenID Connect sign-ins and tokens refused, by use and reason",
                ),
                &["use", "reason"],
            )
            .expect("metric"),
        }
    }
}

impl OidcMetrics {
    pub fn register(&self, r: &Registry) {
        let _ = r.register(Box::new(self.accepted.clone()));
        let _ = r.register(Box::new(self.refused.clone()));
    }

    pub fn refused(&self, use_: &str, reason: &str) {
        self.refused.with_label_values(&[use_, reason]).inc();
    }

    pub fn accepted(&self, use_: &str) {
        self.accepted.with_label_values(&[use_]).inc();
    }
}
