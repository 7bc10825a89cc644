//! What every runtime adapter shares, written once: settings (flags, environment, config file),
//! logging, the seed and wall clock the core is given, the write path from the core's outbound
//! queue to a socket, and the services (storage and the agent host, `diminuendo-agent-host`).

pub mod driver;
pub mod logging;
pub mod services;
pub mod settings;
pub mod tasks;
pub mod write;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic and wall-clock readings of one moment, as `Gateway::new` takes them.
pub fn clock_anchor() -> (Instant, u64) {
    let now = Instant::now();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    (now, unix_ms)
}

/// A seed for the core's randomness that differs between runs and processes.
pub fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
