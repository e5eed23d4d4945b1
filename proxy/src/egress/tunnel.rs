//! Bidirectional relay for CONNECT tunnels: copies both ways, propagates a
//! half-close (EOF on one side shuts down writing on the other), and closes
//! the tunnel when neither side has sent anything for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Relay buffer of one direction while bytes flow.
const BUF_SIZE: usize = 16 * 1024;
/// Stack buffer a direction waits with while it holds no relay buffer.
const PROBE_SIZE: usize = 4 * 1024;

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
}

/// Relays until both directions reached EOF, an I/O error, or idleness.
/// Counters are updated live so a caller can report partial figures.
pub async fn relay<C, U>(client: C, upstream: U, idle: Duration) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let both = async {
        tokio::join!(
            copy_half(&mut client_r, &mut upstream_w, &up, &last_activity, started),
            copy_half(
                &mut upstream_r,
                &mut client_w,
                &down,
                &last_activity,
                started
            ),
        )
    };
    let watchdog = async {
        let check_every = (idle / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(check_every).await;
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(last) >= idle {
                return;
            }
        }
    };
    let hard_stop = HARD_STOP.try_with(|t| t.clone()).ok();
    let stopped = async {
        match &hard_stop {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    // Pinned in place: select! on the futures by value would keep a second
    // copy of each in the relay's state for the tunnel's whole life.
    tokio::pin!(both, watchdog, stopped);
    let (idle_timeout, cut) = tokio::select! {
        _ = &mut both => (false, false),
        _ = &mut watchdog => (true, false),
        _ = &mut stopped => (false, true),
    };
    RelayStats {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        idle_timeout,
        cut,
    }
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &AtomicU64,
    last_activity: &AtomicU64,
    started: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        let n = match std::future::poll_fn(|cx| poll_read_lazy(reader, cx, &mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if writer.flush().await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    // Half-close: tell the other side we are done sending, keep reading theirs.
    let _ = writer.shutdown().await;
}

/// Reads what `reader` has ready into `buf` (replacing its contents) and
/// returns how many bytes that is (0 = EOF). The relay buffer exists only
/// while bytes flow: it is freed whenever the reader has nothing ready, and
/// a direction without one waits on a stack buffer, so an idle tunnel holds
/// no buffer memory (tens of thousands of idle tunnels are the normal case).
fn poll_read_lazy<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        let mut probe = [0u8; PROBE_SIZE];
        let mut probe = ReadBuf::new(&mut probe);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut probe))?;
        let first = probe.filled().len();
        if first == 0 {
            return Poll::Ready(Ok(0));
        }
        buf.resize(BUF_SIZE, 0);
        buf[..first].copy_from_slice(probe.filled());
        if first < PROBE_SIZE {
            return Poll::Ready(Ok(first));
        }
        // The probe was full: take what else is ready so writes stay large.
        // EOF or an error here shows again on the next read.
        let mut rest = ReadBuf::new(&mut buf[first..]);
        let more = match Pin::new(&mut *reader).poll_read(cx, &mut rest) {
            Poll::Ready(Ok(())) => rest.filled().len(),
            _ => 0,
        };
        return Poll::Ready(Ok(first + more));
    }
    let mut rb = ReadBuf::new(buf);
    match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
        Poll::Ready(result) => Poll::Ready(result.map(|()| rb.filled().len())),
        Poll::Pending => {
            // Nothing ready: give the buffer back until there is.
            *buf = Vec::new();
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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

    #[tokio::test]
    async fn buffer_exists_only_while_bytes_flow() {
        let (mut app, mut side) = tokio::io::duplex(64 * 1024);
        let mut buf = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(poll_read_lazy(&mut side, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0, "no buffer while idle");
        // More than the probe holds arrives at once: one read takes it all.
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        app.write_all(&data).await.unwrap();
        let Poll::Ready(Ok(n)) = poll_read_lazy(&mut side, &mut cx, &mut buf) else {
            panic!("data is ready")
        };
        assert_eq!(&buf[..n], &data[..]);
        app.write_all(b"more").await.unwrap();
        let Poll::Ready(Ok(n)) = poll_read_lazy(&mut side, &mut cx, &mut buf) else {
            panic!("data is ready")
        };
        assert_eq!(&buf[..n], b"more");
        assert!(poll_read_lazy(&mut side, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0, "buffer freed when the reader runs dry");
        drop(app);
        assert!(matches!(
            poll_read_lazy(&mut side, &mut cx, &mut buf),
            Poll::Ready(Ok(0))
        ));
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
