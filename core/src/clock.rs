//! Time as the caller gives it. The core keeps an anchor pairing a monotonic instant with the wall
//! clock at that instant, so `ts` fields advance with the caller's `now` and never read a clock.

use std::time::Instant;

/// Converts the caller's monotonic `now` into wall-clock time and uptime, from one anchor taken
/// when the gateway starts. Wall time derived this way never goes backwards, even when the
/// system clock is stepped.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_ms: u64,
}

impl Clock {
    /// A clock where `anchor` is `anchor_unix_ms` milliseconds since the Unix epoch; the
    /// gateway's start, from which uptime counts.
    pub fn new(anchor: Instant, anchor_unix_ms: u64) -> Self {
        Clock {
            anchor,
            anchor_unix_ms,
        }
    }

    /// Wall-clock milliseconds since the Unix epoch at `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor).as_millis() as u64;
        self.anchor_unix_ms + since
    }

    /// Milliseconds from the anchor to `now` (0 for an earlier `now`).
    pub fn uptime_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.anchor).as_millis() as u64
    }
}
