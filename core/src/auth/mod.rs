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
//! }
//! ```

mod limiter;

pub use limiter::{FailureLimiter, DEFAULT_MAX_FAILURES, DEFAULT_MAX_TRACKED, DEFAULT_WINDOW};
