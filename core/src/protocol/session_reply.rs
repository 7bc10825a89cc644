//! The replies to the session requests (PROTOCOL sections 5 and 6) as typed values: each is
//! `{type, requestId?, ...}`, encoded by [`encode_frame`](crate::protocol::encode_frame).
//!
//! The events a join or a read returns are the stored payloads, byte for byte as they were
//! published ([`StoredEvents`]).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::request::PromptBlock;
use crate::storage::{StoredEvent, TurnRecord};

pub use crate::protocol::reply::SessionMeta;

/// A reply to one session request.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[schemars(deny_unknown_fields)]
pub enum SessionReply<'a> {
    /// `join_session`: `lastSeq` as measured at the join; `events` the replay (empty unless
    /// `recovered`).
    SessionJoined {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session as it is now.
        session: SessionMeta<'a>,
        /// The epoch the session's `seq`s are counted in now; keep it with `lastSeq` for the
        /// next resume.
        epoch: &'a str,
        /// The session's last `seq` at the join: live events follow from `lastSeq + 1`.
        last_seq: u64,
        /// `true` when `events` holds exactly the events after the request's `afterSeq`;
        /// `false` when it was not asked, or the gap could not be replayed (another epoch, too
        /// many events): then reload with `get_events`.
        recovered: bool,
        /// The running turn as of `lastSeq`; absent when no turn runs.
        #[serde(skip_serializing_if = "Option::is_none")]
        turn: Option<&'a RunningTurn>,
        /// The agent's questions still unanswered, oldest first; absent when none.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        questions: &'a [OpenQuestion],
        /// The agent's mode, options and commands; absent while the session has no running
        /// agent.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<&'a AgentControls>,
        /// The replayed events, byte for byte as they were published (empty unless
        /// `recovered`).
        events: StoredEvents<'a>,
    },
    /// `leave_session`.
    SessionLeft {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session the connection no longer receives events of.
        session_id: &'a str,
    },
    /// `get_events`.
    Events {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session read.
        session_id: &'a str,
        /// The epoch the events' `seq`s are counted in.
        epoch: &'a str,
        /// The events after `afterSeq`, oldest first, byte for byte as they were published
        /// (events not yet written to disk included).
        events: StoredEvents<'a>,
        /// The session's last assigned `seq`.
        last_seq: u64,
        /// More events follow the page: ask again after its last `seq`.
        has_more: bool,
    },
    /// `get_history`.
    History {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session read.
        session_id: &'a str,
        /// The page's turns, oldest first.
        turns: Vec<HistoryTurn<'a>>,
        /// Older turns exist: ask again with `beforeTurn` the page's first `turnId`.
        has_more: bool,
    },
    /// `run_turn` and `steer`.
    TurnAccepted {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session the turn runs in.
        session_id: &'a str,
        /// The new turn's id: its events carry it as `turnId`.
        turn_id: &'a str,
    },
    /// `stop_turn`.
    TurnStopping {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session the turn runs in.
        session_id: &'a str,
        /// The turn being cancelled; it ends with `turn_complete` `stopReason: "cancelled"`.
        turn_id: &'a str,
    },
    /// `answer_question`.
    QuestionAnswered {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session whose agent asked.
        session_id: &'a str,
        /// The question answered (`permission_resolved` follows to every joined client).
        question_id: &'a str,
    },
    /// `set_mode`: the agent is in the mode now (`current_mode_update` follows to every joined
    /// client).
    ModeSet {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session whose agent changed mode.
        session_id: &'a str,
        /// The mode the agent is in now.
        mode_id: &'a str,
    },
    /// `set_config_option`: the agent's options now (`config_option_update` follows to every
    /// joined client).
    ConfigOptionSet {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session whose agent's option changed.
        session_id: &'a str,
        /// Every option with its value now, as the agent answered (ACP `SessionConfigOption`s:
        /// `{id, name, description?, category?, type, currentValue, options?}`).
        config_options: &'a Value,
    },
}

/// What a UI needs to draw a session at once, measured with `session_joined`'s `lastSeq` (the
/// live events after it change it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinSnapshot {
    /// The running turn, if one runs.
    pub turn: Option<RunningTurn>,
    /// The agent's unanswered questions.
    pub questions: Vec<OpenQuestion>,
    /// The agent's controls, while it runs.
    pub agent: Option<AgentControls>,
}

/// `session_joined`'s `turn`: the turn that runs, as of `lastSeq`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunningTurn {
    /// The turn's id (its events carry it as `turnId`).
    pub turn_id: String,
    /// The user's prompt, as in `turn_started`.
    pub text: String,
    /// Who started the turn.
    pub user_id: String,
    /// When the turn started, in Unix milliseconds.
    pub started_at: i64,
    /// The agent's message text so far (every `text_delta` of the turn up to `lastSeq`, joined),
    /// cut at 64 KiB; later deltas follow live: append them.
    pub agent_text: String,
    /// Present and `true` when `agentText` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub agent_text_truncated: bool,
}

/// `session_joined`'s `questions`: a `permission_requested` not answered yet.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenQuestion {
    /// The question's id, for `answer_question`.
    pub question_id: String,
    /// The tool call the agent asks permission for.
    pub tool_call_id: String,
    /// What the agent asks, for humans.
    pub title: String,
    /// The answers the agent offers, as in `permission_requested`.
    pub options: Vec<OpenQuestionOption>,
}

/// One option of an open question (as `permission_requested`'s).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenQuestionOption {
    /// `allow_once`, `allow_always`, `reject_once` or `reject_always`.
    pub kind: String,
    /// The option's label, for humans.
    pub name: String,
    /// The id to send as `answer_question`'s `optionId`.
    pub option_id: String,
}

/// `session_joined`'s `agent`: the agent's session controls now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentControls {
    /// The agent's current mode (for `set_mode`); absent if it has no modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_mode_id: Option<String>,
    /// The modes the agent offers (ACP `SessionMode`s: `{id, name, description?}`).
    #[schemars(schema_with = "modes_schema")]
    pub available_modes: Value,
    /// The agent's configuration options (as `config_option_update`'s); absent if it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::protocol::event::schema::config_options_schema")]
    pub config_options: Option<Value>,
    /// The commands the agent offers (as `available_commands_update`'s); absent until it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::protocol::event::schema::commands_schema")]
    pub available_commands: Option<Value>,
}

fn modes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "description": "The mode's id, for `set_mode`." },
                "name": { "type": "string", "description": "Its label, for humans." },
                "description": { "type": "string" }
            },
            "required": ["id", "name"]
        }
    })
}

/// Stored events as a JSON array of their payloads, byte for byte (each payload is the JSON
/// object the event was published as). A payload that is not JSON (storage never returns one)
/// is left out rather than breaking the reply.
#[derive(Debug)]
pub struct StoredEvents<'a>(pub &'a [StoredEvent]);

impl Serialize for StoredEvents<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .filter_map(|event| serde_json::from_slice::<&RawValue>(&event.payload).ok()),
        )
    }
}

impl JsonSchema for StoredEvents<'_> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StoredEvents".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <Vec<crate::protocol::event::SessionEvent<'static>>>::json_schema(generator)
    }
}

/// A turn of `get_history` (keys in alphabetical order, as on the wire).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryTurn<'a> {
    /// When the turn ended, in Unix milliseconds; `null` while it runs.
    pub completed_at: Option<i64>,
    /// The turn's message text, cut at 64 KiB; `null` while it runs.
    pub final_text: Option<&'a str>,
    /// Whether `finalText` was cut.
    pub final_text_truncated: bool,
    /// When the turn started, in Unix milliseconds.
    pub started_at: i64,
    /// As `turn_complete`'s `stopReason`, or `error` for a turn that failed; `null` while it
    /// runs.
    pub stop_reason: Option<&'a str>,
    /// The turn's tool calls as the agent reported them (an empty list when none).
    pub tool_calls: Value,
    /// The turn's id.
    pub turn_id: &'a str,
    /// The last `usage` the agent reported in the turn (`{used, size, cost?}`); `null` if none.
    pub usage: Option<Value>,
    /// Who started the turn; `null` if unknown.
    pub user_id: Option<&'a str>,
    /// The user's prompt.
    pub user_text: &'a str,
    /// The content blocks the prompt carried after its text (as in `turn_started`); absent when
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<PromptBlock>,
}

impl<'a> From<&'a TurnRecord> for HistoryTurn<'a> {
    fn from(turn: &'a TurnRecord) -> Self {
        let parse = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        };
        HistoryTurn {
            completed_at: turn.completed_at_ms,
            final_text: turn.final_text.as_deref(),
            final_text_truncated: turn.final_text_truncated,
            started_at: turn.started_at_ms,
            stop_reason: turn.stop_reason.as_deref(),
            tool_calls: parse(&turn.tool_calls_json).unwrap_or_else(|| Value::Array(Vec::new())),
            turn_id: &turn.turn_id,
            usage: parse(&turn.usage_json),
            user_id: turn.user_id.as_deref(),
            user_text: &turn.user_text,
            content: turn
                .content_json
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default(),
        }
    }
}
