//! The upstream connection an inspected tunnel keeps for its requests.
//!
//! A browser's inspected session sends request after request to one origin,
//! so the tunnel holds one upstream connection for them (as Squid's ssl-bump
//! pins the server connection to the bumped client connection) instead of
//! checking a connection out of the shared pool and back for every request
//! (a tenth of a steady-state request's instructions). When the tunnel ends
//! its connection goes to a small idle list, so the next tunnel to the same
//! origin (a new tab, the handshake-heavy shape) reuses it.
//!
//! Whatever the pinned connection cannot carry goes through the shared pool
//! as before: a request while the pinned HTTP/1.1 connection is busy (HTTP/2
//! clients multiplex), a request to another origin on the same tunnel, a
//! WebSocket upgrade, a request the upstream closed the connection under.
//!
//! A pinned connection that carried nothing for the upstream idle timeout
//! (`[limits] upstream_idle_secs`, as the pools' idle ones) is closed while
//! the tunnel stays open ([`TunnelUpstream::close_when_idle`]): browsers keep
//! quiet sessions for minutes, and each would otherwise hold an upstream TLS
//! connection. The session's next request connects again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::upstream::{
    origin_form, EgressConnector, EgressInfo, EgressStream, OriginKey, UpstreamBody,
};
use super::EgressError;

/// Which connections can carry a request (the shared pools' key).
pub type PinKey = OriginKey;

enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

struct Conn {
    sender: Sender,
    info: EgressInfo,
    /// When a request was last handed to it (or it was left idle).
    last_used: Instant,
}

impl Conn {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
    fn is_ready(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }
}

/// Connections of ended tunnels, waiting for the next tunnel to their origin.
pub struct IdleConns {
    conns: Mutex<HashMap<PinKey, Vec<Conn>>>,
    per_key: usize,
    /// Unused this long, a connection is closed (idle here or pinned).
    idle_timeout: Duration,
}

impl IdleConns {
    pub fn new(per_key: usize, idle_timeout: Duration) -> IdleConns {
        IdleConns {
            conns: Mutex::new(HashMap::new()),
            per_key,
            idle_timeout,
        }
    }

    fn take(&self, key: &PinKey) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(key)?;
        let mut found = None;
        while let Some(c) = list.pop() {
            if c.is_ready() && c.last_used.elapsed() < self.idle_timeout {
                found = Some(c);
                break;
            }
        }
        if list.is_empty() {
            conns.remove(key);
        }
        found
    }

    fn put(&self, key: PinKey, mut conn: Conn) {
        if !conn.is_ready() || self.per_key == 0 {
            return;
        }
        conn.last_used = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.entry(key).or_default();
        list.retain(|c| !c.is_closed() && c.last_used.elapsed() < self.idle_timeout);
        if list.len() < self.per_key {
            list.push(conn);
        }
    }

    /// Idle pinned connections held (for tests and metrics).
    pub fn len(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the pinned connection did not answer a request.
pub enum PinnedError {
    /// It cannot carry this request: send it through the shared pool.
    Declined(Request<UpstreamBody>),
    /// Connecting to the upstream failed (DNS, egress guard, TCP, TLS).
    Connect(EgressError),
    /// The upstream connection failed (handshake, request, response head).
    Http(hyper::Error),
}

/// One tunnel's upstream connection; returned to the idle list on drop.
pub struct TunnelUpstream {
    idle: Arc<IdleConns>,
    slot: Mutex<Option<(PinKey, Conn)>>,
}

impl TunnelUpstream {
    pub fn new(idle: Arc<IdleConns>) -> TunnelUpstream {
        TunnelUpstream {
            idle,
            slot: Mutex::new(None),
        }
    }

    /// Sends `req` (absolute URI, Host set) on the tunnel's connection for
    /// `key`, connecting with `connector` when the tunnel has none yet.
    pub async fn send(
        &self,
        key: PinKey,
        connector: impl FnOnce() -> EgressConnector,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, PinnedError> {
        let reused = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.take() {
                None => None,
                Some((k, c)) if k == key && c.is_ready() => Some(c),
                Some((_, c)) if c.is_closed() => None,
                other => {
                    // Busy, or pinned to another origin: the shared pool.
                    *slot = other;
                    return Err(PinnedError::Declined(req));
                }
            }
        };
        let mut conn = match reused.or_else(|| self.idle.take(&key)) {
            Some(c) => c,
            None => connect(&key, connector()).await?,
        };
        let info = conn.info;
        conn.last_used = Instant::now();
        // The request is handed to the connection now; the connection is
        // pinned again before the answer is awaited (an HTTP/1.1 one stays
        // busy until the response body is read; the next request checks).
        let answer = match &mut conn.sender {
            Sender::H1(s) => {
                origin_form(req.uri_mut());
                Either::Left(s.try_send_request(req))
            }
            Sender::H2(s) => Either::Right(s.try_send_request(req)),
        };
        self.keep(key, conn);
        match answer.await {
            Ok(mut resp) => {
                resp.extensions_mut().insert(info);
                Ok(resp)
            }
            // Not sent (the upstream closed the connection first): the
            // shared pool retries it on a fresh connection.
            Err(mut e) => match e.take_message() {
                Some(req) => Err(PinnedError::Declined(req)),
                None => Err(PinnedError::Http(e.into_error())),
            },
        }
    }

    fn keep(&self, key: PinKey, conn: Conn) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((key, conn));
        } else {
            // Another request pinned a connection meanwhile: this one idles.
            drop(slot);
            self.idle.put(key, conn);
        }
    }
}

impl TunnelUpstream {
    /// Runs for the tunnel's life: closes the pinned connection once it has
    /// carried nothing for the idle timeout (not while an HTTP/1.1 answer is
    /// still being read from it), freeing its TLS session and buffers while
    /// the client keeps the session open.
    pub async fn close_when_idle(&self) -> std::convert::Infallible {
        let timeout = self.idle.idle_timeout;
        let mut wait = timeout;
        loop {
            tokio::time::sleep(wait).await;
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            wait = match slot.as_ref() {
                Some((_, c)) if c.is_ready() || c.is_closed() => {
                    match timeout.checked_sub(c.last_used.elapsed()) {
                        Some(left) if !left.is_zero() && !c.is_closed() => left,
                        _ => {
                            *slot = None;
                            timeout
                        }
                    }
                }
                // Busy (an answer in flight) or nothing pinned: look again later.
                _ => timeout,
            };
        }
    }
}

impl Drop for TunnelUpstream {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((key, conn)) = slot.take() {
            self.idle.put(key, conn);
        }
    }
}

/// A new upstream connection for `key`: connect (egress guard, TLS with
/// the ALPN offer of `key`), then the HTTP handshake the ALPN chose.
async fn connect(key: &PinKey, connector: EgressConnector) -> Result<Conn, PinnedError> {
    let stream = connector
        .connect_to(&key.host, key.port, true)
        .await
        .map_err(PinnedError::Connect)?;
    let (info, h2) = match &stream {
        EgressStream::Tls { info, h2, .. } => (*info, *h2),
        EgressStream::Plain { info, .. } => (*info, false),
    };
    let sender = if h2 {
        let (s, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, UpstreamBody>(stream)
            .await
            .map_err(PinnedError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("pinned upstream HTTP/2 connection: {e}");
            }
        });
        Sender::H2(s)
    } else {
        let (s, conn) = http1::Builder::new()
            .handshake::<_, UpstreamBody>(stream)
            .await
            .map_err(PinnedError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("pinned upstream HTTP/1.1 connection: {e}");
            }
        });
        Sender::H1(s)
    };
    Ok(Conn {
        sender,
        info,
        last_used: Instant::now(),
    })
}
