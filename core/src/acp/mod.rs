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
//! # Protocol (ACP v1)
//!
//! - Our requests are numbered from 0: `initialize` (`protocolVersion: 1`, `clientCapabilities:
//!   {fs: {readTextFile, writeTextFile}, terminal}` from the configuration, `clientInfo`), then
//!   `session/new` (`cwd`, `mcpServers: []`), then one `session/prompt` per turn
//!   (`prompt: [{type: "text", text}]`). `session/cancel` is a notification.
//! - The agent's requests have their own id space (they may equal ours): a line with `method` is a
//!   request (with `id`) or a notification (without); a line with `result`/`error` is a response
//!   to one of ours. Ids are echoed as the agent sent them (number or string).
//! - `session/request_permission` is the only agent request served. Everything else — `fs/*` and
//!   `terminal/*` included, even when the capabilities are advertised, since the gateway has no
//!   file or terminal service yet — is answered with JSON-RPC error `-32601`. A malformed
//!   permission request is answered `-32602`. Notifications other than `session/update` are
//!   ignored.
//! - `session/update` is mapped per PROTOCOL section 6 (see `mapping.rs`); updates are reported
//!   whenever they come, in a turn or not (some agents announce `available_commands_update` right
//!   after `session/new`): the session layer decides what to publish.
//! - Failures (`AgentEvent::Failed`) are final: every later call is a no-op, `prompt` answers
//!   `NotReady`, `answer_permission` `UnknownQuestion`. Pending permission questions are then
//!   dropped without `PermissionCancelled` events; the session layer resolves them itself.

mod mapping;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The ACP protocol version the client speaks.
pub const ACP_PROTOCOL_VERSION: u64 = 1;
/// JSON-RPC "method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// The `code` of `AgentEvent::TurnError` for an error response to `session/prompt`.
pub const AGENT_ERROR: &str = "AGENT_ERROR";
/// Agent-provided text (error messages) is cut to this many bytes in events.
const MAX_AGENT_MESSAGE: usize = 1024;
/// Tool call titles remembered per turn (to title a permission request whose `toolCall` has
/// none); bounded so an agent cannot grow it without end.
const MAX_REMEMBERED_TOOL_CALLS: usize = 1024;

/// The ACP client's settings (`CoreConfig::acp`), the same for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpConfig {
    /// How long `initialize`, and then `session/new`, may each take. Default 30 s.
    pub init_timeout: Duration,
    /// How long a whole turn (from `prompt` to its response, permission waits included) may take.
    /// Default: no limit.
    pub turn_timeout: Option<Duration>,
    /// Advertise `fs.readTextFile`/`fs.writeTextFile`. Default false. The requests are still
    /// answered -32601 (no file service yet).
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
    /// `initialize` and `session/new` succeeded: `prompt` may be called.
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
}

impl fmt::Display for AcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcpError::NotReady => "the agent is not ready",
            AcpError::Busy => "a turn is already running",
            AcpError::UnknownQuestion => "no such pending question",
            AcpError::UnknownOption => "the question did not offer this option",
        })
    }
}

impl std::error::Error for AcpError {}

#[derive(Debug)]
enum State {
    /// `start` not called yet.
    Idle,
    /// `initialize` or `session/new` in flight; fails at `deadline`.
    Handshake {
        deadline: Option<Instant>,
    },
    Ready {
        session_id: String,
    },
    /// Failed, or the agent exited.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Initialize,
    NewSession,
    Prompt,
}

impl Pending {
    fn method(self) -> &'static str {
        match self {
            Pending::Initialize => "initialize",
            Pending::NewSession => "session/new",
            Pending::Prompt => "session/prompt",
        }
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

/// The ACP client of one session. See the module documentation.
#[derive(Debug)]
pub struct AcpClient {
    config: AcpConfig,
    state: State,
    cwd: String,
    next_request_id: u64,
    pending: HashMap<u64, Pending>,
    turn: Option<Turn>,
    questions: Vec<Question>,
    next_question: u64,
    tool_titles: HashMap<String, String>,
    writes: VecDeque<Bytes>,
    events: VecDeque<AgentEvent>,
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

/// The `session/request_permission` result: `{"outcome":{"outcome":"selected","optionId":..}}`
/// or `{"outcome":{"outcome":"cancelled"}}`.
#[derive(Serialize)]
struct PermissionResult<'a> {
    outcome: PermissionOutcome<'a>,
}

#[derive(Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
enum PermissionOutcome<'a> {
    Selected {
        #[serde(rename = "optionId")]
        option_id: &'a str,
    },
    Cancelled,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: RpcError<'a>,
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
            next_request_id: 0,
            pending: HashMap::new(),
            turn: None,
            questions: Vec::new(),
            next_question: 1,
            tool_titles: HashMap::new(),
            writes: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Queues `initialize`; `session/new` follows its result, then `AgentEvent::Ready`. Only the
    /// first call counts.
    pub fn start(&mut self, cwd: &str, now: Instant) {
        if !matches!(self.state, State::Idle) {
            return;
        }
        self.cwd = cwd.to_owned();
        self.state = State::Handshake {
            deadline: now.checked_add(self.config.init_timeout),
        };
        let params = json!({
            "protocolVersion": ACP_PROTOCOL_VERSION,
            "clientCapabilities": {
                "fs": {
                    "readTextFile": self.config.fs_capability,
                    "writeTextFile": self.config.fs_capability,
                },
                "terminal": self.config.terminal_capability,
            },
            "clientInfo": {
                "name": "diminuendo",
                "version": env!("CARGO_PKG_VERSION"),
            },
        });
        self.request(Pending::Initialize, params);
    }

    /// Sends `session/prompt` with one text block.
    pub fn prompt(&mut self, text: &str, now: Instant) -> Result<(), AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        if self.turn.is_some() {
            return Err(AcpError::Busy);
        }
        let params = json!({
            "sessionId": session_id,
            "prompt": [{"type": "text", "text": text}],
        });
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
                    method: "session/cancel",
                    params: json!({ "sessionId": session_id }),
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
            Some(option_id) => PermissionOutcome::Selected { option_id },
            None => PermissionOutcome::Cancelled,
        };
        self.respond(&question.request_id, PermissionResult { outcome });
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
                    None => self.handle_notification(&method, params),
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
            State::Handshake { .. } => {
                let step = match self.pending.values().next() {
                    Some(Pending::NewSession) => "session/new",
                    _ => "initialize",
                };
                Some(format!("the agent exited before answering {step}"))
            }
            State::Ready { .. } if self.turn.is_some() => Some("the agent exited mid-turn".into()),
            State::Ready { .. } if !self.questions.is_empty() => {
                Some("the agent exited with a permission question pending".into())
            }
            State::Ready { .. } => None,
        };
        match message {
            Some(message) => self.fail(message),
            None => self.close(),
        }
    }

    /// Fails the client if the handshake step or the turn in flight is past its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Handshake {
                deadline: Some(deadline),
            } if *deadline <= now => {
                let step = match self.pending.values().next() {
                    Some(Pending::NewSession) => "session/new",
                    _ => "initialize",
                };
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

    /// The agent's session id, once `session/new` answered.
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

    fn request(&mut self, kind: Pending, params: Value) {
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.pending.insert(id, kind);
        self.writes.push_back(encode(&Request {
            jsonrpc: "2.0",
            id,
            method: kind.method(),
            params,
        }));
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

    fn handle_notification(&mut self, method: &str, mut params: Value) {
        if method != "session/update" {
            return;
        }
        let update = params
            .as_object_mut()
            .and_then(|params| params.remove("update"))
            .unwrap_or(Value::Null);
        let (kind, fields) = mapping::map_update(update);
        if kind == "tool_call" || kind == "tool_call_update" {
            self.remember_title(&fields);
        }
        self.events.push_back(AgentEvent::Update { kind, fields });
    }

    fn remember_title(&mut self, fields: &Map<String, Value>) {
        let (Some(id), Some(title)) = (
            fields.get("toolCallId").and_then(Value::as_str),
            fields.get("title").and_then(Value::as_str),
        ) else {
            return;
        };
        if self.tool_titles.len() < MAX_REMEMBERED_TOOL_CALLS || self.tool_titles.contains_key(id) {
            self.tool_titles.insert(id.to_owned(), title.to_owned());
        }
    }

    fn handle_request(&mut self, id: Value, method: &str, params: Value) {
        if method != "session/request_permission" {
            return self.respond_error(&id, METHOD_NOT_FOUND, "Method not found");
        }
        let Some((tool_call_id, title, options)) = parse_permission(&params, &self.tool_titles)
        else {
            return self.respond_error(
                &id,
                INVALID_PARAMS,
                "Invalid params: session/request_permission needs toolCall.toolCallId and options[{optionId, name, kind}]",
            );
        };
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
        let Some(kind) = id.and_then(|id| self.pending.get(&id).copied()) else {
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
        if let Some(id) = id {
            self.pending.remove(&id);
        }
        match (kind, outcome) {
            (Pending::Initialize, Err(message)) => {
                self.fail(format!("the agent refused initialize: {message}"))
            }
            (Pending::Initialize, Ok(result)) => {
                if let Some(version) = result.get("protocolVersion").and_then(Value::as_u64) {
                    if version != ACP_PROTOCOL_VERSION {
                        return self.fail(format!(
                            "the agent speaks ACP version {version}, the gateway version {ACP_PROTOCOL_VERSION}"
                        ));
                    }
                }
                self.state = State::Handshake {
                    deadline: now.checked_add(self.config.init_timeout),
                };
                let params = json!({"cwd": self.cwd, "mcpServers": []});
                self.request(Pending::NewSession, params);
            }
            (Pending::NewSession, Err(message)) => {
                self.fail(format!("the agent refused session/new: {message}"))
            }
            (Pending::NewSession, Ok(result)) => {
                match result.get("sessionId").and_then(Value::as_str) {
                    Some(session_id) => {
                        self.state = State::Ready {
                            session_id: session_id.to_owned(),
                        };
                        self.events.push_back(AgentEvent::Ready);
                    }
                    None => self.fail("the agent's session/new result has no sessionId".into()),
                }
            }
            (Pending::Prompt, outcome) => {
                self.turn = None;
                // A question still open when the turn ended can no longer matter.
                self.cancel_questions();
                let event = match outcome {
                    Ok(result) => match result.get("stopReason").and_then(Value::as_str) {
                        Some(stop_reason) => AgentEvent::TurnComplete {
                            stop_reason: stop_reason.to_owned(),
                        },
                        None => AgentEvent::TurnError {
                            code: AGENT_ERROR.into(),
                            message: "the agent's session/prompt result has no stopReason".into(),
                        },
                    },
                    Err(message) => AgentEvent::TurnError {
                        code: AGENT_ERROR.into(),
                        message,
                    },
                };
                self.events.push_back(event);
            }
        }
    }

    fn cancel_questions(&mut self) {
        for question in std::mem::take(&mut self.questions) {
            self.respond(
                &question.request_id,
                PermissionResult {
                    outcome: PermissionOutcome::Cancelled,
                },
            );
            self.events.push_back(AgentEvent::PermissionCancelled {
                question_id: question.question_id,
            });
        }
    }

    fn fail(&mut self, message: String) {
        self.close();
        self.events.push_back(AgentEvent::Failed { message });
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.pending.clear();
        self.turn = None;
        self.questions.clear();
        self.tool_titles.clear();
    }
}

/// `{toolCall: {toolCallId, title?}, options: [{optionId, name, kind}]}`. ACP v1 types `toolCall`
/// as a `ToolCallUpdate`, so its title is optional: a missing one is taken from the `tool_call`
/// update of the same id, else empty.
fn parse_permission(
    params: &Value,
    titles: &HashMap<String, String>,
) -> Option<(String, String, Vec<PermissionOption>)> {
    let tool_call = params.get("toolCall")?;
    let tool_call_id = tool_call.get("toolCallId")?.as_str()?.to_owned();
    let title = match tool_call.get("title").and_then(Value::as_str) {
        Some(title) => title.to_owned(),
        None => titles.get(&tool_call_id).cloned().unwrap_or_default(),
    };
    let options = params
        .get("options")?
        .as_array()?
        .iter()
        .map(|option| {
            Some(PermissionOption {
                option_id: option.get("optionId")?.as_str()?.to_owned(),
                name: option.get("name")?.as_str()?.to_owned(),
                kind: option.get("kind")?.as_str()?.to_owned(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((tool_call_id, title, options))
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
