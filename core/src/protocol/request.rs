//! What a client asks on `/ws` (PROTOCOL sections 4 and 5), as types: every message is parsed
//! once into a `ClientRequest`, and each handler receives its own variant's fields with the
//! `RequestContext` of who asked.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::ids::ConnectionId;
use crate::protocol::Identity;

/// Who asked, and how to address the answer.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The connection that sent the request (and receives the reply).
    pub connection: ConnectionId,
    /// The authenticated identity of that connection.
    pub identity: Arc<Identity>,
    /// The client's `requestId`, echoed in the reply.
    pub request_id: Option<String>,
}

/// Every client message type, with its fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest {
    /// Answered `pong`; allowed before authentication and not counted by the rate limit.
    Ping,
    Authenticate(Authenticate),
    ListSessions(ListSessions),
    CreateSession(CreateSession),
    RenameSession(RenameSession),
    ArchiveSession(SessionRef),
    UnarchiveSession(SessionRef),
    DeleteSession(SessionRef),
    JoinSession(JoinSession),
    LeaveSession(SessionRef),
    GetEvents(GetEvents),
    GetHistory(GetHistory),
    RunTurn(RunTurn),
    /// As `run_turn`, cancelling the running turn first.
    Steer(RunTurn),
    StopTurn(SessionRef),
    AnswerQuestion(AnswerQuestion),
}

/// `authenticate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authenticate {
    pub token: String,
}

/// `list_sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSessions {
    #[serde(default)]
    pub include_archived: Option<bool>,
}

/// `create_session`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSession {
    pub agent_type: String,
    /// Default `"New session"`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `rename_session`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenameSession {
    pub session_id: String,
    pub name: String,
}

/// A request that names only a session: `archive_session`, `unarchive_session`,
/// `delete_session`, `leave_session`, `stop_turn`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    pub session_id: String,
}

/// `join_session`: with `afterSeq` (and the `epoch` it was counted in), a resume.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSession {
    pub session_id: String,
    #[serde(default)]
    pub after_seq: Option<u64>,
    #[serde(default)]
    pub epoch: Option<String>,
}

/// `get_events`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetEvents {
    pub session_id: String,
    pub after_seq: u64,
    /// Clamped to 1..=1000; default 1000.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `get_history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetHistory {
    pub session_id: String,
    #[serde(default)]
    pub before_turn: Option<String>,
    /// Clamped to 1..=100; default 50.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `run_turn` and `steer`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTurn {
    pub session_id: String,
    pub text: String,
}

/// `answer_question`: an option chosen, or the question cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerQuestion {
    pub session_id: String,
    pub question_id: String,
    #[serde(default)]
    pub option_id: Option<String>,
    #[serde(default)]
    pub cancelled: Option<bool>,
}
