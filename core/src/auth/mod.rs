//! Authentication (PROTOCOL section 4): JWT verification with a bounded cache of verified tokens,
//! and a per-IP limiter of failed attempts. Pure: time is a parameter, keys arrive as data.
//!
//! INTERFACE (the gateway is written against it; the implementation may add, not change):
//!
//! ```ignore
//! pub struct AuthConfig { .. }                      // see below
//! impl Authenticator {
//!     pub fn new(config: AuthConfig) -> Result<Authenticator, String>;   // parses the JWKS
//!     pub fn verify(&mut self, token: &str, now_unix_ms: u64) -> Result<Arc<Identity>, AuthError>;
//! }
//! impl FailureLimiter {
//!     pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> Self;
//!     /// Err(retry_after) while `ip` is over its budget.
//!     pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration>;
//!     pub fn record_failure(&mut self, ip: IpAddr, now: Instant);
//!     /// Err(retry_after) while `ip` is over its budget and used its verification slot.
//!     pub fn admit_verification(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration>;
//! }
//! ```
//!
//! Implementation notes (details on each item):
//! - [`Authenticator`]: HS256 with the configured secret; RS256/ES256 with JWKS keys chosen by
//!   `kid`. The algorithm is pinned by the key, never taken from the token alone, so `alg: none`
//!   and algorithm confusion are refused. `exp` (required) and `nbf` are checked against the
//!   caller's `now_unix_ms` with `leeway_secs`; the library's own clock checks are off.
//! - Verified tokens are cached by SHA-256 of the token, bounded, never past `exp`.
//! - [`FailureLimiter`]: sliding window per IPv4 address / IPv6 /64, bounded memory; an address
//!   over its budget keeps a rate of fresh verifications (a valid token is never locked out).
//! - [`testing`]: token minting for tests (not used by the gateway itself).

mod cache;
mod jwt;
mod limiter;
pub mod testing;

pub use jwt::{
    AuthConfig, AuthError, Authenticator, DEFAULT_ROLE, MAX_TOKEN_LEN, MIN_HS256_SECRET_LEN, ROLES,
};
pub use limiter::{
    FailureLimiter, DEFAULT_MAX_FAILURES, DEFAULT_MAX_TRACKED, DEFAULT_VERIFICATIONS_PER_SECOND,
    DEFAULT_WINDOW,
};

#[cfg(test)]
mod tests;
