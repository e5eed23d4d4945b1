//! Socket settings for connections that multiplex many streams: the mTLS
//! listener's HTTP/2 connections and `komugate client`'s link to it.
//!
//! Linux lets a TCP socket queue megabytes of unsent data (autotuned send
//! buffer). On one HTTP/2 connection that queue is head-of-line blocking: a
//! page's small answers wait behind whatever a download has already pushed
//! into the socket. `TCP_NOTSENT_LOWAT` keeps the unsent part short, so data
//! waits in HTTP/2's per-stream queues instead, where streams interleave;
//! what is in flight (the congestion window) is not limited by it.
//! benches/home-link.sh measures the effect (a page burst during a download).

use tokio::net::TcpStream;

/// Unsent bytes a multiplexed connection may queue in the kernel: enough to
/// keep a fast link busy between two wake-ups, small next to what one
/// download would otherwise park there.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Applies the settings (best effort: an unsupported option only means the
/// kernel's default behaviour).
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value: libc::c_int = NOTSENT_LOWAT as libc::c_int;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("TCP_NOTSENT_LOWAT: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_option_is_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&stream);
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(value as u32, NOTSENT_LOWAT);
        assert!(stream.nodelay().unwrap());
    }
}
