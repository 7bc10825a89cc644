//! The replies to the session requests (PROTOCOL sections 5 and 6) as typed values: each is
//! `{type, requestId?, ...}`, encoded by [`encode_frame`](crate::protocol::encode_frame).
//!
//! The events a join or a read returns are the stored payloads, byte for byte as they were
//! published ([`StoredEvents`]).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

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
        }
    }
}
