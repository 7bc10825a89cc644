//! Storage health as the core sees it: whether storage can write (it drives `/readyz` and
//! `/health`) and whether its queue is congested. Both arrive as ordinary inputs
//! ([`StorageCompletion::Health`](crate::storage::StorageCompletion::Health) from the writer,
//! [`StorageCompletion::Backlog`](crate::storage::StorageCompletion::Backlog) from the adapter's
//! services layer); while either holds, new work is refused with a clear error instead of being
//! accepted and then lost.

use std::time::{Duration, Instant};

use crate::protocol::refusal::Refusal;
use crate::protocol::ErrorCode;
use crate::Gateway;

/// `retryAfterMs` of a request refused because the storage queue is congested.
pub const CONGESTED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Gateway {
    /// Storage reports whether it can write, and why not.
    pub(crate) fn storage_health_changed(
        &mut self,
        writable: bool,
        reason: Option<String>,
        _now: Instant,
    ) {
        self.storage_unwritable = if writable {
            None
        } else {
            Some(reason.unwrap_or_else(|| "storage: writes fail".to_owned()))
        };
    }

    /// Why storage cannot write now, if it cannot (the reason `/health` shows).
    pub fn storage_unwritable_reason(&self) -> Option<&str> {
        self.storage_unwritable.as_deref()
    }

    /// Storage's queue size, for `/metrics` (the adapter reads it from storage's statistics).
    pub fn record_storage_queue(&mut self, bytes: u64) {
        self.metrics.storage_queue_bytes = bytes;
    }

    /// Whether new work is refused because the storage queue is congested.
    pub fn storage_congested(&self) -> bool {
        self.storage_congested
    }

    /// New work (`create_session`, `run_turn`, `steer`) that storage could not keep: `INTERNAL`
    /// while storage cannot write (the session or the turn's events would not be stored),
    /// `RATE_LIMITED` with `retryAfterMs` while its queue is congested.
    pub(crate) fn refuse_new_work_for_storage(&mut self) -> Result<(), Refusal> {
        if self.storage_unwritable.is_some() {
            self.metrics.storage_refusals += 1;
            return Err(Refusal::new(
                ErrorCode::Internal,
                "storage cannot write at the moment; nothing was started",
            ));
        }
        if self.storage_congested {
            self.metrics.storage_refusals += 1;
            return Err(Refusal {
                code: ErrorCode::RateLimited,
                message: "storage is busy writing; try again later".to_owned(),
                retry_after: Some(CONGESTED_RETRY_AFTER),
            });
        }
        Ok(())
    }
}
