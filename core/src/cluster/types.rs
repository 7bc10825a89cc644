//! The commands the gateway sends the cluster engine and the completions it gets back. Plain
//! data, like the core's storage commands: every command that carries a `token` is answered
//! exactly once with a completion carrying the same token.

use crate::storage::{SessionRecord, SessionStatus};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A session's registry value in `dim_registry` (JSON): the SessionMeta of PROTOCOL §5 plus
/// where its log can be read from without scanning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionMeta {
    /// The session id.
    pub id: String,
    /// The tenant that owns the session.
    pub tenant_id: String,
    /// The display name.
    pub name: String,
    /// The agent type serving the session.
    pub agent_type: String,
    /// The wire spelling (`inactive`, `ready`, ...).
    pub status: String,
    /// Hidden from `list_sessions` unless asked.
    pub archived: bool,
    /// Who created the session (a user id).
    pub created_by: String,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Last change of name, archived flag or status, epoch ms.
    pub updated_at_ms: i64,
    /// The seq of the last event the owner had acknowledged by the log when it wrote the entry.
    pub last_seq: u64,
    /// The epoch of the log as of `last_seq`.
    pub epoch: String,
    /// The agent's own ACP session id (resume/load on the next activation, on any instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acp_session_id: Option<String>,
    /// A known event's position in `DIM_EVENTS`: a fetch after `seq >= mark.seq` may start at
    /// `mark.stream_seq` instead of the subject's first message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_mark: Option<LogMark>,
}

/// An event's seq and its stream sequence in `DIM_EVENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogMark {
    /// The event's seq.
    pub seq: u64,
    /// Its sequence in the stream.
    pub stream_seq: u64,
}

impl From<&SessionRecord> for SessionMeta {
    fn from(r: &SessionRecord) -> SessionMeta {
        SessionMeta {
            id: r.id.clone(),
            tenant_id: r.tenant_id.clone(),
            name: r.name.clone(),
            agent_type: r.agent_type.clone(),
            status: r.status.as_str().to_string(),
            archived: r.archived,
            created_by: r.created_by.clone(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_seq: r.last_seq,
            epoch: r.epoch.clone(),
            acp_session_id: r.acp_session_id.clone(),
            log_mark: None,
        }
    }
}

impl SessionMeta {
    /// The core's registry row; `None` when the stored status is not one of the seven states.
    pub fn to_record(&self) -> Option<SessionRecord> {
        Some(SessionRecord {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            name: self.name.clone(),
            agent_type: self.agent_type.clone(),
            status: SessionStatus::parse(&self.status)?,
            archived: self.archived,
            created_by: self.created_by.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            last_seq: self.last_seq,
            epoch: self.epoch.clone(),
            acp_session_id: self.acp_session_id.clone(),
        })
    }
}

/// A registry entry as read: the value and the KV revision to compare-and-set against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The value.
    pub meta: SessionMeta,
    /// Its KV revision.
    pub revision: u64,
}

/// The value of an owner lease in `dim_owners` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The instance that holds the lease.
    pub instance: String,
    /// The holder's fence: a number the core chooses, increasing with every new term of the
    /// session's ownership (informational; the KV revision is what renewals compare against).
    pub fence: u64,
}

/// A lease as read, with its KV revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Who holds it.
    pub value: LeaseValue,
    /// Its KV revision.
    pub revision: u64,
}

/// One event of a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// The event's seq (1, 2, 3, ... per session).
    pub seq: u64,
    /// The epoch it was published under.
    pub epoch: String,
    /// Its sequence in `DIM_EVENTS` (on live delivery too: the republished copy carries it).
    pub stream_seq: Option<u64>,
    /// The exact frame bytes the owner published.
    pub payload: Bytes,
}

/// An instance's liveness entry in `dim_instances` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    /// The instance id.
    pub instance: String,
    /// When it started, epoch ms.
    pub started_at_ms: u64,
    /// Its last heartbeat, epoch ms.
    pub heartbeat_at_ms: u64,
}

/// The NATS connection as `/health` and `/readyz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected yet (start), or closed for good (shutdown, or the client gave up).
    Disconnected,
    /// The connection is up and the stream and buckets exist.
    Connected,
    /// The connection was lost; the client is reconnecting by itself.
    Reconnecting,
}

impl ConnectionState {
    /// `disconnected`, `connected` or `reconnecting` (for `/health`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
        }
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// Compare-and-set refused: the entry exists (create) or changed since `revision` (update,
    /// delete).
    Conflict,
    /// The registry entry or lease does not exist.
    NotFound,
    /// A live lease names another instance.
    LeaseHeld(LeaseInfo),
    /// This instance's lease is gone (expired, or taken over): the session is no longer ours.
    LeaseLost,
    /// An append was refused by `Nats-Expected-Last-Subject-Sequence`: another owner appended
    /// since this one opened the log. `last` is the subject's last event now, if it could be read.
    Fenced {
        /// The subject's last event now, if it could be read.
        last: Option<Box<LogEvent>>,
    },
    /// An append for a session whose log this instance has not opened (`OpenLog`).
    LogNotOpen,
    /// A forwarded command found nobody serving the session.
    NoResponders,
    /// NATS is not reachable now (the connection is down or not yet made): nothing was sent.
    Unavailable,
    /// No answer within the operation timeout. For a write this means the outcome is unknown (a
    /// message buffered by the client may still reach the server): read before retrying.
    Timeout,
    /// The message is larger than the server's `max_payload`; nothing was sent.
    TooLarge(String),
    /// A stored value is not what this build writes.
    Corrupt(String),
    /// The engine has stopped.
    Closed,
    /// Anything else NATS reported.
    Nats(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Conflict => {
                f.write_str("cluster: the entry changed (compare-and-set refused)")
            }
            ClusterError::NotFound => f.write_str("cluster: no such entry"),
            ClusterError::LeaseHeld(l) => write!(
                f,
                "cluster: the session is owned by instance {}",
                l.value.instance
            ),
            ClusterError::LeaseLost => {
                f.write_str("cluster: this instance no longer owns the session")
            }
            ClusterError::Fenced { .. } => {
                f.write_str("cluster: append refused, another owner appended (fenced)")
            }
            ClusterError::LogNotOpen => f.write_str("cluster: the session's log is not open here"),
            ClusterError::NoResponders => f.write_str("cluster: no instance serves the session"),
            ClusterError::Unavailable => f.write_str("cluster: NATS is unreachable"),
            ClusterError::Timeout => f.write_str("cluster: NATS did not answer in time"),
            ClusterError::TooLarge(m) => write!(f, "cluster: too large: {m}"),
            ClusterError::Corrupt(m) => write!(f, "cluster: unreadable value: {m}"),
            ClusterError::Closed => f.write_str("cluster: the engine has stopped"),
            ClusterError::Nats(m) => write!(f, "cluster: {m}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// What the gateway asks the engine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    /// Create the registry entry (fails with `Conflict` if it exists). → `Registry`.
    RegistryCreate {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The registry value.
        meta: SessionMeta,
    },
    /// Replace the entry if its revision is still `revision`. → `Registry`.
    RegistryUpdate {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The registry value.
        meta: SessionMeta,
        /// The KV revision to compare against.
        revision: u64,
    },
    /// Delete the entry (only if still at `revision`, when given). → `Registry` (revision 0).
    RegistryDelete {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// The KV revision to compare against.
        revision: Option<u64>,
    },
    /// Read one entry from NATS. → `RegistryEntry`.
    RegistryGet {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
    },
    /// Read every entry of a tenant from NATS (keys `<tenant>.>`). → `RegistryList`.
    RegistryList {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
    },
    /// Create the lease `{instance: this, fence}` (fails with `LeaseHeld` while another lives).
    /// → `Lease`.
    AcquireLease {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
        /// The core's fence for this term of ownership.
        fence: u64,
    },
    /// Rewrite the lease on its revision (fails with `LeaseLost`). → `Lease`.
    RenewLease {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
    },
    /// Delete the lease on its revision. → `Lease` (revision 0).
    ReleaseLease {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
    },
    /// Who holds the lease now. → `LeaseHolder`.
    GetLease {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
    },
    /// Read the subject's last event and anchor this instance's appends on it. Call after
    /// acquiring the lease and again after `Fenced`. → `LogOpened`.
    OpenLog {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
    },
    /// Forget the session's append chain (after releasing or losing the lease). No answer.
    CloseLog {
        /// The session.
        session_id: String,
    },
    /// Append one event (in submission order per session). → `Appended`.
    Append {
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// The event's seq.
        seq: u64,
        /// The event's epoch.
        epoch: String,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// Events with `seq > after_seq`, in order, at most `limit`; `from_stream_seq` (a
    /// `LogMark`'s) lets the read start there. → `Fetched`.
    Fetch {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// Events after this seq.
        after_seq: u64,
        /// Where the read may start (a `LogMark`'s stream sequence).
        from_stream_seq: Option<u64>,
        /// Most events returned.
        limit: u32,
    },
    /// Deliver the session's events live (`LiveEvent`). → `Subscribed` once active.
    Subscribe {
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
    },
    /// Stop delivering the session's live events.
    Unsubscribe {
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
    },
    /// Answer `dim.cmd.<session>` requests (`CommandRequest`). → `Serving` once active.
    ServeCommands {
        /// The session.
        session_id: String,
    },
    /// Stop answering `dim.cmd.<session>` (the session is no longer owned here).
    StopServing {
        /// The session.
        session_id: String,
    },
    /// Answer a `CommandRequest`.
    Reply {
        /// The engine's number for the request, to answer with `Reply`.
        request: u64,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// Send a command to the session's owner and wait for its reply. → `Forwarded`.
    Forward {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// Deliver `dim.tenant.<tenant>` notifications (`TenantNotice`). → `Watching` once active.
    WatchTenant {
        /// The session's tenant.
        tenant_id: String,
    },
    /// Stop delivering the tenant's notifications.
    UnwatchTenant {
        /// The session's tenant.
        tenant_id: String,
    },
    /// Publish a tenant notification (fire and forget; a failure answers `Failed`).
    Notify {
        /// The session's tenant.
        tenant_id: String,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// The live instances (`dim_instances`). → `Instances`.
    ListInstances {
        /// The caller's token, returned in the completion.
        token: u64,
    },
    /// Remove every event of a deleted session from the stream; forgets its append chain.
    /// → `Purged`.
    PurgeLog {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
    },
}

/// What the engine hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCompletion {
    /// The connection changed state (reported on every change).
    Connection {
        /// The new state.
        state: ConnectionState,
    },
    /// Answer to `RegistryCreate`/`RegistryUpdate`/`RegistryDelete`: the new revision (0 for a
    /// delete), acknowledged by JetStream.
    Registry {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<u64, ClusterError>,
    },
    /// Answer to `RegistryGet`: the entry, `None` when absent.
    RegistryEntry {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<Option<RegistryEntry>, ClusterError>,
    },
    /// Answer to `RegistryList`: the tenant's entries, oldest first.
    RegistryList {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<Vec<RegistryEntry>, ClusterError>,
    },
    /// Answer to `AcquireLease`/`RenewLease`/`ReleaseLease`: the lease's new revision.
    Lease {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
        /// The outcome.
        result: Result<u64, ClusterError>,
    },
    /// Answer to `GetLease`: the live lease, if any.
    LeaseHolder {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<Option<LeaseInfo>, ClusterError>,
    },
    /// The subject's last event (`None` for an empty log); appends are anchored on it.
    LogOpened {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The session.
        session_id: String,
        /// The outcome.
        result: Result<Option<LogEvent>, ClusterError>,
    },
    /// An append acknowledged by JetStream (its stream sequence), or refused.
    Appended {
        /// The session.
        session_id: String,
        /// The event's seq.
        seq: u64,
        /// The outcome.
        result: Result<u64, ClusterError>,
    },
    /// Answer to `Fetch`: the events and whether more follow.
    Fetched {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<(Vec<LogEvent>, bool), ClusterError>,
    },
    /// An event the stream stored, delivered live (at most once, in stream order).
    LiveEvent {
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// The event.
        event: LogEvent,
    },
    /// The live subscription is active (every later stored event reaches it).
    Subscribed {
        /// The session's tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// The outcome.
        result: Result<(), ClusterError>,
    },
    /// A command forwarded to this instance as the session's owner.
    CommandRequest {
        /// The session.
        session_id: String,
        /// The engine's number for the request, to answer with `Reply`.
        request: u64,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// Answering `dim.cmd.<session>` is active.
    Serving {
        /// The session.
        session_id: String,
        /// The outcome.
        result: Result<(), ClusterError>,
    },
    /// Answer to `Forward`: the owner's reply.
    Forwarded {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<Bytes, ClusterError>,
    },
    /// A tenant notification published by an instance (this one included).
    TenantNotice {
        /// The session's tenant.
        tenant_id: String,
        /// The bytes (a frame, a forwarded message, a reply, a notification).
        payload: Bytes,
    },
    /// The tenant's notifications are delivered from now on.
    Watching {
        /// The session's tenant.
        tenant_id: String,
        /// The outcome.
        result: Result<(), ClusterError>,
    },
    /// Answer to `ListInstances`.
    Instances {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<Vec<InstanceInfo>, ClusterError>,
    },
    /// Answer to `PurgeLog`: how many events were removed.
    Purged {
        /// The caller's token, returned in the completion.
        token: u64,
        /// The outcome.
        result: Result<u64, ClusterError>,
    },
    /// A command without a token failed (`Notify`, `Reply`, ...).
    Failed {
        /// What failed.
        what: String,
        /// Why.
        error: ClusterError,
    },
}
