//! The replies to the session requests (PROTOCOL sections 5 and 6) as typed values: each is
//! `{type, requestId?, ...}`, encoded by [`encode_frame`](crate::protocol::encode_frame).
//!
//! The events a join or a read returns are the stored payloads, byte for byte as they were
//! published ([`StoredEvents`]).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::storage::{SessionRecord, StoredEvent, TurnRecord};

/// SessionMeta on the wire (PROTOCOL section 5).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionMeta<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub name: &'a str,
    pub agent_type: &'a str,
    pub status: &'a str,
    pub archived: bool,
    pub created_by: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seq: u64,
    pub epoch: &'a str,
}

impl<'a> From<&'a SessionRecord> for SessionMeta<'a> {
    fn from(record: &'a SessionRecord) -> Self {
        SessionMeta {
            id: &record.id,
            tenant_id: &record.tenant_id,
            name: &record.name,
            agent_type: &record.agent_type,
            status: record.status.as_str(),
            archived: record.archived,
            created_by: &record.created_by,
            created_at: record.created_at_ms,
            updated_at: record.updated_at_ms,
            last_seq: record.last_seq,
            epoch: &record.epoch,
        }
    }
}

/// A reply to one session request.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum SessionReply<'a> {
    /// `list_sessions`.
    SessionList {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        sessions: Vec<SessionMeta<'a>>,
    },
    /// `create_session`, once committed.
    SessionCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        session: SessionMeta<'a>,
    },
    /// `rename_session`, `archive_session`, `unarchive_session`, once committed.
    SessionUpdated {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        session: SessionMeta<'a>,
    },
    /// `delete_session`, once committed.
    SessionDeleted {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        session_id: &'a str,
    },
    /// `join_session`: `lastSeq` as measured at the join; `events` the replay (empty unless
    /// `recovered`).
    SessionJoined {
        #[serde(skip_serializing_if = "Option::is_none")]
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
        request_id: Option<&'a str>,
        session_id: &'a str,
    },
    /// `get_events`.
    Events {
        #[serde(skip_serializing_if = "Option::is_none")]
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
        request_id: Option<&'a str>,
        session_id: &'a str,
        turns: Vec<HistoryTurn<'a>>,
        has_more: bool,
    },
    /// `run_turn` and `steer`.
    TurnAccepted {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        turn_id: &'a str,
    },
    /// `stop_turn`.
    TurnStopping {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        session_id: &'a str,
        turn_id: &'a str,
    },
    /// `answer_question`.
    QuestionAnswered {
        #[serde(skip_serializing_if = "Option::is_none")]
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
        <Vec<Value>>::json_schema(generator)
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
