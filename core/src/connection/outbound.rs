//! A connection's outbound bytes. Allocated only while bytes wait, so an idle connection pays
//! one pointer for it; frames are shared `Bytes`, so fan-out queues references, not copies.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// The bytes waiting to be written to one connection's socket, in order.
#[derive(Debug, Default)]
pub struct Outbound {
    queue: Option<Box<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// The front chunk is partly written: it must be finished, or the peer sees a torn frame.
    front_started: bool,
}

impl Outbound {
    /// Queues `bytes` (a whole frame or response) after those already waiting; empty ones are
    /// dropped.
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        // Room for a burst (a loop turn's events) without regrowing; freed when written.
        let queue = self.queue.get_or_insert_with(|| {
            Box::new(Queue {
                chunks: VecDeque::with_capacity(16),
                ..Queue::default()
            })
        });
        queue.len += bytes.len();
        queue.chunks.push_back(bytes);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.len)
    }

    /// Whether no bytes wait.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none()
    }

    /// Fills `out` with the waiting chunks, front first; returns how many slices it filled.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let Some(queue) = &self.queue else { return 0 };
        let mut filled = 0;
        for (slot, chunk) in out.iter_mut().zip(queue.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            filled += 1;
        }
        filled
    }

    /// Drops the first `written` bytes; frees the queue once it is empty.
    pub fn consume(&mut self, mut written: usize) {
        let Some(queue) = &mut self.queue else { return };
        written = written.min(queue.len);
        queue.len -= written;
        while written > 0 {
            let Some(front) = queue.chunks.front_mut() else {
                break;
            };
            if front.len() <= written {
                written -= front.len();
                queue.chunks.pop_front();
                queue.front_started = false;
            } else {
                front.advance(written);
                queue.front_started = true;
                written = 0;
            }
        }
        if queue.len == 0 {
            self.queue = None;
        }
    }

    /// Discards everything not yet begun (a slow consumer's queue). A chunk the socket took part
    /// of stays, so whatever follows starts on a frame boundary.
    pub fn discard_unstarted(&mut self) {
        let Some(queue) = &mut self.queue else { return };
        if queue.front_started {
            queue.chunks.truncate(1);
            queue.len = queue.chunks.front().map_or(0, Bytes::len);
        } else {
            self.queue = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_consumption_keeps_order_and_frees_when_empty() {
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"hello "));
        out.push(Bytes::from_static(b"world"));
        assert_eq!(out.len(), 11);
        out.consume(3);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = out.slices(&mut slices);
        let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, b"lo world");
        out.consume(8);
        assert!(out.is_empty());
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn discarding_keeps_a_partly_written_chunk() {
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"frame-one"));
        out.push(Bytes::from_static(b"frame-two"));
        out.consume(2);
        out.discard_unstarted();
        assert_eq!(out.len(), 7);
        out.consume(7);
        assert!(out.is_empty());
        out.push(Bytes::from_static(b"whole"));
        out.discard_unstarted();
        assert!(out.is_empty());
    }
}
