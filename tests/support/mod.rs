//! Fixtures for komugate integration tests: real sockets on loopback, real
//! TLS, a real (local, authoritative) DNS server.
//!
//! - [`upstream`]: HTTP upstream recording what it saw, TLS upstream with
//!   its own CA, TCP echo server
//! - [`dns`]: hickory-server authority for the `test.` zone
//! - [`gw`]: a gateway in a tempdir, mTLS client helpers, access log and
//!   metrics readers
//! - [`raw`]: raw HTTP/1.1 over TCP
//! - [`netns`]: Linux network namespaces for the full-device (TUN) tests
//! - [`browser`]: headless chromium over WebDriver, trusting test CAs
//! - [`console`]: an HTTP client with a cookie jar for the admin console
//! - [`oidc_provider`]: a real OpenID provider (npm `oidc-provider`) over
//!   HTTPS on loopback
//! - [`smtp`]: a real SMTP server (aiosmtpd) requiring STARTTLS
//! - [`udp`]: a CONNECT-UDP client over HTTP/2 and a UDP echo origin

pub mod browser;
pub mod console;
pub mod dns;
pub mod gw;
pub mod netns;
pub mod oidc_provider;
pub mod raw;
pub mod smtp;
pub mod udp;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

/// Runs `f` until it returns `Some`, polling every 50 ms, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every test gets at most this long (tests must stay fast).
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within 10 s"),
    }
}

/// Base64url without padding (RFC 4648 §5), as DoH GET `?dns=` wants it.
pub fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..chunk.len() + 1 {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
