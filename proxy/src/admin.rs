//! Admin listener: `/metrics` (Prometheus), `/healthz`, `/proxy.pac`, the
//! console under `/console/` (see [`crate::console`]), and the
//! token-protected API: `/admin/reload`, `/admin/explain`, `/admin/logs`,
//! `/admin/lists` and `POST /admin/lists/update` (downloaded category lists).
//! TLS unless on loopback ([`crate::console::tls`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::console::respond::{boxed, Body};
use crate::console::Console;
use crate::gateway::Gateway;
use crate::listen::http::ServerLimits;

pub async fn serve_admin(gw: Arc<Gateway>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let mut console = Console::new(&gw.config, tls.is_some());
    // One set of komugate_oidc_* counters for console and user sign-ins,
    // registered with the gateway's users (crate::users).
    console.oidc_metrics = gw.users.metrics.clone();
    let console = Arc::new(console);
    tokio::spawn(crate::console::pages::dashboard::warm_up(
        console.aggregates.clone(),
        console.offset_min,
    ));
    loop {
        let (stream, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("admin listener accept: {e}"); continue; }
            },
        };
        let gw2 = gw.clone();
        let console = console.clone();
        let tls = tls.clone();
        gw.spawn_tracked(async move {
            match tls {
                None => serve_connection(gw2, console, stream, peer).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(s)) => serve_connection(gw2, console, s, peer).await,
                        Ok(Err(e)) => tracing::debug!("admin TLS handshake from {peer}: {e}"),
                        Err(_) => tracing::debug!("admin TLS handshake from {peer}: timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(gw: Arc<Gateway>, console: Arc<Console>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ServerLimits {
        header_read_timeout: std::time::Duration::from_secs(10),
        ..ServerLimits::from(&gw.config.limits)
    };
    let shutdown = gw.shutdown.clone();
    // Idle keep-alive admin connections must not hold shutdown up.
    let _ = crate::listen::http::serve(
        limits,
        stream,
        false,
        Some(&shutdown),
        move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(crate::pac::Peer(peer));
            admin_request(gw.clone(), console.clone(), req, peer)
        },
    )
    .await;
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
    console: Arc<Console>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    if crate::listen::framing_guard::flagged(&req) {
        return Ok(boxed(text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "a request with both Content-Length and Transfer-Encoding is refused\n",
        )));
    }
    let path = req.uri().path();
    if path == "/console" || path.starts_with("/console/") {
        return Ok(crate::console::routes::handle(gw, console, req, peer).await);
    }
    // Authenticated by the logout token's signature, not an admin token.
    if path == crate::users::logout::PATH {
        return Ok(boxed(crate::users::logout::handle(&gw.users, req).await));
    }
    Ok(boxed(match path {
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
        "/admin/logs" => match authorize(&gw, &req) {
            Ok(name) => crate::logs::admin_http::handle(&gw, &req, &name).await,
            Err(r) => *r,
        },
        "/admin/reload" => reload(&gw, &req).await,
        "/pki/device-ca.crl" => device_crl(&gw),
        "/admin/explain" => explain(&gw, &req),
        "/admin/lists" | "/admin/lists/update" => match authorize(&gw, &req) {
            Ok(_) => crate::list_update::admin(&gw, &req).await,
            Err(r) => *r,
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /console/, /healthz or /metrics\n",
        ),
    }))
}

/// `GET /pki/device-ca.crl`: the device CA's revocation list (DER, signed
/// on request from `[tls] revoked_serials`), for other relying parties
/// and audits; the gateway itself reads the list directly at each reload.
fn device_crl(gw: &Gateway) -> Response<Full<Bytes>> {
    let (dir, list) = crate::pki_audit::gateway_pki(&gw.config);
    match crate::pki::inventory::crl_der(&dir, &list) {
        Ok(der) => {
            let mut r = Response::new(Full::new(Bytes::from(der)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/pkix-crl"),
            );
            r
        }
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("no CRL: {e:#}\n"),
        ),
    }
}

/// The name of the API token the request carries (`Authorization: Bearer
/// <token>`): "admin" for `[admin] token`, or its name in `[admin.tokens]`.
/// `Err(response)` without a known token.
pub fn authorize<B>(gw: &Gateway, req: &Request<B>) -> Result<String, Box<Response<Full<Bytes>>>> {
    let admin = &gw.config.admin;
    let configured = std::iter::once(("admin", admin.token.trim()))
        .chain(admin.tokens.iter().map(|(n, t)| (n.as_str(), t.trim())))
        .filter(|(_, t)| !t.is_empty())
        .collect::<Vec<_>>();
    if configured.is_empty() {
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the admin API is off: set [admin] token (or [admin.tokens]) in the gateway configuration\n",
        )));
    }
    let presented = req.headers().get(header::AUTHORIZATION);
    // Every token is compared (in constant time each), whichever matches.
    let mut found = None;
    for (name, token) in configured {
        if crate::logs::admin_http::token_ok(token, presented) && found.is_none() {
            found = Some(name.to_string());
        }
    }
    found.ok_or_else(|| {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "missing or wrong admin token: send Authorization: Bearer <token from [admin] token or [admin.tokens]>\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        Box::new(r)
    })
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    text(status, "application/json", body)
}

/// `POST /admin/reload`: rebuild and swap the policy; 200 with the new
/// generation, or 422 with every validation error (the old policy stays).
async fn reload(gw: &Arc<Gateway>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let token_name = match authorize(gw, req) {
        Ok(name) => name,
        Err(r) => return *r,
    };
    if req.method() != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST /admin/reload\n",
        );
    }
    let source = crate::logs::audit::ReloadSource::Api { token_name };
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

/// `GET /admin/explain?device=ID[&user=NAME&user_groups=G1,G2]&from=IP&url=URL[&method=M][&lang=ja]`:
/// the decision the proxy would make (with `user` signed in on the device,
/// else the device-only rules), computed by the same function; `text` in
/// the language asked for (English by default).
fn explain(gw: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(r) = authorize(gw, req) {
        return *r;
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
            "usage: /admin/explain?device=ID[&user=NAME&user_groups=G1,G2]&from=IP&url=URL[&method=GET]\n",
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
    let user = crate::explain::SignedIn::from_text(
        q("user").unwrap_or(""),
        q("user_groups").unwrap_or(""),
    );
    match crate::explain::explain_as(
        &runtime.policy,
        q("device"),
        user.as_ref(),
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
