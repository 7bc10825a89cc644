//! The Agent Client Protocol client (PROTOCOL section 9): one `AcpClient` per session drives one
//! agent process over JSON-RPC 2.0 lines. Pure: it consumes the agent's stdout lines and emits the
//! lines to write to its stdin and the events the session layer publishes.
//!
//! INTERFACE (the session layer is written against it; the implementation may add, not change):
//!
//! ```ignore
//! impl AcpClient {
//!     pub fn new(config: AcpConfig) -> Self;
//!     pub fn start(&mut self, cwd: &str, now: Instant);            // initialize, then session/new
//!     pub fn prompt(&mut self, text: &str, now: Instant) -> Result<(), AcpError>;
//!     pub fn cancel(&mut self, now: Instant);                       // session/cancel + pending permissions cancelled
//!     pub fn answer_permission(&mut self, question_id: &str, option_id: Option<&str>) -> Result<(), AcpError>;
//!     pub fn handle_line(&mut self, line: &[u8], now: Instant);
//!     pub fn handle_exit(&mut self, now: Instant);
//!     pub fn handle_timeout(&mut self, now: Instant);
//!     pub fn poll_timeout(&self) -> Option<Instant>;
//!     pub fn poll_write(&mut self) -> Option<Bytes>;                // one line with its '\n'
//!     pub fn poll_event(&mut self) -> Option<AgentEvent>;
//! }
//! ```
//!
//! Added for issue 13 (not yet called by the session layer):
//!
//! ```ignore
//! impl AcpClient {
//!     pub fn start_with_session(&mut self, cwd: &str, acp_session_id: &str, now: Instant); // resume, else load, else new
//!     pub fn session_origin(&self) -> Option<SessionOrigin>;       // New, Resumed or Loaded, from Ready on
//!     pub fn restore_error(&self) -> Option<&str>;                  // why resume/load was refused (then: new)
//!     pub fn replayed_updates(&self) -> u64;                        // session/load's replay, consumed
//!     pub fn agent_features(&self) -> Option<AgentFeatures>;        // from initialize
//!     pub fn agent_capabilities(&self) -> Option<&schema::AgentCapabilities>;
//!     pub fn current_mode(&self) -> Option<&str>;
//!     pub fn available_modes(&self) -> &[schema::SessionMode];
//!     pub fn config_options(&self) -> Option<&[schema::SessionConfigOption]>;
//!     pub fn available_commands(&self) -> Option<&[schema::AvailableCommand]>;
//!     pub fn set_mode(&mut self, mode_id: &str) -> Result<u64, AcpError>;
//!     pub fn set_config_option(&mut self, config_id: &str, value: schema::SessionConfigOptionValue) -> Result<u64, AcpError>;
//!     pub fn answer_read_text_file(&mut self, request: FileRequestId, result: Result<String, schema::Error>) -> Result<(), AcpError>;
//!     pub fn answer_write_text_file(&mut self, request: FileRequestId, result: Result<(), schema::Error>) -> Result<(), AcpError>;
//!     pub fn poll_control(&mut self) -> Option<ControlEvent>;
//! }
//! ```
//!
//! # Protocol (ACP v1)
//!
//! Every message is built and read with the protocol's own types (`agent-client-protocol-schema`,
//! re-exported as [`schema`]); the JSON-RPC framing (ids, error objects) is this module's.
//!
//! - Our requests are numbered from 0: `initialize` (`protocolVersion: 1`, `clientCapabilities:
//!   {fs: {readTextFile, writeTextFile}, terminal, auth: {terminal: false}}` from the
//!   configuration, `clientInfo`), then `session/new` (`cwd`, `mcpServers: []`), then one
//!   `session/prompt` per turn (`prompt: [{type: "text", text}]`). `session/cancel` is a
//!   notification.
//! - [`AcpClient::start_with_session`] names an ACP session id the agent created earlier: if the
//!   agent's `initialize` result advertises `sessionCapabilities.resume`, `session/resume` (the
//!   agent answers without replaying); else if it advertises `loadSession`, `session/load` (the
//!   agent replays the conversation as `session/update` notifications before it answers: they are
//!   consumed, never reported as `AgentEvent::Update`); else `session/new`. A refused resume or
//!   load falls back to `session/new` ([`AcpClient::restore_error`] says why). `Ready` follows the
//!   answer that opened the session; [`AcpClient::session_origin`] says which one it was.
//! - The agent's requests have their own id space (they may equal ours): a line with `method` is a
//!   request (with `id`) or a notification (without); a line with `result`/`error` is a response
//!   to one of ours. Ids are echoed as the agent sent them (number or string).
//! - Agent requests served: `session/request_permission` (a malformed one is answered `-32602`),
//!   and, only when [`AcpConfig::fs_capability`] advertises them, `fs/read_text_file` and
//!   `fs/write_text_file`, surfaced as [`ControlEvent`]s for the host to answer (the core does no
//!   file I/O; confining paths to the workspace is the host's job). Everything else — `terminal/*`
//!   included, even when advertised — is answered with JSON-RPC error `-32601`. Notifications
//!   other than `session/update` are ignored.
//! - `session/update` is mapped per PROTOCOL section 6 (see `mapping.rs`); updates are reported
//!   whenever they come, in a turn or not (some agents announce `available_commands_update` right
//!   after `session/new`): the session layer decides what to publish. `current_mode_update`,
//!   `available_commands_update` and `config_option_update` are still reported as `agent_update`
//!   (so what the gateway publishes does not change) and, typed, as [`ControlEvent`]s and in the
//!   client's state ([`AcpClient::current_mode`], ...).
//! - [`ControlEvent`]s have a queue of their own ([`AcpClient::poll_control`]), so `AgentEvent`,
//!   which the session layer matches exhaustively, keeps its variants. The state kinds are
//!   coalesced there (at most one of each kind waits, the latest), so an unpolled queue stays
//!   small.
//! - Failures (`AgentEvent::Failed`) are final: every later call is a no-op, `prompt` answers
//!   `NotReady`, `answer_permission` `UnknownQuestion`. Pending permission questions and file
//!   requests are then dropped without events; the session layer resolves them itself. A pending
//!   `set_mode`/`set_config_option` gets its [`ControlEvent`] with an error whenever the client
//!   closes (failure or exit), so each is answered exactly once.

mod mapping;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_client_protocol_schema::v1::{
    AgentCapabilities, AvailableCommand, CancelNotification, ClientCapabilities, ContentBlock,
    FileSystemCapabilities, Implementation, InitializeRequest, InitializeResponse,
    LoadSessionRequest, LoadSessionResponse, NewSessionRequest, NewSessionResponse, PromptRequest,
    PromptResponse, ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome,
    RequestPermissionRequest, RequestPermissionResponse, ResumeSessionRequest,
    ResumeSessionResponse, SelectedPermissionOutcome, SessionConfigOption,
    SessionConfigOptionValue, SessionMode, SessionModeState, SetSessionConfigOptionRequest,
    SetSessionConfigOptionResponse, SetSessionModeRequest, SetSessionModeResponse, TextContent,
    WriteTextFileRequest, WriteTextFileResponse, AGENT_METHOD_NAMES, CLIENT_METHOD_NAMES,
};
use agent_client_protocol_schema::ProtocolVersion;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use mapping::StateChange;

/// The protocol's own Rust types (ACP v1, from the `agent-client-protocol-schema` crate), for
/// the values this client's newer API hands out and takes.
pub use agent_client_protocol_schema::v1 as schema;

/// The ACP protocol version the client speaks.
pub const ACP_PROTOCOL_VERSION: u64 = 1;
/// JSON-RPC "method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "internal error".
pub const INTERNAL_ERROR: i64 = -32603;
/// The `code` of `AgentEvent::TurnError` for an error response to `session/prompt`.
pub const AGENT_ERROR: &str = "AGENT_ERROR";
/// Agent-provided text (error messages) is cut to this many bytes in events.
const MAX_AGENT_MESSAGE: usize = 1024;
/// Tool call titles remembered per turn (to title a permission request whose `toolCall` has
/// none); bounded so an agent cannot grow it without end.
const MAX_REMEMBERED_TOOL_CALLS: usize = 1024;
/// File requests waiting for the host's answer; more are answered `-32603` at once.
pub const MAX_PENDING_FILE_REQUESTS: usize = 64;

/// The ACP client's settings (`CoreConfig::acp`), the same for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpConfig {
    /// How long `initialize`, and then `session/new` (or `session/resume`/`session/load`), may
    /// each take; during `session/load` every replayed update restarts it. Default 30 s.
    pub init_timeout: Duration,
    /// How long a whole turn (from `prompt` to its response, permission waits included) may take.
    /// Default: no limit.
    pub turn_timeout: Option<Duration>,
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
            turn_timeout: None,
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
        /// Always [`AGENT_ERROR`].
        code: String,
        /// The agent's error message (with its `data` detail), cut to 1 KiB.
        message: String,
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

/// What the client learns besides [`AgentEvent`]s, from [`AcpClient::poll_control`].
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
    /// The answer to [`AcpClient::set_mode`].
    ModeSet {
        /// What `set_mode` returned.
        request: u64,
        /// The mode asked for.
        mode_id: String,
        /// `Err` with the agent's error message (or why there was no answer).
        result: Result<(), String>,
    },
    /// The answer to [`AcpClient::set_config_option`].
    ConfigOptionSet {
        /// What `set_config_option` returned.
        request: u64,
        /// Every option with its value after the change, or the agent's error message (or why
        /// there was no answer).
        result: Result<Vec<schema::SessionConfigOption>, String>,
    },
    /// The agent asks to read a text file (`fs/read_text_file`); answer with
    /// [`AcpClient::answer_read_text_file`].
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
    /// [`AcpClient::answer_write_text_file`].
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
/// [`AcpClient::agent_capabilities`]).
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
    fn of(capabilities: &AgentCapabilities) -> Self {
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

#[derive(Debug)]
enum State {
    /// `start` not called yet.
    Idle,
    /// `initialize` or the session's opening request in flight; fails at `deadline`.
    Handshake {
        deadline: Option<Instant>,
    },
    Ready {
        session_id: String,
    },
    /// Failed, or the agent exited.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Initialize,
    NewSession,
    ResumeSession,
    LoadSession,
    Prompt,
    SetMode { mode_id: String },
    SetConfigOption,
}

impl Pending {
    fn method(&self) -> &'static str {
        match self {
            Pending::Initialize => AGENT_METHOD_NAMES.initialize,
            Pending::NewSession => AGENT_METHOD_NAMES.session_new,
            Pending::ResumeSession => AGENT_METHOD_NAMES.session_resume,
            Pending::LoadSession => AGENT_METHOD_NAMES.session_load,
            Pending::Prompt => AGENT_METHOD_NAMES.session_prompt,
            Pending::SetMode { .. } => AGENT_METHOD_NAMES.session_set_mode,
            Pending::SetConfigOption => AGENT_METHOD_NAMES.session_set_config_option,
        }
    }

    fn is_handshake(&self) -> bool {
        matches!(
            self,
            Pending::Initialize
                | Pending::NewSession
                | Pending::ResumeSession
                | Pending::LoadSession
        )
    }
}

#[derive(Debug)]
struct Turn {
    deadline: Option<Instant>,
    cancel_sent: bool,
}

#[derive(Debug)]
struct Question {
    question_id: String,
    /// The agent's JSON-RPC id, echoed in the answer.
    request_id: Value,
    options: Vec<PermissionOption>,
}

#[derive(Debug)]
struct FileRequest {
    id: FileRequestId,
    /// The agent's JSON-RPC id, echoed in the answer.
    request_id: Value,
    write: bool,
}

/// The ACP client of one session. See the module documentation.
#[derive(Debug)]
pub struct AcpClient {
    config: AcpConfig,
    state: State,
    cwd: String,
    /// The ACP session to resume or load instead of creating one.
    restore: Option<String>,
    capabilities: Option<AgentCapabilities>,
    origin: Option<SessionOrigin>,
    restore_error: Option<String>,
    /// True while `session/load` is in flight: updates are its replay.
    replaying: bool,
    replayed: u64,
    current_mode: Option<String>,
    available_modes: Vec<SessionMode>,
    config_options: Option<Vec<SessionConfigOption>>,
    commands: Option<Vec<AvailableCommand>>,
    next_request_id: u64,
    pending: HashMap<u64, Pending>,
    turn: Option<Turn>,
    questions: Vec<Question>,
    next_question: u64,
    files: Vec<FileRequest>,
    next_file_request: u64,
    tool_titles: HashMap<String, String>,
    writes: VecDeque<Bytes>,
    events: VecDeque<AgentEvent>,
    controls: VecDeque<ControlEvent>,
}

#[derive(Serialize)]
struct Request<'a, P: Serialize> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: P,
}

#[derive(Serialize)]
struct Notification<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
}

#[derive(Serialize)]
struct Response<'a, R: Serialize> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: R,
}

#[derive(Serialize)]
struct ErrorResponse<'a, E: Serialize> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: E,
}

#[derive(Serialize)]
struct RpcError<'a> {
    code: i64,
    message: &'a str,
}

impl AcpClient {
    /// A client that has sent nothing yet; [`AcpClient::start`] begins the handshake.
    pub fn new(config: AcpConfig) -> Self {
        AcpClient {
            config,
            state: State::Idle,
            cwd: String::new(),
            restore: None,
            capabilities: None,
            origin: None,
            restore_error: None,
            replaying: false,
            replayed: 0,
            current_mode: None,
            available_modes: Vec::new(),
            config_options: None,
            commands: None,
            next_request_id: 0,
            pending: HashMap::new(),
            turn: None,
            questions: Vec::new(),
            next_question: 1,
            files: Vec::new(),
            next_file_request: 1,
            tool_titles: HashMap::new(),
            writes: VecDeque::new(),
            events: VecDeque::new(),
            controls: VecDeque::new(),
        }
    }

    /// Queues `initialize`; `session/new` follows its result, then `AgentEvent::Ready`. Only the
    /// first call (of this or [`AcpClient::start_with_session`]) counts.
    pub fn start(&mut self, cwd: &str, now: Instant) {
        if !matches!(self.state, State::Idle) {
            return;
        }
        self.cwd = cwd.to_owned();
        self.state = State::Handshake {
            deadline: now.checked_add(self.config.init_timeout),
        };
        let fs = FileSystemCapabilities::new()
            .read_text_file(self.config.fs_capability)
            .write_text_file(self.config.fs_capability);
        let params = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(
                ClientCapabilities::new()
                    .fs(fs)
                    .terminal(self.config.terminal_capability),
            )
            .client_info(Implementation::new("diminuendo", env!("CARGO_PKG_VERSION")));
        self.request(Pending::Initialize, params);
    }

    /// Like [`AcpClient::start`], but reopens the agent's earlier session `acp_session_id` (what
    /// [`AcpClient::session_id`] said then): `session/resume` if the agent advertises
    /// `sessionCapabilities.resume`, else `session/load` if it advertises `loadSession` (its
    /// replay is consumed), else — or if the agent refuses either — `session/new`.
    /// [`AcpClient::session_origin`] says which, once `Ready`.
    pub fn start_with_session(&mut self, cwd: &str, acp_session_id: &str, now: Instant) {
        if !matches!(self.state, State::Idle) {
            return;
        }
        self.restore = Some(acp_session_id.to_owned());
        self.start(cwd, now);
    }

    /// Sends `session/prompt` with one text block.
    pub fn prompt(&mut self, text: &str, now: Instant) -> Result<(), AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        if self.turn.is_some() {
            return Err(AcpError::Busy);
        }
        let params = PromptRequest::new(
            session_id.clone(),
            vec![ContentBlock::Text(TextContent::new(text))],
        );
        self.request(Pending::Prompt, params);
        self.turn = Some(Turn {
            deadline: self
                .config
                .turn_timeout
                .and_then(|timeout| now.checked_add(timeout)),
            cancel_sent: false,
        });
        self.tool_titles.clear();
        Ok(())
    }

    /// Sends `session/cancel` (once per turn, only while a turn runs) and answers every pending
    /// permission question `cancelled`, reporting each with `AgentEvent::PermissionCancelled`.
    /// The turn still ends with the agent's `session/prompt` response (normally `stopReason:
    /// "cancelled"`).
    pub fn cancel(&mut self, _now: Instant) {
        let State::Ready { session_id } = &self.state else {
            return;
        };
        if let Some(turn) = &mut self.turn {
            if !turn.cancel_sent {
                turn.cancel_sent = true;
                let line = encode(&Notification {
                    jsonrpc: "2.0",
                    method: AGENT_METHOD_NAMES.session_cancel,
                    params: CancelNotification::new(session_id.clone()),
                });
                self.writes.push_back(line);
            }
        }
        self.cancel_questions();
    }

    /// Answers a pending question: `Some(option_id)` selects an offered option, `None` answers
    /// `cancelled`. No event is emitted (the caller knows).
    pub fn answer_permission(
        &mut self,
        question_id: &str,
        option_id: Option<&str>,
    ) -> Result<(), AcpError> {
        let index = self
            .questions
            .iter()
            .position(|question| question.question_id == question_id)
            .ok_or(AcpError::UnknownQuestion)?;
        if let Some(option_id) = option_id {
            if !self.questions[index]
                .options
                .iter()
                .any(|option| option.option_id == option_id)
            {
                return Err(AcpError::UnknownOption);
            }
        }
        let question = self.questions.remove(index);
        let outcome = match option_id {
            Some(option_id) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(
                option_id.to_owned(),
            )),
            None => RequestPermissionOutcome::Cancelled,
        };
        self.respond(
            &question.request_id,
            RequestPermissionResponse::new(outcome),
        );
        Ok(())
    }

    /// Sends `session/set_mode`; its answer comes back as [`ControlEvent::ModeSet`] with the
    /// returned request number (and, on success, [`AcpClient::current_mode`] is `mode_id`).
    /// Allowed once the session is open, in a turn or not.
    pub fn set_mode(&mut self, mode_id: &str) -> Result<u64, AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        let params = SetSessionModeRequest::new(session_id.clone(), mode_id.to_owned());
        Ok(self.request(
            Pending::SetMode {
                mode_id: mode_id.to_owned(),
            },
            params,
        ))
    }

    /// Sends `session/set_config_option`; its answer comes back as
    /// [`ControlEvent::ConfigOptionSet`] with the returned request number (and, on success,
    /// [`AcpClient::config_options`] is the agent's new list). Allowed once the session is open.
    pub fn set_config_option(
        &mut self,
        config_id: &str,
        value: SessionConfigOptionValue,
    ) -> Result<u64, AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        let params =
            SetSessionConfigOptionRequest::new(session_id.clone(), config_id.to_owned(), value);
        Ok(self.request(Pending::SetConfigOption, params))
    }

    /// Answers a [`ControlEvent::ReadTextFile`]: the file's content, or an error (e.g.
    /// `schema::Error::resource_not_found(..)`, or `invalid_params` for a path outside the
    /// workspace).
    pub fn answer_read_text_file(
        &mut self,
        request: FileRequestId,
        result: Result<String, schema::Error>,
    ) -> Result<(), AcpError> {
        let file = self.take_file_request(request, false)?;
        match result {
            Ok(content) => self.respond(&file.request_id, ReadTextFileResponse::new(content)),
            Err(error) => self.writes.push_back(encode(&ErrorResponse {
                jsonrpc: "2.0",
                id: &file.request_id,
                error,
            })),
        }
        Ok(())
    }

    /// Answers a [`ControlEvent::WriteTextFile`]: written, or an error.
    pub fn answer_write_text_file(
        &mut self,
        request: FileRequestId,
        result: Result<(), schema::Error>,
    ) -> Result<(), AcpError> {
        let file = self.take_file_request(request, true)?;
        match result {
            Ok(()) => self.respond(&file.request_id, WriteTextFileResponse::new()),
            Err(error) => self.writes.push_back(encode(&ErrorResponse {
                jsonrpc: "2.0",
                id: &file.request_id,
                error,
            })),
        }
        Ok(())
    }

    /// One line of the agent's stdout (with or without its line ending).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            return self.fail("the agent wrote a line that is not JSON".into());
        };
        let Value::Object(mut message) = value else {
            return self.fail("the agent wrote JSON that is not a JSON-RPC 2.0 message".into());
        };
        if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return self.fail("the agent wrote JSON that is not a JSON-RPC 2.0 message".into());
        }
        match message.remove("method") {
            Some(Value::String(method)) => {
                let params = message.remove("params").unwrap_or(Value::Null);
                match message.remove("id") {
                    None => self.handle_notification(&method, params, now),
                    Some(id @ (Value::Number(_) | Value::String(_) | Value::Null)) => {
                        self.handle_request(id, &method, params)
                    }
                    Some(_) => self.fail(
                        "the agent sent a request whose id is not a number or a string".into(),
                    ),
                }
            }
            Some(_) => self.fail("the agent sent a request whose method is not a string".into()),
            None => self.handle_response(message, now),
        }
    }

    /// The agent process exited (or its stdout closed). Fails if anything was pending; otherwise
    /// the client just closes.
    pub fn handle_exit(&mut self, _now: Instant) {
        let message = match &self.state {
            State::Closed => return,
            State::Idle => None,
            State::Handshake { .. } => Some(format!(
                "the agent exited before answering {}",
                self.handshake_step()
            )),
            State::Ready { .. } if self.turn.is_some() => Some("the agent exited mid-turn".into()),
            State::Ready { .. } if !self.questions.is_empty() => {
                Some("the agent exited with a permission question pending".into())
            }
            State::Ready { .. } => None,
        };
        match message {
            Some(message) => self.fail(message),
            None => self.close("the agent exited"),
        }
    }

    /// Fails the client if the handshake step or the turn in flight is past its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Handshake {
                deadline: Some(deadline),
            } if *deadline <= now => {
                let step = self.handshake_step();
                let secs = self.config.init_timeout.as_secs_f64();
                self.fail(format!("the agent did not answer {step} within {secs} s"));
            }
            State::Ready { .. } => {
                let overdue = self
                    .turn
                    .as_ref()
                    .and_then(|turn| turn.deadline)
                    .is_some_and(|deadline| deadline <= now);
                if overdue {
                    let secs = self.config.turn_timeout.unwrap_or_default().as_secs_f64();
                    self.fail(format!("the agent did not finish the turn within {secs} s"));
                }
            }
            _ => {}
        }
    }

    /// The next instant `handle_timeout` must be called at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshake { deadline } => *deadline,
            State::Ready { .. } => self.turn.as_ref().and_then(|turn| turn.deadline),
            _ => None,
        }
    }

    /// The next line to write to the agent's stdin, with its `\n`.
    pub fn poll_write(&mut self) -> Option<Bytes> {
        self.writes.pop_front()
    }

    /// The next event for the session layer, in the order they happened.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// The next [`ControlEvent`], in the order they happened (the state kinds coalesced: a newer
    /// one replaces a waiting one of its kind and moves to the back).
    pub fn poll_control(&mut self) -> Option<ControlEvent> {
        self.controls.pop_front()
    }

    /// True once the handshake finished and until the client fails or the agent exits.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// True while a prompt is in flight.
    pub fn in_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// True after a failure or the agent's exit: a new client (and process) is needed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The agent's session id, once the session is open (`Ready`) and until the client closes;
    /// the one to persist and pass to [`AcpClient::start_with_session`] next time.
    pub fn session_id(&self) -> Option<&str> {
        match &self.state {
            State::Ready { session_id } => Some(session_id),
            _ => None,
        }
    }

    /// The ids of the questions waiting for an answer, oldest first.
    pub fn pending_questions(&self) -> impl Iterator<Item = &str> {
        self.questions
            .iter()
            .map(|question| question.question_id.as_str())
    }

    /// Which request opened the session: set when `Ready` is reported, kept after.
    pub fn session_origin(&self) -> Option<SessionOrigin> {
        self.origin
    }

    /// Why the agent refused `session/resume` or `session/load` (its error message), when the
    /// client then fell back to `session/new`.
    pub fn restore_error(&self) -> Option<&str> {
        self.restore_error.as_deref()
    }

    /// How many `session/update`s the agent replayed during `session/load` (consumed, never
    /// reported as `AgentEvent::Update`).
    pub fn replayed_updates(&self) -> u64 {
        self.replayed
    }

    /// What the agent's `initialize` result advertised, in short; `None` before it answered.
    pub fn agent_features(&self) -> Option<AgentFeatures> {
        self.capabilities.as_ref().map(AgentFeatures::of)
    }

    /// The agent's whole `agentCapabilities`; `None` before it answered `initialize`.
    pub fn agent_capabilities(&self) -> Option<&schema::AgentCapabilities> {
        self.capabilities.as_ref()
    }

    /// The session's current mode: from the session's opening answer, then `current_mode_update`
    /// and successful `set_mode`s.
    pub fn current_mode(&self) -> Option<&str> {
        self.current_mode.as_deref()
    }

    /// The modes the agent offered when the session opened (empty if none).
    pub fn available_modes(&self) -> &[schema::SessionMode] {
        &self.available_modes
    }

    /// The session's configuration options: from the opening answer, then `config_option_update`
    /// and successful `set_config_option`s. `None` if the agent never sent any.
    pub fn config_options(&self) -> Option<&[schema::SessionConfigOption]> {
        self.config_options.as_deref()
    }

    /// The commands the agent offers (its latest `available_commands_update`), if it sent any.
    pub fn available_commands(&self) -> Option<&[schema::AvailableCommand]> {
        self.commands.as_deref()
    }

    /// Sends a request and returns its id.
    fn request<P: Serialize>(&mut self, kind: Pending, params: P) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let line = encode(&Request {
            jsonrpc: "2.0",
            id,
            method: kind.method(),
            params,
        });
        self.pending.insert(id, kind);
        self.writes.push_back(line);
        id
    }

    fn respond<R: Serialize>(&mut self, id: &Value, result: R) {
        self.writes.push_back(encode(&Response {
            jsonrpc: "2.0",
            id,
            result,
        }));
    }

    fn respond_error(&mut self, id: &Value, code: i64, message: &str) {
        self.writes.push_back(encode(&ErrorResponse {
            jsonrpc: "2.0",
            id,
            error: RpcError { code, message },
        }));
    }

    /// The handshake request in flight, for messages.
    fn handshake_step(&self) -> &'static str {
        self.pending
            .values()
            .find(|pending| pending.is_handshake())
            .unwrap_or(&Pending::Initialize)
            .method()
    }

    fn handle_notification(&mut self, method: &str, mut params: Value, now: Instant) {
        if method != CLIENT_METHOD_NAMES.session_update {
            return;
        }
        let update = params
            .as_object_mut()
            .and_then(|params| params.remove("update"))
            .unwrap_or(Value::Null);
        let mapped = mapping::map_update(update);
        if let Some(change) = mapped.state {
            self.apply_state(change);
        }
        if self.replaying {
            // session/load's replay of the conversation: the gateway has its own history.
            self.replayed += 1;
            self.state = State::Handshake {
                deadline: now.checked_add(self.config.init_timeout),
            };
            return;
        }
        if let Some((id, title)) = mapped.tool_title {
            self.remember_title(id, title);
        }
        self.events.push_back(AgentEvent::Update {
            kind: mapped.kind,
            fields: mapped.fields,
        });
    }

    fn apply_state(&mut self, change: StateChange) {
        let event = match change {
            StateChange::Mode(mode_id) => {
                self.current_mode = Some(mode_id.clone());
                ControlEvent::ModeChanged { mode_id }
            }
            StateChange::Commands(commands) => {
                self.commands = Some(commands.clone());
                ControlEvent::CommandsChanged { commands }
            }
            StateChange::ConfigOptions(options) => {
                self.config_options = Some(options.clone());
                ControlEvent::ConfigOptionsChanged { options }
            }
        };
        let kind = std::mem::discriminant(&event);
        self.controls
            .retain(|waiting| std::mem::discriminant(waiting) != kind);
        self.controls.push_back(event);
    }

    fn remember_title(&mut self, id: String, title: String) {
        if self.tool_titles.len() < MAX_REMEMBERED_TOOL_CALLS || self.tool_titles.contains_key(&id)
        {
            self.tool_titles.insert(id, title);
        }
    }

    fn handle_request(&mut self, id: Value, method: &str, params: Value) {
        if method == CLIENT_METHOD_NAMES.session_request_permission {
            return self.permission_request(id, &params);
        }
        let read = method == CLIENT_METHOD_NAMES.fs_read_text_file;
        let write = method == CLIENT_METHOD_NAMES.fs_write_text_file;
        if !(self.config.fs_capability && (read || write)) {
            return self.respond_error(&id, METHOD_NOT_FOUND, "Method not found");
        }
        if self.files.len() >= MAX_PENDING_FILE_REQUESTS {
            return self.respond_error(&id, INTERNAL_ERROR, "Too many file requests pending");
        }
        let request = FileRequestId(self.next_file_request);
        let event = if read {
            let Ok(read) = ReadTextFileRequest::deserialize(&params) else {
                return self.respond_error(
                    &id,
                    INVALID_PARAMS,
                    "Invalid params: fs/read_text_file needs sessionId and path",
                );
            };
            ControlEvent::ReadTextFile {
                request,
                path: read.path,
                line: read.line,
                limit: read.limit,
            }
        } else {
            let Ok(written) = WriteTextFileRequest::deserialize(&params) else {
                return self.respond_error(
                    &id,
                    INVALID_PARAMS,
                    "Invalid params: fs/write_text_file needs sessionId, path and content",
                );
            };
            ControlEvent::WriteTextFile {
                request,
                path: written.path,
                content: written.content,
            }
        };
        self.next_file_request += 1;
        self.files.push(FileRequest {
            id: request,
            request_id: id,
            write,
        });
        self.controls.push_back(event);
    }

    fn take_file_request(
        &mut self,
        request: FileRequestId,
        write: bool,
    ) -> Result<FileRequest, AcpError> {
        let index = self
            .files
            .iter()
            .position(|file| file.id == request && file.write == write)
            .ok_or(AcpError::UnknownRequest)?;
        Ok(self.files.remove(index))
    }

    /// `session/request_permission`: `{toolCall: {toolCallId, title?}, options: [{optionId, name,
    /// kind}]}`. ACP v1 types `toolCall` as a `ToolCallUpdate`, so its title is optional: a
    /// missing one is taken from the `tool_call` update of the same id, else empty.
    fn permission_request(&mut self, id: Value, params: &Value) {
        let Ok(request) = RequestPermissionRequest::deserialize(params) else {
            return self.respond_error(
                &id,
                INVALID_PARAMS,
                "Invalid params: session/request_permission needs toolCall.toolCallId and options[{optionId, name, kind}]",
            );
        };
        let tool_call_id = request.tool_call.tool_call_id.0.to_string();
        let title = match request.tool_call.fields.title {
            Some(title) => title,
            None => self
                .tool_titles
                .get(&tool_call_id)
                .cloned()
                .unwrap_or_default(),
        };
        let options: Vec<PermissionOption> = request
            .options
            .iter()
            .map(|option| PermissionOption {
                option_id: option.option_id.0.to_string(),
                name: option.name.clone(),
                kind: mapping::wire_name(&option.kind),
            })
            .collect();
        let question_id = format!("q{}", self.next_question);
        self.next_question += 1;
        self.questions.push(Question {
            question_id: question_id.clone(),
            request_id: id,
            options: options.clone(),
        });
        self.events.push_back(AgentEvent::PermissionRequested {
            question_id,
            tool_call_id,
            title,
            options,
        });
    }

    fn handle_response(&mut self, mut message: Map<String, Value>, now: Instant) {
        let id = message.get("id").and_then(Value::as_u64);
        let Some(kind) = id.and_then(|id| self.pending.get(&id).cloned()) else {
            let shown = message.get("id").map_or("none".into(), Value::to_string);
            return self.fail(format!(
                "the agent answered a request that was never sent (id {})",
                truncate(&shown)
            ));
        };
        let outcome = if let Some(error) = message.get("error") {
            Err(error_text(error))
        } else if let Some(result) = message.remove("result") {
            Ok(result)
        } else {
            return self.fail("the agent sent a response with neither result nor error".into());
        };
        let request = id.unwrap_or_default();
        self.pending.remove(&request);
        match (kind, outcome) {
            (Pending::Initialize, Err(message)) => {
                self.fail(format!("the agent refused initialize: {message}"))
            }
            (Pending::Initialize, Ok(result)) => {
                let response = match parse::<InitializeResponse>(result, "initialize") {
                    Ok(response) => response,
                    Err(message) => return self.fail(message),
                };
                let version = response.protocol_version.as_u16();
                if u64::from(version) != ACP_PROTOCOL_VERSION {
                    return self.fail(format!(
                        "the agent speaks ACP version {version}, the gateway version {ACP_PROTOCOL_VERSION}"
                    ));
                }
                self.capabilities = Some(response.agent_capabilities);
                self.open_session(now);
            }
            (Pending::NewSession, Err(message)) => {
                self.fail(format!("the agent refused session/new: {message}"))
            }
            (Pending::NewSession, Ok(result)) => {
                match parse::<NewSessionResponse>(result, "session/new") {
                    Ok(response) => {
                        self.session_state(response.modes, response.config_options);
                        self.ready(response.session_id.0.to_string(), SessionOrigin::New);
                    }
                    Err(message) => self.fail(message),
                }
            }
            (kind @ (Pending::ResumeSession | Pending::LoadSession), outcome) => {
                self.replaying = false;
                let opened = match (&kind, outcome) {
                    (_, Err(message)) => Err(message),
                    (Pending::ResumeSession, Ok(result)) => {
                        parse::<ResumeSessionResponse>(result, "session/resume")
                            .map(|response| (response.modes, response.config_options))
                    }
                    (_, Ok(result)) => parse::<LoadSessionResponse>(result, "session/load")
                        .map(|response| (response.modes, response.config_options)),
                };
                let restored = self.restore.take().unwrap_or_default();
                match opened {
                    Ok((modes, options)) => {
                        self.session_state(modes, options);
                        let origin = if kind == Pending::ResumeSession {
                            SessionOrigin::Resumed
                        } else {
                            SessionOrigin::Loaded
                        };
                        self.ready(restored, origin);
                    }
                    Err(message) => {
                        // The agent no longer has the session: start afresh rather than fail.
                        self.restore_error = Some(message);
                        self.open_session(now);
                    }
                }
            }
            (Pending::Prompt, outcome) => {
                self.turn = None;
                // A question still open when the turn ended can no longer matter.
                self.cancel_questions();
                let event = match outcome {
                    Ok(result) => match parse::<PromptResponse>(result, "session/prompt") {
                        Ok(response) => AgentEvent::TurnComplete {
                            stop_reason: mapping::wire_name(&response.stop_reason),
                        },
                        Err(message) => AgentEvent::TurnError {
                            code: AGENT_ERROR.into(),
                            message,
                        },
                    },
                    Err(message) => AgentEvent::TurnError {
                        code: AGENT_ERROR.into(),
                        message,
                    },
                };
                self.events.push_back(event);
            }
            (Pending::SetMode { mode_id }, outcome) => {
                let result = outcome.and_then(|result| {
                    parse::<SetSessionModeResponse>(result, "session/set_mode").map(|_| ())
                });
                if result.is_ok() {
                    self.current_mode = Some(mode_id.clone());
                }
                self.controls.push_back(ControlEvent::ModeSet {
                    request,
                    mode_id,
                    result,
                });
            }
            (Pending::SetConfigOption, outcome) => {
                let result = outcome.and_then(|result| {
                    parse::<SetSessionConfigOptionResponse>(result, "session/set_config_option")
                        .map(|response| response.config_options)
                });
                if let Ok(options) = &result {
                    self.config_options = Some(options.clone());
                }
                self.controls
                    .push_back(ControlEvent::ConfigOptionSet { request, result });
            }
        }
    }

    /// After `initialize` (or a refused resume/load): the request that opens the session.
    fn open_session(&mut self, now: Instant) {
        self.state = State::Handshake {
            deadline: now.checked_add(self.config.init_timeout),
        };
        let features = self
            .capabilities
            .as_ref()
            .map(AgentFeatures::of)
            .unwrap_or_default();
        match self.restore.clone() {
            Some(session_id) if features.resume_session => {
                let params = ResumeSessionRequest::new(session_id, self.cwd.clone());
                self.request(Pending::ResumeSession, params);
            }
            Some(session_id) if features.load_session => {
                self.replaying = true;
                let params = LoadSessionRequest::new(session_id, self.cwd.clone());
                self.request(Pending::LoadSession, params);
            }
            _ => {
                self.restore = None;
                let params = NewSessionRequest::new(self.cwd.clone());
                self.request(Pending::NewSession, params);
            }
        }
    }

    fn session_state(
        &mut self,
        modes: Option<SessionModeState>,
        options: Option<Vec<SessionConfigOption>>,
    ) {
        if let Some(modes) = modes {
            self.current_mode = Some(modes.current_mode_id.0.to_string());
            self.available_modes = modes.available_modes;
        }
        if options.is_some() {
            self.config_options = options;
        }
    }

    fn ready(&mut self, session_id: String, origin: SessionOrigin) {
        self.state = State::Ready { session_id };
        self.origin = Some(origin);
        self.events.push_back(AgentEvent::Ready);
    }

    fn cancel_questions(&mut self) {
        for question in std::mem::take(&mut self.questions) {
            self.respond(
                &question.request_id,
                RequestPermissionResponse::new(RequestPermissionOutcome::Cancelled),
            );
            self.events.push_back(AgentEvent::PermissionCancelled {
                question_id: question.question_id,
            });
        }
    }

    fn fail(&mut self, message: String) {
        self.close(&message);
        self.events.push_back(AgentEvent::Failed { message });
    }

    /// Closes the client; a pending `set_mode`/`set_config_option` is answered with `why`.
    fn close(&mut self, why: &str) {
        self.state = State::Closed;
        self.replaying = false;
        let mut pending: Vec<(u64, Pending)> = self.pending.drain().collect();
        pending.sort_by_key(|(id, _)| *id);
        for (request, kind) in pending {
            let event = match kind {
                Pending::SetMode { mode_id } => ControlEvent::ModeSet {
                    request,
                    mode_id,
                    result: Err(why.to_owned()),
                },
                Pending::SetConfigOption => ControlEvent::ConfigOptionSet {
                    request,
                    result: Err(why.to_owned()),
                },
                _ => continue,
            };
            self.controls.push_back(event);
        }
        self.turn = None;
        self.questions.clear();
        self.files.clear();
        self.tool_titles.clear();
    }
}

/// A result as its ACP type, or the message saying why it is not one.
fn parse<T: DeserializeOwned>(result: Value, method: &str) -> Result<T, String> {
    serde_json::from_value(result)
        .map_err(|error| truncate(&format!("the agent's {method} result is invalid: {error}")))
}

fn encode<T: Serialize>(message: &T) -> Bytes {
    // Serializing these messages cannot fail (string keys only, no I/O); should that ever change,
    // an empty object keeps the stream line-delimited JSON.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

/// A JSON-RPC error's `message`, with its `data` when that is a string or carries a string
/// `details` (the TypeScript SDK's `internalError({details})` puts the reason there).
fn error_text(error: &Value) -> String {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    let data = error.get("data");
    let detail = data.and_then(Value::as_str).or_else(|| {
        data.and_then(|data| data.get("details"))
            .and_then(Value::as_str)
    });
    match detail {
        Some(detail) => truncate(&format!("{message}: {detail}")),
        None => truncate(message),
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_AGENT_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_AGENT_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
