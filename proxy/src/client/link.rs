//! The one mTLS HTTP/2 connection to the gateway: connect, keepalive
//! PINGs, reconnect with exponential backoff and jitter, site assertions,
//! and opening CONNECT streams / sending requests on it.
//!
//! While the connection is down, [`Link::sender`] returns `None` at once
//! (callers answer 502 / a SOCKS failure immediately) and wakes the
//! reconnect loop, so traffic resumes as soon as the gateway is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::ClientConfig;
use super::signin::{ProviderInfo, UserToken};
use crate::beacon::ASSERTION_HEADER;

pub type LinkBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum StreamError {
    /// No gateway connection (the text says why).
    Down(String),
    /// The gateway answered, but not 200 (e.g. 403 block page): status and body.
    Refused {
        status: StatusCode,
        headers: http::HeaderMap,
        body: Bytes,
    },
    /// The connection failed while opening the stream, or no answer in time.
    Failed(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Down(why) => write!(f, "the komugate gateway is unreachable ({why})"),
            StreamError::Refused { status, .. } => write!(f, "the gateway refused: {status}"),
            StreamError::Failed(why) => write!(f, "gateway stream failed: {why}"),
        }
    }
}

pub struct Link {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    device_id: String,
    sender: Mutex<Option<SendRequest<LinkBody>>>,
    assertion: Mutex<Option<String>>,
    last_error: Mutex<String>,
    wake: Notify,
    /// Connections established so far (1 after the first connect).
    pub connects: AtomicU64,
    /// Authority used in `https://` requests to the gateway itself.
    authority: String,
    /// The gateway's PAC file, as last fetched.
    pub(crate) gateway_pac: Mutex<Option<String>>,
    /// The device key (TLS client authentication, posture reports).
    key: Arc<dyn rustls::sign::SigningKey>,
    device_cert: rustls_pki_types::CertificateDer<'static>,
    /// The signed-in user's token, presented again on every new connection.
    user: Mutex<Option<UserToken>>,
    /// Signalled when the user's token changes (renewal scheduling).
    pub token_changed: Notify,
    /// Full-device mode's counters, for the local status page.
    #[cfg(target_os = "linux")]
    pub(crate) tun_stats: std::sync::OnceLock<Arc<super::tun::Stats>>,
}

/// How the gateway took a user token.
pub enum Presented {
    /// The session the gateway started: user, groups, expiry.
    Accepted(serde_json::Value),
    /// The sign-in was ended (sign-out, logout at the provider); the token
    /// is forgotten.
    Ended(String),
    Refused {
        reason: String,
        message: String,
    },
}

impl Link {
    pub fn new(cfg: ClientConfig) -> Result<Link> {
        let certs = crate::pki::load_certs(&cfg.cert).context("--cert")?;
        let (key, hardware) = super::keystore::load(&cfg)?;
        let device = crate::device_auth::identity_from_cert(&certs[0])
            .with_context(|| format!("{}: not a device certificate", cfg.cert.display()))?;
        let device_cert = certs[0].clone();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(certs, key.clone()));
        let mismatch = |e: String| {
            anyhow!(
                "{} / {}: the device key does not match the certificate: {e}",
                cfg.cert.display(),
                cfg.key_description()
            )
        };
        match certified.keys_match() {
            Ok(()) => {}
            // A token key does not export its public half: sign and verify.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                crate::users::posture::key_matches_cert(&device_cert, key.as_ref())
                    .map_err(mismatch)?
            }
            Err(e) => return Err(mismatch(e.to_string())),
        }
        let mut roots = rustls::RootCertStore::empty();
        for ca in crate::pki::load_certs(&cfg.ca).context("--ca")? {
            roots
                .add(ca)
                .map_err(|e| anyhow!("{}: unusable CA certificate: {e}", cfg.ca.display()))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(super::keystore::DeviceCert(certified)));
        tls.alpn_protocols = vec![b"h2".to_vec()];
        if hardware {
            // Every connection signs with the token: a resumed session would
            // let the link come back after the token is removed.
            tls.resumption = rustls::client::Resumption::disabled();
        }
        let authority = match cfg.server.rsplit_once(':') {
            Some((_, port)) => {
                let name = cfg.tls_name();
                if name.contains(':') {
                    format!("[{name}]:{port}")
                } else {
                    format!("{name}:{port}")
                }
            }
            None => cfg.server.clone(),
        };
        Ok(Link {
            device_id: device.device_id,
            tls: Arc::new(tls),
            sender: Mutex::new(None),
            assertion: Mutex::new(None),
            last_error: Mutex::new("not connected yet".into()),
            wake: Notify::new(),
            connects: AtomicU64::new(0),
            authority,
            gateway_pac: Mutex::new(None),
            key,
            device_cert,
            user: Mutex::new(None),
            token_changed: Notify::new(),
            #[cfg(target_os = "linux")]
            tun_stats: std::sync::OnceLock::new(),
            cfg,
        })
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The current connection, or `None` (and a reconnect is triggered).
    pub fn sender(&self) -> Option<SendRequest<LinkBody>> {
        let s = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match s {
            Some(s) if !s.is_closed() => Some(s),
            _ => {
                self.wake.notify_one();
                None
            }
        }
    }

    /// Someone needs the link (traffic while it is down): reconnect soon
    /// instead of at the full backoff.
    pub fn demand(&self) {
        self.wake.notify_one();
    }

    pub fn is_up(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    fn down_reason(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current site assertion, if a beacon gave one.
    pub fn assertion(&self) -> Option<String> {
        self.assertion
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn decorate<B>(&self, req: &mut Request<B>) {
        if let Some(token) = self.assertion() {
            if let Ok(v) = HeaderValue::from_str(&token) {
                req.headers_mut().insert(ASSERTION_HEADER, v);
            }
        }
    }

    /// Opens a CONNECT stream to `authority` (host:port).
    pub async fn tunnel(&self, authority: &str) -> Result<Upgraded, StreamError> {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(empty_body())
            .map_err(|e| StreamError::Failed(format!("bad CONNECT target {authority:?}: {e}")))?;
        self.open_stream(req).await
    }

    /// Opens a CONNECT-UDP flow (RFC 9298) to `host:port`: HTTP/2 extended
    /// CONNECT, then a capsule stream each way (one DATAGRAM per UDP payload).
    pub async fn connect_udp(&self, host: &str, port: u16) -> Result<Upgraded, StreamError> {
        let uri = format!("https://{}{}", self.authority, masque::udp_path(host, port));
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .header(
                masque::CAPSULE_PROTOCOL_HEADER,
                masque::CAPSULE_PROTOCOL_VALUE,
            )
            .body(empty_body())
            .map_err(|e| StreamError::Failed(format!("bad CONNECT-UDP target {host:?}: {e}")))?;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(masque::PROTOCOL));
        self.open_stream(req).await
    }

    /// Sends a CONNECT (plain or extended) and takes the stream on a 200.
    async fn open_stream(&self, mut req: Request<LinkBody>) -> Result<Upgraded, StreamError> {
        self.decorate(&mut req);
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(refused(resp).await);
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|e| StreamError::Failed(format!("CONNECT stream: {e}")))
    }

    /// Sends a request (absolute URI) on the connection.
    pub async fn request(
        &self,
        mut req: Request<LinkBody>,
    ) -> Result<Response<Incoming>, StreamError> {
        self.decorate(&mut req);
        self.send(req).await
    }

    /// A request to the gateway itself (`https://gateway/path`).
    pub async fn gateway_request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, StreamError> {
        let uri = format!("https://{}{path}", self.authority);
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            b = b
                .header(http::header::CONTENT_TYPE, ct)
                .header(http::header::ACCEPT, ct);
        }
        let req = b
            .body(
                http_body_util::Full::new(body)
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| StreamError::Failed(e.to_string()))?;
        self.request(req).await
    }

    async fn send(&self, mut req: Request<LinkBody>) -> Result<Response<Incoming>, StreamError> {
        *req.version_mut() = http::Version::HTTP_2;
        let Some(mut sender) = self.sender() else {
            return Err(StreamError::Down(self.down_reason()));
        };
        let timeout = self.cfg.connect_timeout() + Duration::from_secs(10);
        match tokio::time::timeout(timeout, async {
            sender.ready().await?;
            sender.send_request(req).await
        })
        .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                if sender.is_closed() {
                    self.wake.notify_one();
                    Err(StreamError::Down(format!("connection lost: {e}")))
                } else {
                    Err(StreamError::Failed(e.to_string()))
                }
            }
            Err(_) => Err(StreamError::Failed(format!(
                "no answer from the gateway within {timeout:?}"
            ))),
        }
    }

    /// The reconnect loop; returns when `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let min = Duration::from_millis(self.cfg.backoff_min_ms);
        let max = Duration::from_millis(self.cfg.backoff_max_ms);
        let mut backoff = min;
        let mut failures = 0u64;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.connect_once() => r,
            };
            match attempt {
                Ok(conn) => {
                    backoff = min;
                    failures = 0;
                    let n = self.connects.fetch_add(1, Ordering::SeqCst) + 1;
                    tracing::info!(
                        "connected to the gateway {} (connection #{n})",
                        self.cfg.server
                    );
                    let refresher = tokio::spawn(self.clone().refresh_loop());
                    let identity = tokio::spawn(self.clone().after_connect());
                    tokio::select! {
                        _ = shutdown.cancelled() => { refresher.abort(); identity.abort(); return; }
                        r = conn => {
                            let why = match r { Ok(()) => "closed by the gateway".to_string(), Err(e) => e.to_string() };
                            tracing::warn!("gateway connection lost: {why}; reconnecting");
                            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = format!("connection lost: {why}");
                        }
                    }
                    refresher.abort();
                    identity.abort();
                    *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    // An assertion is bound to the connection it was first used on.
                    *self.assertion.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            "cannot connect to the gateway {} (attempt {failures}): {e:#}",
                            self.cfg.server
                        );
                    }
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = format!("{e:#}");
                }
            }
            let delay = jitter(backoff);
            backoff = (backoff * 2).min(max);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {},
                // Demand (a local connection while down): retry soon, not at full backoff.
                _ = self.wake.notified() => tokio::time::sleep(jitter(min)).await,
            }
        }
    }

    /// TCP + TLS (ALPN h2) + HTTP/2 handshake; publishes the sender after
    /// asking the beacons for an assertion. Returns the connection future.
    async fn connect_once(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<(), hyper::Error>>> {
        let timeout = self.cfg.connect_timeout();
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&self.cfg.server))
            .await
            .map_err(|_| {
                anyhow!(
                    "TCP connect to {} timed out after {timeout:?}",
                    self.cfg.server
                )
            })?
            .with_context(|| format!("TCP connect to {}", self.cfg.server))?;
        crate::multiplexed_socket::tune(&tcp);
        let name = ServerName::try_from(self.cfg.tls_name())
            .map_err(|e| anyhow!("server name {:?}: {e}", self.cfg.tls_name()))?;
        let tls = tokio::time::timeout(timeout, tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake with {} timed out", self.cfg.server))?
            .with_context(|| format!("TLS handshake with {} (is --ca the CA of the gateway's certificate, and the device certificate valid?)", self.cfg.server))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!(
                "the gateway {} did not negotiate HTTP/2 (ALPN h2)",
                self.cfg.server
            );
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.cfg.keepalive()))
            .keep_alive_timeout(self.cfg.keepalive_timeout())
            .keep_alive_while_idle(true)
            .handshake::<_, LinkBody>(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake with the gateway")?;
        // Drive the connection while the beacon is asked.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = done_tx.send(conn.await);
        });
        self.fetch_assertion().await;
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        Ok(async move { done_rx.await.unwrap_or(Ok(())) })
    }

    /// What the gateway needs after every new connection: the user's token
    /// again (the gateway may have restarted) and a posture report, then a
    /// report every `posture_interval_secs`.
    async fn after_connect(self: Arc<Self>) {
        let held = self.user.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = held {
            if t.expires_at > crate::oidc::unix_now() {
                match self.present(t).await {
                    Ok(Presented::Accepted(_)) => {}
                    Ok(Presented::Ended(m)) => {
                        tracing::warn!("the gateway ended the user's sign-in: {m}")
                    }
                    Ok(Presented::Refused { reason, message }) => tracing::warn!(
                        "the gateway refused the user's token again ({reason}): {message}"
                    ),
                    Err(e) => tracing::warn!("presenting the user's token again: {e:#}"),
                }
            } else {
                self.set_user(None);
                tracing::warn!("the user's sign-in has expired: sign in again");
            }
        }
        if !self.cfg.posture {
            return;
        }
        let every = Duration::from_secs(self.cfg.posture_interval_secs.max(1));
        loop {
            if let Err(e) = self.send_posture().await {
                tracing::warn!("posture report: {e:#}");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The signed-in user's token, if any.
    pub fn user_token(&self) -> Option<UserToken> {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The device certificate (DER).
    pub fn device_cert(&self) -> &[u8] {
        self.device_cert.as_ref()
    }

    /// A JSON request to the gateway's own endpoints on the link.
    async fn gateway_json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = self
            .gateway_request(method, path, Some("application/json"), body)
            .await
            .map_err(|e| anyhow!("{path}: {e}"))?;
        let status = resp.status();
        let bytes = collect_limited(resp.into_body(), 256 * 1024).await?;
        let v = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok((status, v))
    }

    /// Which provider and client id the gateway takes tokens from.
    pub async fn provider_info(&self) -> Result<ProviderInfo> {
        let (status, v) = self
            .gateway_json(Method::GET, "/.komugate/user/config", None)
            .await?;
        if status != StatusCode::OK {
            bail!(
                "the gateway offers no user sign-in ({status}): {}",
                v["message"].as_str().unwrap_or("")
            );
        }
        serde_json::from_value(v).map_err(|e| anyhow!("the gateway's sign-in settings: {e}"))
    }

    fn set_user(&self, token: Option<UserToken>) {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = token;
        self.token_changed.notify_one();
    }

    /// Stops renewing `held` (still the current token): the provider
    /// refused, or it expired. The session ends at its `exp`.
    pub fn drop_renewal(&self, held: &UserToken) {
        let mut cur = self.user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cur.as_mut().filter(|t| t.id_token == held.id_token) {
            t.renewal = None;
        }
        drop(cur);
        self.token_changed.notify_one();
    }

    /// Hands the user's ID token to the gateway; the user and groups it
    /// accepted. The token is kept and presented again on reconnects.
    pub async fn present_token(&self, token: UserToken) -> Result<serde_json::Value> {
        match self.present(token).await? {
            Presented::Accepted(v) => Ok(v),
            Presented::Ended(message) => {
                bail!("the gateway refused the sign-in (signed_out): {message}")
            }
            Presented::Refused { reason, message } => {
                bail!("the gateway refused the sign-in ({reason}): {message}")
            }
        }
    }

    /// [`Link::present_token`], telling an ended sign-in (the token is
    /// then forgotten) from other refusals.
    pub async fn present(&self, token: UserToken) -> Result<Presented> {
        let (status, v) = self
            .gateway_json(
                Method::POST,
                "/.komugate/user/sign-in",
                Some(serde_json::json!({"id_token": token.id_token, "binding_salt": token.binding_salt})),
            )
            .await?;
        if status == StatusCode::OK {
            self.set_user(Some(token));
            return Ok(Presented::Accepted(v));
        }
        let reason = v["reason"].as_str().unwrap_or("?").to_string();
        let message = v["message"].as_str().unwrap_or("").to_string();
        if reason == "signed_out" {
            self.set_user(None);
            return Ok(Presented::Ended(message));
        }
        Ok(Presented::Refused { reason, message })
    }

    /// Signs the user out at the gateway (and forgets the token): whether
    /// a user was signed in on the device.
    pub async fn sign_out(&self) -> Result<bool> {
        self.set_user(None);
        let (status, v) = self
            .gateway_json(Method::POST, "/.komugate/user/sign-out", None)
            .await?;
        if status != StatusCode::OK {
            bail!("sign-out refused ({status}): {v}");
        }
        Ok(v["signed_out"].as_bool().unwrap_or(false))
    }

    /// Collects, signs and sends a posture report.
    pub async fn send_posture(&self) -> Result<()> {
        let facts = super::posture::collect(&self.cfg)?;
        let report = crate::users::posture::Report {
            device: self.device_id.clone(),
            time: crate::oidc::unix_now(),
            nonce: crate::oidc::b64url(&crate::oidc::random::<18>()),
            facts,
        };
        let signed =
            crate::users::posture::sign(&report, self.key.as_ref()).map_err(|e| anyhow!("{e}"))?;
        let (status, v) = self
            .gateway_json(
                Method::POST,
                "/.komugate/posture",
                Some(serde_json::to_value(&signed)?),
            )
            .await?;
        if status != StatusCode::OK {
            bail!(
                "the gateway refused the posture report ({}): {}",
                v["reason"].as_str().unwrap_or("?"),
                v["message"].as_str().unwrap_or("")
            );
        }
        Ok(())
    }

    async fn refresh_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.beacon_refresh_secs.max(1));
        self.fetch_pac().await;
        loop {
            tokio::time::sleep(every).await;
            self.fetch_assertion().await;
            self.fetch_pac().await;
        }
    }

    /// Asks the configured beacons (first answer wins) for an assertion.
    async fn fetch_assertion(&self) {
        if self.cfg.beacons.is_empty() {
            return;
        }
        let mut got = None;
        for url in &self.cfg.beacons {
            match fetch_token(url, &self.device_id).await {
                Ok(t) => {
                    got = Some(t);
                    break;
                }
                Err(e) => tracing::debug!("beacon {url}: {e:#}"),
            }
        }
        let mut cur = self.assertion.lock().unwrap_or_else(|e| e.into_inner());
        match (&got, cur.is_some()) {
            (Some(_), false) => tracing::info!("site beacon reachable: sending site assertions"),
            (None, true) => tracing::info!("no site beacon reachable: off-site"),
            _ => {}
        }
        *cur = got;
    }

    async fn fetch_pac(&self) {
        match self
            .gateway_request(Method::GET, "/proxy.pac", None, Bytes::new())
            .await
        {
            Ok(resp) if resp.status() == StatusCode::OK => {
                if let Ok(body) = collect_limited(resp.into_body(), 1 << 20).await {
                    if let Ok(text) = String::from_utf8(body.to_vec()) {
                        *self.gateway_pac.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
                    }
                }
            }
            Ok(resp) => tracing::debug!("gateway /proxy.pac: {}", resp.status()),
            Err(e) => tracing::debug!("gateway /proxy.pac: {e}"),
        }
    }
}

/// `GET <beacon>?device=ID` over plain HTTP with a 2 s limit.
async fn fetch_token(url: &str, device: &str) -> Result<String> {
    let uri: http::Uri = url.parse().map_err(|e| anyhow!("{e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let limit = Duration::from_secs(2);
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let path = format!("{}?device={device}", uri.path());
        let req = Request::builder()
            .uri(path)
            .header(
                http::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or("beacon"),
            )
            .body(Empty::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = collect_limited(resp.into_body(), 8192).await?;
        if status != StatusCode::OK {
            bail!("beacon answered {status}");
        }
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body).trim().to_string())
    };
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("no answer within {limit:?}"))?
}

fn empty_body() -> LinkBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Reads a body up to `max` bytes.
pub async fn collect_limited<B>(body: B, max: usize) -> Result<Bytes>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(body, max);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| anyhow!("{e}"))
}

async fn refused(resp: Response<Incoming>) -> StreamError {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(5), collect_limited(body, 256 * 1024))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    StreamError::Refused {
        status,
        headers: parts.headers,
        body,
    }
}

/// `d` scaled by a random factor in [0.5, 1.0).
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map(|_| u16::from_le_bytes(b))
        .unwrap_or(32768);
    d.mul_f64(0.5 + (r as f64 / 65536.0) * 0.5)
}
