//! The bounded hand-off from the poller to the host: batches of reports, the adapter's wake
//! hook (coalesced), and the poller's "tell me when there is room" flag.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use diminuendo_core::Wake;

use crate::AgentReport;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Queue {
    batches: VecDeque<Vec<AgentReport>>,
    /// The poller found the queue full and holds batches back (and stops reading those agents'
    /// stdout) until it is told there is room.
    poller_waiting: bool,
}

pub(crate) struct Reports {
    queue: Mutex<Queue>,
    arrived: Condvar,
    /// Batches the queue holds.
    capacity: usize,
    pub(crate) wake_pending: AtomicBool,
    pub(crate) wake: Arc<dyn Wake>,
}

/// What [`Reports::take`] found.
pub(crate) struct Taken {
    pub batch: Option<Vec<AgentReport>>,
    /// The poller was waiting for room and now has some: the caller must tell it.
    pub room: bool,
}

impl Reports {
    pub(crate) fn new(capacity: usize, wake: Arc<dyn Wake>) -> Reports {
        Reports {
            queue: Mutex::new(Queue {
                batches: VecDeque::new(),
                poller_waiting: false,
            }),
            arrived: Condvar::new(),
            capacity: capacity.max(1),
            wake_pending: AtomicBool::new(false),
            wake,
        }
    }

    /// Queues a batch and wakes the adapter (unless a wake is already pending). Gives the batch
    /// back when the queue is full; the poller is then told when there is room again.
    pub(crate) fn try_send(&self, batch: Vec<AgentReport>) -> Result<(), Vec<AgentReport>> {
        let mut queue = lock(&self.queue);
        if queue.batches.len() >= self.capacity {
            queue.poller_waiting = true;
            return Err(batch);
        }
        queue.batches.push_back(batch);
        drop(queue);
        self.arrived.notify_all();
        self.wake_adapter();
        Ok(())
    }

    pub(crate) fn wake_adapter(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake.wake();
        }
    }

    /// Takes the oldest batch; with a deadline, waits for one until then.
    pub(crate) fn take(&self, deadline: Option<Instant>) -> Taken {
        let mut queue = lock(&self.queue);
        if let Some(deadline) = deadline {
            while queue.batches.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = self
                    .arrived
                    .wait_timeout(queue, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let batch = queue.batches.pop_front();
        // Room for half the queue before the poller is woken: a full queue costs one poller
        // wake-up per half-queue drained, not one per batch.
        let room = queue.poller_waiting && queue.batches.len() <= self.capacity / 2;
        if room {
            queue.poller_waiting = false;
        }
        Taken { batch, room }
    }
}
