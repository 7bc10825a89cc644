//! Deadlines of many owners (connections, sessions, the gateway itself) in one heap, invalidated
//! lazily: each owner remembers the deadline it is scheduled at; a popped entry that no longer
//! matches is stale and skipped. A deadline that moves later (a heartbeat pushed back by traffic)
//! needs no heap operation at all: its entry fires early, the owner recomputes, and it is
//! scheduled again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of `(deadline, key)` entries; an entry whose deadline no longer matches its
/// owner's remembered one is stale (see the module documentation).
#[derive(Debug)]
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord> Timers<K> {
    /// Schedules `key` at `deadline` unless it is already scheduled no later than that.
    /// `scheduled` is the owner's remembered deadline: it is set to `deadline` when an entry is
    /// pushed, and the owner clears it when its entry fires.
    pub fn schedule(&mut self, key: K, scheduled: &mut Option<Instant>, deadline: Instant) {
        if scheduled.is_some_and(|at| at <= deadline) {
            return;
        }
        *scheduled = Some(deadline);
        self.heap.push(Reverse((deadline, key)));
    }

    /// The earliest entry, stale or not (a stale one only wakes the caller early).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    /// Entries in the heap, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the heap holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stale_entries_are_returned_but_recognisable() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let mut scheduled = None;
        timers.schedule(1u32, &mut scheduled, start + Duration::from_secs(10));
        // Moving later needs nothing; moving earlier adds an entry.
        timers.schedule(1, &mut scheduled, start + Duration::from_secs(20));
        assert_eq!(timers.len(), 1);
        timers.schedule(1, &mut scheduled, start + Duration::from_secs(5));
        assert_eq!(timers.len(), 2);
        assert_eq!(scheduled, Some(start + Duration::from_secs(5)));
        assert_eq!(
            timers.pop_due(start + Duration::from_secs(6)),
            Some((start + Duration::from_secs(5), 1))
        );
        assert_eq!(timers.pop_due(start + Duration::from_secs(6)), None);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_secs(10))
        );
    }
}
