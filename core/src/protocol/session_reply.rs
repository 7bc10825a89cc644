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
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session: SessionMeta<'a>,
        epoch: &'a str,
        last_seq: u64,
        recovered: bool,
        events: StoredEvents<'a>,
    },
    /// `leave_session`.
    SessionLeft {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
    },
    /// `get_events`.
    Events {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        epoch: &'a str,
        events: StoredEvents<'a>,
        last_seq: u64,
        has_more: bool,
    },
    /// `get_history`.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        turns: Vec<HistoryTurn<'a>>,
        has_more: bool,
    },
    /// `run_turn` and `steer`.
    TurnAccepted {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        turn_id: &'a str,
    },
    /// `stop_turn`.
    TurnStopping {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        turn_id: &'a str,
    },
    /// `answer_question`.
    QuestionAnswered {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        question_id: &'a str,
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
    pub completed_at: Option<i64>,
    pub final_text: Option<&'a str>,
    pub final_text_truncated: bool,
    pub started_at: i64,
    pub stop_reason: Option<&'a str>,
    /// As the agent reported them (an empty list when none).
    pub tool_calls: Value,
    pub turn_id: &'a str,
    pub usage: Option<Value>,
    pub user_id: Option<&'a str>,
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
