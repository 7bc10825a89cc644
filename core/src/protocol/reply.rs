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
    /// The text is not JSON.
    InvalidJson,
    /// JSON, but not an object, a bad `requestId`, no known `type`, or a missing or mistyped
    /// field (the message names it).
    InvalidMessage,
    /// The message is over the size limit; the connection is closed with 1009.
    MessageTooLarge,
    /// Over the per-connection message rate, or storage is congested; has `retryAfterMs`.
    RateLimited,
    /// Anything but `authenticate` and `ping` before authentication.
    NotAuthenticated,
    /// A bad, expired or unverifiable token.
    AuthFailed,
    /// Too many failed authentications from the client's IP; has `retryAfterMs` (reconnect with
    /// backoff: the token may well be valid).
    AuthRateLimited,
    /// The caller's role lacks the permission the request needs.
    Forbidden,
    /// No such session in the caller's tenant (also for other tenants' ids).
    SessionNotFound,
    /// The session's state does not allow the request (e.g. `run_turn` while a turn runs).
    InvalidState,
    /// The agent type is unknown, or its process could not be started or failed.
    AgentUnavailable,
    /// The agent answered the request (`set_mode`, `set_config_option`) with an error; the
    /// message is the agent's.
    AgentRefused,
    /// The gateway is draining and takes no new work.
    ShuttingDown,
    /// `turn_error` only: the turn ran past its agent type's `turn_timeout_ms` and was
    /// cancelled; the agent is stopped and the session goes to `error`.
    TurnTimeout,
    /// `turn_error` only: the agent ignored `session/cancel` (from `stop_turn`, `steer` or a
    /// turn timeout) for its agent type's `cancel_grace_ms` and was killed; the session goes to
    /// `error`.
    AgentUnresponsive,
    /// Anything else (e.g. storage cannot read or write); the detail goes to the log only.
    Internal,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Identity {
    /// The token's `sub` claim.
    pub user_id: String,
    /// The token's `email` claim; empty when it has none.
    pub email: String,
    /// The token's `tenant_id` claim: 1–128 of `A-Z a-z 0-9 . _ -`. A connection sees only its
    /// tenant's sessions.
    pub tenant_id: String,
    /// `owner`, `admin`, `member` or `viewer` (the token's `role` claim, default `member`).
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
    /// The session's id, a random UUID.
    pub id: &'a str,
    /// The tenant the session belongs to.
    pub tenant_id: &'a str,
    /// The session's name, 1–200 characters.
    pub name: &'a str,
    /// The agent type that runs its turns.
    pub agent_type: &'a str,
    /// The session's state: `inactive` (no agent process), `activating`, `ready`, `running` (a
    /// turn runs), `waiting` (the agent asked a question), `deactivating` or `error`.
    #[schemars(schema_with = "session_status_schema")]
    pub status: &'a str,
    /// Whether the session is archived (then listed only with `includeArchived`).
    pub archived: bool,
    /// The `userId` of the identity that created it.
    pub created_by: &'a str,
    /// When it was created, in Unix milliseconds.
    pub created_at: i64,
    /// When its registry entry last changed, in Unix milliseconds.
    pub updated_at: i64,
    /// The `seq` of its last event; 0 before the first.
    pub last_seq: u64,
    /// The epoch its `seq`s are counted in: 16 hex digits, changed when events may have been
    /// lost (after an unclean stop or a failed write).
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
        /// The protocol's version: 1.
        protocol_version: u32,
        /// Whether the client must authenticate (false in dev mode, where `authenticated`
        /// follows at once).
        requires_auth: bool,
    },
    /// The second message: the connection's id and heartbeat interval.
    Connected {
        /// The connection's id, a random UUID.
        client_id: &'a str,
        /// The server sends a `heartbeat` when it sent nothing for this long; a client that
        /// sends no frame for 2.5 intervals is disconnected (close 4103).
        heartbeat_interval_ms: u64,
        /// The server's time, in Unix milliseconds.
        ts: u64,
    },
    /// The connection is authenticated (after `authenticate`, a token in the upgrade, or at
    /// once in dev mode).
    Authenticated {
        /// Who the connection is.
        identity: &'a Identity,
        /// The `authenticate` request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
    },
    /// The answer to `ping`.
    Pong {
        /// The server's time, in Unix milliseconds.
        ts: u64,
        /// The `ping`'s `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
    },
    /// Sent (followed by a WebSocket ping) when nothing was sent to the client for
    /// `heartbeatIntervalMs`.
    Heartbeat {
        /// The server's time, in Unix milliseconds.
        ts: u64,
    },
    /// A request was refused, or the connection broke a rule; sent only to that connection.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation (never a stack trace, path or secret).
        message: &'a str,
        /// The refused request's `requestId`, if it had a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// With the `*_RATE_LIMITED` codes: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "u64")]
        retry_after_ms: Option<u64>,
    },
    /// The gateway is shutting down; the connection is closed with 1001 next.
    ServerShutdown {
        /// Why, for humans.
        reason: &'a str,
        /// When to reconnect: 1000–5000 ms, random per client so reconnections spread.
        reconnect_after_ms: u64,
    },
    /// The answer to `list_sessions`, oldest first.
    SessionList {
        /// The request's `requestId`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The tenant's sessions (archived ones only with `includeArchived`), oldest first.
        sessions: Vec<SessionMeta<'a>>,
    },
    /// The answer to `create_session` (with `requestId`), and the same to every connection of
    /// the tenant (without).
    SessionCreated {
        /// The request's `requestId`; absent in the tenant broadcast.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The new session, committed to storage.
        session: SessionMeta<'a>,
    },
    /// The answer to `rename_session`, `archive_session` and `unarchive_session` (with
    /// `requestId`), and to every connection of the tenant on any change (without).
    SessionUpdated {
        /// The request's `requestId`; absent in the tenant broadcast.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The session as it is now.
        session: SessionMeta<'a>,
    },
    /// The answer to `delete_session` (with `requestId`), and the same to every connection of
    /// the tenant (without).
    SessionDeleted {
        /// The request's `requestId`; absent in the tenant broadcast.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        request_id: Option<&'a str>,
        /// The deleted session's id.
        session_id: &'a str,
    },
}

/// An `error` frame answering one request.
pub(crate) fn error_frame(
    code: ErrorCode,
    message: &str,
    request_id: Option<&str>,
) -> bytes::Bytes {
    crate::protocol::encode_frame(&ServerMessage::Error {
        code,
        message,
        request_id,
        retry_after_ms: None,
    })
}

#[cfg(test)]
mod tests;
