//! TLS inspection of CONNECT tunnels the decision marks `inspect`.
//!
//! The ClientHello is read first (SNI, ALPN) without consuming it; policy
//! decides again on the SNI; then the client is answered with a certificate
//! minted for that name by the inspection CA, and every inner request (HTTP/1.1
//! or HTTP/2 by ALPN) goes through the same decision point and relay as plain
//! requests. Upstream TLS is verified strictly; an invalid upstream
//! certificate yields the block page inside the inspected session.

pub mod mint;
pub mod rewind;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::{header, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounterVec, Opts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::record::AccessRecord;
use crate::config::{Config, NonTlsAction};
use crate::decision::{Decision, RequestKind, TunnelMode};
use crate::gateway::Gateway;
use crate::http_proxy::{self, ConnContext, Target};
use crate::metrics::Metrics;
use crate::tunnel::RelayStats;
use crate::upstream::UpstreamAlpn;
use mint::{CertMinter, MintMetrics};
use rewind::{CountingIo, Rewind};

/// Largest ClientHello we buffer while peeking (several records are allowed).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

pub struct Inspector {
    pub minter: CertMinter,
    non_tls: NonTlsAction,
    client_rejects: IntCounterVec,
}

impl Inspector {
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Inspector> {
        let cert = config.data_path(&config.inspect.ca_cert);
        let key = config.data_path(&config.inspect.ca_key);
        let ca = crate::pki::CaMaterial::load(&cert, &key)
            .context("cannot load the inspection CA ([inspect] ca_cert / ca_key)")?;
        let client_rejects = IntCounterVec::new(
            Opts::new(
                "komugate_inspect_client_rejects_total",
                "Clients that aborted the handshake with a minted certificate (pinning?), by SNI",
            ),
            &["sni"],
        )?;
        let _ = metrics.registry.register(Box::new(client_rejects.clone()));
        Ok(Inspector {
            minter: CertMinter::new(
                ca,
                Duration::from_secs(config.inspect.leaf_validity_hours.max(1) * 3600),
                config.inspect.cache_entries,
                MintMetrics::register(&metrics.registry),
            ),
            non_tls: config.inspect.non_tls,
            client_rejects,
        })
    }
}

/// What the peek at the first client bytes found.
struct Hello {
    /// Every byte read so far, replayed to whoever handles the tunnel next.
    bytes: Vec<u8>,
    sni: Option<String>,
    offers_h2: bool,
}

enum Peek {
    Tls(Hello),
    NotTls(Vec<u8>),
    Closed,
}

/// Reads until a complete ClientHello is buffered (rustls parses it).
async fn peek_client_hello<S: AsyncRead + Unpin>(client: &mut S) -> std::io::Result<Peek> {
    let mut bytes = Vec::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if bytes.is_empty() {
                Peek::Closed
            } else {
                Peek::NotTls(bytes)
            });
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes[0] != 0x16 {
            return Ok(Peek::NotTls(bytes));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return Ok(Peek::NotTls(bytes));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello
                    .server_name()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
                let offers_h2 = hello
                    .alpn()
                    .map(|mut a| a.any(|p| p == b"h2"))
                    .unwrap_or(false);
                return Ok(Peek::Tls(Hello {
                    bytes,
                    sni,
                    offers_h2,
                }));
            }
            Ok(None) => {}
            Err(_) => return Ok(Peek::NotTls(bytes)),
        }
        if bytes.len() > MAX_CLIENT_HELLO {
            return Ok(Peek::NotTls(bytes));
        }
    }
}

/// Handles one inspected tunnel until it ends, then writes its access record.
#[allow(clippy::too_many_arguments)]
pub async fn run<S>(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    inspector: Arc<Inspector>,
    mut client: S,
    dest: Target,
    decision: Decision,
    mut record: AccessRecord,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = gw.config.limits.header_read_timeout();
    let peek = match tokio::time::timeout(timeout, peek_client_hello(&mut client)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            record.error = Some(format!("reading the ClientHello: {e}"));
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
        Err(_) => {
            record.error = Some("no ClientHello within the header timeout".into());
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
    };
    let hello = match peek {
        Peek::Tls(h) => h,
        Peek::Closed => {
            record.error = Some("client closed the tunnel before sending anything".into());
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
        Peek::NotTls(bytes) => {
            return match inspector.non_tls {
                NonTlsAction::Tunnel => {
                    record.rule = format!("{} (not TLS: tunnelled)", record.rule);
                    bypass(
                        gw,
                        &conn,
                        Rewind::new(bytes, client),
                        &dest,
                        &decision,
                        record,
                        started,
                    )
                    .await
                }
                NonTlsAction::Block => {
                    record.decision = "block";
                    record.rule = "inspect-non-tls".into();
                    record.error = Some("bytes on an inspected tunnel are not TLS; closed ([inspect] non_tls = \"block\")".into());
                    http_proxy::finish_tunnel(&gw, record, started, RelayStats::default())
                }
            };
        }
    };
    // IPS `tls.sni` rules and threat-intel domains see the SNI of inspected
    // tunnels too (plain tunnels get this in `ips::tunnel`).
    if let Some(sni) = &hello.sni {
        let sec = gw.ips.load_full();
        let ctx = crate::ips::http::event_context(&gw, &conn, &record.target);
        let mut events: Vec<crate::ips::IpsEvent> = sec
            .intel
            .check_host(sni)
            .map(|hit| ctx.threat("sni", sni, &hit))
            .into_iter()
            .collect();
        events.extend(ctx.ips("sni", &sec.engine.scan_tls_sni(sni, dest.port)));
        let drop = events.iter().any(|e| e.is_drop());
        crate::ips::http::apply_events(&mut record, events);
        if drop {
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
    }
    // The SNI (or the CONNECT host without one) is what policy and the certificate use.
    let name = hello.sni.clone().unwrap_or_else(|| dest.host.clone());
    let sni_target = Target {
        scheme: "https",
        host: name.clone(),
        port: dest.port,
    };
    let sni_decision = if name != dest.host {
        http_proxy::decide(&gw, &conn, RequestKind::Connect, "CONNECT", &sni_target, "")
    } else {
        decision.clone()
    };
    if !sni_decision.is_blocked() && sni_decision.tunnel == TunnelMode::Bypass {
        record.rule = sni_decision.rule.clone();
        return bypass(
            gw,
            &conn,
            Rewind::new(hello.bytes, client),
            &sni_target,
            &sni_decision,
            record,
            started,
        )
        .await;
    }
    let config = match inspector.minter.config_for(&name).await {
        Ok(c) => c,
        Err(e) => {
            record.error = Some(format!("minting a certificate for {name}: {e:#}"));
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
    };
    let counting = CountingIo::new(Rewind::new(hello.bytes, client));
    let (read, written) = (counting.read.clone(), counting.written.clone());
    let handshake = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), counting)
                .await?;
        start.into_stream(config).await
    };
    let tls = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // The client refused our certificate (pinning, or the CA is not deployed).
            inspector.client_rejects.with_label_values(&[&name]).inc();
            record.error = Some(format!(
                "client rejected the inspection certificate for {name}: {e}"
            ));
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
        Err(_) => {
            record.error = Some("TLS handshake with the client timed out".into());
            return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
    };
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let alpn = if hello.offers_h2 {
        UpstreamAlpn::H2AndHttp1
    } else {
        UpstreamAlpn::Http1
    };
    let blocked_by_sni = sni_decision.is_blocked().then_some(sni_decision);
    let (gw_svc, conn_svc) = (gw.clone(), conn.clone());
    let default_port = dest.port;
    let service = service_fn(move |req: Request<Incoming>| {
        let (gw, conn, name, blocked) = (
            gw_svc.clone(),
            conn_svc.clone(),
            name.clone(),
            blocked_by_sni.clone(),
        );
        async move {
            Ok::<_, std::convert::Infallible>(
                inner_request(gw, conn, req, name, default_port, alpn, blocked).await,
            )
        }
    });
    let io = TokioIo::new(tls);
    let limits = gw.config.limits.clone();
    let serve = async move {
        if client_h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_streams_per_connection)
                .serve_connection(io, service)
                .await
        } else {
            // The same framing guard and exact head limit as the listeners.
            let io = TokioIo::new(crate::framing_guard::FramingGuard::new(
                io.into_inner(),
                limits.max_header_bytes,
            ));
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout())
                .max_headers(limits.max_headers)
                .max_buf_size(crate::server::hyper_buf_size(limits.max_header_bytes))
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    // At the shutdown hard stop the session is cut but still logged.
    let hard_stop = crate::tunnel::HARD_STOP
        .try_with(|t| t.clone())
        .unwrap_or_default();
    let cut = tokio::select! {
        result = serve => {
            if let Err(e) = result {
                tracing::debug!("inspected tunnel to {}: {e}", dest.host);
            }
            false
        }
        _ = hard_stop.cancelled() => true,
    };
    record.rule = format!("{} (inspected)", record.rule);
    let stats = RelayStats {
        up: read.load(Ordering::Relaxed),
        down: written.load(Ordering::Relaxed),
        idle_timeout: false,
        cut,
    };
    http_proxy::finish_tunnel(&gw, record, started, stats);
}

/// One request inside an inspected tunnel.
async fn inner_request(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
    sni_name: String,
    default_port: u16,
    alpn: UpstreamAlpn,
    blocked_by_sni: Option<Decision>,
) -> http::Response<http_proxy::ProxyBody> {
    let started = Instant::now();
    let mut record = http_proxy::new_record(&conn, req.method().as_str());
    // HTTP/2 carries :authority in the URI, HTTP/1.1 a Host header.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let (host, port) = authority
        .as_deref()
        .and_then(|a| a.parse::<http::uri::Authority>().ok())
        .map(|a| {
            let host = a
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            (host, a.port_u16().unwrap_or(default_port))
        })
        .unwrap_or((sni_name, default_port));
    let target = Target {
        scheme: "https",
        host,
        port,
    };
    if let Some(resp) = http_proxy::framing_refusal(req.headers()) {
        return http_proxy::log_refusal(&gw, record, resp, started);
    }
    if let Some(decision) = blocked_by_sni {
        let shown = format!(
            "https://{}{}",
            http_proxy::bracket(&target.host),
            req.uri().path()
        );
        let resp = http_proxy::blocked(&conn, &decision, &shown, &mut record);
        return http_proxy::log_refusal(&gw, record, resp, started);
    }
    match http_proxy::relay_request(&gw, &conn, req, target, alpn, &mut record, started).await {
        Ok(resp) => resp,
        Err(resp) => http_proxy::log_refusal(&gw, record, resp, started),
    }
}

/// A plain tunnel (after peeking): connect upstream and relay, replaying
/// the bytes already read from the client.
async fn bypass<S>(
    gw: Arc<Gateway>,
    conn: &ConnContext,
    client: S,
    dest: &Target,
    decision: &Decision,
    mut record: AccessRecord,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A bypassed tunnel is not inspected web traffic: the non-web firewall
    // applies (the CONNECT was already answered, so a deny closes the tunnel).
    let target = format!("{}:{}", http_proxy::bracket(&dest.host), dest.port);
    if crate::firewall::check(
        &gw,
        conn,
        &dest.host,
        dest.port,
        false,
        &target,
        None,
        &mut record,
    )
    .await
    .is_err()
    {
        record.error = Some("closed by the non-web firewall".into());
        return http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
    }
    match gw
        .egress
        .connect(&dest.host, dest.port, decision.egress_source)
        .await
    {
        Ok(upstream) => {
            record.egress = upstream.local_addr().ok().map(|a| a.ip().to_string());
            gw.metrics.tunnels_open.inc();
            let stats =
                crate::tunnel::relay(client, upstream, gw.config.limits.idle_timeout()).await;
            gw.metrics.tunnels_open.dec();
            http_proxy::finish_tunnel(&gw, record, started, stats);
        }
        Err(e) => {
            if let Some(rule) = e.guard_rule() {
                record.decision = "block";
                record.rule = rule.into();
            }
            record.error = Some(e.to_string());
            http_proxy::finish_tunnel(&gw, record, started, RelayStats::default());
        }
    }
}
