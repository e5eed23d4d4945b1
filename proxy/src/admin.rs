//! Admin listener: `/metrics` (Prometheus), `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

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
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(crate::pac::Peer(peer));
                admin_request(gw2.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

async fn admin_request(gw: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => {
            if gw.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", gw.metrics.render()),
        "/proxy.pac" => crate::pac::admin_response(&gw, &req),
        "/admin/logs" => crate::logs::admin_http::handle(&gw, &req).await,
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz or /metrics\n"),
    })
}
