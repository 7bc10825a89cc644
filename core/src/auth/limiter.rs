//! The per-IP limiter of failed authentication attempts (PROTOCOL section 4: default 10 failures a
//! minute).
//!
//! Failures never lock anyone out: an address over its failure budget still has its tokens
//! verified, but at most `verifications_per_second` fresh verifications (tokens not in the
//! verified-token cache; cache hits are never limited), so what the limiter bounds is the cost an
//! address can impose, not who may log in from it. One attacker behind a NAT or a proxy therefore
//! slows the fresh logins of that address to the verification rate (a refused one is answered
//! `AUTH_RATE_LIMITED` with `retryAfterMs` of at most one interval), and never refuses them for the
//! minute of its failures.
//!
//! A sliding window: each tracked address keeps the instants of its failures inside the window
//! (at most `max_failures` of them), so `retry_after` is exact: the moment the oldest counted
//! failure leaves the window.
//!
//! Addresses are grouped the way attackers hold them: IPv4 per address (IPv4-mapped IPv6 counts
//! as IPv4), IPv6 per /64 — a single host usually controls a whole /64, and counting its addresses
//! separately would make the limit (and the memory bound) trivially bypassable.
//!
//! Memory is bounded by `max_tracked` addresses. When a new address arrives and the table is full,
//! stale addresses are swept first; if it is still full, the address whose last failure is the
//! oldest is forgotten. The trade-off: an attacker who fails from more than `max_tracked` distinct
//! IPv4 addresses or /64s within one window can push a blocked address out and so unblock it early.
//! Entries are small (about 250 bytes at the default budget of 10), so `max_tracked` can be large
//! (100 000 is ~25 MB) to make that expensive; the alternative — refusing to track new addresses —
//! would let the same attacker exempt fresh addresses instead, which is worse.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The default budget: 10 failures a minute per address (PROTOCOL section 4).
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// The default sliding window over which failures are counted: one minute.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The default bound on addresses tracked at once (about 25 MB at the default budget).
pub const DEFAULT_MAX_TRACKED: usize = 100_000;
/// Fresh verifications per second for an address over its failure budget.
pub const DEFAULT_VERIFICATIONS_PER_SECOND: u32 = 10;

struct Record {
    /// Failures inside the window, oldest first; never more than `max_failures`.
    failures: VecDeque<Instant>,
    /// This record's key in `by_last`.
    last: (Instant, u64),
    /// While over the budget: the earliest moment of the next fresh verification.
    next_verification: Option<Instant>,
}

/// Counts authentication failures per address. Time comes from the caller.
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    /// Fresh verifications an address over its budget gets: one per this interval.
    verification_interval: Duration,
    records: HashMap<IpAddr, Record>,
    /// Records by the instant of their latest failure: the front is the stalest.
    by_last: BTreeMap<(Instant, u64), IpAddr>,
    next_seq: u64,
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("max_tracked", &self.max_tracked)
            .field("tracked", &self.records.len())
            .finish()
    }
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(DEFAULT_MAX_FAILURES, DEFAULT_WINDOW, DEFAULT_MAX_TRACKED)
    }
}

impl FailureLimiter {
    /// `max_failures == 0` or a zero `window` disables the limiter. `max_tracked` is at least 1.
    pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> Self {
        FailureLimiter {
            max_failures,
            window,
            max_tracked: max_tracked.max(1),
            verification_interval: Duration::from_secs(1) / DEFAULT_VERIFICATIONS_PER_SECOND,
            records: HashMap::new(),
            by_last: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Fresh verifications an address over its failure budget gets per second (at least 1).
    pub fn with_verification_rate(mut self, per_second: u32) -> Self {
        self.verification_interval = Duration::from_secs(1) / per_second.max(1);
        self
    }

    /// May a token from `ip` that is not in the verified-token cache be verified now? Always,
    /// while `ip` is within its failure budget; over it, once per verification interval.
    /// `Err(retry_after)` says when the next one may be (at most one interval away). Never refuses
    /// because of the failures alone: a valid token gets in at the verification rate.
    pub fn admit_verification(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.check(ip, now).is_ok() {
            return Ok(());
        }
        let interval = self.verification_interval;
        let Some(record) = self.records.get_mut(&group(ip)) else {
            return Ok(());
        };
        match record.next_verification {
            Some(at) if at > now => Err(at - now),
            _ => {
                record.next_verification = Some(now + interval);
                Ok(())
            }
        }
    }

    fn disabled(&self) -> bool {
        self.max_failures == 0 || self.window.is_zero()
    }

    /// `Err(retry_after)` while `ip` has `max_failures` failures inside the window; `retry_after`
    /// is when the oldest of them leaves it (always more than zero).
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.disabled() {
            return Ok(());
        }
        let key = group(ip);
        let window = self.window;
        let Some(record) = self.records.get_mut(&key) else {
            return Ok(());
        };
        prune(&mut record.failures, window, now);
        if record.failures.len() < self.max_failures as usize {
            if record.failures.is_empty() {
                self.remove(&key);
            }
            return Ok(());
        }
        match record.failures.front() {
            Some(&oldest) => Err(window.saturating_sub(now.saturating_duration_since(oldest))),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip` at `now`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if self.disabled() {
            return;
        }
        let key = group(ip);
        if !self.records.contains_key(&key) && self.records.len() >= self.max_tracked {
            self.sweep(now);
            while self.records.len() >= self.max_tracked {
                let Some((_, stalest)) = self.by_last.pop_first() else {
                    break;
                };
                self.records.remove(&stalest);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let window = self.window;
        let max = self.max_failures as usize;
        let record = self.records.entry(key).or_insert_with(|| Record {
            failures: VecDeque::new(),
            last: (now, seq),
            next_verification: None,
        });
        self.by_last.remove(&record.last);
        prune(&mut record.failures, window, now);
        // Only the newest `max_failures` matter: the block lasts until the oldest of them leaves.
        while record.failures.len() >= max {
            record.failures.pop_front();
        }
        record.failures.push_back(now);
        // An out-of-order `now` must not move the record backwards.
        let latest = record.last.0.max(now);
        record.last = (latest, seq);
        self.by_last.insert(record.last, key);
    }

    /// Forgets addresses whose latest failure has left the window. Cheap (`O(k log n)` for `k`
    /// stale entries); call it from a periodic timer to return memory early.
    pub fn sweep(&mut self, now: Instant) {
        while let Some((&(last, _), &key)) = self.by_last.first_key_value() {
            if now.saturating_duration_since(last) < self.window {
                break;
            }
            self.by_last.pop_first();
            self.records.remove(&key);
        }
    }

    /// How many addresses (IPv6: /64 prefixes) are tracked.
    pub fn tracked(&self) -> usize {
        self.records.len()
    }

    fn remove(&mut self, key: &IpAddr) {
        if let Some(record) = self.records.remove(key) {
            self.by_last.remove(&record.last);
        }
    }
}

fn prune(failures: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while let Some(&oldest) = failures.front() {
        if now.saturating_duration_since(oldest) < window {
            break;
        }
        failures.pop_front();
    }
}

/// The unit the budget applies to: an IPv4 address, or an IPv6 /64.
fn group(ip: IpAddr) -> IpAddr {
    crate::net::limit_key(ip)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn limiter_blocks_after_max_failures_with_exact_retry_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = FailureLimiter::new(3, s(60), 100);
        let a = ip("203.0.113.7");
        assert_eq!(l.check(a, t0), Ok(()));
        l.record_failure(a, t0);
        l.record_failure(a, t0 + s(10));
        assert_eq!(l.check(a, t0 + s(15)), Ok(()));
        l.record_failure(a, t0 + s(20));
        // Three failures in the window: blocked until the first (t0) leaves it at t0 + 60 s.
        assert_eq!(l.check(a, t0 + s(30)), Err(s(30)));
        assert_eq!(l.check(a, t0 + s(59)), Err(s(1)));
        // Another address is unaffected.
        assert_eq!(l.check(ip("203.0.113.8"), t0 + s(30)), Ok(()));
        // The window slides: at t0 + 60 s only two failures remain.
        assert_eq!(l.check(a, t0 + s(60)), Ok(()));
        l.record_failure(a, t0 + s(61));
        // Now blocked until the t0 + 10 s failure leaves, at t0 + 70 s.
        assert_eq!(l.check(a, t0 + s(62)), Err(s(8)));
    }

    #[test]
    fn limiter_recovers_after_the_window_and_sweeps() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        let a = ip("198.51.100.1");
        for i in 0..DEFAULT_MAX_FAILURES {
            l.record_failure(a, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(
            l.check(a, t0 + Duration::from_secs(1)),
            Err(Duration::from_millis(59_000))
        );
        let later = t0 + DEFAULT_WINDOW + Duration::from_millis(9);
        assert_eq!(l.check(a, later), Ok(()));
        l.record_failure(ip("198.51.100.2"), t0);
        l.sweep(later);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(1, Duration::from_secs(60), 5);
        for i in 0..1000u32 {
            let addr = IpAddr::from(0x0A00_0000u32.wrapping_add(i).to_be_bytes());
            l.record_failure(addr, t0 + Duration::from_millis(u64::from(i)));
            assert!(l.tracked() <= 5);
        }
        assert_eq!(l.tracked(), 5);
    }

    #[test]
    fn limiter_when_full_drops_stale_entries_before_the_oldest_live_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = FailureLimiter::new(1, s(60), 2);
        let (a, b, c, d) = (
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            ip("192.0.2.3"),
            ip("192.0.2.4"),
        );
        l.record_failure(a, t0);
        l.record_failure(b, t0 + s(50));
        // At t0 + 70 s `a` is stale: it goes, `b` (still blocked) stays.
        l.record_failure(c, t0 + s(70));
        assert!(l.check(b, t0 + s(70)).is_err());
        assert!(l.check(c, t0 + s(70)).is_err());
        assert_eq!(l.tracked(), 2);
        // Nothing stale now: the oldest live entry (`b`) is evicted — the documented trade-off.
        l.record_failure(d, t0 + s(71));
        assert_eq!(l.check(b, t0 + s(71)), Ok(()));
        assert!(l.check(c, t0 + s(71)).is_err());
        assert!(l.check(d, t0 + s(71)).is_err());
    }

    #[test]
    fn limiter_groups_ipv6_by_64_and_maps_ipv4() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, Duration::from_secs(60), 100);
        l.record_failure(ip("2001:db8:1:2::1"), t0);
        l.record_failure(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(l.check(ip("2001:db8:1:2::abcd"), t0).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        l.record_failure(ip("::ffff:192.0.2.9"), t0);
        l.record_failure(ip("192.0.2.9"), t0);
        assert!(l.check(ip("192.0.2.9"), t0).is_err());
        assert_eq!(l.check(ip("192.0.2.10"), t0), Ok(()));
    }

    #[test]
    fn an_address_over_its_budget_keeps_a_verification_rate() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = FailureLimiter::new(2, Duration::from_secs(60), 100).with_verification_rate(10);
        let a = ip("203.0.113.7");
        // Within the budget: every verification is admitted.
        for _ in 0..5 {
            assert_eq!(l.admit_verification(a, t0), Ok(()));
        }
        l.record_failure(a, t0);
        l.record_failure(a, t0);
        assert!(l.check(a, t0).is_err());
        // Over it: one verification per 100 ms, never a refusal for the minute.
        assert_eq!(l.admit_verification(a, t0 + ms(1)), Ok(()));
        assert_eq!(l.admit_verification(a, t0 + ms(2)), Err(ms(99)));
        assert_eq!(l.admit_verification(a, t0 + ms(100)), Err(ms(1)));
        assert_eq!(l.admit_verification(a, t0 + ms(101)), Ok(()));
        // Another address is not slowed down.
        assert_eq!(
            l.admit_verification(ip("203.0.113.8"), t0 + ms(102)),
            Ok(())
        );
        // Once the failures leave the window, no rate at all.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.admit_verification(a, later), Ok(()));
        assert_eq!(l.admit_verification(a, later), Ok(()));
    }

    #[test]
    fn limiter_with_zero_budget_is_disabled() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(0, Duration::from_secs(60), 10);
        for _ in 0..100 {
            l.record_failure(ip("192.0.2.1"), t0);
        }
        assert_eq!(l.check(ip("192.0.2.1"), t0), Ok(()));
        assert_eq!(l.tracked(), 0);
    }
}
