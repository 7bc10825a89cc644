//! When the writer commits what it buffered: after the batch interval or at the batch size,
//! whichever comes first.

use std::time::{Duration, Instant};

/// The batching rule, kept apart so it can be tested with plain instants.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// The longest a buffered write waits for its commit.
    pub interval: Duration,
    /// Commit once this many writes are buffered (0 counts as 1).
    pub batch_size: usize,
}

impl BatchPolicy {
    /// Flush now? `first_at` is when the oldest buffered write arrived.
    pub fn due(&self, buffered: usize, first_at: Option<Instant>, now: Instant) -> bool {
        match first_at {
            None => false,
            Some(first) => buffered >= self.batch_size.max(1) || now >= first + self.interval,
        }
    }

    /// How long to wait for the next command before the interval expires (`None`: no deadline).
    pub fn wait(&self, first_at: Option<Instant>, now: Instant) -> Option<Duration> {
        first_at.map(|first| (first + self.interval).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_honours_both_thresholds() {
        let p = BatchPolicy {
            interval: Duration::from_millis(50),
            batch_size: 100,
        };
        let t0 = Instant::now();
        assert!(!p.due(0, None, t0));
        assert_eq!(p.wait(None, t0), None);
        assert!(!p.due(1, Some(t0), t0));
        assert!(!p.due(99, Some(t0), t0 + Duration::from_millis(49)));
        assert_eq!(
            p.wait(Some(t0), t0 + Duration::from_millis(20)),
            Some(Duration::from_millis(30))
        );
        assert!(p.due(1, Some(t0), t0 + Duration::from_millis(50)));
        assert!(p.due(100, Some(t0), t0));
        assert_eq!(
            p.wait(Some(t0), t0 + Duration::from_millis(80)),
            Some(Duration::ZERO)
        );
    }
}
