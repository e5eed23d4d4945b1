//! Data-path hooks for HTTP requests and CONNECT targets:
//!
//! - [`check_destination`]: threat intel on the requested host and on its
//!   resolved addresses (CONNECT and forwarded requests);
//! - [`inspect_request`]: that, plus IPS rules on the request line and
//!   headers, and on the first `[ips] body_depth` bytes of the request body
//!   (read before the request goes upstream, so a `drop` is a clean 403;
//!   the rest of the body streams through uninspected). The body prefix is
//!   a [`BodyPrefix`] shared with CASB/DLP, so it is read and held once.
//!
//! A refusal is a 403 block page with rule `ips:<sid>` or `threat-intel`.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, Uri};
use http_body_util::Full;
use hyper::body::Body;

use super::engine::{BodyScan, HttpRequestBuffers};
use super::{EventContext, IpsEvent, Security};
use crate::record::{rfc3339, AccessRecord};
use crate::block_page::{self, BlockInfo};
use crate::gateway::Gateway;
use crate::http_proxy::ConnContext;
use crate::replay_body::BodyPrefix;

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
    body: &mut BodyPrefix<B>,
    record: &mut AccessRecord,
) -> Result<(), Refusal>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let target = record.target.clone();
    check_destination(gw, conn, host, &target, record).await?;
    let sec: Arc<Security> = gw.ips.load_full();
    let engine = &sec.engine;
    if !engine.has_http_request_rules() && !engine.has_request_body_rules() {
        return Ok(());
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
        return Ok(());
    }
    // Inspect the first body_depth bytes before going upstream: what is
    // already buffered (by an earlier inspection), then frame by frame.
    let mut state = BodyScan::new(sec.body_depth);
    let scan = |data: &[u8], state: &mut BodyScan, record: &mut AccessRecord| {
        let found = ctx.ips(
            "http-body",
            &engine.scan_http_request_body_chunk(&req, state, data),
        );
        if let Some(drop) = found.iter().find(|e| e.is_drop()).cloned() {
            let resp = refusal(conn, &drop, &target, record);
            add_events(record, found);
            return Err(resp);
        }
        add_events(record, found);
        Ok(())
    };
    for data in body.data() {
        if state.is_full() {
            break;
        }
        scan(data, &mut state, record)?;
    }
    while !state.is_full() {
        match body.read_frame().await {
            None => break,
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
                    scan(data, &mut state, record)?;
                }
            }
        }
    }
    Ok(())
}
