//! Session events and tenant notifications (PROTOCOL sections 5 and 6) as typed values.
//!
//! A session event is `{type, sessionId, seq, ts, turnId?, ...its own fields}`: the common header
//! first, in that order (clients and the benchmark's scanner rely on it), then the fields of its
//! [`EventBody`] (`text` last in deltas). It is encoded once by
//! [`encode_frame_with_payload`](crate::protocol::encode_frame_with_payload): the frame goes to the
//! session's subscribers, the payload (a slice of it) to storage.
//!
//! What the agent provides as opaque JSON (tool inputs, plans, usage, unknown updates) stays a
//! [`serde_json::Value`]. The field order of the agent updates is the alphabetical order their
//! keys had when they were built as a JSON map, kept byte for byte.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::protocol::request::PromptBlock;

pub(crate) mod schema;

/// One session event: its header and its body. Its JSON Schema (written by hand below) is one
/// object per event type: the header, `type` fixed to the kind, and the body's fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent<'a> {
    /// The event type (`session_state`, `text_delta`, ...): the body's [`EventBody::kind`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The session the event belongs to.
    pub session_id: &'a str,
    /// Per-session sequence number, from 1, without gaps.
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: i64,
    /// The turn the event belongs to; absent for events outside a turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<&'a str>,
    /// The event type's own fields, after the header.
    #[serde(flatten)]
    pub body: EventBody<'a>,
}

impl<'a> SessionEvent<'a> {
    /// The event `body` of `session_id` at `seq`, published at `ts` (Unix milliseconds), in
    /// `turn_id` if it belongs to a turn; its `type` is the body's kind.
    pub fn new(
        session_id: &'a str,
        seq: u64,
        ts: i64,
        turn_id: Option<&'a str>,
        body: EventBody<'a>,
    ) -> Self {
        SessionEvent {
            kind: body.kind(),
            session_id,
            seq,
            ts,
            turn_id,
            body,
        }
    }
}

/// The fields of each event type, after the header.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventBody<'a> {
    /// `session_state`.
    SessionState(SessionState),
    /// `turn_started`.
    TurnStarted(TurnStarted<'a>),
    /// `text_delta`: a piece of the agent's message.
    TextDelta(Delta<'a>),
    /// `thinking_delta`: a piece of the agent's reasoning.
    ThinkingDelta(Delta<'a>),
    /// `tool_call`.
    ToolCall(ToolCall<'a>),
    /// `tool_call_update`.
    ToolCallUpdate(ToolCallUpdate<'a>),
    /// `plan`.
    Plan(Plan<'a>),
    /// `usage`.
    Usage(Usage<'a>),
    /// `agent_update`.
    AgentUpdate(AgentUpdate<'a>),
    /// `permission_requested`.
    PermissionRequested(PermissionRequested<'a>),
    /// `permission_resolved`.
    PermissionResolved(PermissionResolved<'a>),
    /// `turn_complete`.
    TurnComplete(TurnComplete<'a>),
    /// `turn_error`.
    TurnError(TurnError<'a>),
    /// `file_changed`: the agent wrote a file of the workspace through `fs/write_text_file`.
    FileChanged(FileChanged<'a>),
    /// `available_commands_update`.
    AvailableCommandsUpdate(AvailableCommandsUpdate<'a>),
    /// `current_mode_update`.
    CurrentModeUpdate(CurrentModeUpdate<'a>),
    /// `config_option_update`.
    ConfigOptionUpdate(ConfigOptionUpdate<'a>),
}

impl EventBody<'_> {
    /// The wire `type` of the event.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::SessionState(_) => "session_state",
            EventBody::TurnStarted(_) => "turn_started",
            EventBody::TextDelta(_) => "text_delta",
            EventBody::ThinkingDelta(_) => "thinking_delta",
            EventBody::ToolCall(_) => "tool_call",
            EventBody::ToolCallUpdate(_) => "tool_call_update",
            EventBody::Plan(_) => "plan",
            EventBody::Usage(_) => "usage",
            EventBody::AgentUpdate(_) => "agent_update",
            EventBody::PermissionRequested(_) => "permission_requested",
            EventBody::PermissionResolved(_) => "permission_resolved",
            EventBody::TurnComplete(_) => "turn_complete",
            EventBody::TurnError(_) => "turn_error",
            EventBody::FileChanged(_) => "file_changed",
            EventBody::AvailableCommandsUpdate(_) => "available_commands_update",
            EventBody::CurrentModeUpdate(_) => "current_mode_update",
            EventBody::ConfigOptionUpdate(_) => "config_option_update",
        }
    }

    /// Text and thinking deltas may be coalesced; every other event flushes them first.
    pub fn is_delta(&self) -> bool {
        matches!(self, EventBody::TextDelta(_) | EventBody::ThinkingDelta(_))
    }
}

/// `session_state`: the session moved from `previous` to `status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionState {
    /// The new state (as `SessionMeta.status`).
    pub status: &'static str,
    /// The state before.
    pub previous: &'static str,
}

/// `turn_started`: the prompt and who sent it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnStarted<'a> {
    /// The user's prompt, as sent in `run_turn` or `steer`.
    pub text: &'a str,
    /// The `userId` of who started the turn.
    pub user_id: &'a str,
    /// The content blocks sent after the text, as in `run_turn`'s `content`; absent when none.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub content: &'a [PromptBlock],
}

/// `text_delta` and `thinking_delta`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Delta<'a> {
    /// The next piece of text: append it to the previous ones of the turn. Consecutive deltas
    /// may arrive coalesced into one.
    pub text: &'a str,
}

/// `tool_call` (ACP `ToolCall`; `rawInput` becomes `input`). `content`, `locations`, `input`
/// and `rawOutput` are each bounded (about 64 KiB of JSON: strings cut, lists shortened), and
/// `truncated` says when one was cut.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall<'a> {
    /// What the call produced (ACP `ToolCallContent` items: `{type: "content", content}` with a
    /// content block, `{type: "diff", path, oldText?, newText}`, `{type: "terminal",
    /// terminalId}`); absent if none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::tool_content_schema")]
    pub content: Option<&'a Value>,
    /// The tool's input as the agent gave it (ACP `rawInput`), any JSON; absent if it gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<&'a Value>,
    /// The kind of tool (ACP: `read`, `edit`, `execute`, `fetch`, `other`, …).
    pub kind: &'a str,
    /// The files the call works on (ACP `ToolCallLocation`: `{path, line?}`); absent if none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::tool_locations_schema")]
    pub locations: Option<&'a Value>,
    /// The tool's output as the agent gave it (ACP `rawOutput`), any JSON; absent if it gave
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<&'a Value>,
    /// The call's status (ACP: `pending`, `in_progress`, `completed`, `failed`).
    pub status: &'a str,
    /// A human-readable description of the call.
    pub title: &'a str,
    /// The call's id, unique within the turn; `tool_call_update`s refer to it.
    pub tool_call_id: &'a str,
    /// Present and `true` when `content`, `locations`, `input` or `rawOutput` was cut to its
    /// bound.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `tool_call_update` (ACP `ToolCallUpdate`): the fields that changed; each replaces the call's
/// value (`content` and `locations` as whole lists). Bounded as in `tool_call`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallUpdate<'a> {
    /// The call's output now (as `tool_call`'s `content`); absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::tool_content_schema")]
    pub content: Option<&'a Value>,
    /// The tool's input (ACP `rawInput`); absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<&'a Value>,
    /// The kind of tool; absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// The files the call works on; absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::tool_locations_schema")]
    pub locations: Option<&'a Value>,
    /// The tool's output (ACP `rawOutput`); absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<&'a Value>,
    /// The call's new status; absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    /// The call's new title; absent if unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<&'a str>,
    /// The `toolCallId` of the `tool_call` this updates.
    pub tool_call_id: &'a str,
    /// Present and `true` when one of the fields above was cut to its bound.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `plan`: the agent's plan entries, as the agent gave them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Plan<'a> {
    /// The whole plan (ACP plan entries: `content`, `priority`, `status`); replaces the previous
    /// one.
    pub entries: &'a Value,
}

/// `usage` (ACP `usage_update`): tokens in context, the context window, the cumulative cost.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Usage<'a> {
    /// The session's cumulative cost as the agent reports it (ACP `cost`); absent if unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<&'a Value>,
    /// The context window's size, in tokens.
    pub size: &'a Value,
    /// The tokens in the context now.
    pub used: &'a Value,
}

/// `agent_update`: an ACP update the gateway has no event for, kept whole.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentUpdate<'a> {
    /// The ACP `session/update` payload, unchanged.
    pub update: &'a Value,
}

/// `permission_requested`: the agent asks a question.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRequested<'a> {
    /// The question's id (`q1`, `q2`, … per agent process), for `answer_question`.
    pub question_id: &'a str,
    /// The tool call the agent asks permission for.
    pub tool_call_id: &'a str,
    /// What the agent asks, for humans.
    pub title: &'a str,
    /// The answers the agent offers; `answer_question` chooses one by `optionId`.
    pub options: Vec<QuestionOption<'a>>,
}

/// One option of a question (keys in alphabetical order, as on the wire).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuestionOption<'a> {
    /// What choosing it means (ACP: `allow_once`, `allow_always`, `reject_once`,
    /// `reject_always`).
    pub kind: &'a str,
    /// The option's label, for humans.
    pub name: &'a str,
    /// The id to send as `answer_question`'s `optionId`.
    pub option_id: &'a str,
}

/// `permission_resolved`: answered with an option (by `userId`), or cancelled.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermissionResolved<'a> {
    /// The question that was answered.
    pub question_id: &'a str,
    /// The option chosen; absent when the question was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub option_id: Option<&'a str>,
    /// `true` when the question was cancelled (by a client's `answer_question`, or by the
    /// agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<bool>,
    /// The `userId` of who answered; absent when no client did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
}

/// `turn_complete`: how the turn ended and its text (cut at 64 KiB, then flagged).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnComplete<'a> {
    /// Why the turn ended (ACP: `end_turn`, `max_tokens`, `max_turn_requests`, `refusal`), or
    /// `cancelled` after `stop_turn` or `steer`, whatever the agent reported.
    pub stop_reason: &'a str,
    /// The turn's whole message text (its `text_delta`s joined), cut at 64 KiB.
    pub final_text: &'a str,
    /// Present and `true` when `finalText` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub final_text_truncated: bool,
}

/// `turn_error`: the turn failed (`code` is an error code of PROTOCOL section 3, or
/// `INTERRUPTED` for a turn a crash cut off).
#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnError<'a> {
    /// `AGENT_UNAVAILABLE` (the agent exited, broke the protocol or its handshake timed out),
    /// `AGENT_ERROR` (the agent answered the prompt with an error: `message` is the agent's),
    /// `TURN_TIMEOUT` (the turn ran past its timeout), `AGENT_UNRESPONSIVE` (the agent ignored
    /// `session/cancel` for the cancel grace and was killed), `SHUTTING_DOWN`, or `INTERRUPTED`
    /// (written at recovery).
    pub code: &'a str,
    /// What happened, for humans (e.g. why the gateway stopped the agent).
    pub message: &'a str,
    /// With `AGENT_ERROR`: the agent's own JSON-RPC error code (e.g. `-32603`), when its error
    /// response had one.
    #[serde(rename = "agentCode", skip_serializing_if = "Option::is_none")]
    pub agent_code: Option<i64>,
}

/// `file_changed`: the agent wrote a file through the client file system (`fs/write_text_file`,
/// for agent types with `fs = true`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileChanged<'a> {
    /// The file's path relative to the session's workspace, with `/` between its components.
    pub path: &'a str,
}

/// `available_commands_update` (ACP's): the commands the agent offers now, replacing the
/// previous list.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailableCommandsUpdate<'a> {
    /// ACP `AvailableCommand`s: `{name, description, input?}` (`input: {hint}` for a command
    /// that takes text after its name); a client offers them as `/name`.
    #[schemars(schema_with = "schema::commands_schema")]
    pub available_commands: &'a Value,
}

/// `current_mode_update` (ACP's): the agent's session mode now (after `set_mode`, or the agent's
/// own change).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentModeUpdate<'a> {
    /// The mode's id, one of `session_joined`'s `agent.availableModes`.
    pub current_mode_id: &'a str,
}

/// `config_option_update` (ACP's): the agent's session configuration options now.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigOptionUpdate<'a> {
    /// Every option with its current value (ACP `SessionConfigOption`s).
    #[schemars(schema_with = "schema::config_options_schema")]
    pub config_options: &'a Value,
}

static NULL: Value = Value::Null;

/// The body of an agent update as the ACP mapping produced it (`kind` and its fields; see
/// `acp::mapping`). A known kind missing a field it needs is published as `agent_update` of
/// its fields, which the mapping never produces.
pub fn agent_update_body<'a>(kind: &str, fields: &'a Map<String, Value>) -> EventBody<'a> {
    let text = |key: &str| fields.get(key).and_then(Value::as_str);
    let truncated = || fields.get("truncated") == Some(&Value::Bool(true));
    let typed = match kind {
        "text_delta" => text("text").map(|text| EventBody::TextDelta(Delta { text })),
        "thinking_delta" => text("text").map(|text| EventBody::ThinkingDelta(Delta { text })),
        "tool_call" => match (
            text("kind"),
            text("status"),
            text("title"),
            text("toolCallId"),
        ) {
            (Some(kind), Some(status), Some(title), Some(tool_call_id)) => {
                Some(EventBody::ToolCall(ToolCall {
                    content: fields.get("content"),
                    input: fields.get("input"),
                    kind,
                    locations: fields.get("locations"),
                    raw_output: fields.get("rawOutput"),
                    status,
                    title,
                    tool_call_id,
                    truncated: truncated(),
                }))
            }
            _ => None,
        },
        "tool_call_update" => text("toolCallId").map(|tool_call_id| {
            EventBody::ToolCallUpdate(ToolCallUpdate {
                content: fields.get("content"),
                input: fields.get("input"),
                kind: text("kind"),
                locations: fields.get("locations"),
                raw_output: fields.get("rawOutput"),
                status: text("status"),
                title: text("title"),
                tool_call_id,
                truncated: truncated(),
            })
        }),
        "plan" => fields
            .get("entries")
            .map(|entries| EventBody::Plan(Plan { entries })),
        "usage" => match (fields.get("size"), fields.get("used")) {
            (Some(size), Some(used)) => Some(EventBody::Usage(Usage {
                cost: fields.get("cost"),
                size,
                used,
            })),
            _ => None,
        },
        _ => None,
    };
    typed.unwrap_or_else(|| {
        EventBody::AgentUpdate(AgentUpdate {
            update: fields.get("update").unwrap_or(&NULL),
        })
    })
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
