//! The TUN device (the `tun` crate: /dev/net/tun on Linux, wintun on
//! Windows) and the port the user-space stack reads and writes.
//!
//! The stack does not read the device itself: every packet is checked
//! first ([`super::packet::inspect`]), so the stack reads from a channel
//! the pump fills, one packet per read. Everything written to the device
//! (the stack's packets, our RSTs and ICMP errors) goes through one
//! writer task.

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tun::AbstractDevice;

pub type Device = Arc<tun::AsyncDevice>;

/// Creates and brings up the device `name` with `address`/30.
pub fn create(name: &str, address: Ipv4Addr, mtu: u16) -> Result<(Device, String)> {
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name)
        .address(address)
        .netmask(Ipv4Addr::new(255, 255, 255, 252))
        .mtu(mtu)
        .up();
    let dev = tun::create_as_async(&cfg).with_context(|| {
        format!(
            "cannot create the TUN device {name:?}: run komugate client --tun as root \
             (or with CAP_NET_ADMIN); on Linux /dev/net/tun must exist (modprobe tun), \
             on Windows wintun.dll must be beside komugate.exe"
        )
    })?;
    let actual = dev.tun_name().unwrap_or_else(|_| name.to_string());
    Ok((Arc::new(dev), actual))
}

/// Writes every packet from `rx` to the device until the senders are gone.
pub async fn writer(dev: Device, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(p) = rx.recv().await {
        if let Err(e) = dev.send(&p).await {
            tracing::debug!("TUN write ({} bytes): {e}", p.len());
        }
    }
}

/// The stack's device: reads the packets the pump let through, writes to
/// the writer task.
pub struct StackPort {
    pub from_pump: mpsc::Receiver<Vec<u8>>,
    pub to_device: mpsc::UnboundedSender<Vec<u8>>,
}

impl AsyncRead for StackPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.from_pump.poll_recv(cx) {
            Poll::Ready(Some(p)) => {
                // The stack's buffer is one MTU; the device's MTU is the same.
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                Poll::Ready(Ok(()))
            }
            // Pump gone: end of file (the stack stops reading).
            Poll::Ready(None) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for StackPort {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.to_device.send(buf.to_vec()) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
