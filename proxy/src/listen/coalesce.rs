//! Vectored writes for a stream that has none: the pieces are written with
//! one call. rustls' server stream (`tokio_rustls::server::TlsStream`) has
//! no vectored write, so HTTP/2 wrote a DATA frame's 9-byte header and its
//! payload with two calls, and over TLS each call is a record of its own
//! (an AEAD seal, 22 bytes of overhead) and a `write(2)`: for a 1 KiB
//! answer inside an inspected session, two records and two syscalls where
//! one does.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Pieces are joined up to this size (an HTTP/2 DATA frame of the default
/// 16 KiB with its header); a larger write sends its first piece alone.
const MAX_JOINED: usize = 16 * 1024 + 64;

thread_local! {
    /// One buffer per thread, not per connection: an idle connection holds
    /// nothing, and a write never waits with it (it is used within one call).
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct Coalesce<S> {
    inner: S,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce { inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let inner = Pin::new(&mut self.inner);
        if inner.is_write_vectored() {
            return inner.poll_write_vectored(cx, bufs);
        }
        let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &**b);
        let pieces = bufs.iter().filter(|b| !b.is_empty()).count();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if pieces <= 1 || total > MAX_JOINED {
            return inner.poll_write(cx, first.unwrap_or(&[]));
        }
        JOINED.with(|joined| match joined.try_borrow_mut() {
            Ok(mut joined) => {
                joined.clear();
                for b in bufs {
                    joined.extend_from_slice(b);
                }
                // The bytes the inner stream took are a prefix of the
                // pieces in order, which is what a vectored write reports.
                inner.poll_write(cx, &joined)
            }
            // Only if an inner stream were a `Coalesce` itself.
            Err(_) => inner.poll_write(cx, first.unwrap_or(&[])),
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A stream without vectored writes that records each write call.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            // Takes at most 40 bytes per call, like a full socket buffer.
            let n = buf.len().min(40);
            self.0.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn pieces_leave_in_one_write_and_partial_writes_resume_in_order() {
        let mut s = Coalesce::new(Calls::default());
        let header = [0u8, 0, 4, 0, 1, 0, 0, 0, 1];
        let n = s
            .write_vectored(&[
                IoSlice::new(&header),
                IoSlice::new(b""),
                IoSlice::new(b"body"),
            ])
            .await
            .unwrap();
        assert_eq!(n, 13);
        assert_eq!(s.inner.0, vec![[&header[..], b"body"].concat()]);

        // 50 bytes in two pieces, 40 taken: the rest goes on from byte 40.
        let (a, b) = ([1u8; 30], [2u8; 20]);
        let mut pieces = [IoSlice::new(&a), IoSlice::new(&b)];
        let mut pieces = &mut pieces[..];
        let mut sent = Vec::new();
        while !pieces.is_empty() {
            let n = s.write_vectored(pieces).await.unwrap();
            sent.extend_from_slice(s.inner.0.last().unwrap());
            IoSlice::advance_slices(&mut pieces, n);
        }
        assert_eq!(sent, [&a[..], &b[..]].concat());
        assert_eq!(s.inner.0.len(), 3, "13 bytes, then 40, then 10");
    }

    #[tokio::test]
    async fn a_write_over_the_limit_sends_its_first_piece() {
        let mut s = Coalesce::new(Calls::default());
        let big = vec![7u8; MAX_JOINED];
        let n = s
            .write_vectored(&[IoSlice::new(b"head"), IoSlice::new(&big)])
            .await
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(s.inner.0, vec![b"head".to_vec()]);
    }
}
