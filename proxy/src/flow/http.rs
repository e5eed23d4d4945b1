//! The HTTP pieces of the flow: request targets, the upstream request
//! (hop-by-hop headers, `Via`, the target authority), the response stage
//! and the bodies that count bytes and carry the access record to the end
//! of the response.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::entry::Entry;
use crate::egress::h1pool::Driver;
use crate::egress::upstream::UpstreamBody;
use crate::request::{ProxyBody, Refusal, Target};

/// Host (lowercase, no brackets, no trailing dot) and port of a request target.
pub fn host_port(authority: &http::uri::Authority, default_port: u16) -> Option<(String, u16)> {
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

/// Refuses a request whose framing is ambiguous or over the limits: the
/// framing guard's marker (Content-Length with Transfer-Encoding, head over
/// `max_header_bytes`), or a `Content_Length` / `Transfer_Encoding` header
/// (any `_` instead of `-`), which servers that fold `_` into `-` would
/// take as framing. Checked on both listeners and inside inspected tunnels.
pub fn framing_error<B>(req: &http::Request<B>) -> Option<Refusal> {
    use crate::listen::framing_guard::{FRAMING_ERROR_HEADER, HEAD_TOO_LARGE};
    let headers = req.headers();
    if let Some(marker) = headers.get(FRAMING_ERROR_HEADER) {
        if marker.as_bytes() == HEAD_TOO_LARGE.as_bytes() {
            return Some(Refusal::HeadTooLarge);
        }
        return Some(Refusal::bad_request(
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
        Refusal::bad_request(
            format!("ヘッダー名 {name} は受け付けません (\"_\" ではなく \"-\" を使ってください)。"),
            format!("The header name {name} is refused: framing header names must use \"-\", not \"_\" (request smuggling risk)."),
        )
    })
}

/// The target of a CONNECT (`host:port`).
pub fn connect_target(uri: &Uri) -> Result<Target, Refusal> {
    match uri.authority().and_then(|a| host_port(a, 443)) {
        Some((host, port)) => Ok(Target {
            scheme: "https",
            host,
            port,
        }),
        None => Err(Refusal::bad_request(
            "CONNECT の接続先 (host:port) が不正です。",
            "CONNECT needs an authority-form target host:port.",
        )),
    }
}

/// The target of an absolute-form `http://` request.
pub fn forward_target(uri: &Uri) -> Result<Target, Refusal> {
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(Refusal::bad_request(
                format!("{other}:// の URL はプロキシで直接扱えません。CONNECT を使ってください。"),
                format!("{other}:// URLs cannot be forwarded; use CONNECT."),
            ))
        }
        None => {
            return Err(Refusal::bad_request(
                "プロキシへのリクエストは絶対 URL (http://host/path) で送ってください。",
                "This is a proxy: send absolute-form requests (GET http://host/path).",
            ))
        }
    }
    match uri.authority().and_then(|a| host_port(a, 80)) {
        Some((host, port)) => Ok(Target {
            scheme: "http",
            host,
            port,
        }),
        None => Err(Refusal::bad_request(
            "URL のホスト名が不正です。",
            "The request URL has no valid host.",
        )),
    }
}

/// The target of a request inside an inspected tunnel: HTTP/2 carries
/// `:authority` in the URI, HTTP/1.1 a Host header; without either, the
/// tunnel's name.
pub fn inner_target(
    uri: &Uri,
    headers: &HeaderMap,
    tunnel_name: &str,
    default_port: u16,
) -> Target {
    let authority = uri.authority().cloned().or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|a| a.parse::<http::uri::Authority>().ok())
    });
    let (host, port) = authority
        .as_ref()
        .and_then(|a| host_port(a, default_port))
        .unwrap_or_else(|| (tunnel_name.to_string(), default_port));
    Target {
        scheme: "https",
        host,
        port,
    }
}

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

pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
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

pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let via = match version {
        Version::HTTP_10 => "1.0 komugate",
        Version::HTTP_2 => "2 komugate",
        _ => "1.1 komugate",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

/// Turns the client's request head into the upstream one: hop-by-hop
/// headers out, `Via` in, Host and URI from the target (`url`), HTTP/1.1.
pub fn upstream_head(
    parts: &mut request::Parts,
    target: &Target,
    url: &str,
    websocket: bool,
) -> Result<(), Refusal> {
    strip_hop_by_hop(&mut parts.headers, websocket);
    add_via(&mut parts.headers, parts.version);
    // RFC 9112 §3.2.2: the target authority replaces any Host header.
    let authority = if target.port == if target.scheme == "https" { 443 } else { 80 } {
        crate::request::bracket(&target.host)
    } else {
        target.authority()
    };
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = url
        .parse::<Uri>()
        .map_err(|_| Refusal::bad_request("URL が不正です。", "The request URL is invalid."))?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// The response stage: hop-by-hop headers out, `Via` in, and the record
/// carried by the body until its last byte (or until the client goes away).
/// `driver`: the upstream connection, polled with the body (HTTP/1.1 pool).
/// `complete`: there is nothing to relay (HEAD, 204, 304).
pub fn respond(
    resp: Response<Incoming>,
    driver: Option<Driver>,
    entry: Entry,
    complete: bool,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    add_via(&mut parts.headers, Version::HTTP_11);
    let body = Logged {
        inner: body,
        entry,
        complete: AtomicBool::new(complete),
        upstream_error: None,
        driver,
    }
    .boxed();
    Response::from_parts(parts, body)
}

/// True if hyper gave up on a request because reading its body (from
/// the client) failed, rather than because of the upstream.
pub fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
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
pub fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The answer to a WebSocket upgrade (101): headers only.
pub fn switching_protocols(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, _) = resp.into_parts();
    add_via(&mut parts.headers, Version::HTTP_11);
    Response::from_parts(parts, empty())
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The request body sent upstream, counting its data bytes; `sent` is
/// notified once it has been read to its end.
pub fn counted_upload(
    body: UpstreamBody,
    counter: Arc<AtomicU64>,
    sent: Arc<tokio::sync::Notify>,
) -> UpstreamBody {
    Counted {
        inner: body,
        counter,
        sent,
    }
    .boxed()
}

/// A body that counts the data bytes passing through it and signals when
/// it has been read to its end.
struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    sent: Arc<tokio::sync::Notify>,
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
            Poll::Ready(None) => self.sent.notify_one(),
            _ => {}
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.sent.notify_one();
        }
        end
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent to the client and holds the
/// access record until the body is finished or dropped; a body cut short
/// says so in the record (and by whom).
struct Logged<B> {
    inner: B,
    entry: Entry,
    /// The response body was relayed to its end (set from `is_end_stream`
    /// too, hence atomic).
    complete: AtomicBool,
    /// The upstream broke off the response body (reset, bad framing).
    upstream_error: Option<String>,
    /// The HTTP/1.1 upstream connection, which reads the body for `inner`.
    /// Dropped after `inner`: back to the pool if the body was read to its
    /// end.
    driver: Option<Driver>,
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        let record = &mut self.entry.record;
        if record.error.is_none() {
            // The status stays what the client received; the error says
            // the body was cut short and by whom.
            let sent = self.entry.down;
            record.error = match self.upstream_error.take() {
                Some(e) => Some(format!("{e}; response cut short after {sent} bytes")),
                None if !self.complete.load(Ordering::Relaxed) => Some(format!(
                    "client went away after {sent} bytes of the response"
                )),
                None => None,
            };
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B>
where
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut poll = Pin::new(&mut self.inner).poll_frame(cx);
        if poll.is_pending() {
            // Nothing buffered: let the connection read more, then look again.
            if let Some(driver) = &mut self.driver {
                driver.drive(cx);
                poll = Pin::new(&mut self.inner).poll_frame(cx);
            }
        }
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.entry.down += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(e))) => {
                self.upstream_error = Some(format!("upstream body: {e}"));
            }
            _ => {}
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.complete.store(true, Ordering::Relaxed);
        }
        end
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
