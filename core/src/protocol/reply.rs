//! The server messages that are not session events and not a session's own replies: the
//! handshake (`welcome`, `connected`, `authenticated`), `pong`, `heartbeat`, `error`,
//! `server_shutdown`, and the registry's replies (`session_list`, `session_created`,
//! `session_updated`, `session_deleted`). Each is a typed value encoded by the one encoder,
//! [`encode_frame`](crate::protocol::encode_frame); the field order of each variant is its order
//! on the wire (`type` first).

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;

use crate::storage::{SessionRecord, SessionStatus};

/// The error codes of PROTOCOL section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    MessageTooLarge,
    RateLimited,
    NotAuthenticated,
    AuthFailed,
    AuthRateLimited,
    Forbidden,
    SessionNotFound,
    InvalidState,
    AgentUnavailable,
    ShuttingDown,
    Internal,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Identity {
    pub user_id: String,
    pub email: String,
    pub tenant_id: String,
    /// `owner`, `admin`, `member` or `viewer`.
    pub role: String,
}

impl Identity {
    /// The identity every connection has in dev mode (PROTOCOL section 4).
    pub fn dev() -> Self {
        Identity {
            user_id: "dev-user-001".into(),
            email: "developer@example.com".into(),
            tenant_id: "dev".into(),
            role: "owner".into(),
        }
    }
}

/// A session's registry entry on the wire (PROTOCOL section 5).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SessionMeta<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub name: &'a str,
    pub agent_type: &'a str,
    #[schemars(schema_with = "session_status_schema")]
    pub status: &'a str,
    pub archived: bool,
    pub created_by: &'a str,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
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

/// The seven session states, by their wire names.
fn session_status_schema(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = SessionStatus::ALL.iter().map(|s| s.as_str()).collect();
    schemars::json_schema!({ "type": "string", "enum": names })
}

/// The gateway's own messages to a client (everything but session events and the sessions'
/// replies). The schema says each has exactly its fields (`additionalProperties: false`): what
/// the server sends is exactly known.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[schemars(rename = "GatewayMessage", deny_unknown_fields)]
pub enum ServerMessage<'a> {
    /// The first message on a connection.
    Welcome {
        protocol_version: u32,
        requires_auth: bool,
    },
    /// The second message: the connection's id and heartbeat interval.
    Connected {
        client_id: &'a str,
        heartbeat_interval_ms: u64,
        ts: u64,
    },
    Authenticated {
        identity: &'a Identity,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
    },
    Pong {
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
    },
    Heartbeat {
        ts: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// With the `*_RATE_LIMITED` codes: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "u64")]
        retry_after_ms: Option<u64>,
    },
    ServerShutdown {
        reason: &'a str,
        reconnect_after_ms: u64,
    },
    /// The answer to `list_sessions`, oldest first.
    SessionList {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        sessions: Vec<SessionMeta<'a>>,
    },
    /// The answer to `create_session` (with `requestId`), and the same to every connection of
    /// the tenant (without).
    SessionCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session: SessionMeta<'a>,
    },
    /// The answer to `rename_session`, `archive_session` and `unarchive_session` (with
    /// `requestId`), and to every connection of the tenant on any change (without).
    SessionUpdated {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session: SessionMeta<'a>,
    },
    /// The answer to `delete_session` (with `requestId`), and the same to every connection of
    /// the tenant (without).
    SessionDeleted {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        session_id: &'a str,
    },
}

#[cfg(test)]
mod tests;
