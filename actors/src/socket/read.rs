//! One read of a socket: the frames that are ready, at most so many and so many bytes.
//!
//! `futures_util`'s `ready_chunks` bounds a chunk by count only. With large frames (Genesys
//! sends conversation snapshots of several hundred KiB, and `max_frame_bytes` allows more) a
//! chunk of 256 ready frames held that many of them in memory at once before the first reached
//! the spool: 150 frames of 1 MiB sent back to back raised the bridge's peak RSS by ~88 MiB.
//! [`ReadyFrames`] ends a chunk as soon as it holds `max_bytes` (it always takes one frame,
//! whatever its size, so a frame larger than the bound still passes).

use std::pin::Pin;
use std::task::{Context, Poll};

use awc::ws;
use futures_util::Stream;

/// Payload bytes one chunk may hold before it is handed over (one frame more than fits is
/// still taken). Far above a read of ordinary events (256 snapshots of ~500 bytes), far below
/// what would matter for memory.
pub const BYTES_PER_READ: usize = 1 << 20;

/// What a frame weighs against [`BYTES_PER_READ`]: its payload.
pub fn frame_bytes(item: &Result<ws::Frame, actix_http::ws::ProtocolError>) -> usize {
    match item {
        Ok(ws::Frame::Text(b) | ws::Frame::Binary(b) | ws::Frame::Ping(b) | ws::Frame::Pong(b)) => {
            b.len()
        }
        Ok(ws::Frame::Continuation(item)) => match item {
            actix_http::ws::Item::FirstText(b)
            | actix_http::ws::Item::FirstBinary(b)
            | actix_http::ws::Item::Continue(b)
            | actix_http::ws::Item::Last(b) => b.len(),
        },
        Ok(ws::Frame::Close(_)) | Err(_) => 0,
    }
}

/// The items of `inner` that are ready, in chunks of at most `max_items` items and (but for a
/// chunk's first item) `max_bytes` bytes as `weigh` counts them.
pub struct ReadyFrames<S: Stream> {
    inner: Option<S>,
    max_items: usize,
    max_bytes: usize,
    weigh: fn(&S::Item) -> usize,
}

impl<S: Stream + Unpin> ReadyFrames<S> {
    pub fn new(inner: S, max_items: usize, max_bytes: usize, weigh: fn(&S::Item) -> usize) -> Self {
        assert!(max_items > 0, "a chunk holds at least one item");
        Self {
            inner: Some(inner),
            max_items,
            max_bytes,
            weigh,
        }
    }
}

impl<S: Stream + Unpin> Stream for ReadyFrames<S> {
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut items = Vec::new();
        let mut bytes = 0usize;
        loop {
            match Pin::new(&mut *inner).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    bytes = bytes.saturating_add((this.weigh)(&item));
                    items.push(item);
                    if items.len() >= this.max_items || bytes >= this.max_bytes {
                        return Poll::Ready(Some(items));
                    }
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    return Poll::Ready((!items.is_empty()).then_some(items));
                }
                Poll::Pending => {
                    return if items.is_empty() {
                        Poll::Pending
                    } else {
                        Poll::Ready(Some(items))
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, StreamExt};

    #[allow(clippy::ptr_arg)] // the weigh function takes `&Item`, and the items are `Vec`s
    fn len(item: &Vec<u8>) -> usize {
        item.len()
    }

    fn chunks(items: Vec<Vec<u8>>, max_items: usize, max_bytes: usize) -> Vec<Vec<usize>> {
        let stream = ReadyFrames::new(stream::iter(items), max_items, max_bytes, len);
        block_on(stream.map(|c| c.iter().map(Vec::len).collect()).collect())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        actix_rt::System::new().block_on(f)
    }

    #[test]
    fn a_chunk_ends_at_the_byte_bound_and_always_takes_one_item() {
        let mib = 1 << 20;
        let items = vec![
            vec![0; mib],
            vec![0; mib],
            vec![0; 10],
            vec![0; 2 * mib],
            vec![0; 5],
        ];
        // The first frame alone reaches the bound; a frame larger than the bound passes alone.
        assert_eq!(
            chunks(items, 256, mib),
            vec![vec![mib], vec![mib], vec![10, 2 * mib], vec![5]]
        );
    }

    #[test]
    fn small_items_are_bounded_by_count() {
        let items = vec![vec![1u8; 3]; 7];
        assert_eq!(
            chunks(items, 3, 1 << 20),
            vec![vec![3, 3, 3], vec![3, 3, 3], vec![3]]
        );
    }

    #[test]
    fn a_chunk_ends_where_the_stream_has_nothing_ready() {
        // Two items, then a pause (Pending once), then one more: two chunks.
        let mut polled_pending = false;
        let mut queue = std::collections::VecDeque::from(vec![vec![1u8], vec![2u8], vec![3u8]]);
        let inner = stream::poll_fn(move |cx| {
            if queue.len() == 1 && !polled_pending {
                polled_pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(queue.pop_front())
        });
        let stream = ReadyFrames::new(Box::pin(inner), 256, 1 << 20, len);
        let got: Vec<usize> = block_on(stream.map(|c: Vec<Vec<u8>>| c.len()).collect());
        assert_eq!(got, vec![2, 1]);
    }

    #[test]
    fn frames_weigh_their_payload() {
        let text: Result<ws::Frame, actix_http::ws::ProtocolError> =
            Ok(ws::Frame::Text(bytes::Bytes::from_static(b"hello")));
        assert_eq!(frame_bytes(&text), 5);
        let part = Ok(ws::Frame::Continuation(actix_http::ws::Item::Continue(
            bytes::Bytes::from_static(b"abc"),
        )));
        assert_eq!(frame_bytes(&part), 3);
        assert_eq!(frame_bytes(&Ok(ws::Frame::Close(None))), 0);
    }
}
