//! The commands the core uses to drive agent processes. The core emits
//! `AgentCommand`s; an adapter's agent host carries them out and feeds the agent's output back.

use crate::ids::AgentId;

/// What the core asks the agent host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Start the configured command of `agent_type` for the session, in its workspace directory;
    /// answer with `Gateway::handle_agent_spawned` (giving the workspace path) or
    /// `Gateway::handle_agent_spawn_failed`.
    Spawn {
        /// The id the core gave this process; every later command and report names it.
        agent: AgentId,
        /// The session the process serves (its workspace is the session's).
        session_id: String,
        /// The session's tenant (an agent command may name it as `{tenant_id}`).
        tenant_id: String,
        /// The configured agent type whose command line to start.
        agent_type: String,
    },
    /// Write one line (ending with `'\n'`) to the agent's stdin.
    Write {
        /// The process to write to.
        agent: AgentId,
        /// One JSON-RPC message, with its `'\n'`.
        line: bytes::Bytes,
    },
    /// Stop the agent: close its stdin, then SIGTERM, then SIGKILL after a grace period;
    /// `Gateway::handle_agent_exited` follows.
    Stop {
        /// The process to stop.
        agent: AgentId,
    },
    /// Kill the agent at once (stdin closed, SIGKILL, no grace): it ignored `session/cancel`
    /// for its cancel grace. `Gateway::handle_agent_exited` follows.
    Kill {
        /// The process to kill.
        agent: AgentId,
    },
}
