//! Bidirectional relay for CONNECT tunnels: copies both ways, propagates a
//! half-close (EOF on one side shuts down writing on the other), and closes
//! the tunnel when neither side has sent anything for the idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
            copy_half(&mut upstream_r, &mut client_w, &down, &last_activity, started),
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
    let (idle_timeout, cut) = tokio::select! {
        _ = both => (false, false),
        _ = watchdog => (true, false),
        _ = stopped => (false, true),
    };
    RelayStats { up: up.load(Ordering::Relaxed), down: down.load(Ordering::Relaxed), idle_timeout, cut }
}

async fn copy_half<R, W>(reader: &mut R, writer: &mut W, counter: &AtomicU64, last_activity: &AtomicU64, started: Instant)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn idle_tunnel_is_closed() {
        let (_client_app, client_side) = tokio::io::duplex(1024);
        let (upstream_side, _upstream_app) = tokio::io::duplex(1024);
        let stats = tokio::time::timeout(Duration::from_secs(5), relay(client_side, upstream_side, Duration::from_millis(200)))
            .await
            .expect("relay must end on idleness");
        assert!(stats.idle_timeout);
    }
}
