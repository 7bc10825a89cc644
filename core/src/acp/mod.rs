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
//!     pub fn prompt_with(&mut self, text: &str, content: Vec<schema::ContentBlock>, now: Instant) -> Result<(), AcpError>;
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
//! Reopening a conversation, the agent's capabilities and controls, and its file requests (used by
//! `session/memory.rs`, `session/controls.rs` and `session/agent.rs`):
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
//!   `session/prompt` per turn (`prompt: [{type: "text", text}]`, then
//!   the turn's content blocks with [`AcpClient::prompt_with`]). `session/cancel` is a
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
//!   client's state ([`AcpClient::current_mode`], ...). Text chunks, the lines agents write most,
//!   take a path of their own (`fast.rs`) that gives the same events without a `Value` tree.
//! - [`ControlEvent`]s have a queue of their own ([`AcpClient::poll_control`]), so `AgentEvent`,
//!   which the session layer matches exhaustively, keeps its variants. The state kinds are
//!   coalesced there (at most one of each kind waits, the latest), so an unpolled queue stays
//!   small.
//! - Failures (`AgentEvent::Failed`) are final: every later call is a no-op, `prompt` answers
//!   `NotReady`, `answer_permission` `UnknownQuestion`. Pending permission questions and file
//!   requests are then dropped without events; the session layer resolves them itself. A pending
//!   `set_mode`/`set_config_option` gets its [`ControlEvent`] with an error whenever the client
//!   closes (failure or exit), so each is answered exactly once.

mod control;
mod events;
mod fast;
mod incoming;
mod mapping;
mod rpc;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use agent_client_protocol_schema::v1::{
    AgentCapabilities, AvailableCommand, CancelNotification, ClientCapabilities, ContentBlock,
    FileSystemCapabilities, Implementation, InitializeRequest, PromptRequest,
    RequestPermissionOutcome, RequestPermissionResponse, SelectedPermissionOutcome,
    SessionConfigOption, SessionMode, TextContent, AGENT_METHOD_NAMES,
};
use agent_client_protocol_schema::ProtocolVersion;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use rpc::{encode, ErrorResponse, Notification, Request, Response, RpcError};

pub use events::{
    AcpConfig, AcpError, AgentEvent, AgentFeatures, ControlEvent, FileRequestId, PermissionOption,
    SessionOrigin,
};

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
/// A prompt in flight. It has no deadline here: the session owns the turn's timeout and the
/// cancel grace (`session/turns.rs`), the one mechanism for both.
struct Turn {
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
        self.prompt_with(text, Vec::new(), now)
    }

    /// Sends `session/prompt` with a text block followed by `content` (images, resources: the
    /// caller checked them against [`AcpClient::agent_features`]).
    pub fn prompt_with(
        &mut self,
        text: &str,
        content: Vec<ContentBlock>,
        _now: Instant,
    ) -> Result<(), AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        if self.turn.is_some() {
            return Err(AcpError::Busy);
        }
        let mut prompt = vec![ContentBlock::Text(TextContent::new(text))];
        prompt.extend(content);
        let params = PromptRequest::new(session_id.clone(), prompt);
        self.request(Pending::Prompt, params);
        self.turn = Some(Turn { cancel_sent: false });
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

    /// One line of the agent's stdout (with or without its line ending).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        if !self.replaying {
            if let Some(event) = fast::text_update(line) {
                self.events.push_back(event);
                return;
            }
        }
        self.handle_message(line, now);
    }

    /// [`AcpClient::handle_line`] for any message (the fast path aside): a trimmed, non-empty
    /// line.
    fn handle_message(&mut self, line: &[u8], now: Instant) {
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

    /// Fails the client if the handshake step is past its deadline (a turn's timeout is the
    /// session's).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Handshake {
                deadline: Some(deadline),
            } if *deadline <= now => {
                let step = self.handshake_step();
                let secs = self.config.init_timeout.as_secs_f64();
                self.fail(format!("the agent did not answer {step} within {secs} s"));
            }
            _ => {}
        }
    }

    /// The next instant `handle_timeout` must be called at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshake { deadline } => *deadline,
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
