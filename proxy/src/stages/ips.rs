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
//! - [`screen_sni`]: threat intel and `tls.sni` rules on the SNI of an
//!   inspected tunnel (plain tunnels get this in `crate::ips::tunnel`).
//!
//! A refusal is a block with rule `ips:<sid>` or `threat-intel`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use hyper::body::Body;

use crate::egress::Resolver;
use crate::ips::engine::{BodyScan, HttpRequestBuffers};
use crate::ips::{EventContext, IpsEvent, Security};
use crate::metrics::Metrics;
use crate::record::AccessRecord;
use crate::replay_body::BodyPrefix;
use crate::request::{ConnContext, Refusal};

pub fn event_context(metrics: &Arc<Metrics>, conn: &ConnContext, target: &str) -> EventContext {
    EventContext {
        metrics: metrics.clone(),
        device: conn.device_id().map(str::to_string),
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

/// The refusal for a blocking event.
pub fn refusal(event: &IpsEvent) -> Refusal {
    Refusal::blocked(event.rule_name(), event.message())
}

/// Threat intel for `host` (domain or IP literal) and, when address lists
/// are loaded, for every address it resolves to (resolution failures are
/// left to the connect that follows).
#[allow(clippy::too_many_arguments)]
pub async fn check_destination(
    sec: &Security,
    resolver: &Resolver,
    metrics: &Arc<Metrics>,
    conn: &ConnContext,
    host: &str,
    target: &str,
    record: &mut AccessRecord,
) -> Result<(), Refusal> {
    if sec.intel.is_empty() {
        return Ok(());
    }
    let ctx = event_context(metrics, conn, target);
    if let Some(hit) = sec.intel.check_host(host) {
        let event = ctx.threat("host", host, &hit);
        let resp = refusal(&event);
        add_events(record, [event]);
        return Err(resp);
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        if let Ok(addrs) = resolver.resolve(host).await {
            for addr in addrs.iter() {
                if let Some(hit) = sec.intel.check_ip(*addr) {
                    let event = ctx.threat("address", &format!("{host} ({addr})"), &hit);
                    let resp = refusal(&event);
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
/// added to `record`; a drop or listed destination is a refusal.
#[allow(clippy::too_many_arguments)]
pub async fn inspect_request<B>(
    sec: &Security,
    resolver: &Resolver,
    metrics: &Arc<Metrics>,
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
    let engine = &sec.engine;
    let rules = engine.has_http_request_rules() || engine.has_request_body_rules();
    if sec.intel.is_empty() && !rules {
        // Nothing to check: skip the target copy (every inspected request).
        return Ok(());
    }
    let target = record.target.clone();
    check_destination(sec, resolver, metrics, conn, host, &target, record).await?;
    if !rules {
        return Ok(());
    }
    let req = HttpRequestBuffers::new(method, uri, headers, host, port);
    let ctx = event_context(metrics, conn, &target);
    let events = ctx.ips("http", &engine.scan_http_request(&req));
    if let Some(drop) = events.iter().find(|e| e.is_drop()).cloned() {
        let resp = refusal(&drop);
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
            let resp = refusal(&drop);
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
                return Err(Refusal::BodyUnreadable(e.to_string()));
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

/// Threat intel and IPS `tls.sni` rules on the SNI of an inspected tunnel;
/// events go to the record. `true`: a drop (the tunnel is closed).
pub fn screen_sni(
    sec: &Security,
    metrics: &Arc<Metrics>,
    conn: &ConnContext,
    sni: &str,
    port: u16,
    record: &mut AccessRecord,
) -> bool {
    let ctx = event_context(metrics, conn, &record.target);
    let mut events: Vec<IpsEvent> = sec
        .intel
        .check_host(sni)
        .map(|hit| ctx.threat("sni", sni, &hit))
        .into_iter()
        .collect();
    events.extend(ctx.ips("sni", &sec.engine.scan_tls_sni(sni, port)));
    let drop = events.iter().any(|e| e.is_drop());
    apply_events(record, events);
    drop
}
