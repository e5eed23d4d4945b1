//! The fast local origin: hyper HTTP/1.1 on one or more loopback ports and
//! HTTPS (rustls) with a throwaway CA, so the origin is never the bottleneck.
//!
//! The HTTPS certificate covers `localhost`, `127.0.0.1` and `--san` names;
//! a client asking (SNI) for any other DNS name gets a certificate minted for
//! that name by the same CA (cached; `--cert-hosts FILE` mints them up front so
//! no minting happens while a workload is measured). So a CONNECT to any host
//! name mapped to this origin is verified against the origin CA by its real
//! name.
//!
//! Routes (any host):
//! - `GET /bytes/N[?delay=MS]` → N bytes (zeros), after MS milliseconds
//! - `GET /status/C` → status C, small body (used to inject errors)
//! - `POST|PUT *` → reads the whole body, answers its length as text
//! - anything else → `200 ok`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest body the origin serves in one response.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

pub struct OriginOptions {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// Extra DNS SANs for the HTTPS certificate (e.g. Microsoft 365 names).
    pub sans: Vec<String>,
    /// Where to write the origin CA certificate (PEM) that clients trust.
    pub ca_out: Option<PathBuf>,
    pub default_delay: Duration,
    /// UDP DNS responder answering every A query with 127.0.0.1 (so
    /// "Microsoft 365" names reach this origin through the proxy's resolver).
    pub dns: Option<SocketAddr>,
    /// Host names (one per line) to mint HTTPS certificates for at start.
    pub cert_hosts: Option<PathBuf>,
}

/// Server certificate by SNI: the default certificate for its SANs and for
/// clients sending no SNI (IP literals), otherwise a leaf minted for the name.
#[derive(Debug)]
pub struct SniCerts {
    ca: komugate::pki::CaMaterial,
    default: Arc<rustls::sign::CertifiedKey>,
    default_names: std::collections::HashSet<String>,
    minted: std::sync::RwLock<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SniCerts {
    /// The certificate for `name`, minted and cached on first use.
    pub fn get(&self, name: &str) -> Result<Arc<rustls::sign::CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.default_names.contains(&name) {
            return Ok(self.default.clone());
        }
        if let Some(k) = self.minted.read().expect("cert cache").get(&name) {
            return Ok(k.clone());
        }
        let (cert, key) = self
            .ca
            .mint_inspection_leaf(&name, time::Duration::days(7))?;
        let key = self.provider.key_provider.load_private_key(key)?;
        let ck = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], key));
        self.minted
            .write()
            .expect("cert cache")
            .insert(name, ck.clone());
        Ok(ck)
    }

    pub fn minted(&self) -> usize {
        self.minted.read().expect("cert cache").len()
    }
}

impl rustls::server::ResolvesServerCert for SniCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match hello.server_name() {
            None => Some(self.default.clone()),
            Some(n) => self.get(n).ok(),
        }
    }
}

pub struct Origin {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// Bound address of the DNS responder, if any.
    #[allow(dead_code)]
    pub dns: Option<SocketAddr>,
    #[allow(dead_code)]
    pub ca_pem: String,
}

fn zeros() -> Bytes {
    static ZEROS: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    ZEROS
        .get_or_init(|| Bytes::from(vec![0u8; MAX_BODY]))
        .clone()
}

async fn respond(
    req: Request<Incoming>,
    default_delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut delay = default_delay;
    for kv in query.split('&') {
        if let Some(v) = kv.strip_prefix("delay=") {
            if let Ok(ms) = v.parse::<u64>() {
                delay = Duration::from_millis(ms);
            }
        }
    }
    if req.method() == Method::POST || req.method() == Method::PUT {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        n += d.len() as u64;
                    }
                }
                Err(_) => break,
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n = n.parse::<usize>().unwrap_or(0).min(MAX_BODY);
        return Ok(Response::new(Full::new(zeros().slice(..n))));
    }
    if let Some(c) = path.strip_prefix("/status/") {
        let code = c
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"status\n")));
        *resp.status_mut() = code;
        return Ok(resp);
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

async fn serve_conn<S>(io: S, delay: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| respond(req, delay));
    // No timer: idle connections (idle-tunnel scenario) stay open.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Binds every listener and serves in background tasks.
pub async fn start(opts: OriginOptions) -> Result<Origin> {
    let ca = komugate::pki::generate_ca("komugate-loadgen origin CA")?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(opts.sans.iter().cloned());
    let leaf = ca.issue_server(&sans)?;
    let ca_pem = ca.cert_pem();
    if let Some(p) = &opts.ca_out {
        std::fs::write(p, &ca_pem).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = Arc::new(rustls::sign::CertifiedKey::new(
        vec![leaf.cert_der()?],
        provider.key_provider.load_private_key(leaf.key_der()?)?,
    ));
    let certs = Arc::new(SniCerts {
        ca,
        default,
        default_names: sans.iter().map(|s| s.to_ascii_lowercase()).collect(),
        minted: Default::default(),
        provider: provider.clone(),
    });
    if let Some(p) = &opts.cert_hosts {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("origin: cannot read --cert-hosts {}", p.display()))?;
        for (i, line) in text.lines().enumerate() {
            let h = line.trim();
            if h.is_empty() || h.starts_with('#') {
                continue;
            }
            certs.get(h).with_context(|| {
                format!(
                    "{}:{}: cannot mint a certificate for {h:?}",
                    p.display(),
                    i + 1
                )
            })?;
        }
        eprintln!(
            "origin: minted {} host certificates from {}",
            certs.minted(),
            p.display()
        );
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let delay = opts.default_delay;
    let mut origin = Origin {
        http: Vec::new(),
        https: Vec::new(),
        dns: None,
        ca_pem,
    };
    for addr in &opts.http {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("origin: cannot listen on {addr}"))?;
        origin.http.push(l.local_addr()?);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_conn(s, delay));
            }
        });
    }
    for addr in &opts.https {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("origin: cannot listen on {addr}"))?;
        origin.https.push(l.local_addr()?);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        serve_conn(tls, delay).await;
                    }
                });
            }
        });
    }
    if let Some(addr) = opts.dns {
        let sock = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("origin: cannot bind DNS {addr}"))?;
        origin.dns = Some(sock.local_addr()?);
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(answer) = dns_answer(&buf[..n]) {
                    let _ = sock.send_to(&answer, from).await;
                }
            }
        });
    }
    Ok(origin)
}

/// Minimal DNS: A → 127.0.0.1 (TTL 300), anything else → NOERROR, no answer.
pub fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    while i < q.len() && q[i] != 0 {
        i += 1 + q[i] as usize;
    }
    let qend = i + 5;
    if qend > q.len() {
        return None;
    }
    let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[
        0x81,
        0x80,
        0,
        1,
        0,
        if qtype == 1 { 1 } else { 0 },
        0,
        0,
        0,
        0,
    ]);
    r.extend_from_slice(&q[12..qend]);
    if qtype == 1 {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}
