//! Upstream servers the gateway talks to: plain HTTP (recording peer
//! address and headers, answering WebSocket upgrades with an echo), TLS
//! with its own CA, and a TCP echo server. Each counts its accepts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body_len: usize,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

struct Task(tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plain HTTP/1.1 upstream. GET answers `hello from upstream <path>`,
/// POST echoes the request body, `Upgrade: websocket` gets 101 + byte echo.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    seen: SeenLog,
    accepts: Arc<AtomicUsize>,
    _task: Task,
}

impl HttpUpstream {
    pub async fn start(ip: &str) -> HttpUpstream {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
        HttpUpstream::serve(listener)
    }

    /// Serves on a listener bound elsewhere (e.g. in another network namespace).
    pub fn serve(listener: TcpListener) -> HttpUpstream {
        let addr = listener.local_addr().unwrap();
        let seen: SeenLog = Default::default();
        let accepts = Arc::new(AtomicUsize::new(0));
        let (seen2, accepts2) = (seen.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                accepts2.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| respond(peer, seen.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        HttpUpstream {
            addr,
            seen,
            accepts,
            _task: Task(task),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn respond(
    peer: SocketAddr,
    seen: SeenLog,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .map(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .unwrap_or(false);
    if websocket {
        seen.lock().unwrap().push(Seen {
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body_len: 0,
        });
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .body(Full::default())
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    seen.lock().unwrap().push(Seen {
        peer,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body_len: body.len(),
    });
    let reply = if parts.method == Method::POST {
        body
    } else {
        Bytes::from(format!("hello from upstream {}", parts.uri.path()))
    };
    Ok(Response::builder()
        .header("x-upstream", "yes")
        .body(Full::new(reply))
        .unwrap())
}

/// An HTTP/1.1 TLS acceptor with a certificate for `names` issued by a new
/// CA named `ca_name`; and that CA (what clients of the server trust).
pub fn tls_acceptor(
    ca_name: &str,
    names: &[&str],
) -> (tokio_rustls::TlsAcceptor, komugate::pki::CaMaterial) {
    let ca = komugate::pki::generate_ca(ca_name).unwrap();
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = ca.issue_server(&sans).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}

/// A TLS (HTTP/1.1) upstream with its own CA; reads each request's body
/// and answers `secure hello`; notes `METHOD host path` of every request.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// The upstream's CA certificate: what a client through the tunnel trusts.
    pub ca: CertificateDer<'static>,
    /// The same CA certificate, PEM (for the gateway's `inspect.upstream_ca`).
    pub ca_pem: String,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    _task: Task,
}

impl TlsUpstream {
    pub async fn start() -> TlsUpstream {
        Self::start_for(&["localhost", "127.0.0.1"]).await
    }

    /// The same, with a certificate for these names (all resolved to 127.0.0.1 by the test's DNS).
    pub async fn start_for(names: &[&str]) -> TlsUpstream {
        let (acceptor, ca) = tls_acceptor("komugate-tests upstream CA", names);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let accepts2 = accepts.clone();
        let requests: Arc<Mutex<Vec<String>>> = Default::default();
        let requests2 = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepts2.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let requests = requests2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let requests = requests.clone();
                        async move {
                            let host = req
                                .headers()
                                .get(header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let line = format!("{} {host} {}", req.method(), req.uri());
                            req.into_body().collect().await?;
                            requests.lock().unwrap().push(line);
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"secure hello",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            ca: ca.cert_der().clone(),
            ca_pem: ca.cert_pem(),
            accepts,
            requests,
            _task: Task(task),
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// `METHOD host path` of every request answered so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// A client config trusting only this upstream's CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// TCP echo server: copies bytes back until EOF, then half-closes.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    _task: Task,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let accepts2 = accepts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepts2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        EchoServer {
            addr,
            accepts,
            _task: Task(task),
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// An upstream that never answers: it accepts connections and holds them
/// without reading or writing (no HTTP response, no TLS handshake).
pub struct SilentServer {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    _task: Task,
}

impl SilentServer {
    pub async fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let accepts2 = accepts.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepts2.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        SilentServer {
            addr,
            accepts,
            _task: Task(task),
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// An address where a TCP connect does not complete for a while: a
/// listener whose accept queue is full and never drained, so the kernel
/// drops new SYNs. Keep the value alive while it is used.
pub struct UnansweredAddress {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

impl UnansweredAddress {
    pub async fn start() -> UnansweredAddress {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(std::time::Duration::from_millis(200), connect).await {
                Ok(Ok(s)) => queued.push(s),
                _ => break,
            }
        }
        UnansweredAddress {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}
