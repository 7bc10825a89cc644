//! Deadlines of many connections in one heap, invalidated lazily: each connection remembers the
//! deadline it is scheduled at; a popped entry that no longer matches is stale and skipped. A
//! deadline that moves later (a heartbeat pushed back by traffic) needs no heap operation at all:
//! its entry fires early, the connection recomputes, and it is scheduled again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ConnectionId;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
}

impl Timers {
    /// Schedules `id` at `deadline` unless it is already scheduled no later than that.
    pub fn schedule(
        &mut self,
        id: ConnectionId,
        scheduled: &mut Option<Instant>,
        deadline: Instant,
    ) {
        if scheduled.is_some_and(|at| at <= deadline) {
            return;
        }
        *scheduled = Some(deadline);
        self.heap.push(Reverse((deadline, id)));
    }

    /// The earliest entry, stale or not (a stale one only wakes the caller early).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, ConnectionId)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
