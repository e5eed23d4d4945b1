//! Inspected HTTPS sessions held through a proxy's plain listener: CONNECT,
//! TLS to the inspected name inside the tunnel (the client trusts the
//! inspection CA), then HTTP/1.1 or HTTP/2 as the proxy's minted session
//! negotiates.
//!
//! - [`steady`]: one session in steady state, many keep-alive requests; hooks
//!   run around the measured phase (the profiling script turns callgrind's
//!   instrumentation on and off there).
//! - [`held`]: many sessions open at once, idle and then each with a request
//!   in flight: the proxy's memory per inspected session.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procstat;

/// Where and how to open inspected sessions.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The proxy's plain listener (HTTP CONNECT).
    pub proxy: SocketAddr,
    /// CONNECT target, `host:port`.
    pub target: String,
    /// Roots the inner TLS is verified against (the inspection CA).
    pub trust: Vec<PathBuf>,
    /// Offer `h2, http/1.1` inside (else `http/1.1` only).
    pub inner_h2: bool,
}

/// One open inspected session.
pub struct Session {
    sender: Sender,
    /// The request URI: origin-form for HTTP/1.1, absolute for HTTP/2.
    base: String,
    host: String,
    pub h2: bool,
    /// The connection task; aborted on drop.
    conn: tokio::task::JoinHandle<()>,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The client TLS config for the inner session.
pub fn inner_tls(spec: &SessionSpec) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for f in &spec.trust {
        for c in CertificateDer::pem_file_iter(f)
            .with_context(|| format!("cannot read {}", f.display()))?
        {
            store.add(c.with_context(|| format!("bad PEM in {}", f.display()))?)?;
        }
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    c.alpn_protocols = crate::client::inner_alpn(spec.inner_h2);
    Ok(Arc::new(c))
}

impl Session {
    /// CONNECT, TLS inside, the HTTP handshake.
    pub async fn open(spec: &SessionSpec, tls: Arc<rustls::ClientConfig>) -> Result<Session> {
        let mut tcp = TcpStream::connect(spec.proxy)
            .await
            .with_context(|| format!("connecting to the proxy {}", spec.proxy))?;
        let _ = tcp.set_nodelay(true);
        let t = &spec.target;
        tcp.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
            .await?;
        // The CONNECT answer, byte by byte: nothing of the tunnel may be read past it.
        let mut head = Vec::with_capacity(128);
        while !head.ends_with(b"\r\n\r\n") {
            let b = tcp.read_u8().await.context("reading the CONNECT answer")?;
            head.push(b);
            if head.len() > 16 * 1024 {
                bail!("CONNECT {t}: answer head over 16 KiB");
            }
        }
        let status_line = String::from_utf8_lossy(&head);
        let status_line = status_line.lines().next().unwrap_or("");
        if status_line.split_whitespace().nth(1) != Some("200") {
            bail!("CONNECT {t}: {status_line}");
        }
        let host = t.rsplit_once(':').map(|(h, _)| h).unwrap_or(t).to_string();
        let name = ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {host} inside the tunnel"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let authority = match t.rsplit_once(':') {
            Some((_, "443")) | None => host.clone(),
            Some(_) => t.clone(),
        };
        let (sender, conn) = if h2 {
            let (s, c) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(8 << 20)
                .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await?;
            (Sender::H2(s), tokio::spawn(async move { drop(c.await) }))
        } else {
            let (s, c) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls)).await?;
            (Sender::H1(s), tokio::spawn(async move { drop(c.await) }))
        };
        Ok(Session {
            sender,
            base: if h2 {
                format!("https://{authority}")
            } else {
                String::new()
            },
            host: authority,
            h2,
            conn,
        })
    }

    /// One GET of `path`; returns the body length (status must be 200).
    pub async fn get(&mut self, path: &str) -> Result<u64> {
        let mut req = Request::builder().uri(format!("{}{path}", self.base));
        if !self.h2 {
            req = req.header(http::header::HOST, self.host.as_str());
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(f) = body.frame().await {
            if let Some(d) = f?.data_ref() {
                n += d.len() as u64;
            }
        }
        if status != StatusCode::OK {
            bail!("GET {path} inside the tunnel: status {status}");
        }
        Ok(n)
    }
}

/// Runs `cmd` with `sh -c` (a hook); fails when it does.
fn hook(cmd: &Option<String>) -> Result<()> {
    if let Some(cmd) = cmd {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .with_context(|| format!("running hook {cmd:?}"))?;
        anyhow::ensure!(st.success(), "hook {cmd:?} failed: {st}");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct SteadyReport {
    pub inner_h2: bool,
    pub warmup: u64,
    pub requests: u64,
    pub body_bytes: u64,
    pub wall_seconds: f64,
    pub requests_per_second: f64,
    /// Proxy CPU (utime + stime from /proc) over the measured phase, when `--proxy-pid`.
    pub proxy_cpu_us_per_request: Option<f64>,
}

/// One session: `warmup` GETs, `before`, `requests` GETs, `after`.
pub async fn steady(
    spec: &SessionSpec,
    path: &str,
    warmup: u64,
    requests: u64,
    before: &Option<String>,
    after: &Option<String>,
    proxy_pid: Option<u32>,
) -> Result<SteadyReport> {
    let tls = inner_tls(spec)?;
    let mut s = Session::open(spec, tls).await?;
    for _ in 0..warmup {
        s.get(path).await?;
    }
    hook(before)?;
    let cpu0 = proxy_pid.and_then(procstat::cpu_ticks);
    let t0 = Instant::now();
    let mut bytes = 0;
    for _ in 0..requests {
        bytes += s.get(path).await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = proxy_pid.and_then(procstat::cpu_ticks);
    hook(after)?;
    let per_req = match (cpu0, cpu1) {
        (Some(a), Some(b)) if requests > 0 => {
            Some((b - a) as f64 / procstat::clk_tck() * 1e6 / requests as f64)
        }
        _ => None,
    };
    Ok(SteadyReport {
        inner_h2: s.h2,
        warmup,
        requests,
        body_bytes: bytes,
        wall_seconds: wall,
        requests_per_second: requests as f64 / wall.max(1e-9),
        proxy_cpu_us_per_request: per_req,
    })
}

impl SteadyReport {
    pub fn markdown(&self) -> String {
        format!(
            "| inner | requests | requests/s | proxy CPU µs per request |\n|---|---:|---:|---:|\n| {} | {} | {:.0} | {} |\n",
            if self.inner_h2 { "HTTP/2" } else { "HTTP/1.1" },
            self.requests,
            self.requests_per_second,
            self.proxy_cpu_us_per_request
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "–".into())
        )
    }
}

#[derive(Debug, Serialize)]
pub struct HeldReport {
    pub inner_h2: bool,
    pub sessions_requested: usize,
    pub sessions_open: usize,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub rss_before_kib: u64,
    /// Every session open, just idle (one request answered on each, 2 s ago).
    pub rss_fresh_kib: u64,
    /// Every session open and quiet for `settle_secs`.
    pub rss_idle_kib: u64,
    pub settle_secs: f64,
    /// Peak with one request in flight on every session (the origin delays its answer).
    pub rss_busy_kib: u64,
    pub kib_per_fresh_session: f64,
    pub kib_per_idle_session: f64,
    pub kib_per_busy_session: f64,
    pub command: String,
}

impl HeldReport {
    pub fn markdown(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "| inspected sessions open (inner {}) | {} of {} |\n\
             | proxy RSS before / just idle / quiet {:.0} s / busy | {:.1} / {:.1} / {:.1} / {:.1} MiB |\n\
             | RSS per inspected session just idle (2 s) | {:.1} KiB |\n\
             | RSS per inspected session quiet {:.0} s | {:.1} KiB |\n\
             | RSS per busy inspected session (one request in flight) | {:.1} KiB |\n\
             | errors | {:?} |\n",
            if self.inner_h2 { "HTTP/2" } else { "HTTP/1.1" },
            self.sessions_open,
            self.sessions_requested,
            self.settle_secs,
            mib(self.rss_before_kib),
            mib(self.rss_fresh_kib),
            mib(self.rss_idle_kib),
            mib(self.rss_busy_kib),
            self.kib_per_fresh_session,
            self.settle_secs,
            self.kib_per_idle_session,
            self.kib_per_busy_session,
            self.errors
        )
    }
}

/// `sessions` inspected sessions, opened `parallel` at a time, each with one
/// GET of `path`; proxy RSS when all are just idle (2 s) and when they have
/// been quiet for `settle` (the gateway closes a quiet session's upstream
/// connection after its upstream idle timeout), then its peak while every
/// session has a GET of `busy_path` in flight.
#[allow(clippy::too_many_arguments)]
pub async fn held(
    spec: &SessionSpec,
    pid: u32,
    sessions: usize,
    parallel: usize,
    path: &str,
    busy_path: &str,
    settle: Duration,
) -> Result<HeldReport> {
    let tls = inner_tls(spec)?;
    let rss_before = procstat::rss_kib(pid).context("reading the proxy's RSS (--proxy-pid)")?;
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (spec, tls, sem, path) = (spec.clone(), tls.clone(), sem.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let mut s = Session::open(&spec, tls).await?;
            s.get(&path).await?;
            anyhow::Ok(s)
        }));
    }
    let mut open = Vec::with_capacity(sessions);
    let mut errors = std::collections::BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => *errors.entry(format!("{e:#}")).or_insert(0) += 1,
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    let inner_h2 = open.first().map(|s| s.h2).unwrap_or(false);
    let fresh = settle.min(Duration::from_secs(2));
    tokio::time::sleep(fresh).await;
    let rss_fresh = procstat::rss_kib(pid).context("the proxy exited")?;
    tokio::time::sleep(settle - fresh).await;
    let rss_idle = procstat::rss_kib(pid).context("the proxy exited")?;
    // Busy: one slow request in flight on every session; RSS sampled until
    // they are all answered, the peak kept.
    let n = open.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut busy = Vec::with_capacity(n);
    for mut s in open {
        let (p, done) = (busy_path.to_string(), done.clone());
        busy.push(tokio::spawn(async move {
            let r = s.get(&p).await;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (s, r)
        }));
    }
    let mut rss_busy = 0;
    while done.load(std::sync::atomic::Ordering::Relaxed) < n {
        rss_busy = rss_busy.max(procstat::rss_kib(pid).context("the proxy exited")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answered = Vec::with_capacity(n);
    for b in busy {
        match b.await {
            Ok((s, Ok(_))) => answered.push(s),
            Ok((_, Err(e))) => *errors.entry(format!("busy: {e:#}")).or_insert(0) += 1,
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    drop(answered);
    let per = |rss: u64| {
        if n > 0 {
            rss.saturating_sub(rss_before) as f64 / n as f64
        } else {
            0.0
        }
    };
    Ok(HeldReport {
        inner_h2,
        sessions_requested: sessions,
        sessions_open: n,
        errors,
        rss_before_kib: rss_before,
        rss_fresh_kib: rss_fresh,
        rss_idle_kib: rss_idle,
        settle_secs: settle.as_secs_f64(),
        rss_busy_kib: rss_busy,
        kib_per_fresh_session: per(rss_fresh),
        kib_per_idle_session: per(rss_idle),
        kib_per_busy_session: per(rss_busy),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })
}
