//! The webhook channel: one JSON POST per message through the gateway's
//! own egress (DNS, destination guard, upstream TLS verification).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};

use super::Message;
use crate::egress::upstream::{UpstreamAlpn, UpstreamClient, UpstreamPools};

/// How long one delivery may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Client {
    url: Option<http::Uri>,
    http: UpstreamClient,
}

impl Client {
    /// `url` empty = no webhook (messages are only counted).
    pub fn new(pools: &UpstreamPools, url: &str) -> Client {
        Client {
            url: (!url.is_empty()).then(|| url.parse().expect("checked by the config")),
            http: pools.client(None, UpstreamAlpn::Http1),
        }
    }

    pub fn configured(&self) -> bool {
        self.url.is_some()
    }

    pub async fn send(&self, msg: &Message) -> Result<(), String> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let authority = url.authority().map(|a| a.to_string()).unwrap_or_default();
        let body = serde_json::to_vec(&msg.webhook_json()).expect("JSON");
        let req = Request::post(url.clone())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(
                header::USER_AGENT,
                concat!("komugate-alerts/", env!("CARGO_PKG_VERSION")),
            )
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = tokio::time::timeout(TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| format!("POST {url}: no answer within {} s", TIMEOUT.as_secs()))?
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = resp.status();
        // Drain the (small) answer so the connection can be reused.
        let _ = tokio::time::timeout(TIMEOUT, resp.into_body().collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: the webhook answered {status}"))
        }
    }
}
