//! The captive-portal window: while the gateway link is down, a teacher on
//! hotel Wi-Fi must reach the sign-in page, or the link never comes up.
//! For `captive_portal_secs` after the link went down (or after start, if
//! it never came up), DNS questions for the check hosts
//! (`captive_portal_hosts`) are sent directly to the resolver the
//! application asked, and HTTP / HTTPS to the addresses in those answers
//! goes directly — from sockets bound to the uplink interface, so they do
//! not loop back into the TUN device. Everything else stays refused.
//! When the window ends, the check hosts fail closed too until the link
//! has been up again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Ports the window lets through (the check pages and the portal's sign-in).
const PORTS: [u16; 2] = [80, 443];

pub struct Captive {
    hosts: Vec<String>,
    window: Duration,
    /// The interface direct sockets are bound to (the route to the gateway).
    uplink: Option<String>,
    down_since: Mutex<Option<Instant>>,
    /// Addresses the check hosts resolved to (while the window is open).
    allowed: Mutex<HashMap<IpAddr, String>>,
}

impl Captive {
    pub fn new(hosts: &[String], window: Duration, uplink: Option<String>) -> Captive {
        Captive {
            hosts: hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            window,
            uplink,
            down_since: Mutex::new(Some(Instant::now())),
            allowed: Mutex::new(HashMap::new()),
        }
    }

    /// Follows the link: a window opens when it goes down.
    pub fn observe(&self, link_up: bool) {
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        match (link_up, since.is_some()) {
            (true, true) => {
                *since = None;
                self.allowed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            (false, false) => *since = Some(Instant::now()),
            _ => {}
        }
    }

    /// Whether the window is open now.
    pub fn open(&self) -> bool {
        self.down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < self.window)
    }

    pub fn is_check_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h == name)
    }

    pub fn allow(&self, name: &str, ips: &[IpAddr]) {
        let mut allowed = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
        for ip in ips {
            allowed.insert(*ip, name.to_string());
        }
    }

    /// Whether a flow to `dst` goes direct now.
    pub fn direct(&self, dst: SocketAddr) -> bool {
        PORTS.contains(&dst.port())
            && self.open()
            && self
                .allowed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&dst.ip())
    }

    /// A TCP connection to `dst` around the TUN device.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream> {
        let s = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        self.bind(|dev| s.bind_device(dev))?;
        Ok(
            tokio::time::timeout(Duration::from_secs(10), s.connect(dst))
                .await
                .map_err(|_| anyhow!("direct connection to {dst} timed out"))??,
        )
    }

    /// Sends `query` to the resolver `dst` around the TUN device; the answer.
    pub async fn resolve(&self, query: &[u8], dst: SocketAddr) -> Result<Vec<u8>> {
        let any: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let s = UdpSocket::bind(any).await?;
        self.bind(|dev| s.bind_device(dev))?;
        s.connect(dst).await?;
        s.send(query).await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
            .await
            .map_err(|_| anyhow!("no answer from {dst} within 3 s"))??;
        buf.truncate(n);
        Ok(buf)
    }

    fn bind(&self, f: impl FnOnce(Option<&[u8]>) -> std::io::Result<()>) -> Result<()> {
        match &self.uplink {
            Some(dev) => f(Some(dev.as_bytes()))
                .map_err(|e| anyhow!("cannot bind a direct socket to {dev}: {e}")),
            None => Err(anyhow!("no uplink interface known for direct connections")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_when_the_link_goes_down_and_closes_after_its_time() {
        let c = Captive::new(
            &["Captive.Apple.com.".into()],
            Duration::from_millis(200),
            None,
        );
        let dst: SocketAddr = "192.0.2.80:80".parse().unwrap();
        assert!(c.open(), "open at start while the link is not up");
        assert!(c.is_check_host("captive.apple.com"));
        assert!(!c.direct(dst), "only answered addresses");
        c.allow("captive.apple.com", &[dst.ip()]);
        assert!(c.direct(dst));
        assert!(
            !c.direct("192.0.2.80:22".parse().unwrap()),
            "web ports only"
        );
        c.observe(true);
        assert!(!c.open() && !c.direct(dst), "closed while the link is up");
        c.observe(false);
        c.allow("captive.apple.com", &[dst.ip()]);
        assert!(c.direct(dst));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!c.open() && !c.direct(dst), "bounded");
    }
}
