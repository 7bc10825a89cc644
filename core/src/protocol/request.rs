//! What a client asks on `/ws` (PROTOCOL sections 4 and 5), as types: every message is parsed
//! once into a `ClientRequest`, and each handler receives its own variant's fields with the
//! `RequestContext` of who asked.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::ConnectionId;
use crate::protocol::Identity;

/// What a role may do (PROTOCOL section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// List, join, leave and read sessions (every role).
    Read,
    /// Create a session (all roles but `viewer`).
    Create,
    /// Rename a session, run and stop turns, answer questions, set the agent's mode and options
    /// (all roles but `viewer`).
    Write,
    /// Archive and unarchive a session (all roles but `viewer`).
    Archive,
    /// Delete a session (`owner` and `admin` only).
    Delete,
    /// Steer a running turn (all roles but `viewer`).
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
    /// Authenticates the connection with a token; answered `authenticated`, or `AUTH_FAILED`
    /// and close 4001.
    Authenticate(Authenticate),
    /// Lists the tenant's sessions, oldest first; answered `session_list`.
    ListSessions(ListSessions),
    /// Creates a session; answered `session_created` once storage has committed it (and
    /// broadcast to the tenant without `requestId`).
    CreateSession(CreateSession),
    /// Renames a session; answered and broadcast as `session_updated`.
    RenameSession(RenameSession),
    /// Archives a session (hidden from `list_sessions` unless `includeArchived`); answered and
    /// broadcast as `session_updated`.
    ArchiveSession(SessionRef),
    /// Undoes `archive_session`; answered and broadcast as `session_updated`.
    UnarchiveSession(SessionRef),
    /// Stops the session's agent and deletes the session with its data; answered and broadcast
    /// as `session_deleted`.
    DeleteSession(SessionRef),
    /// Subscribes the connection to the session's events, resuming after `afterSeq` if given;
    /// answered `session_joined`.
    JoinSession(JoinSession),
    /// Unsubscribes the connection from the session's events; answered `session_left`.
    LeaveSession(SessionRef),
    /// Reads a page of stored events; answered `events`.
    GetEvents(GetEvents),
    /// Reads a page of the session's turns, oldest first; answered `history`.
    GetHistory(GetHistory),
    /// Starts a turn with the user's text (starting the agent if the session has none);
    /// answered `turn_accepted`. `INVALID_STATE` while another turn runs.
    RunTurn(RunTurn),
    /// As `run_turn`, cancelling the running turn first.
    Steer(RunTurn),
    /// Cancels the running turn; answered `turn_stopping`, and the turn ends `turn_complete`
    /// with `stopReason: "cancelled"`.
    StopTurn(SessionRef),
    /// Answers the agent's pending question (a permission request); answered
    /// `question_answered`.
    AnswerQuestion(AnswerQuestion),
    /// Sets the agent's session mode (ACP `session/set_mode`); answered `mode_set` once the
    /// agent has, or `AGENT_REFUSED` with the agent's message. `INVALID_STATE` while the
    /// session's agent is not running (ready, running or waiting).
    SetMode(SetMode),
    /// Sets one of the agent's session configuration options (ACP
    /// `session/set_config_option`); answered `config_option_set` with every option once the
    /// agent has, or `AGENT_REFUSED`. `INVALID_STATE` while the session's agent is not running.
    SetConfigOption(SetConfigOption),
}

/// `authenticate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authenticate {
    /// A JWT (HS256, RS256 or ES256) with `sub`, `tenant_id` and `exp`; at most 16 KiB.
    pub token: String,
}

/// `list_sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSessions {
    /// Also list archived sessions. Default `false`.
    #[serde(default)]
    pub include_archived: Option<bool>,
}

/// `create_session`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSession {
    /// The agent type that runs the session's turns: one the gateway is configured with (`echo`
    /// by default), else `AGENT_UNAVAILABLE`.
    pub agent_type: String,
    /// The session's name, 1–200 characters. Default `"New session"`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `rename_session`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenameSession {
    /// The session to rename.
    pub session_id: String,
    /// The new name, 1–200 characters.
    pub name: String,
}

/// A request that names only a session: `archive_session`, `unarchive_session`,
/// `delete_session`, `leave_session`, `stop_turn`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    /// The session the request is about.
    pub session_id: String,
}

/// `join_session`: with `afterSeq` (and the `epoch` it was counted in), a resume.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSession {
    /// The session to join.
    pub session_id: String,
    /// The last `seq` the client has seen: the reply replays the events after it (within 1000
    /// events of the session's `lastSeq`), then live events follow with no gap. Absent: no
    /// replay, live from `lastSeq + 1`.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// The `epoch` that `afterSeq` was counted in; a different epoch means events were lost and
    /// the reply says `recovered: false` (reload with `get_events`).
    #[serde(default)]
    pub epoch: Option<String>,
}

/// `get_events`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetEvents {
    /// The session to read.
    pub session_id: String,
    /// The page starts with the first event after this `seq` (0 for the beginning).
    pub after_seq: u64,
    /// Clamped to 1..=1000; default 1000.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `get_history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetHistory {
    /// The session to read.
    pub session_id: String,
    /// Only turns older than this `turnId` (the oldest of the previous page). Absent: from the
    /// newest turn.
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
    /// The session to run the turn in.
    pub session_id: String,
    /// The user's prompt.
    pub text: String,
    /// Content blocks sent to the agent after the text (ACP `ContentBlock`s): images, audio,
    /// resource links and embedded resources. Each kind only if the agent's
    /// `promptCapabilities` allow it (`image`, `audio`, `embeddedContext`; a `resource_link` is
    /// always allowed), else `INVALID_MESSAGE`. Absent or `null`: none.
    #[serde(default)]
    pub content: Option<Vec<PromptBlock>>,
}

/// A content block of a prompt besides its text, in ACP's wire shape (`session/prompt`'s
/// `ContentBlock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PromptBlock {
    /// An image; needs the agent's `promptCapabilities.image`.
    Image(MediaBlock),
    /// Audio; needs the agent's `promptCapabilities.audio`.
    Audio(MediaBlock),
    /// A reference to a resource the agent can read itself; always allowed.
    ResourceLink(ResourceLinkBlock),
    /// A resource's contents, embedded; needs the agent's `promptCapabilities.embeddedContext`.
    Resource(EmbeddedResourceBlock),
}

impl PromptBlock {
    /// The block's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            PromptBlock::Image(_) => "image",
            PromptBlock::Audio(_) => "audio",
            PromptBlock::ResourceLink(_) => "resource_link",
            PromptBlock::Resource(_) => "resource",
        }
    }
}

/// `image` and `audio` blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaBlock {
    /// The bytes, base64 encoded (standard alphabet, padded).
    pub data: String,
    /// The MIME type, e.g. `image/png`.
    pub mime_type: String,
}

/// A `resource_link` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLinkBlock {
    /// The resource's URI.
    pub uri: String,
    /// The resource's name.
    pub name: String,
    /// The resource's MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// A title for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A description for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The resource's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A `resource` block: an embedded resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedResourceBlock {
    /// The resource's contents.
    pub resource: ResourceContents,
}

/// An embedded resource's contents: exactly one of `text` and `blob`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceContents {
    /// The resource's URI.
    pub uri: String,
    /// The contents as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The contents as bytes, base64 encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The resource's MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// `answer_question`: an option chosen, or the question cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerQuestion {
    /// The session whose agent asked.
    pub session_id: String,
    /// The question's id, from its `permission_requested` event (`q1`, `q2`, … per agent process).
    pub question_id: String,
    /// The chosen option, one of the question's `options`; exactly one of `optionId` and
    /// `cancelled: true` must be given.
    #[serde(default)]
    pub option_id: Option<String>,
    /// `true` to cancel the question instead of choosing an option.
    #[serde(default)]
    pub cancelled: Option<bool>,
}

/// `set_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetMode {
    /// The session whose agent changes mode.
    pub session_id: String,
    /// One of the modes the agent offers (the `availableModes` of `session_joined`'s `agent`).
    pub mode_id: String,
}

/// `set_config_option`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetConfigOption {
    /// The session whose agent's option changes.
    pub session_id: String,
    /// The option's `id`, from the agent's `configOptions`.
    pub config_id: String,
    /// The new value: a value id (a `select` option's `value`) or a boolean.
    pub value: ConfigValue,
}

/// A configuration option's value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A boolean option's value.
    Bool(bool),
    /// A value id (e.g. a `select` option's `value`).
    Id(String),
}

/// The type of a client message, known before its fields are checked: authentication and the
/// role are checked on it first, so a request with bad fields is refused as it was before
/// (`NOT_AUTHENTICATED`, `FORBIDDEN`) ahead of its field errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `ping`.
    Ping,
    /// `authenticate`.
    Authenticate,
    /// `list_sessions`.
    ListSessions,
    /// `create_session`.
    CreateSession,
    /// `rename_session`.
    RenameSession,
    /// `archive_session`.
    ArchiveSession,
    /// `unarchive_session`.
    UnarchiveSession,
    /// `delete_session`.
    DeleteSession,
    /// `join_session`.
    JoinSession,
    /// `leave_session`.
    LeaveSession,
    /// `get_events`.
    GetEvents,
    /// `get_history`.
    GetHistory,
    /// `run_turn`.
    RunTurn,
    /// `steer`.
    Steer,
    /// `stop_turn`.
    StopTurn,
    /// `answer_question`.
    AnswerQuestion,
    /// `set_mode`.
    SetMode,
    /// `set_config_option`.
    SetConfigOption,
}

impl RequestKind {
    /// Every client message type.
    pub const ALL: [RequestKind; 18] = [
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
        RequestKind::SetMode,
        RequestKind::SetConfigOption,
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
            RequestKind::SetMode => "set_mode",
            RequestKind::SetConfigOption => "set_config_option",
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
            SetMode | SetConfigOption => Permission::Write,
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
            ClientRequest::SetMode(_) => RequestKind::SetMode,
            ClientRequest::SetConfigOption(_) => RequestKind::SetConfigOption,
        }
    }

    /// The permission the request needs (PROTOCOL section 5); `None` for `ping` and
    /// `authenticate`.
    pub fn permission(&self) -> Option<Permission> {
        self.kind().permission()
    }
}
