//! Time as the caller gives it. The core keeps an anchor pairing a monotonic instant with the wall
//! clock at that instant, so `ts` fields advance with the caller's `now` and never read a clock.

use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_ms: u64,
}

impl Clock {
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

    pub fn uptime_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.anchor).as_millis() as u64
    }
}
