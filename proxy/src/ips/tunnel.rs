//! Inspection of CONNECT tunnels: the TLS server name (SNI) of the first
//! client bytes against `tls.sni` rules and threat-intel domains, and the
//! first `[ips] stream_depth` bytes of each direction against payload
//! rules. Bytes are inspected as they pass (nothing is held back); a `drop`
//! refuses the bytes that matched and closes both sides of the tunnel.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::engine::Direction;
use super::sni::{parse_client_hello, SniResult};
use super::{EventContext, IpsEvent, Security};
use crate::egress::tunnel::RelayStats;

/// Shared inspection state of one tunnel.
pub struct TunnelInspector {
    sec: Arc<Security>,
    ctx: EventContext,
    port: u16,
    state: Mutex<State>,
    dropped: AtomicBool,
    wakers: [AtomicWaker; 2],
}

struct State {
    up: Vec<u8>,
    down: Vec<u8>,
    sni_pending: bool,
    reported: HashSet<u32>,
    events: Vec<IpsEvent>,
}

enum Feed {
    Continue,
    Done,
    Drop,
}

fn idx(d: Direction) -> usize {
    match d {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    }
}

impl TunnelInspector {
    /// `None` when there is nothing to inspect in tunnels.
    pub fn new(sec: Arc<Security>, ctx: EventContext, port: u16) -> Option<Arc<TunnelInspector>> {
        if !inspects(&sec) {
            return None;
        }
        let sni = sni_screened(&sec);
        Some(Arc::new(TunnelInspector {
            sec,
            ctx,
            port,
            state: Mutex::new(State {
                up: Vec::new(),
                down: Vec::new(),
                sni_pending: sni,
                reported: HashSet::new(),
                events: Vec::new(),
            }),
            dropped: AtomicBool::new(false),
            wakers: [AtomicWaker::new(), AtomicWaker::new()],
        }))
    }

    /// Wraps one side: `client` reads are to-server bytes, `upstream` reads to-client.
    pub fn wrap<S>(self: &Arc<Self>, inner: S, dir: Direction) -> Inspected<S> {
        Inspected {
            inner,
            dir,
            insp: self.clone(),
            done: false,
        }
    }

    /// Events seen so far.
    pub fn events(&self) -> Vec<IpsEvent> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .clone()
    }

    fn feed(&self, dir: Direction, bytes: &[u8]) -> Feed {
        let depth = self.sec.stream_depth;
        let stream_rules = self.sec.engine.has_stream_rules();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let acc = match dir {
            Direction::ToServer => &mut st.up,
            Direction::ToClient => &mut st.down,
        };
        let room = depth.saturating_sub(acc.len());
        acc.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let mut new_events = Vec::new();
        if dir == Direction::ToServer && st.sni_pending {
            match parse_client_hello(&st.up) {
                SniResult::NeedMore if st.up.len() < depth => {}
                SniResult::Sni(name) => {
                    st.sni_pending = false;
                    if let Some(hit) = self.sec.intel.check_host(&name) {
                        new_events.push(self.ctx.threat("sni", &name, &hit));
                    }
                    let matches = self.sec.engine.scan_tls_sni(&name, self.port);
                    new_events.extend(self.ctx.ips("sni", &matches));
                }
                _ => st.sni_pending = false,
            }
        }
        if stream_rules {
            let acc = match dir {
                Direction::ToServer => &st.up,
                Direction::ToClient => &st.down,
            };
            let mut matches = self.sec.engine.scan_stream_prefix(dir, self.port, acc);
            matches.retain(|m| st.reported.insert(m.sid));
            new_events.extend(self.ctx.ips("stream", &matches));
        }
        let drop = new_events.iter().any(|e| e.is_drop());
        st.events.extend(new_events);
        if drop {
            return Feed::Drop;
        }
        let acc_len = match dir {
            Direction::ToServer => st.up.len(),
            Direction::ToClient => st.down.len(),
        };
        let sni_waiting = dir == Direction::ToServer && st.sni_pending;
        if sni_waiting || (stream_rules && acc_len < depth) {
            Feed::Continue
        } else {
            // Keep memory only as long as needed.
            match dir {
                Direction::ToServer => st.up = Vec::new(),
                Direction::ToClient => st.down = Vec::new(),
            }
            Feed::Done
        }
    }

    fn drop_tunnel(&self) {
        self.dropped.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
    }
}

fn blocked() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel closed by the IPS")
}

/// One side of a tunnel with inspection of what is read from it.
pub struct Inspected<S> {
    inner: S,
    dir: Direction,
    insp: Arc<TunnelInspector>,
    done: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Inspected<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.insp.dropped.load(Ordering::Acquire) {
            return Poll::Ready(Err(blocked()));
        }
        this.insp.wakers[idx(this.dir)].register(cx.waker());
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !this.done && buf.filled().len() > before {
                    match this.insp.feed(this.dir, &buf.filled()[before..]) {
                        Feed::Continue => {}
                        Feed::Done => this.done = true,
                        Feed::Drop => {
                            buf.set_filled(before);
                            this.insp.drop_tunnel();
                            return Poll::Ready(Err(blocked()));
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inspected<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.insp.dropped.load(Ordering::Acquire) {
            return Poll::Ready(Err(blocked()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether tunnel bytes are looked at at all under these rules (else a
/// tunnel is relayed untouched, and may be spliced).
pub fn inspects(sec: &Security) -> bool {
    sni_screened(sec) || sec.engine.has_stream_rules()
}

fn sni_screened(sec: &Security) -> bool {
    sec.engine.has_sni_rules() || sec.intel.has_domains()
}

/// Relays a CONNECT tunnel with inspection (or plainly when there is
/// nothing to inspect). Returns the relay figures and the IPS events.
/// A plain function returning the relay (not an `async fn`): the open
/// tunnel holds only the relay and the inspector, not the arguments too.
pub fn relay<C, U>(
    sec: Arc<Security>,
    ctx: EventContext,
    port: u16,
    client: C,
    upstream: U,
    idle: Duration,
) -> impl Future<Output = (RelayStats, Vec<IpsEvent>)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match TunnelInspector::new(sec, ctx, port) {
        None => Either::Left(
            crate::egress::tunnel::relay(client, upstream, idle).map(|stats| (stats, Vec::new())),
        ),
        Some(insp) => {
            let relaying = crate::egress::tunnel::relay(
                insp.wrap(client, Direction::ToServer),
                insp.wrap(upstream, Direction::ToClient),
                idle,
            );
            Either::Right(relaying.map(move |stats| (stats, insp.events())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ips::engine::IpsEngine;
    use crate::ips::threat_intel::ThreatIntel;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn security(rules: &str, intel: &str) -> Arc<Security> {
        let (engine, _) =
            IpsEngine::from_texts(&[(std::path::Path::new("t.rules"), rules)]).unwrap();
        Arc::new(Security {
            engine,
            intel: ThreatIntel::from_texts(&[("ti", intel)]),
            stream_depth: 1024,
            body_depth: 1024,
            report: Default::default(),
        })
    }

    fn ctx() -> EventContext {
        EventContext {
            metrics: Arc::new(crate::metrics::Metrics::new()),
            device: Some("laptop-1".into()),
            client: "127.0.0.1:1".parse().unwrap(),
            target: "x:1".into(),
        }
    }

    async fn run(
        sec: Arc<Security>,
        port: u16,
        send: &[u8],
        reply: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Vec<IpsEvent>) {
        let (mut client_app, client_side) = tokio::io::duplex(65536);
        let (upstream_side, mut upstream_app) = tokio::io::duplex(65536);
        let relay = tokio::spawn(relay(
            sec,
            ctx(),
            port,
            client_side,
            upstream_side,
            Duration::from_secs(5),
        ));
        client_app.write_all(send).await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut got_up = Vec::new();
        let _ = upstream_app.read_to_end(&mut got_up).await;
        let _ = upstream_app.write_all(reply).await;
        let _ = upstream_app.shutdown().await;
        let mut got_down = Vec::new();
        let _ = client_app.read_to_end(&mut got_down).await;
        let (_, events) = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        (got_up, got_down, events)
    }

    #[tokio::test]
    async fn alert_passes_drop_closes() {
        let sec = security(
            "alert tcp any any -> any any (msg:\"hello seen\"; content:\"hello\"; sid:1;)\n\
             drop tcp any any -> any any (msg:\"evil seen\"; content:\"evil\"; sid:2;)\n\
             alert tcp any any -> any any (msg:\"reply\"; flow:to_client; content:\"pong\"; sid:3;)\n",
            "",
        );
        let (up, down, events) = run(sec.clone(), 7000, b"hello world", b"pong").await;
        assert_eq!(up, b"hello world");
        assert_eq!(down, b"pong");
        assert_eq!(
            events.iter().map(|e| e.sid.unwrap()).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let (up, down, events) = run(sec, 7000, b"something evil", b"pong").await;
        assert!(up.is_empty(), "{up:?}");
        assert!(down.is_empty());
        assert_eq!(events[0].sid, Some(2));
        assert!(events[0].is_drop());
    }

    #[tokio::test]
    async fn sni_rules_and_threat_intel() {
        let sec = security("drop tls any any -> any any (msg:\"bad sni\"; tls.sni; content:\"bad.example\"; sid:10;)\n", "c2.example\n");
        let ch = crate::ips::sni::client_hello(Some("www.bad.example"));
        let (up, _, events) = run(sec.clone(), 443, &ch, b"").await;
        assert!(up.is_empty());
        assert_eq!(events[0].sid, Some(10));
        let ch = crate::ips::sni::client_hello(Some("x.c2.example"));
        let (_, _, events) = run(sec.clone(), 443, &ch, b"").await;
        assert_eq!(events[0].rule_name(), "threat-intel");
        let ch = crate::ips::sni::client_hello(Some("good.example"));
        let (up, _, events) = run(sec, 443, &ch, b"").await;
        assert_eq!(up, ch);
        assert!(events.is_empty());
    }
}
