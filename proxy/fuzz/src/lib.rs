//! Helpers shared by the fuzz targets: one current-thread tokio runtime per
//! process, and an in-memory stream that hands the input over in chunks
//! chosen by the input itself (so state machines are fuzzed across read
//! boundaries, as on a real socket).

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The process's runtime (current-thread: a fuzz run is single-threaded,
/// and timers are enabled for the code under test).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Splits fuzz input into a chunking plan (its first `plan_len` bytes) and
/// the payload. `None` when the input is shorter than the plan.
pub fn split_plan(data: &[u8], plan_len: usize) -> Option<(&[u8], &[u8])> {
    (data.len() >= plan_len).then(|| data.split_at(plan_len))
}

/// A stream whose reads return the payload in chunks of `plan[i] + 1`
/// bytes (cycling through the plan), then end of file; writes are kept.
pub struct ChunkedStream {
    data: Vec<u8>,
    pos: usize,
    plan: Vec<usize>,
    step: usize,
    /// Everything the code under test wrote.
    pub written: Vec<u8>,
}

impl ChunkedStream {
    pub fn new(data: &[u8], plan: &[u8]) -> ChunkedStream {
        let plan = if plan.is_empty() {
            vec![usize::MAX - 1]
        } else {
            plan.iter().map(|b| *b as usize).collect()
        };
        ChunkedStream {
            data: data.to_vec(),
            pos: 0,
            plan,
            step: 0,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for ChunkedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let chunk = this.plan[this.step % this.plan.len()] + 1;
        this.step += 1;
        let n = chunk.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChunkedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Bounded, so a target that answers forever cannot eat the memory.
        if self.written.len() < 1 << 20 {
            self.written.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
