//! Data-path hooks for HTTP requests and CONNECT targets:
//!
//! - [`check_destination`]: threat intel on the requested host and on its
//!   resolved addresses (CONNECT and forwarded requests);
//! - [`inspect_request`]: that, plus IPS rules on the request line and
//!   headers, and on the first `[ips] body_depth` bytes of the request body
//!   (read before the request goes upstream, so a `drop` is a clean 403;
//!   the rest of the body streams through uninspected).
//!
//! A refusal is a 403 block page with rule `ips:<sid>` or `threat-intel`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

use super::engine::{BodyScan, HttpRequestBuffers};
use super::{EventContext, IpsEvent, Security};
use crate::record::{rfc3339, AccessRecord};
use crate::block_page::{self, BlockInfo};
use crate::gateway::Gateway;
use crate::http_proxy::ConnContext;
use crate::replay_body::Replay;

pub type Refusal = Response<Full<Bytes>>;

pub fn event_context(gw: &Gateway, conn: &ConnContext, target: &str) -> EventContext {
    EventContext {
        metrics: gw.metrics.clone(),
        device: conn.device.as_ref().map(|d| d.device_id.clone()),
        client: conn.client,
        target: target.to_string(),
    }
}

/// Adds events to the record; a blocking event sets decision and rule.
pub fn apply_events(record: &mut AccessRecord, events: Vec<IpsEvent>) {
    if let Some(blocking) = events.iter().find(|e| e.is_drop()) {
        record.decision = "block";
        record.rule = blocking.rule_name();
        if record.error.is_none() {
            record.error = Some(format!("closed: {}", blocking.message()));
        }
    }
    add_events(record, events);
}

/// Appends events to the record: details in `ips_events`, and the sids
/// (`threat-intel` for list hits) in the searchable `ips` field.
pub fn add_events(record: &mut AccessRecord, events: impl IntoIterator<Item = IpsEvent>) {
    record.ips_events.extend(events);
    if record.ips_events.is_empty() {
        return;
    }
    let mut ids: Vec<String> = Vec::new();
    for e in &record.ips_events {
        let id = e
            .sid
            .map(|s| s.to_string())
            .unwrap_or_else(|| "threat-intel".to_string());
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    record.ips = Some(ids.join(","));
}

/// The block page for an event, with the record updated.
pub fn refusal(
    conn: &ConnContext,
    event: &IpsEvent,
    target: &str,
    record: &mut AccessRecord,
) -> Refusal {
    record.decision = "block";
    record.rule = event.rule_name();
    let time = rfc3339(SystemTime::now());
    let message = event.message();
    block_page::blocked_response(&BlockInfo {
        target,
        rule: &record.rule,
        message: Some(&message),
        category: None,
        device: conn.device.as_ref().map(|d| d.device_id.as_str()),
        time: &time,
        contact: None,
    })
}

/// Threat intel for `host` (domain or IP literal) and, when address lists
/// are loaded, for every address it resolves to (resolution failures are
/// left to the connect that follows).
pub async fn check_destination(
    gw: &Gateway,
    conn: &ConnContext,
    host: &str,
    target: &str,
    record: &mut AccessRecord,
) -> Result<(), Refusal> {
    let sec = gw.ips.load_full();
    if sec.intel.is_empty() {
        return Ok(());
    }
    let ctx = event_context(gw, conn, target);
    if let Some(hit) = sec.intel.check_host(host) {
        let event = ctx.threat("host", host, &hit);
        let resp = refusal(conn, &event, target, record);
        add_events(record, [event]);
        return Err(resp);
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        if let Ok(addrs) = gw.egress.resolver.resolve(host).await {
            for addr in addrs.iter() {
                if let Some(hit) = sec.intel.check_ip(*addr) {
                    let event = ctx.threat("address", &format!("{host} ({addr})"), &hit);
                    let resp = refusal(conn, &event, target, record);
                    add_events(record, [event]);
                    return Err(resp);
                }
            }
        }
    }
    Ok(())
}

/// A forwarded request after inspection: the body to send upstream.
pub enum InspectedBody<B> {
    /// Not inspected (no body rules, or no body).
    Pass(B),
    /// The inspected prefix, then the rest of the stream.
    Prefixed(Replay<B>),
}

impl<B> Body for InspectedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            InspectedBody::Pass(b) => Pin::new(b).poll_frame(cx),
            InspectedBody::Prefixed(p) => Pin::new(p).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InspectedBody::Pass(b) => b.is_end_stream(),
            InspectedBody::Prefixed(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InspectedBody::Pass(b) => b.size_hint(),
            InspectedBody::Prefixed(p) => p.size_hint(),
        }
    }
}

/// Threat intel, then IPS on the request head and the first body bytes of
/// a forwarded request. `host`/`port`: the request target. Alerts are
/// added to `record`; a drop or listed destination is an `Err` block page.
pub async fn inspect_request<B>(
    gw: &Gateway,
    conn: &ConnContext,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    host: &str,
    port: u16,
    body: B,
    record: &mut AccessRecord,
) -> Result<InspectedBody<B>, Refusal>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let target = record.target.clone();
    check_destination(gw, conn, host, &target, record).await?;
    let sec: Arc<Security> = gw.ips.load_full();
    let engine = &sec.engine;
    if !engine.has_http_request_rules() && !engine.has_request_body_rules() {
        return Ok(InspectedBody::Pass(body));
    }
    let req = HttpRequestBuffers::new(method, uri, headers, host, port);
    let ctx = event_context(gw, conn, &target);
    let events = ctx.ips("http", &engine.scan_http_request(&req));
    if let Some(drop) = events.iter().find(|e| e.is_drop()).cloned() {
        let resp = refusal(conn, &drop, &target, record);
        add_events(record, events);
        return Err(resp);
    }
    add_events(record, events);
    if !engine.has_request_body_rules() || body.is_end_stream() || sec.body_depth == 0 {
        return Ok(InspectedBody::Pass(body));
    }
    // Read (and inspect) the first body_depth bytes before going upstream.
    let mut body = body;
    let mut state = BodyScan::new(sec.body_depth);
    let mut frames = VecDeque::new();
    let mut finished = false;
    while !state.is_full() {
        match body.frame().await {
            None => {
                finished = true;
                break;
            }
            Some(Err(e)) => {
                record.error = Some(format!("reading the request body: {e}"));
                return Err(block_page::error_response(
                    http::StatusCode::BAD_REQUEST,
                    "リクエスト本文を受信できませんでした。",
                    &format!("The request body could not be read: {e}"),
                ));
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let found = ctx.ips(
                        "http-body",
                        &engine.scan_http_request_body_chunk(&req, &mut state, data),
                    );
                    if let Some(drop) = found.iter().find(|e| e.is_drop()).cloned() {
                        let resp = refusal(conn, &drop, &target, record);
                        add_events(record, found);
                        return Err(resp);
                    }
                    add_events(record, found);
                }
                frames.push_back(frame);
            }
        }
    }
    Ok(InspectedBody::Prefixed(Replay::new(
        frames,
        (!finished).then_some(body),
    )))
}

/// For callers that need a boxed body of the same error type.
pub fn boxed<B>(body: InspectedBody<B>) -> http_body_util::combinators::BoxBody<Bytes, B::Error>
where
    B: Body<Data = Bytes> + Unpin + Send + Sync + 'static,
{
    body.boxed()
}
