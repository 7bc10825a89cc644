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
    /// Read a text file of the agent's workspace for its `fs/read_text_file` (the agent type has
    /// `fs = true`): confined to the workspace, bounded in size; answer with
    /// `Gateway::handle_agent_file_read`.
    ReadTextFile {
        /// The process that asked.
        agent: AgentId,
        /// Names the answer.
        request: u64,
        /// The path the agent gave (ACP requires it absolute), unchecked.
        path: std::path::PathBuf,
        /// The first line to return (1-based), if given.
        line: Option<u32>,
        /// How many lines at most, if given.
        limit: Option<u32>,
    },
    /// Write a text file of the agent's workspace for its `fs/write_text_file`: confined to the
    /// workspace, bounded in size; answer with `Gateway::handle_agent_file_written`.
    WriteTextFile {
        /// The process that asked.
        agent: AgentId,
        /// Names the answer.
        request: u64,
        /// The path the agent gave (ACP requires it absolute), unchecked.
        path: std::path::PathBuf,
        /// The whole new content.
        content: String,
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

/// Why the agent host did not serve a file request; the agent gets it as a JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Which kind of failure (it picks the JSON-RPC error code).
    pub kind: FileErrorKind,
    /// What went wrong, for the agent (never the gateway's own paths).
    pub message: String,
}

/// The kinds of [`FileError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileErrorKind {
    /// The file does not exist (`-32002`, ACP's "resource not found").
    NotFound,
    /// The path is outside the workspace, not a regular file, too large, not UTF-8, or over the
    /// workspace quota (`-32602`, invalid params).
    Refused,
    /// The file system failed (`-32603`, internal error).
    Failed,
}

impl FileError {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FileErrorKind, message: impl Into<String>) -> Self {
        FileError {
            kind,
            message: message.into(),
        }
    }
}
