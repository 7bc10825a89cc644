//! What every runtime adapter shares, written once: settings (flags, environment, config file),
//! logging, the randomness (`OsEntropy`) and wall clock the core is given, the write path from the core's outbound
//! queue to a socket, and the services (storage and the agent host, `diminuendo-agent-host`).

pub mod cluster;
pub mod console;
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

/// The core's randomness from the operating system's CSPRNG (`getrandom(2)`): client, session
/// and turn ids and epochs must not be guessable, so they never come from a generator seeded with
/// the time and the pid. Bytes are drawn 256 at a time (one system call per few ids).
pub struct OsEntropy {
    buffer: [u8; OS_ENTROPY_BUFFER],
    /// Bytes of `buffer` already handed out.
    used: usize,
}

const OS_ENTROPY_BUFFER: usize = 256;

impl OsEntropy {
    /// Fails (a clear error at start) when the operating system cannot supply random bytes.
    pub fn new() -> Result<OsEntropy, String> {
        let mut buffer = [0u8; OS_ENTROPY_BUFFER];
        getrandom::fill(&mut buffer)
            .map_err(|error| format!("the operating system's random source failed: {error}"))?;
        Ok(OsEntropy { buffer, used: 0 })
    }
}

impl diminuendo_core::rng::Entropy for OsEntropy {
    fn fill(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            if self.used == OS_ENTROPY_BUFFER {
                if let Err(error) = getrandom::fill(&mut self.buffer) {
                    // It worked at start; predictable ids are worse than stopping.
                    tracing::error!(%error, "the operating system's random source failed");
                    std::process::abort();
                }
                self.used = 0;
            }
            let take = (out.len() - filled).min(OS_ENTROPY_BUFFER - self.used);
            out[filled..filled + take].copy_from_slice(&self.buffer[self.used..self.used + take]);
            // A byte is handed out once.
            self.buffer[self.used..self.used + take].fill(0);
            self.used += take;
            filled += take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diminuendo_core::rng::Entropy;

    #[test]
    fn os_entropy_differs_between_sources_and_across_refills() {
        let mut a = OsEntropy::new().expect("the OS random source");
        let mut b = OsEntropy::new().expect("the OS random source");
        let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y);
        // Draw across several refills, in uneven pieces: no 16-byte block repeats.
        let mut seen = std::collections::HashSet::new();
        for size in [16usize, 7, 300, 16, 1, 16].iter().cycle().take(200) {
            let mut out = vec![0u8; *size];
            a.fill(&mut out);
            if *size == 16 {
                assert!(seen.insert(out), "a repeated 16-byte draw");
            }
        }
    }
}
