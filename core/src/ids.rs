//! The identifiers every part of the core names things by. A leaf: it imports nothing from the
//! rest of the crate, so any module may use it without a cycle.

use std::sync::Arc;

/// A connection, named by the adapter. Unique among open connections; may be reused after the
/// connection it named is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// One agent process, numbered by the core (never reused within a gateway's lifetime), so output
/// of a process that is already stopped can never be taken for its successor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(pub u64);

/// A session's id (a UUID the core generated), shared by every table that names the session.
pub type SessionId = Arc<str>;

/// Whose deadline a timer entry is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    Connection(ConnectionId),
    Session(SessionId),
    /// The gateway itself: the shutdown grace period, the limiter sweep.
    Gateway,
}
