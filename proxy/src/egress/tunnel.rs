//! Bidirectional relay for CONNECT tunnels: copies both ways, propagates a
//! half-close (EOF on one side shuts down writing on the other), and closes
//! the tunnel when neither side has sent anything for the idle timeout.
//!
//! One future polls both directions (no `tokio::io::split` and its lock).
//! Each direction owns a buffer only while bytes flow: it is kept across
//! short waits (a bulk download waits for the socket many times a second)
//! and freed on the next tick without traffic, so the tens of thousands of
//! idle tunnels a board has hold no buffer memory. Writes are flushed only
//! when the reader has nothing more ready, so a TLS writer sends full
//! records instead of one per read.
//!
//! Two plain TCP sockets are relayed with `splice(2)` instead
//! ([`crate::egress::splice`]): the bytes never enter user space.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Relay buffer of one direction while bytes flow; a read that fills it
/// grows it fourfold, up to [`BULK_BUF_SIZE`]: a bulk transfer then moves
/// 256 KiB per wake-up. Against 64 KiB that cut the mTLS listener's CPU per
/// GiB by a fifth and its context switches by two thirds (benches/RESULTS.md,
/// "bulk"); the buffer is freed when the transfer pauses, as before.
const BUF_SIZE: usize = 16 * 1024;
const BULK_BUF_SIZE: usize = 256 * 1024;
/// Stack space for the first read of a busy period (see
/// `BufferedHalf::poll_first_fill`); at most the buffer it moves into.
const PROBE_SIZE: usize = BUF_SIZE;
/// How soon a buffer unused since the last tick is given back.
pub(crate) const BUFFER_RELEASE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set by `Gateway::spawn_tracked`: cancelled when the shutdown drain
    /// time is over, so relays end (and are logged) instead of vanishing.
    pub static HARD_STOP: tokio_util::sync::CancellationToken;
}

/// Byte counts of a finished relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    pub idle_timeout: bool,
    /// Closed by the gateway at shutdown (drain time over).
    pub cut: bool,
    /// Relayed with splice(2) (both ends plain sockets).
    pub spliced: bool,
}

impl RelayStats {
    /// The `relay` label of `komugate_tunnel_relays_total`.
    pub fn relay_kind(&self) -> &'static str {
        if self.spliced {
            "splice"
        } else {
            "buffered"
        }
    }
}

/// What one direction of a relay does when polled; implemented by the
/// buffered copy below and by the splice copy.
pub(crate) trait Half<R, W> {
    /// Moves what it can from `reader` to `writer`; `Ready` once this
    /// direction is finished (EOF passed on as a half-close, or an I/O error).
    fn poll_copy(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<()>;
}

/// What the driver asks of a direction between polls.
pub(crate) trait HalfState {
    /// Bytes moved so far.
    fn bytes(&self) -> u64;
    /// Whether bytes moved since the last call (and clears the mark).
    fn take_activity(&mut self) -> bool;
    /// Frees buffers (or pipes) when nothing is in flight. Returns whether
    /// it still holds one.
    fn release_idle(&mut self, used_since_last_tick: bool) -> bool;
    /// Whether bytes of this direction went through splice(2).
    fn spliced(&self) -> bool {
        false
    }
}

pin_project_lite::pin_project! {
    /// One tunnel's relay: drives both directions until both are finished,
    /// the tunnel has been idle for `idle`, or the gateway's hard stop. The
    /// shared driver of the buffered and the splice relay.
    ///
    /// A named future rather than an `async fn`: every open tunnel holds it
    /// for its whole life, and an `async fn` keeps its moved-in arguments
    /// and the captures of its inner closure beside the state that uses
    /// them. Here each part is stored once (tests::a_relay_is_small).
    pub(crate) struct Relay<C, U, A, B> {
        client: C,
        upstream: U,
        up: A,
        down: B,
        idle: Duration,
        check_every: Duration,
        quiet_since: Instant,
        up_done: bool,
        down_done: bool,
        // The hard stop of `Gateway::spawn_tracked` (none outside it).
        #[pin]
        stopped: Option<WaitForCancellationFutureOwned>,
        // The next idle check (and buffer release).
        #[pin]
        tick: Sleep,
    }
}

impl<C, U, A, B> Relay<C, U, A, B>
where
    A: Half<C, U> + HalfState,
    B: Half<U, C> + HalfState,
{
    /// Called inside the tunnel's task (it reads the task's hard stop).
    pub(crate) fn new(client: C, upstream: U, up: A, down: B, idle: Duration) -> Self {
        let check_every = (idle / 4).max(Duration::from_millis(50));
        Relay {
            client,
            upstream,
            up,
            down,
            idle,
            check_every,
            quiet_since: Instant::now(),
            up_done: false,
            down_done: false,
            stopped: HARD_STOP.try_with(|t| t.clone().cancelled_owned()).ok(),
            tick: tokio::time::sleep(check_every.min(BUFFER_RELEASE)),
        }
    }
}

impl<C, U, A, B> Future for Relay<C, U, A, B>
where
    A: Half<C, U> + HalfState,
    B: Half<U, C> + HalfState,
{
    type Output = RelayStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayStats> {
        let mut this = self.project();
        let stats = |up: &A, down: &B, idle_timeout, cut| RelayStats {
            up: up.bytes(),
            down: down.bytes(),
            idle_timeout,
            cut,
            spliced: up.spliced() || down.spliced(),
        };
        if let Some(stopped) = this.stopped.as_mut().as_pin_mut() {
            if stopped.poll(cx).is_ready() {
                return Poll::Ready(stats(this.up, this.down, false, true));
            }
        }
        *this.up_done =
            *this.up_done || this.up.poll_copy(cx, this.client, this.upstream).is_ready();
        *this.down_done = *this.down_done
            || this
                .down
                .poll_copy(cx, this.upstream, this.client)
                .is_ready();
        if *this.up_done && *this.down_done {
            return Poll::Ready(stats(this.up, this.down, false, false));
        }
        while this.tick.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let (up_used, down_used) = (this.up.take_activity(), this.down.take_activity());
            if up_used || down_used {
                *this.quiet_since = now;
            } else if now.duration_since(*this.quiet_since) >= *this.idle {
                return Poll::Ready(stats(this.up, this.down, true, false));
            }
            let holding = this.up.release_idle(up_used) | this.down.release_idle(down_used);
            let next = if holding {
                (*this.check_every).min(BUFFER_RELEASE)
            } else {
                *this.check_every
            };
            this.tick.as_mut().reset((now + next).into());
        }
        Poll::Pending
    }
}

/// Relays until both directions reached EOF, an I/O error, or idleness.
pub fn relay<C, U>(client: C, upstream: U, idle: Duration) -> impl Future<Output = RelayStats>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    Relay::new(
        client,
        upstream,
        BufferedHalf::default(),
        BufferedHalf::default(),
        idle,
    )
}

/// A tunnel end that may be a plain TCP socket underneath (the plain
/// listener's client connection).
pub trait IntoTcp: Sized {
    /// The socket and the bytes to replay before reading from it, or the
    /// stream back when it is not a plain socket.
    fn into_tcp(self) -> Result<(Vec<u8>, tokio::net::TcpStream), Self>;
}

/// Relays a client to an upstream socket: with `splice(2)` when the client
/// is a plain socket too (Linux), else through buffers.
pub fn relay_to_tcp<C>(
    client: C,
    upstream: tokio::net::TcpStream,
    idle: Duration,
) -> impl Future<Output = RelayStats>
where
    C: IntoTcp + AsyncRead + AsyncWrite + Unpin,
{
    #[cfg(target_os = "linux")]
    let client = match client.into_tcp() {
        Ok((prefix, tcp)) => {
            return Either::Left(super::splice::relay(prefix, tcp, upstream, idle));
        }
        Err(client) => client,
    };
    #[cfg(target_os = "linux")]
    return Either::Right(relay(client, upstream, idle));
    #[cfg(not(target_os = "linux"))]
    relay(client, upstream, idle)
}

/// What a read of one direction came to.
enum Read {
    /// `n` bytes wait in the buffer (0: the reader's EOF).
    Buffered(usize),
    /// Everything read was written at once (no buffer).
    Passed,
    /// The writer failed: the other side is gone.
    WriterGone,
}

/// One direction of the buffered relay.
#[derive(Default)]
pub(crate) struct BufferedHalf {
    /// Empty (no allocation) while the direction is idle.
    buf: Vec<u8>,
    /// Bytes `buf[pos..end]` are read and not yet written.
    pos: usize,
    end: usize,
    read_done: bool,
    unflushed: bool,
    finished: bool,
    bytes: u64,
    active: bool,
}

impl<R, W> Half<R, W> for BufferedHalf
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn poll_copy(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<()> {
        loop {
            if self.finished {
                return Poll::Ready(());
            }
            while self.pos < self.end {
                match Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.end]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.pos += n;
                        self.bytes += n as u64;
                        self.active = true;
                        self.unflushed = true;
                    }
                    // The other side is gone: this direction is over (the
                    // other may still deliver, e.g. a reply after a half-close).
                    Poll::Ready(_) => return self.finish(),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.read_done {
                // Half-close: the other side learns we are done sending.
                return match Pin::new(&mut *writer).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => self.finish(),
                };
            }
            let read = if self.buf.is_empty() {
                self.poll_first_fill(cx, reader, writer)
            } else {
                self.poll_fill(cx, reader).map_ok(Read::Buffered)
            };
            match read {
                Poll::Ready(Ok(Read::Buffered(0))) | Poll::Ready(Err(_)) => self.read_done = true,
                Poll::Ready(Ok(Read::Buffered(n))) => (self.pos, self.end) = (0, n),
                Poll::Ready(Ok(Read::Passed)) => {}
                Poll::Ready(Ok(Read::WriterGone)) => return self.finish(),
                Poll::Pending => {
                    // Nothing more to read for now: push out what the
                    // writer holds (a TLS writer's last record).
                    if self.unflushed {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(_)) => return self.finish(),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl HalfState for BufferedHalf {
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.active)
    }

    fn release_idle(&mut self, used_since_last_tick: bool) -> bool {
        if !used_since_last_tick && self.pos == self.end {
            self.buf = Vec::new();
        }
        self.buf.capacity() > 0
    }
}

impl BufferedHalf {
    /// A direction whose first bytes were read already (by the CONNECT's
    /// parser): they are written before anything is read.
    pub(crate) fn with_pending(bytes: Vec<u8>) -> BufferedHalf {
        BufferedHalf {
            end: bytes.len(),
            buf: bytes,
            ..BufferedHalf::default()
        }
    }

    /// Nothing read and not yet written, and the reader not at its end.
    pub(crate) fn drained(&self) -> bool {
        self.pos == self.end && !self.read_done && !self.finished
    }

    /// Reads what `reader` has ready into the buffer (grown when a read
    /// fills it). Returns the byte count, 0 at EOF.
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<usize>> {
        if self.end == self.buf.len() && self.buf.len() < BULK_BUF_SIZE {
            // (A buffer smaller than BUF_SIZE held bytes `with_pending`.)
            let grown = if self.buf.len() < BUF_SIZE {
                BUF_SIZE
            } else {
                (self.buf.len() * 4).min(BULK_BUF_SIZE)
            };
            self.buf.resize(grown, 0);
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                (self.pos, self.end) = (0, 0);
                Poll::Pending
            }
        }
    }

    /// With no buffer, a read goes to the stack and is written from there:
    /// a tunnel that has nothing to read (every new tunnel, every idle one
    /// woken by the other direction) allocates nothing, and neither does
    /// the short back-and-forth of a TLS handshake and a page, whose reads
    /// the writer takes at once. Only bytes the writer does not take, or a
    /// read that fills the stack buffer (bulk: reads grow past it), get a
    /// buffer (zero-filled once per busy period, not per read).
    fn poll_first_fill<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<Read>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); PROBE_SIZE];
        let mut rb = ReadBuf::uninit(&mut probe);
        if let Err(e) = ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb)) {
            return Poll::Ready(Err(e));
        }
        let data = rb.filled();
        let mut passed = 0;
        if data.len() < PROBE_SIZE {
            while passed < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[passed..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        passed += n;
                        self.bytes += n as u64;
                        self.active = true;
                        self.unflushed = true;
                    }
                    Poll::Ready(_) => return Poll::Ready(Ok(Read::WriterGone)),
                    Poll::Pending => break,
                }
            }
            if passed == data.len() && passed > 0 {
                return Poll::Ready(Ok(Read::Passed));
            }
        }
        let rest = &data[passed..];
        if !rest.is_empty() {
            self.buf.resize(BUF_SIZE, 0);
            self.buf[..rest.len()].copy_from_slice(rest);
        }
        Poll::Ready(Ok(Read::Buffered(rest.len())))
    }

    fn finish(&mut self) -> Poll<()> {
        self.finished = true;
        self.buf = Vec::new();
        (self.pos, self.end) = (0, 0);
        Poll::Ready(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every open tunnel holds its relay for its whole life: each part is
    /// stored once (an `async fn` driver was 1,104 bytes, debug build).
    #[test]
    fn a_relay_is_small() {
        type Plain =
            Relay<tokio::net::TcpStream, tokio::net::TcpStream, BufferedHalf, BufferedHalf>;
        let size = std::mem::size_of::<Plain>();
        eprintln!("relay between two sockets: {size} bytes");
        assert!(size <= 512, "the relay is {size} bytes");
    }

    #[tokio::test]
    async fn half_close_still_delivers_the_reply() {
        let (client_app, client_side) = tokio::io::duplex(1024);
        let (upstream_side, upstream_app) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5)));
        let (mut ca_r, mut ca_w) = tokio::io::split(client_app);
        let (mut ua_r, mut ua_w) = tokio::io::split(upstream_app);
        ca_w.write_all(b"question").await.unwrap();
        ca_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        ua_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"question");
        ua_w.write_all(b"answer").await.unwrap();
        ua_w.shutdown().await.unwrap();
        let mut reply = Vec::new();
        ca_r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"answer");
        let stats = relay.await.unwrap();
        assert_eq!((stats.up, stats.down, stats.idle_timeout), (8, 6, false));
    }

    /// A writer that records how often it was flushed.
    #[derive(Default)]
    struct CountingWriter {
        written: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn buffer_exists_only_while_bytes_flow() {
        let (mut app, mut side) = tokio::io::duplex(256 * 1024);
        let mut sink = CountingWriter::default();
        let mut half = BufferedHalf::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Nothing to read (a new or idle tunnel): nothing allocated.
        assert!(half.poll_copy(&mut cx, &mut side, &mut sink).is_pending());
        assert_eq!(half.buf.capacity(), 0, "no bytes arrived, no buffer");
        assert!(!half.release_idle(false));
        // A burst of many buffers' worth: copied in one poll, flushed once
        // (when the reader ran dry), not once per read.
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        app.write_all(&data).await.unwrap();
        assert!(half.poll_copy(&mut cx, &mut side, &mut sink).is_pending());
        assert_eq!(sink.written, data);
        assert_eq!(sink.flushes, 1);
        assert_eq!(
            half.buf.len(),
            BULK_BUF_SIZE,
            "a full read grows the buffer"
        );
        assert!(half.take_activity() && !half.take_activity());
        // Kept across a short wait, freed on a tick without traffic.
        assert!(half.release_idle(true));
        assert!(!half.release_idle(false));
        assert_eq!(half.buf.capacity(), 0);
        drop(app);
        assert!(half.poll_copy(&mut cx, &mut side, &mut sink).is_ready());
        assert_eq!(half.bytes(), data.len() as u64);
    }

    /// A short exchange the writer takes at once needs no buffer (a TLS
    /// handshake and a page through a new tunnel allocate none); bytes the
    /// writer cannot take yet are buffered until a tick without traffic.
    #[tokio::test]
    async fn an_idle_relay_holds_no_buffers() {
        let (mut client_app, client_side) = tokio::io::duplex(1024);
        // The upstream side takes 8 bytes at a time.
        let (upstream_side, mut upstream_app) = tokio::io::duplex(8);
        let mut up = BufferedHalf::default();
        let mut down = BufferedHalf::default();
        let (mut c, mut u) = (client_side, upstream_side);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        client_app.write_all(b"hello").await.unwrap();
        assert!(up.poll_copy(&mut cx, &mut c, &mut u).is_pending());
        assert!(down.poll_copy(&mut cx, &mut u, &mut c).is_pending());
        let mut got = [0u8; 5];
        upstream_app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let used = up.take_activity();
        assert!(used, "bytes moved");
        assert!(!up.release_idle(used), "written from the stack: no buffer");
        // More than the writer takes: the rest waits in a buffer.
        client_app.write_all(b"twenty bytes, please").await.unwrap();
        assert!(up.poll_copy(&mut cx, &mut c, &mut u).is_pending());
        let used = up.take_activity();
        assert!(up.release_idle(used), "the rest is buffered");
        let mut got = [0u8; 20];
        let pump = async {
            loop {
                let _ = up.poll_copy(&mut cx, &mut c, &mut u);
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            read = upstream_app.read_exact(&mut got) => { read.unwrap(); }
            () = pump => unreachable!(),
        }
        assert_eq!(&got, b"twenty bytes, please");
        assert_eq!(up.bytes(), 25);
        // The driver's ticks free what is left.
        assert!(up.release_idle(true), "kept across a short wait");
        assert!(!up.release_idle(false));
        assert!(!down.release_idle(false));
    }

    #[tokio::test]
    async fn large_transfer_both_ways() {
        let (client_app, client_side) = tokio::io::duplex(4096);
        let (upstream_side, upstream_app) = tokio::io::duplex(4096);
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5)));
        let (mut ca_r, mut ca_w) = tokio::io::split(client_app);
        let (mut ua_r, mut ua_w) = tokio::io::split(upstream_app);
        let up: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..700_001u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let send_up = tokio::spawn(async move {
            ca_w.write_all(&up2).await.unwrap();
            ca_w.shutdown().await.unwrap();
        });
        let send_down = tokio::spawn(async move {
            ua_w.write_all(&down2).await.unwrap();
            ua_w.shutdown().await.unwrap();
        });
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(
            ua_r.read_to_end(&mut got_up),
            ca_r.read_to_end(&mut got_down)
        );
        a.unwrap();
        b.unwrap();
        send_up.await.unwrap();
        send_down.await.unwrap();
        assert!(got_up == up && got_down == down);
        let stats = relay.await.unwrap();
        assert_eq!((stats.up, stats.down), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn idle_tunnel_is_closed() {
        let (_client_app, client_side) = tokio::io::duplex(1024);
        let (upstream_side, _upstream_app) = tokio::io::duplex(1024);
        let stats = tokio::time::timeout(
            Duration::from_secs(5),
            relay(client_side, upstream_side, Duration::from_millis(200)),
        )
        .await
        .expect("relay must end on idleness");
        assert!(stats.idle_timeout);
    }
}
