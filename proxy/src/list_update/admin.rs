//! The list-update part of the admin API.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;

use super::{feeds, update_all};
use crate::gateway::Gateway;

/// `GET /admin/lists` (status) and `POST /admin/lists/update[?url=U]`
/// (check now; 200 when every check was applied or not modified, else 422).
/// The caller has checked the admin token.
pub async fn admin(
    gw: &Arc<Gateway>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
        body.push(b'\n');
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/admin/lists") => {
            let configured: Vec<serde_json::Value> = feeds(gw)
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "kind": s.kind.label(), "url": s.url, "path": s.path, "format": s.format,
                        "refresh_secs": s.refresh.as_secs(), "entries_in_force": s.entries, "present": s.present,
                    })
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"sources": configured, "status": gw.list_updates.status()}),
            )
        }
        (&http::Method::POST, "/admin/lists/update") => {
            let query = req.uri().query().unwrap_or("");
            let params: HashMap<String, String> =
                crate::logs::admin_http::parse_query_string(query)
                    .into_iter()
                    .collect();
            let outcomes = update_all(gw, params.get("url").map(String::as_str)).await;
            let all_ok = outcomes
                .iter()
                .all(|o| matches!(o.result, "applied" | "not_modified"));
            let status = if all_ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(
                status,
                serde_json::json!({"generation_in_force": gw.generation.load().number(), "outcomes": outcomes}),
            )
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use GET /admin/lists or POST /admin/lists/update[?url=URL]"}),
        ),
    }
}
