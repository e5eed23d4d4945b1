//! The embedded demo's destination: a tiny web server on a loopback port
//! (`[data] demo_origin`), so the README's first requests go through the
//! proxy to a real origin without anything external. Never part of a
//! production configuration.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The page the demo origin serves for every path.
pub const PAGE: &str = "<!doctype html>\n<html lang=\"ja\"><meta charset=\"utf-8\"><title>komugate demo origin</title>\n<h1>こんにちは。このページは komugate を経由して届きました。</h1>\n<p lang=\"en\">Hello from the demo origin: this page came to you through komugate.</p>\n</html>\n";

/// Binds `addr` and serves [`PAGE`] until `stop` is cancelled.
pub async fn start(addr: SocketAddr, stop: CancellationToken) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ([data] demo_origin); is another process using the port? Set demo_origin = \"\" to turn the demo origin off")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => { tracing::warn!("demo origin accept: {e}"); continue; }
                },
            };
            tokio::spawn(async move {
                let limits = crate::listen::http::ServerLimits::local(Duration::from_secs(10));
                let _ = crate::listen::http::serve(limits, stream, false, None, hello).await;
            });
        }
    });
    Ok(bound)
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(resp)
}
