//! Pooled HTTP/1.1 upstream connections (plain `http://`, and HTTPS
//! upstreams offered HTTP/1.1 only), driven by the request's own task and
//! kept as bare sockets while idle.
//!
//! Why not hyper-util's pool: it keeps hyper's whole client connection for
//! an idle socket (an 8 KiB read buffer re-reserved while it waits, an
//! 8 KiB header buffer, a task), ~36 KiB per idle connection, and caps them
//! per host only. Here an idle connection is only its socket: when a
//! response is over and hyper says the connection can take another request
//! (`SendRequest::is_ready`, hyper's own keep-alive verdict), the connection
//! is taken apart (`Connection::into_parts`) and the socket goes into the
//! [`IdleSet`] (global cap, fair across hosts). The next request to the
//! host does a fresh hyper handshake on it (no I/O, a few allocations).
//!
//! Who drives a connection: the task that serves the client (hyper's
//! server connection task, which also runs the proxy's handler and relays
//! the response body) polls it, while it waits for the response head, then
//! from the response body through [`Driver`]. No task per connection, no
//! channel between tasks.
//!
//! Nobody polls an idle socket. One the origin closed is found when it is
//! checked out (one non-blocking read: end of file or stray bytes mean it
//! is not reused) or by the sweep every [`SWEEP_EVERY`], which also closes
//! sockets idle longer than the idle timeout. A request on a reused socket
//! that hyper hands back unsent (the origin closed it in between) is sent
//! again on another connection.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::idle_cap::{IdleMetrics, IdleSet};
use super::upstream::{origin_form, EgressConnector, EgressStream, OriginKey, UpstreamBody};
use super::EgressError;

/// How often idle sockets are checked for closing and expiry.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Why a request through the pool failed.
#[derive(Debug)]
pub enum SendError {
    /// Connecting (DNS, egress guard, TCP, TLS).
    Connect(EgressError),
    /// Writing the request or reading the response head.
    Http(hyper::Error),
}

/// One upstream connection while it carries a request: hyper's two halves.
struct Conn {
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` once the connection future has finished (closed or failed).
    conn: Option<http1::Connection<EgressStream, UpstreamBody>>,
}

impl Conn {
    async fn handshake(io: EgressStream) -> Result<Conn, hyper::Error> {
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        Ok(Conn {
            sender,
            conn: Some(conn),
        })
    }

    /// Polls the connection (writes the request, reads the response into
    /// its body); false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(conn) = &mut self.conn {
            if Pin::new(conn).poll(cx).is_ready() {
                self.conn = None;
            }
        }
        self.conn.is_some()
    }

    /// The bare socket, if hyper is done with the response and would take
    /// another request on it (keep-alive, nothing unread).
    fn into_idle_socket(mut self) -> Option<EgressStream> {
        // One more poll lets hyper finish the response and wait for the
        // next request; nobody needs waking for that.
        let mut cx = Context::from_waker(noop_waker_ref());
        if !(self.drive(&mut cx) && self.sender.is_ready()) {
            return None;
        }
        let parts = self.conn?.into_parts();
        parts.read_buf.is_empty().then_some(parts.io)
    }
}

struct IdleSocket {
    io: EgressStream,
    since: Instant,
}

/// The pool of HTTP/1.1 upstream connections, all hosts and egress sources.
pub struct H1Pool {
    idle: Mutex<IdleSet<OriginKey, IdleSocket>>,
    idle_timeout: Duration,
    metrics: IdleMetrics,
    sweeping: AtomicBool,
}

impl H1Pool {
    /// `cap`: idle sockets across all hosts; `per_host`: for one host (and
    /// egress source); `idle_timeout`: unused this long, a socket is closed.
    pub fn new(
        cap: usize,
        per_host: usize,
        idle_timeout: Duration,
        metrics: IdleMetrics,
    ) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            idle: Mutex::new(IdleSet::new(cap, per_host)),
            idle_timeout,
            metrics,
            sweeping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, IdleSet<OriginKey, IdleSocket>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap on idle sockets across all hosts.
    pub fn cap(&self) -> usize {
        self.lock().cap()
    }

    /// Idle sockets kept now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Idle sockets kept now for `key`.
    pub fn idle_for(&self, key: &OriginKey) -> usize {
        self.lock().len_of(key)
    }

    /// Sends `req` (an absolute URI; the Host header set) to `key`'s
    /// origin. The response's body must be relayed with the [`Driver`]
    /// polled beside it, and the driver dropped after the body.
    /// `connector` makes a new connection when no idle one is usable.
    pub async fn send(
        self: &Arc<Self>,
        key: OriginKey,
        connector: impl Fn() -> EgressConnector,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Driver), SendError> {
        origin_form(req.uri_mut());
        let key = Arc::new(key);
        loop {
            let (io, reused) = match self.checkout(&key) {
                Some(io) => (io, true),
                None => {
                    let https = key.alpn != super::upstream::UpstreamAlpn::None;
                    let io = connector()
                        .connect_to(&key.host, key.port, https)
                        .await
                        .map_err(SendError::Connect)?;
                    (io, false)
                }
            };
            let info = io.info();
            let mut conn = Conn::handshake(io).await.map_err(SendError::Http)?;
            let mut sending = std::pin::pin!(conn.sender.try_send_request(req));
            let answer = std::future::poll_fn(|cx| {
                conn.drive(cx);
                sending.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(mut resp) => {
                    resp.extensions_mut().insert(info);
                    let driver = Driver {
                        conn: Some(conn),
                        key,
                        pool: Arc::downgrade(self),
                    };
                    return Ok((resp, driver));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was written: the idle socket closed under us.
                    // A new connection is not retried.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle socket to `key` that is still open.
    fn checkout(&self, key: &OriginKey) -> Option<EgressStream> {
        loop {
            let mut socket = {
                let mut idle = self.lock();
                let socket = idle.take_newest(key);
                self.metrics.idle.set(idle.len() as i64);
                socket?
            };
            if socket.since.elapsed() < self.idle_timeout && still_open(&mut socket.io) {
                return Some(socket.io);
            }
            // Dropped here, outside the lock: closed.
        }
    }

    /// Keeps `io` for the next request to `key`; closes what that pushes
    /// over the caps.
    fn put(self: &Arc<Self>, key: Arc<OriginKey>, io: EgressStream) {
        let pushed_out = {
            let mut idle = self.lock();
            let pushed_out = idle.put(
                key,
                IdleSocket {
                    io,
                    since: Instant::now(),
                },
            );
            self.metrics.idle.set(idle.len() as i64);
            pushed_out
        };
        self.metrics
            .evictions
            .inc_by(pushed_out.over_cap.len() as u64);
        drop(pushed_out);
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            self.start_sweeping();
        }
    }

    fn start_sweeping(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep();
            }
        });
    }

    /// Closes idle sockets that expired or that the origin closed.
    fn sweep(&self) {
        let closed = {
            let mut idle = self.lock();
            let closed = idle.remove_where(|socket| {
                socket.since.elapsed() < self.idle_timeout && still_open(&mut socket.io)
            });
            self.metrics.idle.set(idle.len() as i64);
            closed
        };
        drop(closed);
    }

    /// Ages every idle socket by `by` (tests of the idle timeout).
    #[cfg(test)]
    fn age_idle(&self, by: Duration) {
        let mut idle = self.lock();
        idle.remove_where(|socket| {
            socket.since -= by;
            true
        });
    }
}

/// An idle socket is usable if a read would block: end of file (the origin
/// closed it), stray bytes or an error all mean it is not. One non-blocking
/// read; the no-op waker is replaced by hyper's when the socket is used.
fn still_open(io: &mut EgressStream) -> bool {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    let mut buf = hyper::rt::ReadBuf::uninit(&mut byte);
    matches!(
        hyper::rt::Read::poll_read(Pin::new(io), &mut cx, buf.unfilled()),
        Poll::Pending
    )
}

/// Drives a response's connection while the body is relayed: poll it with
/// [`Driver::drive`] wherever the body is polled. Dropped after the body,
/// it puts the socket back in the pool if hyper is done with the response
/// (the whole body was read and the connection is kept alive), else closes
/// it.
pub struct Driver {
    conn: Option<Conn>,
    key: Arc<OriginKey>,
    pool: Weak<H1Pool>,
}

impl Driver {
    /// Lets the connection read more of the response into its body.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            conn.drive(cx);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if let (Some(io), Some(pool)) = (conn.into_idle_socket(), self.pool.upgrade()) {
            pool.put(self.key.clone(), io);
        }
    }
}

/// Reads `body` to its end with `driver` polled beside it, as the proxy's
/// body wrapper does, then drops both; the body (tests).
#[cfg(test)]
pub(crate) async fn collect_driven(
    mut body: Incoming,
    mut driver: Driver,
) -> Result<Vec<u8>, hyper::Error> {
    use hyper::body::Body;
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| {
            let poll = Pin::new(&mut body).poll_frame(cx);
            if poll.is_pending() {
                driver.drive(cx);
                return Pin::new(&mut body).poll_frame(cx);
            }
            poll
        })
        .await;
        match frame {
            None => break,
            Some(frame) => {
                if let Some(data) = frame?.data_ref() {
                    out.extend_from_slice(data);
                }
            }
        }
    }
    drop(body);
    drop(driver);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::idle_cap::IdleMetrics;
    use crate::egress::upstream::{upstream_tls_config, UpstreamAlpn, UpstreamPools};
    use crate::egress::Egress;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    /// An origin on `ip` answering `/close-after` by closing the connection
    /// shortly after the response (without saying so), `/empty` with 204,
    /// `/n` with n bytes of `x`; counts the connections it accepted.
    async fn origin(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (addr, accepted)
    }

    async fn serve(stream: tokio::net::TcpStream) {
        let close = Arc::new(tokio::sync::Notify::new());
        let close_now = close.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let close = close_now.clone();
            async move {
                let path = req.uri().path().trim_start_matches('/').to_string();
                let mut resp = match path.as_str() {
                    "empty" => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::NO_CONTENT;
                        r
                    }
                    "close-after" => {
                        close.notify_one();
                        Response::new(Full::new(Bytes::from_static(b"bye")))
                    }
                    n => Response::new(Full::new(Bytes::from(vec![b'x'; n.parse().unwrap_or(1)]))),
                };
                let host = req.headers().get(http::header::HOST).cloned();
                resp.headers_mut().insert(
                    "x-host",
                    host.unwrap_or(http::HeaderValue::from_static("-")),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = conn => {}
            () = async {
                close.notified().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            } => {}
        }
    }

    fn pools(cap: usize) -> UpstreamPools {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let dns: crate::config::DnsConfig = toml::from_str("servers = [\"127.0.0.1:9\"]").unwrap();
        let egress: crate::config::EgressConfig =
            toml::from_str("allow_destinations = [\"127.0.0.0/8\"]").unwrap();
        let egress = Arc::new(Egress::new(&dns, &egress, metrics.clone()).unwrap());
        UpstreamPools::new(
            egress,
            upstream_tls_config(None).unwrap(),
            8,
            Duration::from_secs(60),
            cap,
            IdleMetrics::new(&metrics.registry),
        )
    }

    fn key(addr: SocketAddr) -> OriginKey {
        OriginKey {
            host: addr.ip().to_string(),
            port: addr.port(),
            source: None,
            alpn: UpstreamAlpn::None,
        }
    }

    /// `method` on `path`, the body read as the proxy relays it (the driver
    /// polled beside it), then both dropped; the body's length.
    async fn fetch(
        pools: &UpstreamPools,
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> Result<usize, String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::HOST, addr.to_string())
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let (resp, driver) = pools
            .send_h1(key(addr), req)
            .await
            .map_err(|e| format!("{method} {addr}{path}: {e:?}"))?;
        assert_eq!(resp.headers()["x-host"], addr.to_string().as_str());
        assert_eq!(
            resp.extensions()
                .get::<super::super::upstream::EgressInfo>()
                .map(|i| i.remote),
            Some(addr)
        );
        let body = collect_driven(resp.into_body(), driver)
            .await
            .map_err(|e| format!("body of {method} {addr}{path}: {e}"))?;
        Ok(body.len())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = origin("127.0.0.1").await;
        let pools = pools(64);
        for _ in 0..3 {
            assert_eq!(fetch(&pools, addr, "GET", "/4096").await.unwrap(), 4096);
            assert_eq!(
                fetch(&pools, addr, "GET", "/1000000").await.unwrap(),
                1000000
            );
            assert_eq!(fetch(&pools, addr, "HEAD", "/4096").await.unwrap(), 0);
            assert_eq!(fetch(&pools, addr, "GET", "/empty").await.unwrap(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pools.h1.idle(), 1);
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_closes_the_connection() {
        let (addr, accepted) = origin("127.0.0.1").await;
        let pools = pools(64);
        let req = Request::get(format!("http://{addr}/1000000"))
            .header(http::header::HOST, addr.to_string())
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let (resp, driver) = pools.send_h1(key(addr), req).await.unwrap();
        drop(resp);
        drop(driver);
        assert_eq!(pools.h1.idle(), 0);
        assert_eq!(fetch(&pools, addr, "GET", "/10").await.unwrap(), 10);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_socket_the_origin_closed_is_not_reused() {
        let (addr, accepted) = origin("127.0.0.1").await;
        let pools = pools(64);
        assert_eq!(fetch(&pools, addr, "GET", "/close-after").await.unwrap(), 3);
        assert_eq!(pools.h1.idle(), 1, "hyper saw nothing wrong");
        // The origin closes its end while the socket is idle here.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fetch(&pools, addr, "GET", "/5").await.unwrap(), 5);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_sockets_closed_or_idle_past_the_timeout() {
        let (addr, _) = origin("127.0.0.1").await;
        let (closing, _) = origin("127.0.0.2").await;
        let pools = pools(64);
        fetch(&pools, addr, "GET", "/5").await.unwrap();
        fetch(&pools, closing, "GET", "/close-after").await.unwrap();
        assert_eq!(pools.h1.idle(), 2);
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert_eq!(
            pools.h1.idle(),
            1,
            "the closed one went, the open one stays"
        );
        assert_eq!(pools.h1.idle_for(&key(addr)), 1);
        // Past the 60 s idle timeout.
        pools.h1.age_idle(Duration::from_secs(61));
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert_eq!(pools.h1.idle(), 0);
    }

    /// `n` origins on 127.0.0.2, 127.0.0.3, …: one upstream host each.
    async fn origins(n: usize) -> Vec<(SocketAddr, Arc<AtomicUsize>)> {
        let mut all = Vec::new();
        for i in 0..n {
            all.push(origin(&format!("127.0.1.{}", 2 + i)).await);
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sockets_stay_under_the_cap_and_a_busy_host_keeps_one() {
        const CAP: usize = 8;
        let hosts = origins(40).await;
        let pools = pools(CAP);
        let (busy, busy_accepted) = hosts[0].clone();
        // The busy host: four requests at once leave four idle sockets.
        let burst: Vec<_> = (0..4)
            .map(|_| fetch(&pools, busy, "GET", "/4096"))
            .collect();
        for r in futures_util::future::join_all(burst).await {
            r.unwrap();
        }
        assert_eq!(pools.h1.idle_for(&key(busy)), 4);
        // Every other host once, the busy one again after every few.
        for (i, (addr, _)) in hosts.iter().enumerate().skip(1) {
            fetch(&pools, *addr, "GET", "/4096").await.unwrap();
            assert!(
                pools.h1.idle() <= CAP,
                "{} idle > cap {CAP}",
                pools.h1.idle()
            );
            if i % 3 == 0 {
                fetch(&pools, busy, "GET", "/4096").await.unwrap();
            }
        }
        assert_eq!(pools.h1.idle(), CAP);
        // The fullest host gave up its extra sockets first, then the oldest
        // single ones went; the busy host kept one, so its burst needed no
        // new connection after the first four.
        assert_eq!(pools.h1.idle_for(&key(busy)), 1);
        assert_eq!(busy_accepted.load(Ordering::SeqCst), 4);
        // The oldest quiet hosts lost theirs.
        assert_eq!(pools.h1.idle_for(&key(hosts[1].0)), 0);
        assert_eq!(pools.h1.idle_for(&key(hosts[39].0)), 1);
    }

    /// Many requests at once to a dozen hosts through a cap of two: every
    /// request is answered (no request is lost or left hanging on a
    /// socket the cap closed) and the cap holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_request_fails_while_a_tiny_cap_evicts_under_load() {
        let hosts: Vec<SocketAddr> = origins(12).await.into_iter().map(|(a, _)| a).collect();
        let pools = Arc::new(pools(2));
        let tasks: Vec<_> = (0..24)
            .map(|t| {
                let pools = pools.clone();
                let hosts = hosts.clone();
                tokio::spawn(async move {
                    for i in 0..60 {
                        let addr = hosts[(t * 7 + i * 5) % hosts.len()];
                        fetch(&pools, addr, "GET", "/4096").await?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        let all = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(tasks),
        )
        .await
        .expect("1,440 requests on loopback finish within 60 s");
        for t in all {
            t.unwrap().unwrap();
        }
        assert!(pools.h1.idle() <= 2);
        assert!(pools.h1.metrics.evictions.get() > 0);
    }
}
