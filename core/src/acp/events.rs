//! What the ACP client tells the session layer, and its settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use agent_client_protocol_schema::v1::AgentCapabilities;
use serde::Serialize;
use serde_json::{Map, Value};

use super::schema;

/// The ACP client's settings (`CoreConfig::acp`), the same for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpConfig {
    /// How long `initialize`, and then `session/new` (or `session/resume`/`session/load`), may
    /// each take; during `session/load` every replayed update restarts it. Default 30 s.
    pub init_timeout: Duration,
    /// Advertise `fs.readTextFile`/`fs.writeTextFile`, and surface the agent's `fs/*` requests as
    /// [`ControlEvent`]s for the host to answer. Default false: they are answered -32601.
    pub fs_capability: bool,
    /// Advertise `terminal`. Default false. The requests are still answered -32601.
    pub terminal_capability: bool,
}

impl Default for AcpConfig {
    fn default() -> Self {
        AcpConfig {
            init_timeout: Duration::from_secs(30),
            fs_capability: false,
            terminal_capability: false,
        }
    }
}

/// One choice of a permission request, as the agent offered it (`kind` is ACP's
/// `allow_once`/`allow_always`/`reject_once`/`reject_always`, passed through). Serializes as the
/// gateway's `{optionId, name, kind}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionOption {
    /// The agent's id for the option; a client's `answer_question` names it.
    pub option_id: String,
    /// The option's label, to show the user.
    pub name: String,
    /// ACP's option kind (`allow_once`, `allow_always`, `reject_once`, `reject_always`).
    pub kind: String,
}

/// What the session layer learns from the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The handshake finished (`initialize`, then `session/new`, `session/resume` or
    /// `session/load`): `prompt` may be called.
    Ready,
    /// A `session/update`: `kind` is the gateway event type (`text_delta`, `thinking_delta`,
    /// `tool_call`, `tool_call_update`, `plan`, `usage`, or `agent_update` for anything else) and
    /// `fields` its extra fields, without `turnId`/`sessionId`/`seq`/`ts`.
    Update {
        /// The gateway event type the update maps to.
        kind: &'static str,
        /// The event's extra fields, in the order they are published.
        fields: Map<String, Value>,
    },
    /// The agent asks a question (`session/request_permission`); answer with `answer_permission`.
    PermissionRequested {
        /// The gateway's id for the question: `q1`, `q2`, ... per client (so per agent process).
        question_id: String,
        /// The `toolCall.toolCallId` the permission is for.
        tool_call_id: String,
        /// The tool call's title: the request's own, else the one its `tool_call` update gave,
        /// else empty.
        title: String,
        /// The choices offered, in the agent's order.
        options: Vec<PermissionOption>,
    },
    /// A pending question was answered `cancelled` by the client itself (by `cancel`, or because
    /// the turn ended while it was pending).
    PermissionCancelled {
        /// The question that was cancelled.
        question_id: String,
    },
    /// The `session/prompt` response.
    TurnComplete {
        /// The agent's `stopReason` (`end_turn`, `cancelled`, `max_tokens`, ...), passed through.
        stop_reason: String,
    },
    /// A JSON-RPC error response to `session/prompt` (`code` is `AGENT_ERROR`).
    TurnError {
        /// Always [`AGENT_ERROR`](super::AGENT_ERROR).
        code: String,
        /// The agent's error message (with its `data` detail), cut to 1 KiB.
        message: String,
        /// The agent's JSON-RPC error code; `None` when the response was a result the client
        /// could not read.
        agent_code: Option<i64>,
    },
    /// The agent broke the protocol, failed the handshake, timed out or exited while something
    /// was pending. The client is unusable from now on.
    Failed {
        /// What went wrong, for the `turn_error` message and the log.
        message: String,
    },
}

/// The client's handle on one of the agent's file requests, named by the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileRequestId(
    /// A number per client, from 1; not the agent's JSON-RPC id.
    pub u64,
);

/// What the client learns besides [`AgentEvent`]s, from [`AcpClient::poll_control`](super::AcpClient::poll_control).
#[derive(Debug, Clone, PartialEq)]
pub enum ControlEvent {
    /// A `current_mode_update`: the session's mode now.
    ModeChanged {
        /// The mode's id.
        mode_id: String,
    },
    /// An `available_commands_update`: the commands the agent offers now.
    CommandsChanged {
        /// The commands, as the agent described them.
        commands: Vec<schema::AvailableCommand>,
    },
    /// A `config_option_update`: the session's configuration options now.
    ConfigOptionsChanged {
        /// Every option, with its current value.
        options: Vec<schema::SessionConfigOption>,
    },
    /// The answer to [`AcpClient::set_mode`](super::AcpClient::set_mode).
    ModeSet {
        /// What `set_mode` returned.
        request: u64,
        /// The mode asked for.
        mode_id: String,
        /// `Err` with the agent's error message (or why there was no answer).
        result: Result<(), String>,
    },
    /// The answer to [`AcpClient::set_config_option`](super::AcpClient::set_config_option).
    ConfigOptionSet {
        /// What `set_config_option` returned.
        request: u64,
        /// Every option with its value after the change, or the agent's error message (or why
        /// there was no answer).
        result: Result<Vec<schema::SessionConfigOption>, String>,
    },
    /// The agent asks to read a text file (`fs/read_text_file`); answer with
    /// [`AcpClient::answer_read_text_file`](super::AcpClient::answer_read_text_file).
    ReadTextFile {
        /// Names the answer.
        request: FileRequestId,
        /// The absolute path the agent asked for, unchecked.
        path: PathBuf,
        /// The first line to read (1-based), if given.
        line: Option<u32>,
        /// How many lines at most, if given.
        limit: Option<u32>,
    },
    /// The agent asks to write a text file (`fs/write_text_file`); answer with
    /// [`AcpClient::answer_write_text_file`](super::AcpClient::answer_write_text_file).
    WriteTextFile {
        /// Names the answer.
        request: FileRequestId,
        /// The absolute path the agent asked for, unchecked.
        path: PathBuf,
        /// The whole new content.
        content: String,
    },
}

/// Which request opened the agent's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOrigin {
    /// `session/new`: a fresh session; the agent remembers nothing of earlier activations.
    New,
    /// `session/resume`: the agent's earlier session, without a replay.
    Resumed,
    /// `session/load`: the agent's earlier session; its replay was consumed.
    Loaded,
}

/// What the agent's `initialize` result says it supports, in short (the whole of it:
/// [`AcpClient::agent_capabilities`](super::AcpClient::agent_capabilities)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentFeatures {
    /// `agentCapabilities.loadSession`: `session/load` is served.
    pub load_session: bool,
    /// `agentCapabilities.sessionCapabilities.resume` is present: `session/resume` is served.
    pub resume_session: bool,
    /// `promptCapabilities.image`: prompts may carry image blocks.
    pub image: bool,
    /// `promptCapabilities.audio`: prompts may carry audio blocks.
    pub audio: bool,
    /// `promptCapabilities.embeddedContext`: prompts may carry embedded resources.
    pub embedded_context: bool,
}

impl AgentFeatures {
    pub(super) fn of(capabilities: &AgentCapabilities) -> Self {
        AgentFeatures {
            load_session: capabilities.load_session,
            resume_session: capabilities.session_capabilities.resume.is_some(),
            image: capabilities.prompt_capabilities.image,
            audio: capabilities.prompt_capabilities.audio,
            embedded_context: capabilities.prompt_capabilities.embedded_context,
        }
    }
}

/// Why a call from the session layer was refused; the client's state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpError {
    /// The handshake has not finished, or the client has failed or the agent exited.
    NotReady,
    /// A prompt is already in flight.
    Busy,
    /// No pending question has this id (never asked, already answered, or cancelled).
    UnknownQuestion,
    /// The question did not offer this option.
    UnknownOption,
    /// No pending file request of this kind has this id (never asked, already answered, or the
    /// client closed).
    UnknownRequest,
}

impl fmt::Display for AcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcpError::NotReady => "the agent is not ready",
            AcpError::Busy => "a turn is already running",
            AcpError::UnknownQuestion => "no such pending question",
            AcpError::UnknownOption => "the question did not offer this option",
            AcpError::UnknownRequest => "no such pending file request",
        })
    }
}

impl std::error::Error for AcpError {}
