//! Diminuendo's sans-IO core.
//!
//! A pure state machine: it consumes bytes from connections, timer ticks, storage completions and
//! agent output, and emits bytes to send, connections to close, storage commands and agent
//! commands. It never reads a clock, sleeps, spawns, or touches a socket or a file; time is always
//! a parameter and randomness comes from the caller (an `rng::Entropy`: the OS CSPRNG in a
//! gateway, a seed in the in-memory driver). See `DESIGN.md`.
//!
//! Cargo features: `sim` builds the deterministic in-memory driver (`sim`) that tests, examples
//! and simulations drive the gateway with; `fuzzing` (implies `sim`) the fuzz targets' bodies.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acp;
pub(crate) mod acp_server;
mod agent_types;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub mod http;
mod id_hash;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod rng;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod timers;
pub mod topic;
pub mod ws;

pub use agent_types::{AgentCommand, FileError, FileErrorKind};
pub use config::CoreConfig;
pub use gateway::{Event, Gateway};
pub use ids::{AgentId, ConnectionId, SessionId};

/// A runtime-agnostic wake-up hook: threads outside the event loop (the storage writer and
/// reader, agent process readers) call it after queueing a completion, and each adapter implements
/// it with its own primitive (a tokio `Notify`, a smol channel, a `mio::Waker`).
pub trait Wake: Send + Sync + 'static {
    /// Wakes the event loop so it drains the completions queued for it; cheap, callable from
    /// any thread, and harmless when the loop is already awake.
    fn wake(&self);
}
