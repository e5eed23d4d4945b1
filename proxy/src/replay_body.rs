//! The first frames of a request body, read once and shared by every
//! inspection that needs them (IPS body rules, CASB uploads and DLP), then
//! replayed before the rest of the stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// A request body being inspected: the frames read so far and the unread
/// rest. Each inspection reads as far as it needs; what one has read the
/// next finds buffered, so the prefix is read and held once.
pub struct BodyPrefix<B> {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    buffered: usize,
    /// `None` once the body was read to its end.
    rest: Option<B>,
}

impl<B> BodyPrefix<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    pub fn new(body: B) -> Self {
        BodyPrefix {
            frames: VecDeque::new(),
            buffered: 0,
            rest: Some(body),
        }
    }

    /// Reads one more frame into the prefix and returns it; `None` at the
    /// end of the body.
    pub async fn read_frame(&mut self) -> Option<Result<&Frame<Bytes>, B::Error>> {
        let rest = self.rest.as_mut()?;
        match rest.frame().await {
            None => {
                self.rest = None;
                None
            }
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(frame)) => {
                self.buffered += frame.data_ref().map_or(0, |d| d.len());
                self.frames.push_back(frame);
                self.frames.back().map(Ok)
            }
        }
    }

    /// Data bytes read so far.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The whole body has been read.
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }

    /// Nothing buffered and nothing more to come.
    pub fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }

    /// The data read so far, frame by frame.
    pub fn data(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().filter_map(|f| f.data_ref())
    }

    /// The body to send on: the frames read, then the rest.
    pub fn into_body(self) -> Replay<B> {
        Replay {
            frames: self.frames,
            rest: self.rest,
        }
    }
}

/// [`BodyPrefix::into_body`]: the buffered frames, then the unread rest.
pub struct Replay<B> {
    frames: VecDeque<Frame<Bytes>>,
    /// `None` when the inspection read the body to its end.
    rest: Option<B>,
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match this.rest.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(b) => {
                let h = b.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
        }
    }
}
