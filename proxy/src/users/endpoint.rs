//! The gateway's own endpoints on a device's mTLS link (`https://<gateway>/.komugate/...`),
//! used by `komugate client`:
//!
//! - `GET /.komugate/user/config`: the provider to sign in with (issuer,
//!   client id, scopes), so clients need no copy of it
//! - `POST /.komugate/user/sign-in` `{"id_token": "...", "binding_salt": "..."}`
//! - `POST /.komugate/user/sign-out`
//! - `GET /.komugate/user`: who is signed in on this device
//! - `POST /.komugate/posture` (a signed report, see [`super::posture`])
//!
//! Answers are JSON; refusals are 403 with `{"reason", "message"}`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::gateway::Gateway;
use crate::request::{ConnContext, ListenerKind};

/// Path prefix of the gateway's own endpoints on the link.
pub const PREFIX: &str = "/.komugate/";
const MAX_BODY: usize = 64 * 1024;

/// A request for the gateway itself (not to be proxied).
pub fn is_gateway_request<B>(conn: &ConnContext, req: &Request<B>) -> bool {
    conn.listener == ListenerKind::Mtls
        && req.method() != Method::CONNECT
        && matches!(req.uri().scheme_str(), None | Some("https"))
        && req.uri().path().starts_with(PREFIX)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static response")
}

fn refused(status: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"reason": reason, "message": message}),
    )
}

#[derive(Deserialize)]
struct SignInBody {
    id_token: String,
    #[serde(default)]
    binding_salt: String,
}

/// Answers a request [`is_gateway_request`] accepted.
pub async fn handle(
    gw: &Gateway,
    conn: &ConnContext,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(device) = conn.device.as_ref() else {
        return refused(
            StatusCode::FORBIDDEN,
            "no_device",
            "no device certificate on this connection".into(),
        );
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the request body cannot be read (at most {MAX_BODY} bytes): {e}"),
            )
        }
    };
    let users = &gw.users;
    match (method, path.as_str()) {
        (Method::GET, "/.komugate/user/config") => match users.oidc() {
            Some(o) => json(
                StatusCode::OK,
                serde_json::json!({"issuer": o.issuer, "client_id": o.client_id, "scopes": o.scopes}),
            ),
            None => refused(
                StatusCode::NOT_FOUND,
                "not_configured",
                "user sign-in is not enabled on this gateway (no [users.oidc])".into(),
            ),
        },
        (Method::POST, "/.komugate/user/sign-in") => {
            let b: SignInBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    let r = super::SignInRefusal::BadRequest(e.to_string());
                    users.metrics.refused(super::METRIC_USE, r.reason());
                    return refused(StatusCode::BAD_REQUEST, r.reason(), r.to_string());
                }
            };
            match users
                .sign_in(&device.device_id, &b.id_token, &b.binding_salt)
                .await
            {
                Ok(s) => json(
                    StatusCode::OK,
                    serde_json::json!({"device": device.device_id, "user": s.user, "groups": s.groups, "expires_at": s.expires_at}),
                ),
                Err(e) => refused(StatusCode::FORBIDDEN, e.reason(), e.to_string()),
            }
        }
        (Method::POST, "/.komugate/user/sign-out") => {
            let had = users.sign_out(&device.device_id);
            json(StatusCode::OK, serde_json::json!({"signed_out": had}))
        }
        (Method::GET, "/.komugate/user") => match users.current(&device.device_id) {
            Some(s) => json(
                StatusCode::OK,
                serde_json::json!({"device": device.device_id, "user": s.user, "groups": s.groups, "expires_at": s.expires_at}),
            ),
            None => json(
                StatusCode::OK,
                serde_json::json!({"device": device.device_id, "user": null}),
            ),
        },
        (Method::POST, "/.komugate/posture") => {
            match gw
                .posture
                .accept(device, conn.device_cert.as_deref(), &body)
            {
                Ok(()) => json(StatusCode::OK, serde_json::json!({"accepted": true})),
                Err(e) => refused(StatusCode::FORBIDDEN, e.reason(), e.to_string()),
            }
        }
        (_, p) => refused(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no gateway endpoint {p}"),
        ),
    }
}
