//! The client side of a CONNECT tunnel once the tunnel is established.
//!
//! hyper hands an upgraded connection over as a boxed stream. On the plain
//! listener that stream is the client's TCP socket itself (behind the
//! framing guard), and taking it back out lets a relay between two plain
//! sockets use `splice(2)` ([`crate::egress::splice`]); on the mTLS
//! listener (TLS, or an HTTP/2 stream) it stays hyper's stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::egress::tunnel::IntoTcp;
use crate::listen::framing_guard::FramingGuard;
use crate::stages::inspect::rewind::Rewind;

pub enum TunnelClient {
    /// The plain listener's socket; bytes the client sent after its CONNECT
    /// head (already read by hyper or the guard) are replayed first.
    Tcp(Rewind<TcpStream>),
    /// Any other upgraded stream.
    Upgraded(TokioIo<Upgraded>),
}

impl TunnelClient {
    pub fn new(upgraded: Upgraded) -> TunnelClient {
        match upgraded.downcast::<TokioIo<FramingGuard<TcpStream>>>() {
            Ok(parts) => {
                let (tcp, mut early) = parts.io.into_inner().into_parts();
                // hyper's buffer holds what it read before the guard's leftovers.
                let mut prefix = parts.read_buf.to_vec();
                prefix.append(&mut early);
                TunnelClient::Tcp(Rewind::new(prefix, tcp))
            }
            Err(upgraded) => TunnelClient::Upgraded(TokioIo::new(upgraded)),
        }
    }
}

impl IntoTcp for TunnelClient {
    fn into_tcp(self) -> Result<(Vec<u8>, TcpStream), Self> {
        match self {
            TunnelClient::Tcp(rewind) => Ok(rewind.into_parts()),
            other => Err(other),
        }
    }
}

impl IntoTcp for Rewind<TunnelClient> {
    fn into_tcp(self) -> Result<(Vec<u8>, TcpStream), Self> {
        let (mut prefix, client) = self.into_parts();
        match client.into_tcp() {
            Ok((mut more, tcp)) => {
                prefix.append(&mut more);
                Ok((prefix, tcp))
            }
            Err(client) => Err(Rewind::new(prefix, client)),
        }
    }
}

impl AsyncRead for TunnelClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelClient::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            TunnelClient::Upgraded(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TunnelClient::Tcp(s) => Pin::new(s).poll_write(cx, data),
            TunnelClient::Upgraded(s) => Pin::new(s).poll_write(cx, data),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TunnelClient::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TunnelClient::Upgraded(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelClient::Tcp(s) => s.is_write_vectored(),
            TunnelClient::Upgraded(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelClient::Tcp(s) => Pin::new(s).poll_flush(cx),
            TunnelClient::Upgraded(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelClient::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            TunnelClient::Upgraded(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
