//! What the threads and the [`crate::Storage`] handle share: the completion queue with its
//! coalesced wake-up, and counters.

use crossbeam_channel::Sender;
use diminuendo_core::storage::StorageCompletion;
use diminuendo_core::Wake;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Queues a completion, then wakes the event loop unless a wake is already pending (the event
/// loop clears the flag before it drains, so no completion is ever left without a wake).
#[derive(Clone)]
pub struct Completer {
    pub tx: Sender<StorageCompletion>,
    pub wake: Arc<dyn Wake>,
    pub wake_pending: Arc<AtomicBool>,
}

impl Completer {
    /// Wakes the event loop with no completion (after a commit, so it can read the counters).
    pub fn nudge(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake.wake();
        }
    }

    pub fn send(&self, c: StorageCompletion) {
        if self.tx.send(c).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake.wake();
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub flushes: AtomicU64,
    pub commits: AtomicU64,
    pub rows: AtomicU64,
    pub events: AtomicU64,
    pub commit_nanos_total: AtomicU64,
    pub commit_nanos_max: AtomicU64,
    pub write_failures: AtomicU64,
    pub writer_handles: AtomicU64,
    pub reader_handles: AtomicU64,
    pub writer_evictions: AtomicU64,
    pub reader_evictions: AtomicU64,
    /// Every committed group's database, in commit order (tests of the flush order).
    #[cfg(test)]
    pub commit_order: std::sync::Mutex<Vec<diminuendo_core::storage::DatabaseId>>,
    /// Bytes of commands submitted and not yet written (or answered): the storage queue.
    pub queued_bytes: AtomicU64,
}

impl Stats {
    /// Commands worth `bytes` left the queue (written, failed, dropped or answered).
    pub fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// A snapshot of the storage counters (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Flush rounds (each commits one or more groups).
    pub flushes: u64,
    /// Transactions committed or attempted (one per database per flush).
    pub commits: u64,
    /// Writes committed.
    pub rows: u64,
    /// Of `rows`, events appended to session logs.
    pub events: u64,
    pub commit_nanos_total: u64,
    pub commit_nanos_max: u64,
    /// Writes reported in `WriteFailed`.
    pub write_failures: u64,
    /// Handles open now.
    pub writer_handles: u64,
    pub reader_handles: u64,
    /// Handles closed by LRU eviction.
    pub writer_evictions: u64,
    pub reader_evictions: u64,
    /// Bytes in the storage queue now (see `StorageConfig::queue_limit`).
    pub queued_bytes: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StorageStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StorageStats {
            flushes: l(&self.flushes),
            commits: l(&self.commits),
            rows: l(&self.rows),
            events: l(&self.events),
            commit_nanos_total: l(&self.commit_nanos_total),
            commit_nanos_max: l(&self.commit_nanos_max),
            write_failures: l(&self.write_failures),
            writer_handles: l(&self.writer_handles),
            reader_handles: l(&self.reader_handles),
            writer_evictions: l(&self.writer_evictions),
            reader_evictions: l(&self.reader_evictions),
            queued_bytes: l(&self.queued_bytes),
        }
    }
}
