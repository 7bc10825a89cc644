//! What a client asks on `/ws` (PROTOCOL sections 4 and 5), as types: every message is parsed
//! once into a `ClientRequest`, and each handler receives its own variant's fields with the
//! `RequestContext` of who asked.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::ids::ConnectionId;
use crate::protocol::Identity;

/// What a role may do (PROTOCOL section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Create,
    Write,
    Archive,
    Delete,
    Steer,
}

/// Whether `role` (an identity's `role` claim) grants `permission`.
pub fn role_allows(role: &str, permission: Permission) -> bool {
    match role {
        "owner" | "admin" => true,
        "member" => permission != Permission::Delete,
        "viewer" => permission == Permission::Read,
        _ => false,
    }
}

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

/// The type of a client message, known before its fields are checked: authentication and the
/// role are checked on it first, so a request with bad fields is refused as it was before
/// (`NOT_AUTHENTICATED`, `FORBIDDEN`) ahead of its field errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Ping,
    Authenticate,
    ListSessions,
    CreateSession,
    RenameSession,
    ArchiveSession,
    UnarchiveSession,
    DeleteSession,
    JoinSession,
    LeaveSession,
    GetEvents,
    GetHistory,
    RunTurn,
    Steer,
    StopTurn,
    AnswerQuestion,
}

impl RequestKind {
    /// Every client message type.
    pub const ALL: [RequestKind; 16] = [
        RequestKind::Ping,
        RequestKind::Authenticate,
        RequestKind::ListSessions,
        RequestKind::CreateSession,
        RequestKind::RenameSession,
        RequestKind::ArchiveSession,
        RequestKind::UnarchiveSession,
        RequestKind::DeleteSession,
        RequestKind::JoinSession,
        RequestKind::LeaveSession,
        RequestKind::GetEvents,
        RequestKind::GetHistory,
        RequestKind::RunTurn,
        RequestKind::Steer,
        RequestKind::StopTurn,
        RequestKind::AnswerQuestion,
    ];

    /// The wire name (the message's `type`).
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Authenticate => "authenticate",
            RequestKind::ListSessions => "list_sessions",
            RequestKind::CreateSession => "create_session",
            RequestKind::RenameSession => "rename_session",
            RequestKind::ArchiveSession => "archive_session",
            RequestKind::UnarchiveSession => "unarchive_session",
            RequestKind::DeleteSession => "delete_session",
            RequestKind::JoinSession => "join_session",
            RequestKind::LeaveSession => "leave_session",
            RequestKind::GetEvents => "get_events",
            RequestKind::GetHistory => "get_history",
            RequestKind::RunTurn => "run_turn",
            RequestKind::Steer => "steer",
            RequestKind::StopTurn => "stop_turn",
            RequestKind::AnswerQuestion => "answer_question",
        }
    }

    /// The type named `name`; `None` for an unknown type.
    pub fn from_name(name: &str) -> Option<RequestKind> {
        RequestKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// The permission the type needs; `None` for `ping` and `authenticate`, which are allowed
    /// before authentication.
    pub fn permission(self) -> Option<Permission> {
        use RequestKind::*;
        Some(match self {
            Ping | Authenticate => return None,
            ListSessions | JoinSession | LeaveSession | GetEvents | GetHistory => Permission::Read,
            CreateSession => Permission::Create,
            RenameSession | RunTurn | StopTurn | AnswerQuestion => Permission::Write,
            ArchiveSession | UnarchiveSession => Permission::Archive,
            DeleteSession => Permission::Delete,
            Steer => Permission::Steer,
        })
    }
}

impl ClientRequest {
    /// The request's type.
    pub fn kind(&self) -> RequestKind {
        match self {
            ClientRequest::Ping => RequestKind::Ping,
            ClientRequest::Authenticate(_) => RequestKind::Authenticate,
            ClientRequest::ListSessions(_) => RequestKind::ListSessions,
            ClientRequest::CreateSession(_) => RequestKind::CreateSession,
            ClientRequest::RenameSession(_) => RequestKind::RenameSession,
            ClientRequest::ArchiveSession(_) => RequestKind::ArchiveSession,
            ClientRequest::UnarchiveSession(_) => RequestKind::UnarchiveSession,
            ClientRequest::DeleteSession(_) => RequestKind::DeleteSession,
            ClientRequest::JoinSession(_) => RequestKind::JoinSession,
            ClientRequest::LeaveSession(_) => RequestKind::LeaveSession,
            ClientRequest::GetEvents(_) => RequestKind::GetEvents,
            ClientRequest::GetHistory(_) => RequestKind::GetHistory,
            ClientRequest::RunTurn(_) => RequestKind::RunTurn,
            ClientRequest::Steer(_) => RequestKind::Steer,
            ClientRequest::StopTurn(_) => RequestKind::StopTurn,
            ClientRequest::AnswerQuestion(_) => RequestKind::AnswerQuestion,
        }
    }

    /// The permission the request needs (PROTOCOL section 5); `None` for `ping` and
    /// `authenticate`.
    pub fn permission(&self) -> Option<Permission> {
        self.kind().permission()
    }
}
