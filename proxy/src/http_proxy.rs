//! HTTP handling on both proxy listeners: absolute-form forwarding (with
//! WebSocket upgrades) and CONNECT tunnels over HTTP/1.1 and HTTP/2. Every
//! request goes through [`crate::decision::Runtime::decide`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use crate::access_log::AccessLog;
use crate::record::{rfc3339, AccessRecord};
use crate::block_page::{self, BlockInfo};
use crate::decision::{Decision, ListenerKind, RequestInfo, RequestKind};
use crate::device_auth::DeviceIdentity;
use crate::egress::EgressError;
use crate::gateway::Gateway;
use crate::upstream::{egress_error, tls_error, EgressInfo, UpstreamAlpn, UpstreamBody};

pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Who is on the other end of a client connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub listener: ListenerKind,
    pub client: SocketAddr,
    pub device: Option<DeviceIdentity>,
}

pub fn full(resp: Response<Full<Bytes>>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

/// A fresh access record for a request from `conn`.
pub fn new_record(conn: &ConnContext, method: &str) -> AccessRecord {
    AccessRecord {
        time: rfc3339(SystemTime::now()),
        listener: conn.listener.label(),
        device: conn.device.as_ref().map(|d| d.device_id.clone()),
        groups: conn
            .device
            .as_ref()
            .map(|d| d.cert_groups.clone())
            .unwrap_or_default(),
        client: conn.client.to_string(),
        method: method.to_string(),
        ..Default::default()
    }
}

/// Logs a request that was answered by the gateway itself (blocked,
/// refused or failed before an upstream response) and returns the answer.
pub fn log_refusal(
    gw: &Gateway,
    mut record: AccessRecord,
    resp: Refusal,
    started: Instant,
) -> Response<ProxyBody> {
    record.status = resp.status().as_u16();
    record.duration_ms = started.elapsed().as_millis() as u64;
    if record.decision.is_empty() {
        record.decision = "error";
    }
    gw.metrics
        .requests_total
        .with_label_values(&[kind_label(&record), record.decision])
        .inc();
    gw.access_log.submit(record);
    resp
}

/// The hyper service function for both proxy listeners.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut record = new_record(&conn, req.method().as_str());
    let started = Instant::now();
    gw.sites
        .observe(conn.device.as_ref(), conn.client, req.headers());
    let result = if let Some(refusal) = framing_refusal(req.headers()) {
        Err(refusal)
    } else if conn.listener == ListenerKind::Mtls && crate::pac::is_pac_request(&req) {
        return Ok(full(crate::pac::gateway_response(
            &gw,
            conn.device.as_ref(),
            conn.client,
            &req,
        )));
    } else if crate::doh::is_doh(&conn, &req) {
        return Ok(crate::doh::serve(&gw, &conn, req).await);
    } else if req.method() == Method::CONNECT {
        connect(&gw, &conn, req, &mut record, started).await
    } else {
        forward(&gw, &conn, req, &mut record, started).await
    };
    Ok(match result {
        Ok(resp) => resp,
        Err(resp) => log_refusal(&gw, record, resp, started),
    })
}

fn kind_label(record: &AccessRecord) -> &'static str {
    if record.method == "CONNECT" {
        "connect"
    } else {
        "http"
    }
}

pub type Refusal = Response<ProxyBody>;

pub fn bad_request(ja: &str, en: &str) -> Refusal {
    let mut resp = full(block_page::error_response(StatusCode::BAD_REQUEST, ja, en));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Refuses a request whose framing is ambiguous or over the limits: the
/// framing guard's marker (Content-Length with Transfer-Encoding, head over
/// `max_header_bytes`), or a `Content_Length` / `Transfer_Encoding` header
/// (any `_` instead of `-`), which servers that fold `_` into `-` would
/// take as framing. Checked on both listeners and inside inspected tunnels.
pub fn framing_refusal(headers: &HeaderMap) -> Option<Refusal> {
    use crate::framing_guard::{FRAMING_ERROR_HEADER, HEAD_TOO_LARGE};
    if let Some(marker) = headers.get(FRAMING_ERROR_HEADER) {
        if marker.as_bytes() == HEAD_TOO_LARGE.as_bytes() {
            let mut resp = full(block_page::error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "リクエストヘッダーが大きすぎます。",
                "The request head is larger than the gateway's limit ([limits] max_header_bytes).",
            ));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Some(resp);
        }
        return Some(bad_request(
            "Content-Length と Transfer-Encoding の両方を含むリクエストは受け付けません。",
            "A request with both Content-Length and Transfer-Encoding is refused (request smuggling risk).",
        ));
    }
    let underscored = headers.keys().find(|name| {
        let name = name.as_str();
        name.contains('_')
            && ["content-length", "transfer-encoding"]
                .iter()
                .any(|framing| {
                    name.len() == framing.len()
                        && name
                            .bytes()
                            .zip(framing.bytes())
                            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
                })
    });
    underscored.map(|name| {
        bad_request(
            &format!("ヘッダー名 {name} は受け付けません (\"_\" ではなく \"-\" を使ってください)。"),
            &format!("The header name {name} is refused: framing header names must use \"-\", not \"_\" (request smuggling risk)."),
        )
    })
}

/// Host (lowercase, no brackets, no trailing dot) and port of a request target.
fn target_of(uri: &Uri, default_port: u16) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, authority.port_u16().unwrap_or(default_port)))
}

/// Where a request goes: scheme, host (lowercase, no brackets) and port.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `scheme://host[:port]` without a default port.
    fn origin(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port == default {
            format!("{}://{}", self.scheme, bracket(&self.host))
        } else {
            format!("{}://{}:{}", self.scheme, bracket(&self.host), self.port)
        }
    }
}

/// Calls the decision point for a request on `conn`.
pub fn decide(
    gw: &Gateway,
    conn: &ConnContext,
    kind: RequestKind,
    method: &str,
    target: &Target,
    path: &str,
) -> Decision {
    let runtime = gw.runtime.load();
    runtime.decide(&RequestInfo {
        listener: conn.listener,
        device: conn.device.as_ref(),
        client: conn.client,
        kind,
        method,
        host: &target.host,
        port: target.port,
        path,
        scheme: if kind == RequestKind::Connect {
            ""
        } else {
            target.scheme
        },
        location: gw.sites.location(conn.device.as_ref(), conn.client),
    })
}

/// Copies what the decision knows (rule, location, user, categories, app,
/// policy generation) into the access record.
pub fn note_decision(record: &mut AccessRecord, decision: &Decision) {
    record.rule = decision.rule.clone();
    record.site = decision.site.clone();
    record.user = decision.user.clone();
    record.categories = decision.categories.clone();
    record.app = decision.app.clone();
    record.generation = decision.generation;
    if !decision.groups.is_empty() {
        record.groups = decision.groups.clone();
    }
}

/// The 403 block page for `conn`, now.
pub(crate) fn block_page_for(
    conn: &ConnContext,
    target: &str,
    rule: &str,
    message: Option<&str>,
    category: Option<&str>,
    contact: Option<&str>,
) -> Refusal {
    let time = rfc3339(SystemTime::now());
    full(block_page::blocked_response(&BlockInfo {
        target,
        rule,
        message,
        category,
        device: conn.device.as_ref().map(|d| d.device_id.as_str()),
        time: &time,
        contact,
    }))
}

pub fn blocked(
    conn: &ConnContext,
    decision: &Decision,
    target: &str,
    record: &mut AccessRecord,
) -> Refusal {
    record.decision = "block";
    note_decision(record, decision);
    let categories = decision.categories.join(", ");
    let category = (!categories.is_empty()).then_some(categories.as_str());
    let mut resp = block_page_for(
        conn,
        target,
        &decision.rule,
        decision.message.as_deref(),
        category,
        decision.contact.as_deref(),
    );
    resp.headers_mut().insert(
        "komugate-policy-generation",
        HeaderValue::from(decision.generation),
    );
    resp
}

/// The block page for an upstream whose certificate failed verification:
/// never re-signed, never a valid-looking response.
fn invalid_certificate(
    conn: &ConnContext,
    err: &rustls::Error,
    target: &str,
    record: &mut AccessRecord,
) -> Refusal {
    record.decision = "block";
    record.rule = "upstream-certificate-invalid".into();
    record.error = Some(format!("upstream certificate: {err}"));
    tracing::warn!(target, device = ?conn.device.as_ref().map(|d| &d.device_id), "upstream certificate invalid: {err}");
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
        None,
    )
}

fn egress_refusal(
    conn: &ConnContext,
    err: &EgressError,
    target: &str,
    record: &mut AccessRecord,
) -> Refusal {
    record.error = Some(err.to_string());
    match err {
        EgressError::ForbiddenDestination { .. } | EgressError::OwnListener { .. } => {
            let rule = err.guard_rule().unwrap_or("destination-guard");
            record.decision = "block";
            record.rule = rule.into();
            block_page_for(conn, target, rule, Some(&err.to_string()), None, None)
        }
        EgressError::Timeout { .. } => full(block_page::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "接続先のサーバーが時間内に応答しませんでした。",
            &err.to_string(),
        )),
        EgressError::ResolveTimeout { .. } => full(block_page::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "DNS サーバーが時間内に応答せず、接続先の名前を解決できませんでした。",
            &err.to_string(),
        )),
        EgressError::Tls { .. } => full(block_page::error_response(
            StatusCode::BAD_GATEWAY,
            "接続先のサーバーと TLS で接続できませんでした。",
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

// ---------------------------------------------------------------- CONNECT

async fn connect(
    gw: &Arc<Gateway>,
    conn: &Arc<ConnContext>,
    req: Request<Incoming>,
    record: &mut AccessRecord,
    started: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some((host, port)) = target_of(req.uri(), 443) else {
        return Err(bad_request(
            "CONNECT の接続先 (host:port) が不正です。",
            "CONNECT needs an authority-form target host:port.",
        ));
    };
    let dest = Target {
        scheme: "https",
        host,
        port,
    };
    let target = format!("{}:{port}", bracket(&dest.host));
    record.target = target.clone();
    let decision = decide(gw, conn, RequestKind::Connect, "CONNECT", &dest, "");
    if decision.is_blocked() {
        return Err(blocked(conn, &decision, &target, record));
    }
    note_decision(record, &decision);
    if let Err(resp) =
        crate::ips::http::check_destination(gw, conn, &dest.host, &target, record).await
    {
        return Err(full(resp));
    }
    // Non-web firewall: every tunnel that will not be inspected as web traffic.
    let web_inspected =
        decision.tunnel == crate::decision::TunnelMode::Inspect && gw.inspector.is_some();
    crate::firewall::check(
        gw,
        conn,
        &dest.host,
        dest.port,
        web_inspected,
        &target,
        decision.contact.as_deref(),
        record,
    )
    .await?;
    if decision.tunnel == crate::decision::TunnelMode::Inspect {
        if let Some(inspector) = gw.inspector.clone() {
            record.decision = "allow";
            record.status = 200;
            let mut tunnel_record = std::mem::take(record);
            let (gw2, conn2) = (gw.clone(), conn.clone());
            gw.spawn_tracked(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        crate::inspect::run(
                            gw2,
                            conn2,
                            inspector,
                            TokioIo::new(upgraded),
                            dest,
                            decision,
                            tunnel_record,
                            started,
                        )
                        .await
                    }
                    Err(e) => {
                        tunnel_record.error = Some(format!("client upgrade failed: {e}"));
                        finish_tunnel(&gw2, tunnel_record, started, Default::default());
                    }
                }
            });
            return Ok(Response::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            ));
        }
    }
    let (host, port) = (dest.host, dest.port);
    let upstream = match gw.egress.connect(&host, port, decision.egress_source).await {
        Ok(s) => s,
        Err(e) => return Err(egress_refusal(conn, &e, &target, record)),
    };
    record.decision = "allow";
    record.status = 200;
    record.egress = upstream.local_addr().ok().map(|a| a.ip().to_string());
    let gw2 = gw.clone();
    let mut record = std::mem::take(record);
    let ips_ctx = crate::ips::http::event_context(gw, conn, &target);
    // Only the upgrade handle goes into the tunnel task, not the request: a
    // moved-in request would keep its slot in the task for the tunnel's life.
    let on_upgrade = hyper::upgrade::on(req);
    gw.spawn_tracked(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                record.error = Some(format!("client upgrade failed: {e}"));
                finish_tunnel(&gw2, record, started, Default::default());
                return;
            }
        };
        gw2.metrics.tunnels_open.inc();
        let idle = gw2.config.limits.idle_timeout();
        let (stats, ips_events) = crate::ips::tunnel::relay(
            gw2.ips.load_full(),
            ips_ctx,
            port,
            TokioIo::new(upgraded),
            upstream,
            idle,
        )
        .await;
        crate::ips::http::apply_events(&mut record, ips_events);
        gw2.metrics.tunnels_open.dec();
        if stats.idle_timeout {
            record.error = Some("idle timeout".into());
        }
        finish_tunnel(&gw2, record, started, stats);
    });
    Ok(Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    ))
}

pub fn finish_tunnel(
    gw: &Gateway,
    mut record: AccessRecord,
    started: Instant,
    stats: crate::tunnel::RelayStats,
) {
    if stats.cut && record.error.is_none() {
        record.error = Some("closed by the gateway: shutdown drain time over".into());
    }
    record.bytes_up = stats.up;
    record.bytes_down = stats.down;
    record.duration_ms = started.elapsed().as_millis() as u64;
    gw.metrics
        .bytes_total
        .with_label_values(&["up"])
        .inc_by(stats.up);
    gw.metrics
        .bytes_total
        .with_label_values(&["down"])
        .inc_by(stats.down);
    gw.metrics
        .requests_total
        .with_label_values(&["connect", record.decision])
        .inc();
    gw.access_log.submit(record);
}

pub fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

// ---------------------------------------------------------------- forwarding

/// Headers that describe one hop only (RFC 9110 §7.6.1), plus the
/// proxy-specific ones that must never reach an upstream. `HeaderName`s,
/// not strings: removing by `&str` parses the name on every call (~6 k
/// instructions per request for this list).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade_ws = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .map(|s| s.trim().eq_ignore_ascii_case("websocket"))
            .unwrap_or(false)
    });
    upgrade_ws && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes hop-by-hop headers. A WebSocket upgrade keeps `Upgrade:
/// websocket` and `Connection: upgrade` so the next hop can switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    for name in connection_tokens(headers) {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            if !(websocket && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy_headers: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade {
            headers.insert(header::UPGRADE, u);
        }
    }
}

fn add_via(headers: &mut HeaderMap, version: Version) {
    let via = match version {
        Version::HTTP_10 => "1.0 komugate",
        Version::HTTP_2 => "2 komugate",
        _ => "1.1 komugate",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

async fn forward(
    gw: &Arc<Gateway>,
    conn: &Arc<ConnContext>,
    req: Request<Incoming>,
    record: &mut AccessRecord,
    started: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    let uri = req.uri().clone();
    record.target = uri.to_string();
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(bad_request(
                &format!(
                    "{other}:// の URL はプロキシで直接扱えません。CONNECT を使ってください。"
                ),
                &format!("{other}:// URLs cannot be forwarded; use CONNECT."),
            ))
        }
        None => {
            return Err(bad_request(
                "プロキシへのリクエストは絶対 URL (http://host/path) で送ってください。",
                "This is a proxy: send absolute-form requests (GET http://host/path).",
            ))
        }
    }
    let Some((host, port)) = target_of(&uri, 80) else {
        return Err(bad_request(
            "URL のホスト名が不正です。",
            "The request URL has no valid host.",
        ));
    };
    relay_request(
        gw,
        conn,
        req,
        Target {
            scheme: "http",
            host,
            port,
        },
        UpstreamAlpn::None,
        record,
        started,
    )
    .await
}

/// Decides one HTTP request and, if allowed, relays it to `target` and
/// streams the response back. Used for plain forwarded requests and for
/// every request inside an inspected tunnel.
pub async fn relay_request(
    gw: &Arc<Gateway>,
    conn: &Arc<ConnContext>,
    mut req: Request<Incoming>,
    target: Target,
    alpn: UpstreamAlpn,
    record: &mut AccessRecord,
    started: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let origin = target.origin();
    record.target = format!("{origin}{path}");
    let decision = decide(
        gw,
        conn,
        RequestKind::Http,
        req.method().as_str(),
        &target,
        &path,
    );
    if decision.is_blocked() {
        let shown = record.target.clone();
        return Err(blocked(conn, &decision, &shown, record));
    }
    note_decision(record, &decision);
    let mut casb = crate::casb::Casb::begin(
        gw,
        conn,
        &decision,
        req.method(),
        req.uri(),
        req.headers(),
        &target.host,
        record,
    )?;

    let websocket = req.version() == Version::HTTP_11 && is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    // A client body that fails (bad chunked framing, a reset h2 stream) is
    // the client's fault: 400, not the 502 the upstream request would give.
    let client_body_failed = Arc::new(AtomicBool::new(false));
    let failed = client_body_failed.clone();
    let body = body.map_err(move |e| {
        failed.store(true, Ordering::Relaxed);
        e
    });
    // One buffered prefix of the body for the IPS body rules and CASB/DLP.
    let mut body = crate::replay_body::BodyPrefix::new(body);
    crate::ips::http::inspect_request(
        gw,
        conn,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &target.host,
        target.port,
        &mut body,
        record,
    )
    .await
    .map_err(full)?;
    casb.request(&mut parts.headers, &mut body, record).await?;
    let body = body.into_body();
    strip_hop_by_hop(&mut parts.headers, websocket);
    add_via(&mut parts.headers, version);
    // RFC 9112 §3.2.2: the target authority replaces any Host header.
    let authority = origin
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = match record.target.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => {
            return Err(bad_request(
                "URL が不正です。",
                "The request URL is invalid.",
            ))
        }
    };
    parts.version = Version::HTTP_11;
    let up = Arc::new(AtomicU64::new(0));
    let request_sent = Arc::new(tokio::sync::Notify::new());
    let body: UpstreamBody = Counted {
        inner: body,
        counter: up.clone(),
        on_end: Some(request_sent.clone()),
    }
    .boxed();
    let upstream_req = Request::from_parts(parts, body);

    let client = gw.pools.client(decision.egress_source, alpn);
    let head_timeout = Duration::from_millis(gw.config.egress.response_header_timeout_ms);
    // The upstream's clock starts once the whole request is sent: a slow
    // upload is the client's pace, not a slow upstream.
    let head_deadline = async {
        request_sent.notified().await;
        tokio::time::sleep(head_timeout).await;
    };
    let answer = tokio::select! {
        answer = client.request(upstream_req) => answer,
        () = head_deadline => {
            let shown = record.target.clone();
            record.error = Some(format!(
                "upstream timeout: no complete response head within {} ms after the request was sent ([egress] response_header_timeout_ms)",
                head_timeout.as_millis()
            ));
            return Err(full(block_page::error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "接続先のサーバーが時間内に応答しませんでした。",
                &format!(
                    "The upstream server for {shown} did not answer within {} ms.",
                    head_timeout.as_millis()
                ),
            )));
        }
    };
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => {
            let shown = record.target.clone();
            if client_body_failed.load(Ordering::Relaxed) || request_body_failed(&e) {
                record.bytes_up = up.load(Ordering::Relaxed);
                record.error = Some(format!(
                    "reading the request body: the client aborted or malformed it after {} bytes: {}",
                    record.bytes_up,
                    innermost(&e)
                ));
                return Err(bad_request(
                    "リクエスト本文の形式が不正です (chunked エンコーディングなど)。",
                    "The request body is malformed (e.g. its chunked encoding) or was cut off by the client.",
                ));
            }
            if let Some(tls) = tls_error(&e) {
                return Err(invalid_certificate(conn, tls, &shown, record));
            }
            if let Some(ee) = egress_error(&e) {
                return Err(egress_refusal(conn, ee, &shown, record));
            }
            record.error = Some(format!("upstream: {e}"));
            return Err(full(block_page::error_response(
                StatusCode::BAD_GATEWAY,
                "接続先のサーバーから正しい応答がありませんでした。",
                &format!("The upstream server did not answer properly: {e}"),
            )));
        }
    };
    casb.response(resp.headers(), record)?;
    record.decision = "allow";
    record.status = resp.status().as_u16();
    record.egress = resp
        .extensions()
        .get::<EgressInfo>()
        .map(|i| i.local.ip().to_string());

    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let gw2 = gw.clone();
        let mut rec = std::mem::take(record);
        gw.spawn_tracked(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let stats = crate::tunnel::relay(
                        TokioIo::new(c),
                        TokioIo::new(u),
                        gw2.config.limits.idle_timeout(),
                    )
                    .await;
                    finish_tunnel(&gw2, rec, started, stats);
                }
                Err(e) => {
                    rec.error = Some(format!("websocket upgrade failed: {e}"));
                    finish_tunnel(&gw2, rec, started, Default::default());
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        add_via(&mut parts.headers, Version::HTTP_11);
        return Ok(Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    add_via(&mut parts.headers, Version::HTTP_11);
    // hyper may never poll a body it knows to be empty (HEAD, 204, 304).
    let nothing_to_relay = body.is_end_stream() || record.method == "HEAD";
    let done = AccessOnDrop {
        record: Some(std::mem::take(record)),
        log: gw.access_log.clone(),
        metrics: gw.metrics.clone(),
        started,
        up,
        down: Arc::new(AtomicU64::new(0)),
        complete: AtomicBool::new(nothing_to_relay),
        upstream_error: None,
    };
    let down = done.down.clone();
    let body = Counted {
        inner: body,
        counter: down,
        on_end: None,
    }
    .with_guard(done)
    .boxed();
    Ok(Response::from_parts(parts, body))
}

/// True if hyper gave up on a request because reading its body (from
/// the client) failed, rather than because of the upstream.
fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// The root cause of an error chain, for a short record.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A body that counts the data bytes passing through it and, if asked,
/// signals when it has been read to its end.
struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    on_end: Option<Arc<tokio::sync::Notify>>,
}

impl<B> Counted<B> {
    fn with_guard(self, guard: AccessOnDrop) -> Guarded<Counted<B>> {
        Guarded { inner: self, guard }
    }

    fn ended(&self) {
        if let Some(n) = &self.on_end {
            n.notify_one();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.ended(),
            _ => {}
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended();
        }
        end
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps the access record alive until the response body is finished (or
/// the client goes away), then writes it with the final byte counts and,
/// if the body did not reach its end, why.
struct Guarded<B> {
    inner: B,
    guard: AccessOnDrop,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B>
where
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.guard.complete.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(e))) => {
                self.guard.upstream_error = Some(format!("upstream body: {e}"));
            }
            _ => {}
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.guard.complete.store(true, Ordering::Relaxed);
        }
        end
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct AccessOnDrop {
    record: Option<AccessRecord>,
    log: AccessLog,
    metrics: Arc<crate::metrics::Metrics>,
    started: Instant,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    /// The response body was relayed to its end.
    complete: AtomicBool,
    /// The upstream broke off the response body (reset, bad framing).
    upstream_error: Option<String>,
}

impl Drop for AccessOnDrop {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.bytes_up = self.up.load(Ordering::Relaxed);
            record.bytes_down = self.down.load(Ordering::Relaxed);
            record.duration_ms = self.started.elapsed().as_millis() as u64;
            if record.error.is_none() {
                // The status stays what the client received; the error says
                // the body was cut short and by whom.
                record.error = match self.upstream_error.take() {
                    Some(e) => Some(format!(
                        "{e}; response cut short after {} bytes",
                        record.bytes_down
                    )),
                    None if !self.complete.load(Ordering::Relaxed) => Some(format!(
                        "client went away after {} bytes of the response",
                        record.bytes_down
                    )),
                    None => None,
                };
            }
            self.metrics
                .bytes_total
                .with_label_values(&["up"])
                .inc_by(record.bytes_up);
            self.metrics
                .bytes_total
                .with_label_values(&["down"])
                .inc_by(record.bytes_down);
            self.metrics
                .requests_total
                .with_label_values(&["http", record.decision])
                .inc();
            self.log.submit(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-foo", HeaderValue::from_static("x"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("trailer", HeaderValue::from_static("x-t"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn websocket_upgrade_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }
}
