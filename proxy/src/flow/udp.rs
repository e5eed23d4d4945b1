//! CONNECT-UDP (RFC 9298): a device's UDP flow to `host:port`, carried as
//! DATAGRAM capsules (RFC 9297) on one stream of its mTLS link: HTTP/2
//! extended CONNECT (RFC 8441 style, `:protocol connect-udp`, answered
//! 200), or on an HTTP/1.1 connection `GET` with `Upgrade: connect-udp`
//! (answered 101, then the connection is the capsule stream).
//!
//! The stages, as for a CONNECT where they apply: identity (enrolled
//! devices on the mTLS listener only), the per-device flow limit,
//! location, decision, IPS (threat intel on the destination), firewall
//! (always: UDP is never inspected as web traffic; DNS and QUIC refused by
//! default), egress (destination guard, the decision's source address, one
//! connected socket), then the relay (`egress::udp`) with the device's
//! datagram rate, and one access record when the flow ends.

use ::http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use komugate_policy::Protocol;

use super::{http, Flow};
use crate::egress::udp::{self as udp_egress, RelayLimits};
use crate::request::{ListenerKind, ProxyBody, Refusal, Target};
use crate::stages::decide::RequestKind;
use crate::stages::udp_limits::FlowSlot;

/// The method the access record shows for UDP flows.
pub const METHOD: &str = "CONNECT-UDP";

/// The `:protocol` of an extended CONNECT, if the request is one.
pub fn extended_protocol<B>(req: &Request<B>) -> Option<&str> {
    req.extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str())
}

/// Whether `req` asks for a UDP flow (either form).
pub fn is_connect_udp<B>(req: &Request<B>) -> bool {
    match extended_protocol(req) {
        Some(p) => p.eq_ignore_ascii_case(masque::PROTOCOL),
        None => is_http1_upgrade(req),
    }
}

/// The HTTP/1.1 form: `GET` with `Connection: Upgrade` and
/// `Upgrade: connect-udp`.
fn is_http1_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: ::http::header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && has_token(header::UPGRADE, masque::PROTOCOL)
        && has_token(header::CONNECTION, "upgrade")
}

/// An extended CONNECT for a protocol the gateway does not carry
/// (WebSocket over HTTP/2, CONNECT-IP): refused before any stage.
pub fn unsupported_protocol(protocol: &str) -> Refusal {
    Refusal::bad_request(
        format!("拡張 CONNECT のプロトコル {protocol:?} には対応していません (connect-udp のみ)。"),
        format!("Extended CONNECT for :protocol {protocol:?} is not supported; only connect-udp (RFC 9298) is."),
    )
}

/// A CONNECT-UDP request: the stages, then 200 and the relay in a task.
pub(super) async fn connect_udp(mut flow: Flow, req: Request<Incoming>) -> Response<ProxyBody> {
    flow.entry.record.protocol = Some("udp");
    let metrics = flow.gw.metrics.clone();
    let (socket, slot) = match stages(&mut flow, &req).await {
        Ok(opened) => opened,
        Err(refusal) => {
            let result = match &refusal {
                Refusal::Blocked(_) => "block",
                Refusal::Egress(e) if e.is_forbidden() => "block",
                Refusal::Limited { .. } => "limited",
                _ => "error",
            };
            metrics.udp.flows.with_label_values(&[result]).inc();
            return flow.refuse(refusal);
        }
    };
    metrics.udp.flows.with_label_values(&["allow"]).inc();
    let upgrade = req.version() == Version::HTTP_11;
    let status = if upgrade {
        StatusCode::SWITCHING_PROTOCOLS
    } else {
        StatusCode::OK
    };
    flow.entry.record.decision = "allow";
    flow.entry.record.status = status.as_u16();
    // The relay keeps the gateway, its record and the device's slot; not
    // the generation or the request.
    let Flow { gw, mut entry, .. } = flow;
    let on_upgrade = hyper::upgrade::on(req);
    let limits = RelayLimits {
        max_datagram: gw.config.udp.max_datagram_bytes,
        idle: gw.config.udp.idle_timeout(),
    };
    gw.clone().spawn_tracked(async move {
        let client = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return entry.fail(format!("client upgrade failed: {e}")),
        };
        gw.metrics.udp.flows_open.inc();
        let admit = || slot.take_datagram();
        let stats = udp_egress::relay(client, socket, limits, admit, &gw.metrics.udp).await;
        gw.metrics.udp.flows_open.dec();
        if stats.malformed.is_some() {
            tracing::info!(
                device = ?entry.record.device,
                target = %entry.record.target,
                "UDP flow closed: malformed capsule stream"
            );
        }
        entry.udp_ended(&stats);
    });
    let mut resp = Response::new(http::empty());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        masque::CAPSULE_PROTOCOL_HEADER,
        HeaderValue::from_static(masque::CAPSULE_PROTOCOL_VALUE),
    );
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(masque::PROTOCOL));
    }
    resp
}

async fn stages(
    flow: &mut Flow,
    req: &Request<Incoming>,
) -> Result<(tokio::net::UdpSocket, FlowSlot), Refusal> {
    let config = &flow.gw.config.udp;
    flow.entry.record.target = req.uri().path().to_string();
    // Identity: UDP only for enrolled devices, on their mTLS link.
    let device = match (flow.conn.listener, flow.conn.device_id()) {
        (ListenerKind::Mtls, Some(device)) => device.to_string(),
        _ => {
            return Err(Refusal::blocked(
                "connect-udp-mtls-only",
                "UDP の中継は、端末証明書で接続した端末 (komugate client) だけが使えます。 / \
                 UDP flows (CONNECT-UDP) are only for enrolled devices on the gateway's mTLS listener.",
            ))
        }
    };
    if !config.enabled {
        return Err(Refusal::blocked(
            "udp-disabled",
            "このゲートウェイでは UDP の中継は無効です。 / UDP flows are disabled on this gateway ([udp] enabled = false).",
        ));
    }
    if req
        .headers()
        .get(masque::CAPSULE_PROTOCOL_HEADER)
        .map(|v| v.as_bytes())
        != Some(masque::CAPSULE_PROTOCOL_VALUE.as_bytes())
    {
        return Err(Refusal::bad_request(
            "CONNECT-UDP には capsule-protocol: ?1 ヘッダーが必要です。",
            "CONNECT-UDP needs the header capsule-protocol: ?1 (RFC 9297).",
        ));
    }
    let target = masque::parse_udp_path(req.uri().path()).map_err(|e| {
        Refusal::bad_request(
            format!("CONNECT-UDP の接続先パスが不正です: {e}"),
            format!(
                "bad CONNECT-UDP target path: {e} (expected {}<host>/<port>/)",
                masque::PREFIX
            ),
        )
    })?;
    let target = Target {
        scheme: "https",
        host: target.host.to_string(),
        port: target.port,
    };
    let shown = target.authority();
    flow.entry.record.target = shown.clone();
    // Per-device flow limit, before any lookup: a flood of new flows
    // costs the gateway no DNS query and no socket.
    let slot = flow.gw.udp_limits.open(&device).ok_or_else(|| {
        tracing::warn!(device, target = %shown, "UDP flow refused: over the device's flow limit");
        Refusal::Limited {
            rule: "udp-flow-limit".into(),
            ja: format!(
                "この端末の UDP 通信の同時数が上限 ({}) に達しています。",
                config.max_flows_per_device
            ),
            en: format!(
                "this device already has {} UDP flows open ([udp] max_flows_per_device)",
                config.max_flows_per_device
            ),
        }
    })?;
    // Location, decision (as a CONNECT to host:port: deny lists and
    // categories of the host apply).
    flow.locate();
    let decision = flow.decide(RequestKind::Connect, METHOD, &target, "");
    if decision.is_blocked() {
        return Err(Refusal::Blocked(decision.block()));
    }
    // IPS: threat intel on the host and its addresses.
    flow.check_destination(&target.host, &shown).await?;
    // Firewall: every UDP flow.
    flow.firewall(&target, &shown, Protocol::Udp, false).await?;
    // Egress: destination guard, source address, one connected socket.
    let socket = udp_egress::connect(
        &flow.gw.egress,
        &target.host,
        target.port,
        decision.egress_source,
    )
    .await
    .map_err(Refusal::Egress)?;
    flow.entry.record.egress = socket.local_addr().ok().map(|a| a.ip().to_string());
    Ok((socket, slot))
}
