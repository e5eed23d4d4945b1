//! Admin listener: `/metrics` (Prometheus), `/healthz`, `/proxy.pac`, and
//! the token-protected API: `/admin/reload`, `/admin/explain`, `/admin/logs`,
//! `/admin/lists` and `POST /admin/lists/update` (downloaded category lists).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::listen::http::ServerLimits;

pub async fn serve_admin(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("admin listener accept: {e}"); continue; }
            },
        };
        let gw2 = gw.clone();
        let shutdown = gw.shutdown.clone();
        gw.spawn_tracked(async move {
            let limits = ServerLimits {
                header_read_timeout: std::time::Duration::from_secs(10),
                ..ServerLimits::from(&gw2.config.limits)
            };
            // Idle keep-alive admin connections must not hold shutdown up.
            let _ = crate::listen::http::serve(
                limits,
                stream,
                false,
                Some(&shutdown),
                move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(crate::pac::Peer(peer));
                    admin_request(gw2.clone(), req)
                },
            )
            .await;
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

async fn admin_request(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if crate::listen::framing_guard::flagged(&req) {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "a request with both Content-Length and Transfer-Encoding is refused\n",
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => {
            if gw.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            gw.metrics.render(),
        ),
        "/proxy.pac" => crate::pac::admin_response(
            &gw.sites,
            &gw.current().sites,
            crate::config::Config::listen_addr(&gw.config.listen.mtls).map(|a| a.port()),
            &req,
        ),
        "/admin/logs" => crate::logs::admin_http::handle(&gw, &req).await,
        "/admin/reload" => reload(&gw, &req).await,
        "/admin/explain" => explain(&gw, &req),
        "/admin/lists" | "/admin/lists/update" => match authorize(&gw, &req) {
            Ok(()) => crate::list_update::admin(&gw, &req).await,
            Err(r) => r,
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz or /metrics\n",
        ),
    })
}

/// `Err(response)` unless the request carries `Authorization: Bearer <[admin] token>`.
// The refusal is rare and answered at once: its size does not matter.
#[allow(clippy::result_large_err)]
fn authorize(gw: &Gateway, req: &Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    let token = gw.config.admin.token.trim();
    if token.is_empty() {
        return Err(text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the admin API is off: set [admin] token in the gateway configuration\n",
        ));
    }
    if !crate::logs::admin_http::token_ok(token, req.headers().get(header::AUTHORIZATION)) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "missing or wrong admin token: send Authorization: Bearer <[admin] token>\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return Err(r);
    }
    Ok(())
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    text(status, "application/json", body)
}

/// `POST /admin/reload`: rebuild and swap the policy; 200 with the new
/// generation, or 422 with every validation error (the old policy stays).
async fn reload(gw: &Arc<Gateway>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(r) = authorize(gw, req) {
        return r;
    }
    if req.method() != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST /admin/reload\n",
        );
    }
    let source = crate::logs::audit::ReloadSource::Api {
        token_name: "admin".into(),
    };
    match gw.reload(source).await {
        Ok(r) => json(
            StatusCode::OK,
            serde_json::json!({"result": "ok", "generation": r.generation, "digest": r.digest}),
        ),
        Err(e) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({
                "result": "error",
                "generation_in_force": gw.generation.load().number(),
                "errors": e.lines().collect::<Vec<_>>(),
            }),
        ),
    }
}

/// `GET /admin/explain?device=ID&from=IP&url=URL[&method=M][&lang=ja]`: the
/// decision the proxy would make, computed by the same function; `text` in
/// the language asked for (English by default).
fn explain(gw: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(r) = authorize(gw, req) {
        return r;
    }
    let query = req.uri().query().unwrap_or("");
    let params: std::collections::HashMap<String, String> =
        crate::logs::admin_http::parse_query_string(query)
            .into_iter()
            .collect();
    let q = |k: &str| params.get(k).map(String::as_str);
    let (Some(from), Some(url)) = (q("from"), q("url")) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "usage: /admin/explain?device=ID&from=IP&url=URL[&method=GET]\n",
        );
    };
    let Some(wording) = komugate_policy::Wording::for_lang(q("lang").unwrap_or("en")) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "lang must be en or ja\n",
        );
    };
    let generation = gw.current();
    let runtime = &generation.runtime;
    if runtime.builtin {
        return text(StatusCode::CONFLICT, "text/plain", "no policy file is configured ([policy] file); decisions come from the [decision] lists\n");
    }
    match crate::explain::explain(
        &runtime.policy,
        q("device"),
        from,
        url,
        q("method").unwrap_or("GET"),
    ) {
        Ok(decision) => json(
            StatusCode::OK,
            serde_json::json!({"generation": runtime.generation, "decision": decision, "text": wording.explain(&decision)}),
        ),
        Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}
