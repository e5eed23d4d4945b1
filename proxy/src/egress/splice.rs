//! Relay between two plain TCP sockets with `splice(2)` (Linux): past its
//! first [`SPLICE_AFTER`] bytes (buffered: short tunnels would pay more for
//! the pipe than for the copies) each direction moves bytes socket → pipe
//! → socket inside the kernel, so a bulk download through a CONNECT tunnel
//! costs no copies into user space and no user-space buffer.
//!
//! Chosen over the `tokio-splice` crate because the relay must keep what
//! the buffered relay guarantees: half-close, live idle timeout, the
//! shutdown hard stop, byte counts, and no memory held by idle tunnels —
//! each direction's pipe exists only while bytes flow (created on the
//! first readable event, closed on a tick without traffic), so tens of
//! thousands of idle tunnels hold no pipes and no extra descriptors. The
//! syscalls come from `rustix` (safe wrappers, already in the tree).

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::tunnel::{BufferedHalf, Half, HalfState, Relay, RelayStats};

/// Bytes a direction moves through the buffered relay before it switches
/// to a pipe. Most tunnels (a TLS handshake and a page or an API call) end
/// below this, and for them a pipe costs more than it saves: pipe2, fcntl,
/// two closes and a splice that finds nothing per read, against one copy
/// in and out of a 16 KiB buffer. A bulk transfer passes it in
/// milliseconds and then runs spliced.
const SPLICE_AFTER: u64 = 64 * 1024;
/// Most bytes one splice call asks for (the pipe's capacity bounds it).
const SPLICE_CHUNK: usize = 1 << 20;
/// Pipe capacity asked for while bytes flow (the default 64 KiB means a
/// syscall pair per 64 KiB; the kernel caps it at fs.pipe-max-size).
const PIPE_SIZE: usize = 512 * 1024;

/// Relays `client` and `upstream` until both directions are finished, the
/// tunnel is idle for `idle`, or the gateway's hard stop. `client_prefix`:
/// bytes already read from the client (after the CONNECT head), sent
/// upstream first. A direction whose pipe cannot be created when it turns
/// bulk (descriptor limit) stays buffered.
pub fn relay(
    client_prefix: Vec<u8>,
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
) -> impl Future<Output = RelayStats> {
    let up = SpliceHalf {
        start: (!client_prefix.is_empty()).then(|| BufferedHalf::with_pending(client_prefix)),
        ..SpliceHalf::default()
    };
    Relay::new(client, upstream, up, SpliceHalf::default(), idle)
}

/// One direction: reader socket → buffer → writer socket for the first
/// [`SPLICE_AFTER`] bytes, then reader socket → pipe → writer socket.
#[derive(Default)]
struct SpliceHalf {
    /// The buffered start; `None` once the direction is spliced.
    start: Option<BufferedHalf>,
    /// No pipe could be had when the direction turned bulk: buffered to the end.
    buffered_only: bool,
    spliced: bool,
    /// (read end, write end); `None` while the direction is idle.
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes sitting in the pipe, read and not yet written.
    in_pipe: usize,
    read_done: bool,
    finished: bool,
    bytes: u64,
    active: bool,
}

impl Half<TcpStream, TcpStream> for SpliceHalf {
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
    ) -> Poll<()> {
        if !self.spliced {
            let start = self.start.get_or_insert_with(BufferedHalf::default);
            let done = start.poll_copy(cx, reader, writer);
            if self.buffered_only
                || done.is_ready()
                || start.bytes() < SPLICE_AFTER
                || !start.drained()
            {
                return done;
            }
            match open_pipe() {
                Ok(pipe) => self.pipe = Some(pipe),
                Err(_) => {
                    self.buffered_only = true;
                    return done;
                }
            }
            // Bulk: the buffer is empty and the reader has nothing ready
            // (poll_copy returned Pending on the read); the splice loop
            // below waits for the next readable event.
            self.bytes = start.bytes();
            self.active |= start.take_activity();
            self.start = None;
            self.spliced = true;
        }
        loop {
            if self.finished {
                return Poll::Ready(());
            }
            if self.in_pipe > 0 {
                match ready!(self.poll_drain(cx, writer)) {
                    Ok(()) => continue,
                    Err(_) => return self.finish(),
                }
            }
            if self.read_done {
                // Half-close (shutdown(SHUT_WR) on a TCP socket never waits).
                let _ = ready!(std::pin::Pin::new(&mut *writer).poll_shutdown(cx));
                return self.finish();
            }
            match ready!(self.poll_fill(cx, reader)) {
                Ok(0) | Err(_) => self.read_done = true,
                Ok(n) => self.in_pipe = n,
            }
        }
    }
}

impl HalfState for SpliceHalf {
    fn bytes(&self) -> u64 {
        match &self.start {
            Some(start) => start.bytes(),
            None => self.bytes,
        }
    }

    fn take_activity(&mut self) -> bool {
        let started = self.start.as_mut().is_some_and(|s| s.take_activity());
        std::mem::take(&mut self.active) | started
    }

    fn release_idle(&mut self, used_since_last_tick: bool) -> bool {
        if let Some(start) = &mut self.start {
            return start.release_idle(used_since_last_tick);
        }
        if !used_since_last_tick && self.in_pipe == 0 {
            self.pipe = None;
        }
        self.pipe.is_some()
    }

    fn spliced(&self) -> bool {
        self.spliced
    }
}

/// A non-blocking pipe, as large as the kernel allows up to [`PIPE_SIZE`].
fn open_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let pipe = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // Best effort: a smaller pipe only means more syscalls.
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe.1, PIPE_SIZE);
    Ok(pipe)
}

impl SpliceHalf {
    /// Socket → pipe: how many bytes moved (0 at EOF).
    fn poll_fill(&mut self, cx: &mut Context<'_>, reader: &TcpStream) -> Poll<io::Result<usize>> {
        loop {
            ready!(reader.poll_read_ready(cx))?;
            let pipe_in = match &self.pipe {
                Some((_, pipe_in)) => pipe_in,
                None => &self.pipe.insert(open_pipe()?).1,
            };
            let moved = reader.try_io(Interest::READABLE, || {
                rustix::pipe::splice(
                    reader,
                    None,
                    pipe_in,
                    None,
                    SPLICE_CHUNK,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match moved {
                // Readiness was stale: try_io cleared it, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Pipe → socket until the pipe is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>, writer: &TcpStream) -> Poll<io::Result<()>> {
        let Some((pipe_out, _)) = &self.pipe else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        while self.in_pipe > 0 {
            ready!(writer.poll_write_ready(cx))?;
            let moved = writer.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(
                    pipe_out,
                    None,
                    writer,
                    None,
                    self.in_pipe,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.in_pipe -= n;
                    self.bytes += n as u64;
                    self.active = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn finish(&mut self) -> Poll<()> {
        self.finished = true;
        self.pipe = None;
        self.in_pipe = 0;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn bulk_both_ways_with_prefix_and_half_close() {
        let (mut client_app, client_side) = pair().await;
        let (upstream_side, mut upstream_app) = pair().await;
        let relay = tokio::spawn(async move {
            relay(
                b"early ".to_vec(),
                client_side,
                upstream_side,
                Duration::from_secs(5),
            )
            .await
        });
        let up: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..5_000_011u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let (mut ca_r, mut ca_w) = client_app.split();
        let (mut ua_r, mut ua_w) = upstream_app.split();
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let send_up = async {
            ca_w.write_all(&up2).await.unwrap();
            ca_w.shutdown().await.unwrap();
        };
        let send_down = async {
            ua_w.write_all(&down2).await.unwrap();
            ua_w.shutdown().await.unwrap();
        };
        let (_, _, a, b) = tokio::join!(
            send_up,
            send_down,
            ua_r.read_to_end(&mut got_up),
            ca_r.read_to_end(&mut got_down)
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(&got_up[..6], b"early ");
        assert!(
            got_up[6..] == up[..],
            "client bytes arrive intact, after the prefix"
        );
        assert!(got_down == down, "upstream bytes arrive intact");
        let stats = relay.await.unwrap();
        assert_eq!(
            (stats.up, stats.down, stats.idle_timeout),
            (up.len() as u64 + 6, down.len() as u64, false)
        );
    }

    #[tokio::test]
    async fn half_close_still_delivers_the_reply() {
        let (mut client_app, client_side) = pair().await;
        let (upstream_side, mut upstream_app) = pair().await;
        let relay = tokio::spawn(relay(
            Vec::new(),
            client_side,
            upstream_side,
            Duration::from_secs(5),
        ));
        client_app.write_all(b"question").await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"question");
        upstream_app.write_all(b"answer").await.unwrap();
        upstream_app.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_app.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"answer");
        let stats = relay.await.unwrap();
        assert_eq!((stats.up, stats.down), (8, 6));
    }

    /// Sends `data` from the client app (`s[0]`) and polls `up` (client
    /// side `s[1]` → upstream side `s[2]`) until all of it reached the
    /// upstream app (`s[3]`); readiness arrives asynchronously.
    async fn through(up: &mut SpliceHalf, s: &mut [TcpStream; 4], data: Vec<u8>) {
        let want = up.bytes() + data.len() as u64;
        let mut got = vec![0u8; data.len()];
        let [client_app, client_side, upstream_side, upstream_app] = s;
        let send = client_app.write_all(&data);
        let recv = upstream_app.read_exact(&mut got);
        let pump = async {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while up.bytes() < want && std::time::Instant::now() < deadline {
                let _ = up.poll_copy(&mut cx, client_side, upstream_side);
                tokio::task::yield_now().await;
            }
        };
        let (sent, (), read) = tokio::join!(send, pump, recv);
        sent.unwrap();
        read.unwrap();
        assert!(got == data, "bytes arrive intact");
    }

    #[tokio::test]
    async fn short_transfers_stay_buffered_and_an_idle_tunnel_gives_its_pipes_back() {
        let (client_app, client_side) = pair().await;
        let (upstream_side, upstream_app) = pair().await;
        let mut up = SpliceHalf::default();
        let mut sockets = [client_app, client_side, upstream_side, upstream_app];
        through(&mut up, &mut sockets, b"ping".to_vec()).await;
        assert!(up.pipe.is_none() && !up.spliced(), "a few bytes: no pipe");
        through(&mut up, &mut sockets, vec![7u8; SPLICE_AFTER as usize]).await;
        through(&mut up, &mut sockets, b"bulk".to_vec()).await;
        assert!(up.spliced(), "past SPLICE_AFTER the direction is spliced");
        assert!(up.pipe.is_some(), "a pipe while bytes flow");
        assert_eq!(up.bytes(), SPLICE_AFTER + 8);
        let used = up.take_activity();
        assert!(up.release_idle(used), "kept across a short wait");
        assert!(!up.release_idle(false), "closed on a tick without traffic");

        let [_client_app, client_side, upstream_side, _upstream_app] = sockets;
        let stats = tokio::time::timeout(
            Duration::from_secs(5),
            relay(
                Vec::new(),
                client_side,
                upstream_side,
                Duration::from_millis(200),
            ),
        )
        .await
        .expect("the relay ends on idleness");
        assert!(stats.idle_timeout);
    }
}
