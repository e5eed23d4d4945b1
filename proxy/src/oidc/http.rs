//! A small HTTPS client for an OpenID provider's endpoints: one HTTP/1.1
//! request per connection (discovery, keys and code exchange are rare),
//! rustls trusting the public roots (webpki-roots) plus an optional CA
//! file, bounded time and response size. Plain HTTP only to loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest response read (a discovery document or a key set is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl HttpClient {
    /// Trusts the public roots and, if given, the CA certificates in
    /// `extra_ca_pem` (a board's own CA in front of its provider, or a
    /// test CA).
    pub fn new(extra_ca_pem: Option<&[u8]>, timeout: Duration) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let mut added = 0;
            for c in rustls_pki_types::pem::PemObject::pem_slice_iter(pem) {
                let c: rustls_pki_types::CertificateDer = c.map_err(|e| format!("bad PEM: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("not a CA certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(HttpClient {
            tls: Arc::new(tls),
            timeout,
        })
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(Method::GET, url, None, None).await
    }

    /// POSTs an `application/x-www-form-urlencoded` body, with HTTP Basic
    /// authentication when `basic` is given.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Reply, String> {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", super::pct(k), super::pct(v)))
            .collect::<Vec<_>>()
            .join("&");
        let auth = basic.map(|(user, password)| {
            use base64::Engine;
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            let pair = format!("{}:{}", super::pct(user), super::pct(password));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        self.send(Method::POST, url, Some(body), auth).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
        auth: Option<String>,
    ) -> Result<Reply, String> {
        super::check_url("URL", url)?;
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(
                header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(&host),
            )
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("komugate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let tls = self.tls.clone();
        let work = async move {
            let tcp = TcpStream::connect((bare_host.as_str(), port))
                .await
                .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
            if https {
                let name =
                    ServerName::try_from(bare_host.clone()).map_err(|e| format!("{host}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
                exchange(stream, req).await
            } else {
                exchange(tcp, req).await
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{url}: no answer within {} s", self.timeout.as_secs()))?
            .map_err(|e| format!("{url}: {e}"))
    }
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    Ok(Reply { status, body })
}
