//! A per-connection message budget over a sliding window, kept in 16 bytes: the standard
//! two-bucket approximation (the previous window's count weighted by how much of it still
//! overlaps the sliding window).

use std::time::{Duration, Instant};

use crate::protocol::{ErrorCode, ServerMessage};
use crate::ws::close_code;

use super::{Connection, Env};

/// A connection's message count over a sliding window (PROTOCOL: 60 messages per 10 s),
/// estimated from the current and the previous fixed window.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlidingWindow {
    /// Start of the current fixed window, in milliseconds after `origin` (the connection's start).
    window_start_ms: u64,
    current: u16,
    previous: u16,
    /// Messages refused in the current window (for closing with 4101 when it goes on).
    pub refused: u16,
}

impl SlidingWindow {
    /// Counts one message at `now`; returns `Err(retry_after)` when it is over `limit` per
    /// `window`. A `limit` of 0 disables the check.
    pub fn hit(
        &mut self,
        origin: Instant,
        now: Instant,
        limit: u32,
        window: Duration,
    ) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let window_ms = window.as_millis().max(1) as u64;
        let now_ms = now.saturating_duration_since(origin).as_millis() as u64;
        let start = self.window_start_ms;
        if now_ms >= start + 2 * window_ms {
            self.previous = 0;
            self.current = 0;
            self.refused = 0;
            self.window_start_ms = now_ms - now_ms % window_ms;
        } else if now_ms >= start + window_ms {
            self.previous = self.current;
            self.current = 0;
            self.refused = 0;
            self.window_start_ms = start + window_ms;
        }
        let elapsed = now_ms - self.window_start_ms;
        let overlap = window_ms - elapsed.min(window_ms);
        let estimate = u64::from(self.previous) * overlap / window_ms + u64::from(self.current);
        if estimate >= u64::from(limit) {
            self.refused = self.refused.saturating_add(1);
            // When the previous window's weight has decayed enough, or the window rolls over.
            let retry_ms = if self.previous > 0 && u64::from(self.current) < u64::from(limit) {
                let excess = estimate + 1 - u64::from(limit);
                (excess * window_ms)
                    .div_ceil(u64::from(self.previous))
                    .min(window_ms - elapsed)
            } else {
                window_ms - elapsed
            };
            return Err(Duration::from_millis(retry_ms.max(1)));
        }
        self.current = self.current.saturating_add(1);
        Ok(())
    }
}

impl Connection {
    /// Counts a `/ws` client's message against its budget. Over it: `RATE_LIMITED`, and a close
    /// with 4101 when the client keeps going. Returns false when the message must be dropped.
    pub(crate) fn count_message(
        &mut self,
        request_id: Option<&str>,
        now: Instant,
        env: &mut Env<'_>,
    ) -> bool {
        match self.count(now, env) {
            Ok(()) => true,
            Err(None) => false,
            Err(Some(retry_after)) => {
                let error = ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: "too many messages; slow down",
                    request_id,
                    retry_after_ms: Some(retry_after.as_millis() as u64),
                };
                self.send_message(&error, now, env);
                false
            }
        }
    }

    /// Counts a client's message against its budget (`/ws` and `/acp` alike). Over it: when one
    /// more would be accepted, or `None` when the client kept going and is being closed with
    /// 4101; the caller tells the client in its own protocol.
    pub(crate) fn count(
        &mut self,
        now: Instant,
        env: &mut Env<'_>,
    ) -> Result<(), Option<Duration>> {
        let limit = env.config.rate_limit_messages;
        let window = env.config.rate_limit_window;
        let Some(client) = self.client_mut() else {
            return Err(None);
        };
        match client.rate.hit(client.opened_at, now, limit, window) {
            Ok(()) => Ok(()),
            Err(retry_after) => {
                let refused = client.rate.refused;
                env.metrics.rate_limited += 1;
                if u32::from(refused) > limit.max(1) {
                    env.metrics.rate_limit_closes += 1;
                    self.close_websocket(
                        close_code::RATE_LIMITED,
                        "rate limited too often",
                        now,
                        env,
                    );
                    return Err(None);
                }
                Err(Some(retry_after))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_then_refuses_then_recovers() {
        let origin = Instant::now();
        let window = Duration::from_secs(10);
        let mut limiter = SlidingWindow::default();
        for i in 0..60 {
            assert!(
                limiter
                    .hit(origin, origin + Duration::from_millis(i), 60, window)
                    .is_ok(),
                "message {i}"
            );
        }
        let retry = limiter
            .hit(origin, origin + Duration::from_millis(100), 60, window)
            .err();
        assert!(retry.is_some_and(|r| r > Duration::ZERO && r <= window));
        assert_eq!(limiter.refused, 1);
        // Twenty seconds later the budget is whole again.
        for i in 0..60 {
            assert!(limiter
                .hit(
                    origin,
                    origin + Duration::from_secs(20) + Duration::from_millis(i),
                    60,
                    window
                )
                .is_ok());
        }
    }

    #[test]
    fn the_previous_window_still_counts_while_it_overlaps() {
        let origin = Instant::now();
        let window = Duration::from_secs(10);
        let mut limiter = SlidingWindow::default();
        for _ in 0..60 {
            assert!(limiter
                .hit(origin, origin + Duration::from_secs(9), 60, window)
                .is_ok());
        }
        // One second into the next window, 90% of the previous 60 (54) still counts: six more.
        for _ in 0..6 {
            assert!(limiter
                .hit(origin, origin + Duration::from_secs(11), 60, window)
                .is_ok());
        }
        assert!(limiter
            .hit(origin, origin + Duration::from_secs(11), 60, window)
            .is_err());
        // Near the window's end, the previous window weighs little.
        assert!(limiter
            .hit(origin, origin + Duration::from_millis(19_500), 60, window)
            .is_ok());
    }

    #[test]
    fn zero_disables() {
        let origin = Instant::now();
        let mut limiter = SlidingWindow::default();
        for _ in 0..10_000 {
            assert!(limiter
                .hit(origin, origin, 0, Duration::from_secs(10))
                .is_ok());
        }
    }
}
