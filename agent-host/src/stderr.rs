//! The stderr rate limit: at most `limit` lines logged per one-second window, and the count of
//! the lines suppressed in a window logged once, when the next line arrives in a later window or
//! at end of file. Pure (time is a parameter) so it is tested without a clock.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// What to do with one stderr line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Admit {
    /// Log the line.
    pub log: bool,
    /// First log that this many lines were suppressed in the window that just ended.
    pub suppressed_before: Option<u64>,
}

pub(super) struct StderrLimiter {
    limit: u32,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl StderrLimiter {
    pub(super) fn new(limit: u32, now: Instant) -> Self {
        StderrLimiter {
            limit,
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    pub(super) fn admit(&mut self, now: Instant) -> Admit {
        let mut suppressed_before = None;
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.logged = 0;
            suppressed_before = self.finish();
        }
        let log = self.logged < self.limit;
        if log {
            self.logged += 1;
        } else {
            self.suppressed += 1;
        }
        Admit {
            log,
            suppressed_before,
        }
    }

    /// The lines suppressed and not yet reported (at end of file).
    pub(super) fn finish(&mut self) -> Option<u64> {
        let suppressed = std::mem::take(&mut self.suppressed);
        (suppressed > 0).then_some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_limit_then_counts_the_rest_once_per_window() {
        let start = Instant::now();
        let mut limiter = StderrLimiter::new(2, start);
        let logged = |admit: Admit| admit.log;
        assert!(logged(limiter.admit(start)));
        assert!(logged(limiter.admit(start + Duration::from_millis(10))));
        for i in 0..5 {
            let admit = limiter.admit(start + Duration::from_millis(20 + i));
            assert_eq!(
                admit,
                Admit {
                    log: false,
                    suppressed_before: None
                }
            );
        }
        // A new window: the count comes first, then this line is logged.
        let admit = limiter.admit(start + Duration::from_millis(1500));
        assert_eq!(
            admit,
            Admit {
                log: true,
                suppressed_before: Some(5)
            }
        );
        assert_eq!(limiter.finish(), None);
        assert!(limiter.admit(start + Duration::from_millis(1600)).log);
        assert!(!limiter.admit(start + Duration::from_millis(1700)).log);
        assert_eq!(limiter.finish(), Some(1));
        assert_eq!(limiter.finish(), None);
    }

    #[test]
    fn a_zero_limit_logs_nothing_but_still_counts() {
        let start = Instant::now();
        let mut limiter = StderrLimiter::new(0, start);
        assert!(!limiter.admit(start).log);
        assert!(!limiter.admit(start).log);
        let admit = limiter.admit(start + Duration::from_secs(2));
        assert_eq!(
            admit,
            Admit {
                log: false,
                suppressed_before: Some(2)
            }
        );
        assert_eq!(limiter.finish(), Some(1));
    }
}
