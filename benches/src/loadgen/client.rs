//! The school morning: N devices wake along a ramp, each with its own device
//! certificate, open tunnels over mTLS (HTTP/1.1 CONNECT or HTTP/2
//! multiplexed CONNECT) or use the plain proxy listener, and make a mix of
//! requests. Every failure is counted by kind; nothing is retried.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::stats::{Recorder, Report};

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Plain HTTP GET forwarded by the proxy (absolute-form).
    Http,
    /// CONNECT to the HTTPS origin, TLS end to end (bypassed HTTPS).
    Connect,
    /// CONNECT to a "Microsoft 365" host the policy inspects; the client
    /// trusts the inspection CA.
    Inspect,
    /// A request the proxy must refuse with 403.
    Blocked,
    /// Large body up (POST through the forward proxy).
    Upload,
    /// Large body down.
    Download,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Http => "http",
            Op::Connect => "connect",
            Op::Inspect => "inspect",
            Op::Blocked => "blocked",
            Op::Upload => "upload",
            Op::Download => "download",
        }
    }
    fn parse(s: &str) -> Result<Op> {
        Ok(match s {
            "http" => Op::Http,
            "connect" => Op::Connect,
            "inspect" => Op::Inspect,
            "blocked" => Op::Blocked,
            "upload" => Op::Upload,
            "download" => Op::Download,
            _ => bail!("unknown operation {s:?} in --mix (http, connect, inspect, blocked, upload, download)"),
        })
    }
}

/// `http=6,connect=3,blocked=1` → weighted list.
pub fn parse_mix(s: &str) -> Result<Vec<(Op, u32)>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, w) = part.split_once('=').unwrap_or((part, "1"));
        let w: u32 = w
            .trim()
            .parse()
            .with_context(|| format!("bad weight in --mix part {part:?}"))?;
        if w > 0 {
            out.push((Op::parse(k.trim())?, w));
        }
    }
    if out.is_empty() {
        bail!("--mix selects no operation");
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum ProxySpec {
    Plain(SocketAddr),
    Mtls(SocketAddr),
}

impl ProxySpec {
    pub fn parse(s: &str) -> Result<ProxySpec> {
        if let Some(a) = s.strip_prefix("plain://") {
            Ok(ProxySpec::Plain(
                a.parse().context("--proxy plain://IP:PORT")?,
            ))
        } else if let Some(a) = s.strip_prefix("mtls://") {
            Ok(ProxySpec::Mtls(
                a.parse().context("--proxy mtls://IP:PORT")?,
            ))
        } else {
            bail!("--proxy must be plain://IP:PORT or mtls://IP:PORT")
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub label: String,
    pub proxy: ProxySpec,
    /// Server name the proxy's certificate is checked against (mTLS).
    pub proxy_name: String,
    /// Roots for the proxy's certificate (mTLS).
    pub proxy_ca: Option<PathBuf>,
    /// PKI dir with device-ca.pem/.key for issuing device certificates.
    pub pki: Option<PathBuf>,
    /// Roots for TLS inside tunnels (origin CA, inspection CA).
    pub trust: Vec<PathBuf>,
    pub origin_http: String,
    pub origin_https: String,
    pub inspect_target: String,
    pub blocked_url: String,
    pub devices: usize,
    pub ramp: Duration,
    pub duration: Option<Duration>,
    pub ops_per_device: Option<u64>,
    pub concurrency: usize,
    /// Share of devices (0..=1) speaking HTTP/2 to the proxy (mTLS only).
    pub h2_share: f64,
    pub mix: Vec<(Op, u32)>,
    pub size: usize,
    pub large: usize,
    pub requests_per_tunnel: u32,
    /// Offer `h2, http/1.1` inside tunnels (else `http/1.1` only).
    pub inner_h2: bool,
    pub inject_error_every: u64,
    pub op_timeout: Duration,
    pub proxy_pid: Option<u32>,
    /// Host names `http` and `connect` operations address (`--hosts`); empty =
    /// the origin's own address (`origin_http` / `origin_https`).
    pub hosts: Arc<Vec<String>>,
    /// Host names the proxy must block (`--blocked-hosts`).
    pub blocked_hosts: Arc<Vec<String>>,
    /// Share (0..=1) of `http` / `connect` operations that pick a blocked host.
    pub blocked_share: f64,
    /// Status codes that count as the proxy's block answer (`blocked`
    /// operations, operations on blocked hosts): e.g. 403 (komugate's block
    /// page), 302 (squidGuard's redirect).
    pub blocked_status: Vec<u16>,
}

/// A host list file: one name per line; blank lines and `#` comments are
/// skipped; names are lower-cased and must be DNS names (no port, no scheme).
pub fn read_host_list(path: &std::path::Path, what: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let h = line.trim();
        if h.is_empty() || h.starts_with('#') {
            continue;
        }
        let h = h.to_ascii_lowercase();
        let ok = h.len() <= 253
            && !h.starts_with('.')
            && !h.ends_with('.')
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok || ServerName::try_from(h.clone()).is_err() {
            bail!("{what}: {}:{}: {h:?} is not a host name (one DNS name per line, no scheme or port)", path.display(), i + 1);
        }
        out.push(h);
    }
    if out.is_empty() {
        bail!("{what}: {} lists no host name", path.display());
    }
    Ok(out)
}

/// `403,302` → status codes.
pub fn parse_status_list(s: &str) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c: u16 = part
            .parse()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .with_context(|| {
                format!("--blocked-status: {part:?} is not an HTTP status code (e.g. 403,302)")
            })?;
        out.push(c);
    }
    if out.is_empty() {
        bail!("--blocked-status lists no status code (e.g. 403 or 403,302)");
    }
    Ok(out)
}

/// The port of `host:port` (the origin's listener), for URLs built on other host names.
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(_, p)| p).unwrap_or("80")
}

struct Device {
    index: usize,
    h2: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
}

struct Shared {
    cfg: RunConfig,
    inner_tls: Arc<rustls::ClientConfig>,
    large: Bytes,
    op_seq: AtomicU64,
    deadline: Option<Instant>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &[PathBuf]) -> Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for f in files {
        for c in CertificateDer::pem_file_iter(f)
            .with_context(|| format!("cannot read {}", f.display()))?
        {
            store.add(c.with_context(|| format!("bad PEM in {}", f.display()))?)?;
        }
    }
    Ok(store)
}

/// Issues one device certificate per device (in memory) and builds its TLS config.
fn device_tls(cfg: &RunConfig, n: usize) -> Result<Vec<Arc<rustls::ClientConfig>>> {
    let pki = cfg
        .pki
        .as_ref()
        .ok_or_else(|| anyhow!("mTLS needs --pki DIR (device-ca.pem/.key)"))?;
    let ca =
        komugate::pki::CaMaterial::load(&pki.join("device-ca.pem"), &pki.join("device-ca.key"))?;
    let proxy_ca = cfg
        .proxy_ca
        .clone()
        .unwrap_or_else(|| pki.join("inspect-ca.pem"));
    let store = Arc::new(roots(&[proxy_ca])?);
    let now = time::OffsetDateTime::now_utc();
    let groups = vec!["teachers".to_string()];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let h2 = is_h2(cfg, i);
        let cert = ca.issue_device(
            &format!("LG-{i:06}"),
            &groups,
            now - time::Duration::hours(1),
            now + time::Duration::days(2),
        )?;
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store.clone())
            .with_client_auth_cert(vec![cert.cert_der()?], cert.key_der()?)?;
        c.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        out.push(Arc::new(c));
    }
    Ok(out)
}

/// ALPN offered inside tunnels: a browser's `h2, http/1.1` with `inner_h2`.
pub fn inner_alpn(inner_h2: bool) -> Vec<Vec<u8>> {
    if inner_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

fn is_h2(cfg: &RunConfig, i: usize) -> bool {
    matches!(cfg.proxy, ProxySpec::Mtls(_))
        && ((i as f64 + 0.5) / cfg.devices.max(1) as f64) <= cfg.h2_share
}

/// What a forwarded request must answer.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// 200.
    Ok,
    /// One of these block statuses.
    Blocked(&'a [u16]),
}

/// Error kinds are short stable strings: they are the report's keys.
#[derive(Debug)]
struct OpError(String);

fn err(kind: &str) -> impl FnOnce(String) -> OpError + '_ {
    move |detail: String| OpError(format!("{kind}: {detail}"))
}

impl OpError {
    fn kind(&self) -> String {
        self.0.split(':').next().unwrap_or("error").to_string()
    }
}

enum ProxySender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// The requests inside a tunnel: the same two kinds of sender.
type InnerSender = ProxySender;

impl ProxySender {
    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            ProxySender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            ProxySender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

async fn dial(shared: &Shared, dev: &Device, rec: &mut Recorder) -> Result<BoxIo, OpError> {
    let addr = match &shared.cfg.proxy {
        ProxySpec::Plain(a) | ProxySpec::Mtls(a) => *a,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| err("proxy_connect")(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    match (&shared.cfg.proxy, &dev.tls) {
        (ProxySpec::Mtls(_), Some(tls)) => {
            let name = ServerName::try_from(shared.cfg.proxy_name.clone())
                .map_err(|e| err("config")(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| err("proxy_tls")(e.to_string()))?;
            rec.handshakes += 1;
            Ok(Box::new(s))
        }
        _ => Ok(Box::new(tcp)),
    }
}

async fn h1_sender(io: BoxIo) -> Result<http1::SendRequest<Full<Bytes>>, OpError> {
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| err("proxy_http")(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

async fn h2_sender(io: BoxIo) -> Result<http2::SendRequest<Full<Bytes>>, OpError> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| err("proxy_h2")(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a body to the end; returns its length.
async fn drain(body: hyper::body::Incoming) -> Result<u64, OpError> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| err("body")(e.to_string()))?;
        if let Some(d) = f.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// One worker of one device: keeps a keep-alive proxy connection for
/// forwarded requests (HTTP/1.1) or shares the device's HTTP/2 connection.
struct Worker {
    shared: Arc<Shared>,
    dev: Arc<Device>,
    keepalive: Option<ProxySender>,
    h2: Option<http2::SendRequest<Full<Bytes>>>,
    rng: u64,
}

impl Worker {
    /// splitmix64
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// With `--hosts`: the host an `http` / `connect` operation addresses and
    /// whether it is one the proxy must block. `None` without a host list.
    fn pick_host(&mut self) -> Option<(String, bool)> {
        let cfg = &self.shared.cfg;
        if cfg.hosts.is_empty() {
            return None;
        }
        let (hosts, blocked, share) = (
            cfg.hosts.clone(),
            cfg.blocked_hosts.clone(),
            cfg.blocked_share,
        );
        let roll = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let z = self.next_u64();
        if !blocked.is_empty() && roll < share {
            Some((blocked[(z % blocked.len() as u64) as usize].clone(), true))
        } else {
            Some((hosts[(z % hosts.len() as u64) as usize].clone(), false))
        }
    }

    fn next_op(&mut self) -> Op {
        let z = self.next_u64();
        let total: u32 = self.shared.cfg.mix.iter().map(|(_, w)| w).sum();
        let mut pick = (z % total as u64) as u32;
        for (op, w) in &self.shared.cfg.mix {
            if pick < *w {
                return *op;
            }
            pick -= w;
        }
        self.shared.cfg.mix[0].0
    }

    async fn forward_sender(&mut self, rec: &mut Recorder) -> Result<&mut ProxySender, OpError> {
        if let Some(h2) = &self.h2 {
            self.keepalive = Some(ProxySender::H2(h2.clone()));
        } else {
            let stale = match &self.keepalive {
                Some(ProxySender::H1(s)) => s.is_closed(),
                _ => true,
            };
            if stale {
                let io = dial(&self.shared, &self.dev, rec).await?;
                self.keepalive = Some(ProxySender::H1(h1_sender(io).await?));
            }
        }
        Ok(self.keepalive.as_mut().expect("set above"))
    }

    async fn forward(
        &mut self,
        rec: &mut Recorder,
        method: Method,
        url: &str,
        body: Bytes,
        expect: Expect<'_>,
        expect_len: Option<u64>,
    ) -> Result<(), OpError> {
        let up = body.len() as u64;
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| err("config")(e.to_string()))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, host)
            .body(Full::new(body))
            .map_err(|e| err("config")(e.to_string()))?;
        let sender = self.forward_sender(rec).await?;
        let resp = match sender.send(req).await {
            Ok(r) => r,
            Err(e) => {
                self.keepalive = None;
                return Err(err("proxy_http")(e.to_string()));
            }
        };
        let status = resp.status();
        let n = drain(resp.into_body()).await?;
        rec.bytes_up += up;
        rec.bytes_down += n;
        rec.requests += 1;
        match expect {
            Expect::Ok if status != StatusCode::OK => {
                return Err(OpError(format!(
                    "status_{}: {url}: expected 200",
                    status.as_u16()
                )))
            }
            Expect::Blocked(codes) if !codes.contains(&status.as_u16()) => {
                return Err(OpError(format!(
                    "not_blocked_{}: {url}: expected a block answer {codes:?}",
                    status.as_u16()
                )));
            }
            _ => {}
        }
        if let Some(want) = expect_len {
            if n != want {
                return Err(err("body_size")(format!("{n} != {want}")));
            }
        }
        Ok(())
    }

    /// Sends CONNECT `target` (HTTP/2 stream or a new HTTP/1.1 connection).
    async fn connect(
        &mut self,
        rec: &mut Recorder,
        target: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, OpError> {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target)
            .header(http::header::HOST, target)
            .body(Full::new(Bytes::new()))
            .map_err(|e| err("config")(e.to_string()))?;
        let resp = if let Some(h2) = &self.h2 {
            let mut s = h2.clone();
            s.ready()
                .await
                .map_err(|e| err("proxy_h2")(e.to_string()))?;
            s.send_request(req)
                .await
                .map_err(|e| err("proxy_h2")(e.to_string()))?
        } else {
            let io = dial(&self.shared, &self.dev, rec).await?;
            let mut s = h1_sender(io).await?;
            s.send_request(req)
                .await
                .map_err(|e| err("proxy_http")(e.to_string()))?
        };
        Ok(resp)
    }

    /// CONNECT to a host the proxy must refuse: the answer must be a block status.
    async fn connect_blocked(&mut self, rec: &mut Recorder, target: &str) -> Result<(), OpError> {
        let resp = self.connect(rec, target).await?;
        let status = resp.status().as_u16();
        rec.requests += 1;
        if !self.shared.cfg.blocked_status.contains(&status) {
            return Err(OpError(format!(
                "not_blocked_connect_{status}: CONNECT {target}: expected a block answer {:?}",
                self.shared.cfg.blocked_status
            )));
        }
        // Read the block answer's body (block page, redirect text) as a browser would.
        rec.bytes_down += drain(resp.into_body()).await?;
        Ok(())
    }

    /// CONNECT, TLS to `server_name` inside the tunnel, `requests_per_tunnel` GETs.
    async fn tunnel(
        &mut self,
        rec: &mut Recorder,
        target: &str,
        server_name: &str,
        path: &str,
        want: Option<u64>,
    ) -> Result<(), OpError> {
        let resp = self.connect(rec, target).await?;
        if resp.status() != StatusCode::OK {
            return Err(OpError(format!(
                "connect_status_{}: CONNECT {target}",
                resp.status().as_u16()
            )));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| err("tunnel")(e.to_string()))?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| err("config")(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.shared.inner_tls.clone())
            .connect(name, TokioIo::new(upgraded))
            .await
            .map_err(|e| err("origin_tls")(e.to_string()))?;
        rec.handshakes += 1;
        // Host carries the port when it is not 443 (a bumping proxy rebuilds the URL from it).
        let host_header = match target.rsplit_once(':') {
            Some((_, "443")) | None => server_name.to_string(),
            Some(_) => target.to_string(),
        };
        // Inner HTTP/2 when the proxy's minted session negotiated it (a
        // proxy that does not speak HTTP/2 inside answers http/1.1).
        let inner_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let (mut s, conn) = if inner_h2 {
            rec.inner_h2_tunnels += 1;
            let (s, conn) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(8 << 20)
                .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| err("origin_h2")(e.to_string()))?;
            (
                InnerSender::H2(s),
                tokio::spawn(async move { drop(conn.await) }),
            )
        } else {
            let (s, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| err("origin_http")(e.to_string()))?;
            (
                InnerSender::H1(s),
                tokio::spawn(async move { drop(conn.await) }),
            )
        };
        let uri = if inner_h2 {
            format!("https://{host_header}{path}")
        } else {
            path.to_string()
        };
        for _ in 0..self.shared.cfg.requests_per_tunnel.max(1) {
            let mut req = Request::builder().uri(uri.as_str());
            if !inner_h2 {
                req = req.header(http::header::HOST, host_header.as_str());
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| err("config")(e.to_string()))?;
            let resp = s
                .send(req)
                .await
                .map_err(|e| err("origin_http")(e.to_string()))?;
            let status = resp.status();
            let n = drain(resp.into_body()).await?;
            rec.bytes_down += n;
            rec.requests += 1;
            if status != StatusCode::OK {
                return Err(OpError(format!("status_{}: in tunnel", status.as_u16())));
            }
            if let Some(w) = want {
                if n != w {
                    return Err(err("body_size")(format!("{n} != {w}")));
                }
            }
        }
        drop(s);
        conn.abort();
        Ok(())
    }

    /// Runs one operation; returns the kind it is recorded under (`http`,
    /// `http_blocked` for an `http` operation on a blocked host, …).
    async fn run_op(&mut self, op: Op, rec: &mut Recorder) -> Result<&'static str, OpError> {
        let cfg = self.shared.cfg.clone_light();
        let seq = self.shared.op_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let inject = cfg.inject_error_every > 0 && seq % cfg.inject_error_every == 0;
        let picked = if matches!(op, Op::Http | Op::Connect) {
            self.pick_host()
        } else {
            None
        };
        let blocked_status = self.shared.cfg.blocked_status.clone();
        match op {
            Op::Http | Op::Download | Op::Upload if inject => {
                let url = format!("http://{}/status/500", cfg.origin_http);
                self.forward(rec, Method::GET, &url, Bytes::new(), Expect::Ok, None)
                    .await?;
            }
            Op::Http => {
                let authority = match &picked {
                    Some((host, _)) => format!("{host}:{}", port_of(&cfg.origin_http)),
                    None => cfg.origin_http.clone(),
                };
                let url = format!("http://{authority}/bytes/{}", cfg.size);
                if let Some((_, true)) = picked {
                    self.forward(
                        rec,
                        Method::GET,
                        &url,
                        Bytes::new(),
                        Expect::Blocked(&blocked_status),
                        None,
                    )
                    .await?;
                    return Ok("http_blocked");
                }
                self.forward(
                    rec,
                    Method::GET,
                    &url,
                    Bytes::new(),
                    Expect::Ok,
                    Some(cfg.size as u64),
                )
                .await?;
            }
            Op::Download => {
                let url = format!("http://{}/bytes/{}", cfg.origin_http, cfg.large);
                self.forward(
                    rec,
                    Method::GET,
                    &url,
                    Bytes::new(),
                    Expect::Ok,
                    Some(cfg.large as u64),
                )
                .await?;
            }
            Op::Upload => {
                let url = format!("http://{}/upload", cfg.origin_http);
                let body = self.shared.large.clone();
                self.forward(rec, Method::POST, &url, body, Expect::Ok, None)
                    .await?;
            }
            Op::Blocked => {
                let url = cfg.blocked_url.clone();
                self.forward(
                    rec,
                    Method::GET,
                    &url,
                    Bytes::new(),
                    Expect::Blocked(&blocked_status),
                    None,
                )
                .await?;
            }
            Op::Connect => {
                let (target, host) = match &picked {
                    // TLS inside the tunnel is checked against the picked name
                    // (the origin mints a certificate for it from its CA).
                    Some((host, _)) => (
                        format!("{host}:{}", port_of(&cfg.origin_https)),
                        host.clone(),
                    ),
                    None => {
                        let host = cfg
                            .origin_https
                            .rsplit_once(':')
                            .map(|(h, _)| h.to_string())
                            .unwrap_or_default();
                        (cfg.origin_https.clone(), host)
                    }
                };
                if let Some((_, true)) = picked {
                    self.connect_blocked(rec, &target).await?;
                    return Ok("connect_blocked");
                }
                let path = format!("/bytes/{}", cfg.size);
                self.tunnel(rec, &target, &host, &path, Some(cfg.size as u64))
                    .await?;
            }
            Op::Inspect => {
                let target = cfg.inspect_target.clone();
                let host = target
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default();
                let path = format!("/bytes/{}", cfg.size);
                self.tunnel(rec, &target, &host, &path, Some(cfg.size as u64))
                    .await?;
            }
        }
        Ok(op.name())
    }
}

/// The few fields an operation needs, cloned cheaply per operation.
struct OpFields {
    origin_http: String,
    origin_https: String,
    inspect_target: String,
    blocked_url: String,
    size: usize,
    large: usize,
    inject_error_every: u64,
}

impl RunConfig {
    fn clone_light(&self) -> OpFields {
        OpFields {
            origin_http: self.origin_http.clone(),
            origin_https: self.origin_https.clone(),
            inspect_target: self.inspect_target.clone(),
            blocked_url: self.blocked_url.clone(),
            size: self.size,
            large: self.large,
            inject_error_every: self.inject_error_every,
        }
    }
}

async fn run_device(shared: Arc<Shared>, dev: Arc<Device>, wake: Instant) -> Recorder {
    tokio::time::sleep_until(wake.into()).await;
    let mut rec = Recorder::default();
    let mut h2 = None;
    if dev.h2 {
        match dial(&shared, &dev, &mut rec).await {
            Ok(io) => match h2_sender(io).await {
                Ok(s) => h2 = Some(s),
                Err(e) => {
                    rec.error(e.kind());
                    return rec;
                }
            },
            Err(e) => {
                rec.error(e.kind());
                return rec;
            }
        }
    }
    let budget = Arc::new(AtomicU64::new(
        shared.cfg.ops_per_device.unwrap_or(u64::MAX),
    ));
    let mut tasks = Vec::new();
    for w in 0..shared.cfg.concurrency.max(1) {
        let mut worker = Worker {
            shared: shared.clone(),
            dev: dev.clone(),
            keepalive: None,
            h2: h2.clone(),
            rng: (dev.index as u64) << 16 | w as u64,
        };
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                if let Some(d) = worker.shared.deadline {
                    if Instant::now() >= d {
                        break;
                    }
                }
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let op = worker.next_op();
                let started = Instant::now();
                match tokio::time::timeout(
                    worker.shared.cfg.op_timeout,
                    worker.run_op(op, &mut rec),
                )
                .await
                {
                    Ok(Ok(kind)) => rec.success(kind, started.elapsed().as_micros() as u64),
                    Ok(Err(e)) => {
                        if std::env::var_os("LOADGEN_DEBUG").is_some() {
                            eprintln!("{} {}: {}", dev_name(worker.dev.index), op.name(), e.0);
                        }
                        rec.error(e.kind());
                        worker.keepalive = None;
                    }
                    Err(_) => {
                        rec.error("timeout");
                        worker.keepalive = None;
                    }
                }
            }
            rec
        }));
    }
    for t in tasks {
        match t.await {
            Ok(r) => rec.merge(r),
            Err(_) => rec.error("worker_panic"),
        }
    }
    rec
}

fn dev_name(i: usize) -> String {
    format!("LG-{i:06}")
}

/// Runs the workload; returns the report (proxy usage filled by the caller's sampler).
pub async fn run(cfg: RunConfig) -> Result<Report> {
    let mut trust = cfg.trust.clone();
    if trust.is_empty() {
        bail!("--trust FILE (origin CA, inspection CA) is required for TLS inside tunnels");
    }
    trust.dedup();
    let mut inner = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&trust)?)
        .with_no_client_auth();
    inner.alpn_protocols = inner_alpn(cfg.inner_h2);
    let tls = match cfg.proxy {
        ProxySpec::Mtls(_) => {
            let t0 = Instant::now();
            let v = device_tls(&cfg, cfg.devices)?;
            eprintln!(
                "loadgen: issued {} device certificates in {:.1} s",
                v.len(),
                t0.elapsed().as_secs_f64()
            );
            v.into_iter().map(Some).collect()
        }
        ProxySpec::Plain(_) => vec![None; cfg.devices],
    };
    let devices: Vec<Arc<Device>> = tls
        .into_iter()
        .enumerate()
        .map(|(i, tls)| {
            Arc::new(Device {
                index: i,
                h2: is_h2(&cfg, i),
                tls,
            })
        })
        .collect();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        large: Bytes::from(vec![b'u'; cfg.large]),
        inner_tls: Arc::new(inner),
        op_seq: AtomicU64::new(0),
        deadline: cfg.duration.map(|d| start + cfg.ramp + d),
        cfg: cfg.clone(),
    });
    let n = devices.len().max(1);
    let mut tasks = Vec::with_capacity(devices.len());
    for dev in devices {
        // Evenly spread wake-ups with a deterministic jitter of up to one slot.
        let slot = cfg.ramp.as_secs_f64() / n as f64;
        let jitter = ((dev.index as u64).wrapping_mul(2654435761) % 1000) as f64 / 1000.0;
        let at = start + Duration::from_secs_f64(slot * (dev.index as f64 + jitter));
        tasks.push(tokio::spawn(run_device(shared.clone(), dev, at)));
    }
    let mut rec = Recorder::default();
    for t in tasks {
        match t.await {
            Ok(r) => rec.merge(r),
            Err(_) => rec.error("device_panic"),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let proxy = match cfg.proxy {
        ProxySpec::Plain(a) => format!("plain://{a}"),
        ProxySpec::Mtls(a) => format!("mtls://{a} (h2 share {:.0}%)", cfg.h2_share * 100.0),
    };
    Ok(Report::build(
        &cfg.label,
        &proxy,
        cfg.devices,
        cfg.ramp.as_secs_f64(),
        wall,
        rec,
    ))
}

/// Device TLS configs for other modes (idle tunnels).
pub fn device_tls_pub(cfg: &RunConfig, n: usize) -> Result<Vec<Arc<rustls::ClientConfig>>> {
    device_tls(cfg, n)
}

/// One HTTP/2 connection to the mTLS proxy with the given device TLS config.
pub async fn dial_h2(
    cfg: &RunConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let ProxySpec::Mtls(addr) = cfg.proxy else {
        return Err("config".into());
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|_| "proxy_connect".to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(cfg.proxy_name.clone()).map_err(|_| "config".to_string())?;
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|_| "proxy_tls".to_string())?;
    h2_sender(Box::new(s)).await.map_err(|e| e.kind())
}
