//! The data path: one request from its arrival to its access record, for
//! every kind of traffic, in this file. Each stage is a call over the
//! request's [`Flow`] that continues or returns a [`Refusal`]; what a
//! refusal answers and records is decided in one place ([`refusal`]), and
//! the record is finished and counted in one place ([`entry`]).
//!
//! The stages, in order:
//!
//! 1. identity: listener admission and the device certificate
//!    (`crate::listen`), then the site assertion a request may carry
//! 2. location: the asserted site, else by address ([`Flow::locate`])
//! 3. decision: policy ([`Flow::decide`], the one caller of `Runtime::decide`)
//! 4. firewall: tunnels not inspected as web traffic (`stages::firewall`)
//! 5. IPS: threat intel and signatures (`stages::ips`, `ips::tunnel`)
//! 6. CASB / DLP: cloud apps, uploads, downloads (`stages::casb`)
//! 7. egress: the upstream connection (`crate::egress`)
//! 8. response: headers, byte counts ([`http::respond`])
//! 9. log: the access record and metrics ([`entry::Entry`])
//!
//! Which stages each kind of traffic runs:
//!
//! - forward `http://` ([`forward`] → [`exchange`]): location, decision,
//!   CASB (request), IPS, CASB (body), egress, CASB (response), response, log
//! - CONNECT ([`connect`]): location, decision, IPS (destination),
//!   firewall, then either an inspected tunnel or egress and a relay with
//!   IPS on the first bytes, log
//! - inspected tunnel ([`inspected_tunnel`]): TLS peek, IPS (SNI),
//!   decision on the SNI, then a bypass ([`bypass`]: firewall, egress,
//!   relay) or a minted certificate and [`exchange`] for every inner request
//! - DoH ([`doh_query`]): IPS (name), location, decision, egress (resolve) with
//!   IPS on the answers, log
//! - CONNECT-UDP ([`udp::connect_udp`]): identity (mTLS devices only), the
//!   device's flow limit, location, decision, IPS (destination), firewall,
//!   egress (one UDP socket) and the datagram relay, log

pub mod block_page;
pub mod entry;
pub mod http;
pub mod refusal;
pub mod tunnel_client;
pub mod udp;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::http::{Method, Request, Response, StatusCode, Uri, Version};
use futures_util::future::Either;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use komugate_policy::{Location, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::NonTlsAction;
use crate::egress::h1pool::{Driver, SendError};
use crate::egress::pinned::{PinKey, PinnedError, TunnelUpstream};
use crate::egress::tunnel::RelayStats;
use crate::egress::upstream::{
    egress_error, tls_error, EgressInfo, UpstreamAlpn, UpstreamBody, UpstreamPools,
};
use crate::gateway::generation::Generation;
use crate::gateway::Gateway;
use crate::record::AccessRecord;
use crate::request::{bracket, Block, ConnContext, ListenerKind, ProxyBody, Refusal, Target};
use crate::stages::decide::{Decision, RequestInfo, RequestKind, TunnelMode};
use crate::stages::inspect::rewind::Rewind;
use crate::stages::inspect::{Inspector, Peek};
use crate::stages::{casb, doh, firewall, inspect, ips};
use entry::{Entry, Kind};
use tunnel_client::TunnelClient;

/// One request on its way through the stages.
pub struct Flow {
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    /// The generation (policy, IPS rules, sites) this request is decided by.
    gen: Arc<Generation>,
    /// `Some(Site)` for an asserted site; `None` = located by address.
    location: Option<Location>,
    entry: Entry,
}

/// The service function of every client connection (`crate::listen`).
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let gen = gw.current();
    let kind = kind_of(&conn, &req);
    if let Some(resp) = screen(&gw, &conn, &gen, kind, &req) {
        return Ok(resp);
    }
    if crate::users::endpoint::is_gateway_request(&conn, &req) {
        return Ok(refusal::full(
            crate::users::endpoint::handle(&gw, &conn, req).await,
        ));
    }
    if conn.listener == ListenerKind::Mtls && crate::pac::is_pac_request(&req) {
        return Ok(refusal::full(crate::pac::gateway_response(
            &gw.sites,
            &gen.sites,
            conn.device.as_ref(),
            conn.client,
            &req,
        )));
    }
    Ok(match kind {
        Kind::Doh => doh_query(Flow::new(gw, conn, gen, "DNS", kind), req).await,
        Kind::Connect => connect(Flow::new(gw, conn, gen, "CONNECT", kind), req).await,
        Kind::Udp => udp::connect_udp(Flow::new(gw, conn, gen, udp::METHOD, kind), req).await,
        Kind::Http => {
            let flow = Flow::new(gw, conn, gen, req.method().as_str(), kind);
            forward(flow, req).await
        }
    })
}

/// [`handle`], except that the first request gets `prepared` when it is
/// given: the answer [`first_connect`] already decided for the CONNECT
/// hyper reads again.
pub async fn handle_prepared(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
    prepared: Option<Response<ProxyBody>>,
) -> Result<Response<ProxyBody>, Infallible> {
    match prepared {
        Some(resp) if req.method() == Method::CONNECT => Ok(resp),
        _ => handle(gw, conn, req).await,
    }
}

/// What kind of traffic a request is.
fn kind_of<B>(conn: &ConnContext, req: &Request<B>) -> Kind {
    if udp::is_connect_udp(req) {
        Kind::Udp
    } else if req.method() == Method::CONNECT {
        Kind::Connect
    } else if doh::is_doh(conn, req) {
        Kind::Doh
    } else {
        Kind::Http
    }
}

/// What every request passes before its kind's stages: the framing
/// guard's marks and extended CONNECT protocols we do not speak (answered
/// here), then the site a request may assert (identity).
fn screen<B>(
    gw: &Arc<Gateway>,
    conn: &Arc<ConnContext>,
    gen: &Arc<Generation>,
    kind: Kind,
    req: &Request<B>,
) -> Option<Response<ProxyBody>> {
    let refusal = http::framing_error(req).or_else(|| match udp::extended_protocol(req) {
        Some(p) if kind != Kind::Udp => Some(udp::unsupported_protocol(p)),
        _ => None,
    });
    if let Some(refusal) = refusal {
        let flow = Flow::new(
            gw.clone(),
            conn.clone(),
            gen.clone(),
            req.method().as_str(),
            kind,
        );
        return Some(flow.refuse(refusal));
    }
    // Identity: the connection's is in `conn`; a request may assert a site.
    gw.sites
        .observe(&gen.sites, conn.device.as_ref(), conn.client, req.headers());
    None
}

/// What became of a CONNECT read without hyper ([`first_connect`]).
pub enum FirstConnect {
    /// Answer 200, then run the tunnel.
    Tunnel(OpenTunnel),
    /// Answer this (a refusal), through hyper.
    Answer(Response<ProxyBody>),
    /// Not decided here: hyper reads the request and [`handle`] serves it.
    Hyper,
}

/// The first request of a plain-listener connection when it is a CONNECT
/// (`crate::listen::first_connect` parsed its head instead of hyper): the
/// same checks and stages as [`handle`] gives it, up to the answer.
pub async fn first_connect(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: &Request<()>,
) -> FirstConnect {
    let gen = gw.current();
    let kind = kind_of(&conn, req);
    if kind != Kind::Connect
        || crate::users::endpoint::is_gateway_request(&conn, req)
        || (conn.listener == ListenerKind::Mtls && crate::pac::is_pac_request(req))
    {
        return FirstConnect::Hyper;
    }
    if let Some(resp) = screen(&gw, &conn, &gen, kind, req) {
        return FirstConnect::Answer(resp);
    }
    let flow = Flow::new(gw, conn, gen, "CONNECT", kind);
    match open_tunnel(flow, req.uri()).await {
        Ok(open) => FirstConnect::Tunnel(open),
        Err(resp) => FirstConnect::Answer(resp),
    }
}

// ---------------------------------------------------------------- forward

/// An absolute-form `http://` request.
async fn forward(mut flow: Flow, req: Request<Incoming>) -> Response<ProxyBody> {
    let target = match http::forward_target(req.uri()) {
        Ok(t) => t,
        Err(refusal) => {
            flow.entry.record.target = req.uri().to_string();
            return flow.refuse(refusal);
        }
    };
    flow.locate();
    exchange(flow, req, target, UpstreamAlpn::None, None).await
}

/// One HTTP request to `target`: a forwarded request, or one inside an
/// inspected tunnel (location already set; `pinned`: the tunnel's upstream
/// connection).
async fn exchange(
    mut flow: Flow,
    req: Request<Incoming>,
    target: Target,
    alpn: UpstreamAlpn,
    pinned: Option<&TunnelUpstream>,
) -> Response<ProxyBody> {
    match exchange_stages(&mut flow, req, &target, alpn, pinned).await {
        Ok(resp) => resp,
        Err(refusal) => flow.refuse(refusal),
    }
}

async fn exchange_stages(
    flow: &mut Flow,
    mut req: Request<Incoming>,
    target: &Target,
    alpn: UpstreamAlpn,
    pinned: Option<&TunnelUpstream>,
) -> Result<Response<ProxyBody>, Refusal> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    flow.entry.record.target = target.origin_with(path);
    // The block page's access request, answered by the gateway itself.
    if let Some(queue) = crate::unblock::submission(&flow.gw.unblock, &req) {
        flow.entry.record.rule = "unblock-request".into();
        flow.entry.record.decision = "allow";
        return Ok(crate::unblock::submit(queue, &flow.conn, &target.host, req).await);
    }
    // Decision.
    let decision = flow.decide(RequestKind::Http, req.method().as_str(), target, path);
    if decision.is_blocked() {
        return Err(Refusal::Blocked(decision.block()));
    }
    // CASB: the app and tenant; request-level download / upload blocks.
    let mut casb = casb::Casb::begin(
        Some(&flow.gen.runtime.policy),
        &flow.gw.metrics,
        &decision,
        req.method(),
        req.uri(),
        req.headers(),
        &target.host,
        &mut flow.entry.record,
    )?;
    let websocket = req.version() == Version::HTTP_11 && http::is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
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
    // IPS: threat intel on the destination, signatures on the head and the
    // first body bytes.
    ips::inspect_request(
        &flow.gen.security,
        &flow.gw.egress.resolver,
        &flow.gw.metrics,
        &flow.conn,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &target.host,
        target.port,
        &mut body,
        &mut flow.entry.record,
    )
    .await?;
    // CASB / DLP: tenant restriction headers, the body.
    casb.request(&mut parts.headers, &mut body, &mut flow.entry.record)
        .await?;
    let body = body.into_body().boxed();
    // Egress: the upstream request, from a pool bound to the egress source.
    http::upstream_head(&mut parts, target, &flow.entry.record.target, websocket)?;
    let request_sent = Arc::new(tokio::sync::Notify::new());
    let body = http::counted_upload(body, flow.entry.count_up(), request_sent.clone());
    let head_timeout =
        std::time::Duration::from_millis(flow.gw.config.egress.response_header_timeout_ms);
    // The upstream's clock starts once the whole request is sent: a slow
    // upload is the client's pace, not a slow upstream.
    let head_deadline = async {
        request_sent.notified().await;
        tokio::time::sleep(head_timeout).await;
    };
    let send = upstream_request(
        &flow.gw.pools,
        pinned,
        websocket,
        decision.egress_source,
        alpn,
        target,
        Request::from_parts(parts, body),
    );
    let answer = tokio::select! {
        answer = send => answer,
        () = head_deadline => return Err(Refusal::UpstreamTimeout(head_timeout.as_millis())),
    };
    let (mut resp, driver) = match answer {
        Ok(answer) => answer,
        Err(e)
            if client_body_failed.load(Ordering::Relaxed)
                || http::request_body_failed(e.as_error()) =>
        {
            // Often nobody reads this answer; the record says what happened.
            let sent = flow.entry.bytes_up();
            flow.entry.fail(format!(
                "reading the request body: the client aborted or malformed it after {sent} bytes: {}",
                http::innermost(e.as_error())
            ));
            return Err(Refusal::bad_request(
                "リクエスト本文の形式が不正です (chunked エンコーディングなど)。",
                "The request body is malformed (e.g. its chunked encoding) or was cut off by the client.",
            ));
        }
        Err(e) => return Err(e.refusal()),
    };
    // CASB: files delivered to the laptop.
    casb.response(resp.headers(), &mut flow.entry.record)?;
    // Response.
    let record = &mut flow.entry.record;
    record.decision = "allow";
    record.status = resp.status().as_u16();
    record.egress = resp
        .extensions()
        .get::<EgressInfo>()
        .map(|i| i.local.ip().to_string());
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut entry = flow.entry.hand_over();
        let gw = flow.gw.clone();
        flow.gw.spawn_tracked(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let idle = gw.config.limits.idle_timeout();
                    let stats =
                        crate::egress::tunnel::relay(TokioIo::new(c), TokioIo::new(u), idle).await;
                    entry.tunnel_ended(stats);
                }
                Err(e) => entry.fail(format!("websocket upgrade failed: {e}")),
            }
        });
        return Ok(http::switching_protocols(resp));
    }
    // Log: the record goes with the body to its last byte. hyper may never
    // poll a body it knows to be empty (HEAD, 204, 304).
    let nothing_to_relay =
        hyper::body::Body::is_end_stream(resp.body()) || flow.entry.record.method == "HEAD";
    Ok(http::respond(
        resp,
        driver,
        flow.entry.hand_over(),
        nothing_to_relay,
    ))
}

/// The upstream request: on the inspected tunnel's pinned connection when
/// it can carry it, else through the shared pools: HTTP/1.1 (plain HTTP,
/// HTTPS offered HTTP/1.1 only) through the pool this task drives (the
/// [`Driver`] goes with the response body), HTTPS offered HTTP/2 and
/// WebSocket upgrades through hyper-util's client.
async fn upstream_request(
    pools: &UpstreamPools,
    pinned: Option<&TunnelUpstream>,
    upgrade: bool,
    source: Option<std::net::IpAddr>,
    alpn: UpstreamAlpn,
    target: &Target,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<Driver>), UpstreamFailure> {
    let key = PinKey {
        host: target.host.clone(),
        port: target.port,
        source,
        alpn,
    };
    let req = match pinned {
        Some(tunnel) if alpn != UpstreamAlpn::None && !upgrade => {
            match tunnel
                .send(key.clone(), || pools.connector(source, alpn), req)
                .await
            {
                Ok(resp) => return Ok((resp, None)),
                Err(PinnedError::Declined(req)) => req,
                Err(PinnedError::Connect(e)) => return Err(UpstreamFailure::Connect(e)),
                Err(PinnedError::Http(e)) => return Err(UpstreamFailure::Http(e)),
            }
        }
        _ => req,
    };
    if alpn != UpstreamAlpn::H2AndHttp1 && !upgrade {
        return match pools.send_h1(key, req).await {
            Ok((resp, driver)) => Ok((resp, Some(driver))),
            Err(SendError::Connect(e)) => Err(UpstreamFailure::Connect(e)),
            Err(SendError::Http(e)) => Err(UpstreamFailure::Http(e)),
        };
    }
    let resp = pools
        .client(source, alpn)
        .request(req)
        .await
        .map_err(UpstreamFailure::Pool)?;
    Ok((resp, None))
}

/// Why the upstream request failed.
enum UpstreamFailure {
    /// The shared pool's client (connecting included).
    Pool(hyper_util::client::legacy::Error),
    /// Connecting a pinned or HTTP/1.1-pool connection (DNS, egress guard,
    /// TCP, TLS).
    Connect(crate::egress::EgressError),
    /// A pinned or HTTP/1.1-pool connection (handshake, request, response
    /// head).
    Http(hyper::Error),
}

impl UpstreamFailure {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            UpstreamFailure::Pool(e) => e,
            UpstreamFailure::Connect(e) => e,
            UpstreamFailure::Http(e) => e,
        }
    }

    fn refusal(&self) -> Refusal {
        let e = self.as_error();
        if let Some(tls) = tls_error(e) {
            return Refusal::UpstreamCertificate(tls.clone());
        }
        if let Some(egress) = egress_error(e) {
            return Refusal::Egress(egress.clone());
        }
        Refusal::UpstreamFailed(e.to_string())
    }
}

// ---------------------------------------------------------------- CONNECT

/// What a CONNECT becomes once it is answered with 200.
enum Tunnel {
    /// Refused by policy, answered with the block page inside TLS.
    BlockPage {
        target: Target,
        block: Block,
        inspector: Arc<Inspector>,
    },
    Inspect {
        target: Target,
        decision: Box<Decision>,
        inspector: Arc<Inspector>,
    },
    Relay {
        target: Target,
        upstream: tokio::net::TcpStream,
    },
}

/// A CONNECT tunnel (HTTP/1.1, or an HTTP/2 CONNECT stream).
async fn connect(flow: Flow, req: Request<Incoming>) -> Response<ProxyBody> {
    let open = match open_tunnel(flow, req.uri()).await {
        Ok(open) => open,
        Err(resp) => return resp,
    };
    // Only the upgrade handle goes into the tunnel task, not the request: a
    // moved-in request would keep its slot in the task for the tunnel's life.
    let on_upgrade = hyper::upgrade::on(req);
    let gw = open.flow.gw.clone();
    gw.spawn_tracked(tunnel_task(open.flow, open.tunnel, on_upgrade));
    Response::new(http::empty())
}

/// A CONNECT that will be answered with 200: what its tunnel needs once
/// the client's stream is there.
pub struct OpenTunnel {
    flow: Flow,
    tunnel: Tunnel,
}

impl OpenTunnel {
    /// The tunnel over `client` (the 200 is out), or the record of why
    /// there is no client stream.
    pub fn run(self, client: Result<TunnelClient, String>) -> impl Future<Output = ()> + Send {
        after_upgrade(self.flow, self.tunnel, client)
    }
}

/// The CONNECT's stages up to its answer: the tunnel to open, or the
/// refusal's answer (the record notes either).
async fn open_tunnel(mut flow: Flow, uri: &Uri) -> Result<OpenTunnel, Response<ProxyBody>> {
    let tunnel = match connect_stages(&mut flow, uri).await {
        Ok(t) => t,
        Err(refusal) => return Err(flow.refuse(refusal)),
    };
    if let Tunnel::BlockPage { block, .. } = &tunnel {
        // The status is the block page's, once it is served.
        refusal::note(&mut flow.entry.record, &Refusal::Blocked(block.clone()));
    } else {
        flow.entry.record.decision = "allow";
        flow.entry.record.status = 200;
    }
    Ok(OpenTunnel { flow, tunnel })
}

/// The life of one CONNECT tunnel after the 200: the client's bytes, then
/// the block page, inspection or the relay.
///
/// Every open tunnel holds this future for its whole life, so it is built
/// from named parts rather than one `async fn` (which would keep the flow,
/// the tunnel and the upgrade's slots beside the relay): first the upgrade
/// with what the next step needs, then only that step. The TLS-terminating
/// branches (kilobytes of handshake and HTTP server state) are boxed so the
/// tens of thousands of plain relays a board holds open stay small
/// (tests::a_relayed_tunnel_task_stays_small).
fn tunnel_task(
    flow: Flow,
    tunnel: Tunnel,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> impl Future<Output = ()> + Send {
    on_upgrade.then(move |upgraded| {
        let client = upgraded
            .map(TunnelClient::new)
            .map_err(|e| format!("client upgrade failed: {e}"));
        after_upgrade(flow, tunnel, client)
    })
}

/// A rare tunnel step, boxed (see `tunnel_task`).
type BoxedStep = Pin<Box<dyn Future<Output = ()> + Send>>;

fn after_upgrade(
    mut flow: Flow,
    tunnel: Tunnel,
    client: Result<TunnelClient, String>,
) -> Either<impl Future<Output = ()> + Send, BoxedStep> {
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            flow.entry.fail(e);
            return Either::Right(Box::pin(std::future::ready(())));
        }
    };
    match tunnel {
        Tunnel::BlockPage {
            target,
            block,
            inspector,
        } => Either::Right(Box::pin(blocked_tunnel(
            flow, inspector, client, target, block,
        ))),
        Tunnel::Inspect {
            target,
            decision,
            inspector,
        } => Either::Right(Box::pin(inspected_tunnel(
            flow, inspector, client, target, *decision,
        ))),
        Tunnel::Relay { target, upstream } => {
            Either::Left(relay(flow, client, upstream, target.port))
        }
    }
}

async fn connect_stages(flow: &mut Flow, uri: &Uri) -> Result<Tunnel, Refusal> {
    let target = http::connect_target(uri)?;
    let shown = target.authority();
    flow.entry.record.target = shown.clone();
    // Location, decision.
    flow.locate();
    let decision = flow.decide(RequestKind::Connect, "CONNECT", &target, "");
    if decision.is_blocked() {
        // A browser shows only a page that comes inside TLS.
        if let Some(inspector) = flow.block_page_inspector(&target) {
            return Ok(Tunnel::BlockPage {
                target,
                block: decision.block(),
                inspector,
            });
        }
        return Err(Refusal::Blocked(decision.block()));
    }
    // IPS: threat intel on the host and its addresses.
    flow.check_destination(&target.host, &shown).await?;
    // Firewall: every tunnel that will not be inspected as web traffic.
    let inspector = match decision.tunnel {
        TunnelMode::Inspect => flow.gw.inspector.clone(),
        TunnelMode::Bypass => None,
    };
    flow.firewall(&target, &shown, Protocol::Tcp, inspector.is_some())
        .await?;
    if let Some(inspector) = inspector {
        return Ok(Tunnel::Inspect {
            target,
            decision: Box::new(decision),
            inspector,
        });
    }
    // Egress.
    let upstream = flow
        .gw
        .egress
        .connect(&target.host, target.port, decision.egress_source)
        .await
        .map_err(Refusal::Egress)?;
    flow.entry.record.egress = upstream.local_addr().ok().map(|a| a.ip().to_string());
    Ok(Tunnel::Relay { target, upstream })
}

/// A plain tunnel: the relay, with IPS on the first bytes of each
/// direction, then its record. The open tunnel holds only the gateway, the
/// record and the relay (not the generation: only its IPS rules, inside
/// the relay).
fn relay(
    flow: Flow,
    client: TunnelClient,
    upstream: tokio::net::TcpStream,
    port: u16,
) -> impl Future<Output = ()> + Send {
    let Flow {
        gw,
        conn,
        gen,
        mut entry,
        ..
    } = flow;
    let security = gen.security.clone();
    drop(gen);
    let events = ips::event_context(&gw.metrics, &conn, &entry.record.target);
    drop(conn);
    gw.metrics.tunnels_open.inc();
    let idle = gw.config.limits.idle_timeout();
    let relaying = if crate::ips::tunnel::inspects(&security) {
        Either::Left(crate::ips::tunnel::relay(
            security, events, port, client, upstream, idle,
        ))
    } else {
        Either::Right(
            crate::egress::tunnel::relay_to_tcp(client, upstream, idle)
                .map(|stats| (stats, Vec::new())),
        )
    };
    relaying.map(move |(stats, ips_events)| {
        gw.metrics
            .tunnel_relays
            .with_label_values(&[stats.relay_kind()])
            .inc();
        ips::apply_events(&mut entry.record, ips_events);
        gw.metrics.tunnels_open.dec();
        if stats.idle_timeout {
            entry.record.error = Some("idle timeout".into());
        }
        entry.tunnel_ended(stats);
    })
}

/// A CONNECT refused by policy, for a device that trusts the inspection
/// CA: the TLS handshake is completed with a certificate minted for the
/// SNI and the first request gets the block page (403); then the tunnel
/// closes. Bytes that are not TLS get the same refusal in plain HTTP/1.1.
/// The CONNECT's one record says block, the rule and the page's status.
async fn blocked_tunnel<S>(
    mut flow: Flow,
    inspector: Arc<Inspector>,
    mut client: S,
    dest: Target,
    block: Block,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits: crate::listen::http::ServerLimits = (&flow.gw.config.limits).into();
    let page = refusal::FirstRequest {
        refusal: Refusal::Blocked(block),
        conn: flow.conn.clone(),
        page: flow.page(),
        limits,
    };
    // TLS: the ClientHello (SNI), read without consuming it.
    let answered = match inspect::peek_client_hello(&mut client, limits.header_read_timeout).await {
        Ok(Peek::Tls(hello)) => {
            let name = hello.sni.clone().unwrap_or_else(|| dest.host.clone());
            let accepted = match inspector
                .accept(&name, hello.bytes, client, limits.header_read_timeout)
                .await
            {
                Ok(accepted) => accepted,
                Err(e) => return flow.entry.fail(e),
            };
            let (read, written) = (accepted.read.clone(), accepted.written.clone());
            let origin = Target {
                scheme: "https",
                host: name,
                port: dest.port,
            }
            .origin();
            let status = page.answer(accepted.tls, accepted.h2, origin).await;
            flow.entry.tunnel_ended(RelayStats {
                up: read.load(Ordering::Relaxed),
                down: written.load(Ordering::Relaxed),
                idle_timeout: false,
                cut: false,
                spliced: false,
            });
            status
        }
        Ok(Peek::NotTls(bytes)) => {
            let origin = Target {
                scheme: "http",
                ..dest
            }
            .origin();
            page.answer(Rewind::new(bytes, client), false, origin).await
        }
        Err(reason) => return flow.entry.fail(reason),
    };
    match answered {
        Some(status) => flow.entry.record.status = status,
        None => flow
            .entry
            .fail("no request on the blocked tunnel within the header timeout".into()),
    }
}

/// A tunnel marked for inspection, after the CONNECT was answered.
async fn inspected_tunnel(
    mut flow: Flow,
    inspector: Arc<Inspector>,
    mut client: TunnelClient,
    dest: Target,
    decision: Decision,
) {
    let timeout = flow.gw.config.limits.header_read_timeout();
    // TLS: the ClientHello (SNI, ALPN), read without consuming it.
    let peek = inspect::peek_client_hello(&mut client, timeout).await;
    let record = &mut flow.entry.record;
    let hello = match peek {
        Ok(Peek::Tls(hello)) => hello,
        Ok(Peek::NotTls(bytes)) => match inspector.non_tls() {
            NonTlsAction::Tunnel => {
                record.rule = format!("{} (not TLS: tunnelled)", record.rule);
                return bypass(flow, Rewind::new(bytes, client), &dest, &decision).await;
            }
            NonTlsAction::Block => {
                record.decision = "block";
                record.rule = "inspect-non-tls".into();
                record.error = Some("bytes on an inspected tunnel are not TLS; closed ([inspect] non_tls = \"block\")".into());
                return;
            }
        },
        Err(reason) => {
            record.error = Some(reason);
            return;
        }
    };
    // IPS: threat intel and `tls.sni` rules on the SNI.
    if let Some(sni) = &hello.sni {
        if ips::screen_sni(
            &flow.gen.security,
            &flow.gw.metrics,
            &flow.conn,
            sni,
            dest.port,
            &mut flow.entry.record,
        ) {
            return;
        }
    }
    // Decision on the SNI (or the CONNECT host without one): what policy
    // and the minted certificate use.
    let name = hello.sni.clone().unwrap_or_else(|| dest.host.clone());
    let sni_target = Target {
        scheme: "https",
        host: name.clone(),
        port: dest.port,
    };
    let sni_decision = if name != dest.host {
        flow.decide_again(RequestKind::Connect, "CONNECT", &sni_target, "")
    } else {
        decision
    };
    if !sni_decision.is_blocked() && sni_decision.tunnel == TunnelMode::Bypass {
        flow.entry.record.rule = sni_decision.rule.clone();
        let client = Rewind::new(hello.bytes, client);
        return bypass(flow, client, &sni_target, &sni_decision).await;
    }
    // TLS with the client, with a certificate minted for the name.
    let accepted = match inspector.accept(&name, hello.bytes, client, timeout).await {
        Ok(a) => a,
        Err(e) => {
            flow.entry.record.error = Some(e);
            return;
        }
    };
    let alpn = if hello.offers_h2 {
        UpstreamAlpn::H2AndHttp1
    } else {
        UpstreamAlpn::Http1
    };
    let blocked_by_sni = sni_decision.is_blocked().then(|| sni_decision.block());
    // Every inner request is a flow of its own, under the generation in
    // force when it arrives; the tunnel keeps only its record.
    let Flow {
        gw,
        conn,
        gen,
        mut entry,
        ..
    } = flow;
    drop(gen);
    let (gw_svc, default_port) = (gw.clone(), dest.port);
    // One upstream connection kept for the tunnel's requests (closed while
    // the session is quiet).
    let upstream = Arc::new(TunnelUpstream::new(gw.pools.pinned_idle.clone()));
    let pinned = upstream.clone();
    let handler = move |req: Request<Incoming>| {
        let (gw, conn, name, blocked, upstream) = (
            gw_svc.clone(),
            conn.clone(),
            name.clone(),
            blocked_by_sni.clone(),
            upstream.clone(),
        );
        async move {
            let resp =
                inner_request(gw, conn, req, &name, default_port, alpn, blocked, &upstream).await;
            Ok::<_, Infallible>(resp)
        }
    };
    let serve = crate::listen::http::serve(
        (&gw.config.limits).into(),
        accepted.tls,
        accepted.h2,
        None,
        handler,
    );
    // At the shutdown hard stop the session is cut but still logged.
    let hard_stop = crate::egress::tunnel::HARD_STOP
        .try_with(|t| t.clone())
        .unwrap_or_default();
    let cut = tokio::select! {
        biased;
        result = serve => {
            if let Err(e) = result {
                tracing::debug!("inspected tunnel to {}: {e}", dest.host);
            }
            false
        }
        _ = hard_stop.cancelled() => true,
        never = pinned.close_when_idle() => match never {},
    };
    // The connection goes to the idle list before the record says the
    // tunnel ended.
    drop(pinned);
    entry.record.rule = format!("{} (inspected)", entry.record.rule);
    entry.tunnel_ended(RelayStats {
        up: accepted.read.load(Ordering::Relaxed),
        down: accepted.written.load(Ordering::Relaxed),
        idle_timeout: false,
        cut,
        spliced: false,
    });
}

/// One request inside an inspected tunnel.
#[allow(clippy::too_many_arguments)]
async fn inner_request(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
    tunnel_name: &str,
    default_port: u16,
    alpn: UpstreamAlpn,
    blocked_by_sni: Option<Block>,
    upstream: &TunnelUpstream,
) -> Response<ProxyBody> {
    let gen = gw.current();
    let mut flow = Flow::new(gw, conn, gen, req.method().as_str(), Kind::Http);
    if let Some(refusal) = http::framing_error(&req) {
        return flow.refuse(refusal);
    }
    let target = http::inner_target(req.uri(), req.headers(), tunnel_name, default_port);
    if let Some(block) = blocked_by_sni {
        flow.entry.record.target = format!("https://{}{}", bracket(&target.host), req.uri().path());
        return flow.refuse(Refusal::Blocked(block));
    }
    flow.locate();
    exchange(flow, req, target, alpn, Some(upstream)).await
}

/// A tunnel left uninspected after the peek: firewall, egress, relay (the
/// bytes already read from the client are replayed first).
async fn bypass(mut flow: Flow, client: Rewind<TunnelClient>, dest: &Target, decision: &Decision) {
    // Firewall: a bypassed tunnel is not inspected web traffic (the CONNECT
    // was already answered, so a deny closes the tunnel).
    if let Err(refusal) = flow
        .firewall(dest, &dest.authority(), Protocol::Tcp, false)
        .await
    {
        flow.close(refusal, Some("closed by the non-web firewall"));
        return;
    }
    // Egress.
    let upstream = match flow
        .gw
        .egress
        .connect(&dest.host, dest.port, decision.egress_source)
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            flow.close(Refusal::Egress(e), None);
            return;
        }
    };
    flow.entry.record.egress = upstream.local_addr().ok().map(|a| a.ip().to_string());
    // The relay keeps only the gateway and the record (fields left out of a
    // partial move would live until the relay ends, the generation too).
    let Flow {
        gw,
        conn,
        gen,
        mut entry,
        ..
    } = flow;
    drop((conn, gen));
    gw.metrics.tunnels_open.inc();
    let idle = gw.config.limits.idle_timeout();
    let stats = crate::egress::tunnel::relay_to_tcp(client, upstream, idle).await;
    gw.metrics.tunnels_open.dec();
    gw.metrics
        .tunnel_relays
        .with_label_values(&[stats.relay_kind()])
        .inc();
    entry.tunnel_ended(stats);
}

// ---------------------------------------------------------------- DoH

/// A DNS-over-HTTPS query to the gateway itself (`stages::doh`).
async fn doh_query(mut flow: Flow, req: Request<Incoming>) -> Response<ProxyBody> {
    flow.entry.record.target = doh::PATH.into();
    flow.entry.record.decision = "error";
    let gw = flow.gw.clone();
    let config = &gw.config.doh;
    let wire = match doh::read_query(config, req).await {
        Ok(wire) => wire,
        Err(resp) => return flow.answer(resp),
    };
    let q = match doh::question(&wire, &mut flow.entry.record) {
        Ok(q) => q,
        Err(resp) => return flow.answer(resp),
    };
    flow.entry.record.target = q.name.clone();
    // IPS: threat intel and `dns` rules on the name.
    let events = ips::event_context(&flow.gw.metrics, &flow.conn, &q.name);
    let record = &mut flow.entry.record;
    let reply = if doh::screen_name(&flow.gen.security, &events, &q, &wire, record) {
        doh::blocked(config, &q, record)
    } else {
        // Location, decision: as a CONNECT to the name on port 443.
        flow.locate();
        let target = Target {
            scheme: "https",
            host: q.name.clone(),
            port: 443,
        };
        let decision = flow.decide(RequestKind::Connect, "CONNECT", &target, "");
        let record = &mut flow.entry.record;
        if decision.is_blocked() {
            doh::blocked(config, &q, record)
        } else {
            // Egress: resolve; IPS: threat intel on the answers.
            let resolver = &gw.egress.resolver;
            doh::resolve(config, resolver, &flow.gen.security, &events, &q, record).await
        }
    };
    let resp = doh::reply(&reply, &mut flow.entry.record);
    flow.answer(resp)
}

// ---------------------------------------------------------------- the context

impl Flow {
    fn new(
        gw: Arc<Gateway>,
        conn: Arc<ConnContext>,
        gen: Arc<Generation>,
        method: &str,
        kind: Kind,
    ) -> Flow {
        let entry = Entry::new(gw.clone(), &conn, method, kind);
        Flow {
            gw,
            conn,
            gen,
            location: None,
            entry,
        }
    }

    /// Location: an asserted site on this connection, else `None` (the
    /// policy locates by the client address).
    fn locate(&mut self) {
        self.location = self
            .gw
            .sites
            .location(self.conn.device.as_ref(), self.conn.client);
    }

    /// Decision: what policy says of a request to `target`; the record
    /// notes it (rule, site, user, groups, categories, app, generation).
    fn decide(&mut self, kind: RequestKind, method: &str, target: &Target, path: &str) -> Decision {
        let decision = self.evaluate(kind, method, target, path);
        note_decision(&mut self.entry.record, &decision);
        decision
    }

    /// The decision for another name of the same request (the SNI of an
    /// inspected tunnel), without noting it.
    fn decide_again(
        &self,
        kind: RequestKind,
        method: &str,
        target: &Target,
        path: &str,
    ) -> Decision {
        self.evaluate(kind, method, target, path)
    }

    fn evaluate(&self, kind: RequestKind, method: &str, target: &Target, path: &str) -> Decision {
        // Who is at the device: the signed-in user and the posture, read
        // per request (sign-out, expiry and posture changes apply at once).
        let now = crate::oidc::unix_now();
        let device = self.conn.device_id();
        let session = device.and_then(|d| self.gw.users.current_at(d, now));
        let posture = device.and_then(|d| self.gw.posture.current(d, now));
        let subject = komugate_policy::Subject {
            user: session.as_deref().map(|s| s.user.as_str()),
            user_groups: session
                .as_deref()
                .map(|s| s.groups.as_slice())
                .unwrap_or(&[]),
            posture: posture.as_deref().map(|p| &p.facts),
            now,
        };
        self.gen.runtime.decide(&RequestInfo {
            listener: self.conn.listener,
            device: self.conn.device.as_ref(),
            client: self.conn.client,
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
            location: self.location.clone(),
            subject,
        })
    }

    /// IPS: threat intel on `host` and its addresses (`shown` in events).
    async fn check_destination(&mut self, host: &str, shown: &str) -> Result<(), Refusal> {
        ips::check_destination(
            &self.gen.security,
            &self.gw.egress.resolver,
            &self.gw.metrics,
            &self.conn,
            host,
            shown,
            &mut self.entry.record,
        )
        .await
    }

    /// Firewall, with the location of this flow (for TCP, off when the
    /// policy has no `[firewall]`).
    async fn firewall(
        &mut self,
        target: &Target,
        shown: &str,
        protocol: Protocol,
        web_inspected: bool,
    ) -> Result<(), Refusal> {
        firewall::check(
            &self.gen.runtime.policy,
            &self.gw.egress.resolver,
            &self.conn,
            self.location.as_ref(),
            &target.host,
            target.port,
            protocol,
            web_inspected,
            shown,
            &mut self.entry.record,
        )
        .await
        .map(|_| ())
    }

    /// Ends the request with the answer for `refusal`; the record says why.
    fn refuse(mut self, refusal: Refusal) -> Response<ProxyBody> {
        refusal::note(&mut self.entry.record, &refusal);
        let resp = refusal::answer(
            &refusal,
            &self.conn,
            &self.entry.record.target,
            &self.page(),
        );
        self.answer(resp)
    }

    /// The inspector that answers a blocked CONNECT with the block page
    /// inside TLS, when the device trusts the inspection CA (always on
    /// the mTLS listener; on the plain one with `[block_page]
    /// https_on_plain`), the port is 443 (`https://`: other ports are
    /// seldom browsers, and SOCKS clients read the CONNECT status) and the
    /// host may be intercepted (not on the inspection bypass lists).
    /// `None`: the plain 403 at CONNECT.
    fn block_page_inspector(&self, target: &Target) -> Option<Arc<Inspector>> {
        let trusts_ca = match self.conn.listener {
            ListenerKind::Mtls => true,
            ListenerKind::Plain => self.gw.config.block_page.https_on_plain,
        };
        if !trusts_ca || target.port != 443 || self.gen.runtime.never_inspected(&target.host) {
            return None;
        }
        self.gw.inspector.clone()
    }

    /// What this flow's block pages show besides the refusal: the
    /// policy's contact (else `[block_page] contact`), the display zone.
    fn page(&self) -> block_page::PageContext {
        let config = &self.gw.config.block_page;
        let contact = match self.gen.runtime.contact() {
            Some(c) => Some(c.to_string()),
            None => (!config.contact.is_empty()).then(|| config.contact.clone()),
        };
        block_page::PageContext {
            unblock: self.gw.unblock.clone(),
            contact,
            zone: config.time_zone.clone(),
            generation: self.gen.number(),
        }
    }

    /// Ends the request with `resp` (the record is written as the flow drops).
    fn answer(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.entry.record.status = resp.status().as_u16();
        resp
    }

    /// Ends a tunnel that was already answered: the record says why.
    fn close(mut self, refusal: Refusal, error: Option<&str>) {
        refusal::note(&mut self.entry.record, &refusal);
        if let Some(e) = error {
            self.entry.record.error = Some(e.to_string());
        }
    }
}

/// Copies what the decision knows (rule, location, user, categories, app,
/// policy generation) into the access record.
fn note_decision(record: &mut AccessRecord, decision: &Decision) {
    record.rule = decision.rule.clone();
    record.site = decision.site.clone();
    record.user = decision.user.clone();
    record.signed_in = decision.signed_in;
    record.user_groups = decision.user_groups.clone();
    record.categories = decision.categories.clone();
    record.app = decision.app.clone();
    record.generation = decision.generation;
    if !decision.groups.is_empty() {
        record.groups = decision.groups.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open tunnel holds its task for its whole life (50,000 idle
    /// tunnels at ≤ 4.5 KiB each is a target of benches/RESULTS.md): the
    /// rare TLS-terminating branches must not size the common relay's task.
    #[test]
    fn a_relayed_tunnel_task_stays_small() {
        let size = future_size(tunnel_task);
        eprintln!("tunnel task future: {size} bytes");
        // 568 bytes in a debug build (2,272 as nested `async fn`s, 11,104
        // with the TLS branches inline too).
        assert!(size <= 1024, "the tunnel task future is {size} bytes");
    }
}
