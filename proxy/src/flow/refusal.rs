//! The one mapping from a stage's [`Refusal`] to what the client gets (the
//! block page or an error status) and what the access record says; and
//! [`FirstRequest`], the block page served inside TLS for a blocked CONNECT.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::block_page::{self, BlockInfo, PageContext};
use crate::egress::EgressError;
use crate::listen::http::ServerLimits;
use crate::record::AccessRecord;
use crate::request::{ConnContext, ProxyBody, Refusal};

/// A refusal given to the first request on a connection the gateway
/// serves itself (a TLS session inside a refused CONNECT), then the
/// connection closes.
pub struct FirstRequest {
    pub refusal: Refusal,
    pub conn: Arc<ConnContext>,
    pub page: PageContext,
    pub limits: ServerLimits,
}

impl FirstRequest {
    /// Serves `stream` (HTTP/2 when `h2`) until the first request has its
    /// answer, then closes; the whole exchange gets the head timeout (the
    /// answer is a few kilobytes). `origin` (`https://host`) and the
    /// request's path make the address shown. `Some(status)`: a request
    /// was answered.
    pub async fn answer<S>(self, stream: S, h2: bool, origin: String) -> Option<u16>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let answered = Arc::new(OnceLock::new());
        let close = CancellationToken::new();
        let limits = self.limits;
        let shared = Arc::new((self, origin));
        let handler = {
            let (answered, close) = (answered.clone(), close.clone());
            move |req: Request<Incoming>| {
                let (answered, close, shared) = (answered.clone(), close.clone(), shared.clone());
                async move {
                    let (first, origin) = &*shared;
                    if let Some(queue) = crate::unblock::submission(&first.page.unblock, &req) {
                        let host = crate::unblock::host_of(origin);
                        let resp = crate::unblock::submit(queue, &first.conn, &host, req).await;
                        let _ = answered.set(resp.status().as_u16());
                        close.cancel();
                        return Ok::<_, Infallible>(resp);
                    }
                    let target = format!("{origin}{}", req.uri().path());
                    let mut resp = answer(&first.refusal, &first.conn, &target, &first.page);
                    if !h2 {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    let _ = answered.set(resp.status().as_u16());
                    // Closes after this answer (HTTP/2: GOAWAY).
                    close.cancel();
                    Ok::<_, Infallible>(resp)
                }
            }
        };
        let serve = crate::listen::http::serve(limits, stream, h2, Some(&close), handler);
        let _ = tokio::time::timeout(limits.header_read_timeout, serve).await;
        answered.get().copied()
    }
}

pub fn full(resp: Response<Full<Bytes>>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

/// What the record says about a refusal: decision, rule, error.
pub fn note(record: &mut AccessRecord, refusal: &Refusal) {
    match refusal {
        Refusal::Blocked(block) => {
            record.decision = "block";
            record.rule = block.rule.clone();
        }
        Refusal::BadRequest { .. } | Refusal::HeadTooLarge => {}
        Refusal::BodyUnreadable(e) => {
            record.error = Some(format!("reading the request body: {e}"));
        }
        Refusal::Egress(e) => {
            record.error = Some(e.to_string());
            if let Some(rule) = e.guard_rule() {
                record.decision = "block";
                record.rule = rule.into();
            }
        }
        Refusal::UpstreamCertificate(e) => {
            record.decision = "block";
            record.rule = "upstream-certificate-invalid".into();
            record.error = Some(format!("upstream certificate: {e}"));
        }
        Refusal::UpstreamTimeout(ms) => {
            record.error = Some(format!(
                "upstream timeout: no complete response head within {ms} ms after the request was sent ([egress] response_header_timeout_ms)"
            ));
        }
        Refusal::UpstreamFailed(e) => {
            record.error = Some(format!("upstream: {e}"));
        }
        Refusal::Limited { rule, en, .. } => {
            record.decision = "block";
            record.rule = rule.clone();
            record.error = Some(en.clone());
        }
    }
}

/// The answer for a refusal of a request to `target` (as shown to the
/// user). `page` says what block pages show besides the refusal.
pub fn answer(
    refusal: &Refusal,
    conn: &ConnContext,
    target: &str,
    page: &PageContext,
) -> Response<ProxyBody> {
    match refusal {
        Refusal::Blocked(block) => {
            let unblock = page.unblock.as_ref().map(|q| {
                q.view(
                    &crate::unblock::requester(conn),
                    &crate::unblock::host_of(target),
                )
            });
            let mut resp = block_page_for(
                conn,
                target,
                &block.rule,
                block.message.as_deref(),
                block.category.as_deref(),
                page,
            );
            if let Some(view) = unblock {
                resp = full(block_page::blocked_response(&BlockInfo {
                    target,
                    rule: &block.rule,
                    message: block.message.as_deref(),
                    category: block.category.as_deref(),
                    device: conn.device_id(),
                    time: &page.now(),
                    contact: page.contact.as_deref(),
                    unblock: Some(view),
                }));
            }
            resp.headers_mut().insert(
                "komugate-policy-generation",
                HeaderValue::from(page.generation),
            );
            resp
        }
        Refusal::BadRequest { ja, en } => {
            let mut resp = full(block_page::error_response(StatusCode::BAD_REQUEST, ja, en));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Refusal::HeadTooLarge => {
            let mut resp = full(block_page::error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "リクエストヘッダーが大きすぎます。",
                "The request head is larger than the gateway's limit ([limits] max_header_bytes).",
            ));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Refusal::BodyUnreadable(e) => full(block_page::error_response(
            StatusCode::BAD_REQUEST,
            "リクエスト本文を受信できませんでした。",
            &format!("The request body could not be read: {e}"),
        )),
        Refusal::Egress(e) => egress_answer(conn, e, target, page),
        Refusal::UpstreamCertificate(e) => invalid_certificate(conn, e, target, page),
        Refusal::UpstreamTimeout(ms) => full(block_page::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "接続先のサーバーが時間内に応答しませんでした。",
            &format!("The upstream server for {target} did not answer within {ms} ms."),
        )),
        Refusal::UpstreamFailed(e) => full(block_page::error_response(
            StatusCode::BAD_GATEWAY,
            "接続先のサーバーから正しい応答がありませんでした。",
            &format!("The upstream server did not answer properly: {e}"),
        )),
        Refusal::Limited { ja, en, .. } => full(block_page::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            ja,
            en,
        )),
    }
}

/// The 403 block page for `conn`, now.
fn block_page_for(
    conn: &ConnContext,
    target: &str,
    rule: &str,
    message: Option<&str>,
    category: Option<&str>,
    page: &PageContext,
) -> Response<ProxyBody> {
    full(block_page::blocked_response(&BlockInfo {
        target,
        rule,
        message,
        category,
        device: conn.device_id(),
        time: &page.now(),
        contact: page.contact.as_deref(),
        unblock: None,
    }))
}

fn egress_answer(
    conn: &ConnContext,
    err: &EgressError,
    target: &str,
    page: &PageContext,
) -> Response<ProxyBody> {
    match err {
        EgressError::ForbiddenDestination { .. } | EgressError::OwnListener { .. } => {
            block_page_for(
                conn,
                target,
                err.guard_rule().unwrap_or("destination-guard"),
                Some(&err.to_string()),
                None,
                page,
            )
        }
        EgressError::Timeout { .. } => full(block_page::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "接続先のサーバーが時間内に応答しませんでした。",
            &err.to_string(),
        )),
        EgressError::Tls { .. } => full(block_page::error_response(
            StatusCode::BAD_GATEWAY,
            "接続先のサーバーと TLS で接続できませんでした。",
            &err.to_string(),
        )),
        EgressError::ResolveTimeout { .. } => full(block_page::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "DNS サーバーが時間内に応答せず、接続先の名前を解決できませんでした。",
            &err.to_string(),
        )),
        EgressError::Resolve { .. } => full(block_page::error_response(
            StatusCode::BAD_GATEWAY,
            "DNS で接続先の名前を解決できませんでした。",
            &err.to_string(),
        )),
        EgressError::Connect { .. } => full(block_page::error_response(
            StatusCode::BAD_GATEWAY,
            "接続先のサーバーに接続できませんでした。",
            &err.to_string(),
        )),
    }
}

/// The block page for an upstream whose certificate failed verification:
/// never re-signed, never a valid-looking response.
fn invalid_certificate(
    conn: &ConnContext,
    err: &rustls::Error,
    target: &str,
    page: &PageContext,
) -> Response<ProxyBody> {
    tracing::warn!(target, device = ?conn.device_id(), "upstream certificate invalid: {err}");
    let reason = match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. }) => {
            "サイトの証明書の有効期限が切れています。 / The site's certificate has expired.".to_string()
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext { .. }) => {
            "サイトの証明書はまだ有効になっていません。 / The site's certificate is not valid yet.".to_string()
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
            "サイトの証明書がこのホスト名用ではありません。 / The site's certificate is not valid for this host name.".to_string()
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "サイトの証明書の発行元が信頼されていません。 / The site's certificate is issued by an unknown CA.".to_string()
        }
        other => format!("サイトの証明書が不正です。 / The site's certificate is invalid: {other}"),
    };
    block_page_for(
        conn,
        target,
        "upstream-certificate-invalid",
        Some(&reason),
        None,
        page,
    )
}
