//! The commands the gateway sends the cluster engine and the completions it gets back. Plain
//! data, like the core's storage commands: every command that carries a `token` is answered
//! exactly once with a completion carrying the same token.

use bytes::Bytes;
use diminuendo_core::storage::{SessionRecord, SessionStatus};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A session's registry value in `dim_registry` (JSON): the SessionMeta of PROTOCOL §5 plus
/// where its log can be read from without scanning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionMeta {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub agent_type: String,
    /// The wire spelling (`inactive`, `ready`, ...).
    pub status: String,
    pub archived: bool,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_seq: u64,
    pub epoch: String,
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
    pub seq: u64,
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
    pub meta: SessionMeta,
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
    pub value: LeaseValue,
    pub revision: u64,
}

/// One event of a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub seq: u64,
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
    pub instance: String,
    pub started_at_ms: u64,
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
    Fenced { last: Option<Box<LogEvent>> },
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
        token: u64,
        meta: SessionMeta,
    },
    /// Replace the entry if its revision is still `revision`. → `Registry`.
    RegistryUpdate {
        token: u64,
        meta: SessionMeta,
        revision: u64,
    },
    /// Delete the entry (only if still at `revision`, when given). → `Registry` (revision 0).
    RegistryDelete {
        token: u64,
        tenant_id: String,
        session_id: String,
        revision: Option<u64>,
    },
    /// Read one entry from NATS. → `RegistryEntry`.
    RegistryGet {
        token: u64,
        tenant_id: String,
        session_id: String,
    },
    /// Read every entry of a tenant from NATS (keys `<tenant>.>`). → `RegistryList`.
    RegistryList {
        token: u64,
        tenant_id: String,
    },
    /// Create the lease `{instance: this, fence}` (fails with `LeaseHeld` while another lives).
    /// → `Lease`.
    AcquireLease {
        token: u64,
        session_id: String,
        fence: u64,
    },
    /// Rewrite the lease on its revision (fails with `LeaseLost`). → `Lease`.
    RenewLease {
        token: u64,
        session_id: String,
    },
    /// Delete the lease on its revision. → `Lease` (revision 0).
    ReleaseLease {
        token: u64,
        session_id: String,
    },
    /// Who holds the lease now. → `LeaseHolder`.
    GetLease {
        token: u64,
        session_id: String,
    },
    /// Read the subject's last event and anchor this instance's appends on it. Call after
    /// acquiring the lease and again after `Fenced`. → `LogOpened`.
    OpenLog {
        token: u64,
        tenant_id: String,
        session_id: String,
    },
    /// Forget the session's append chain (after releasing or losing the lease). No answer.
    CloseLog {
        session_id: String,
    },
    /// Append one event (in submission order per session). → `Appended`.
    Append {
        tenant_id: String,
        session_id: String,
        seq: u64,
        epoch: String,
        payload: Bytes,
    },
    /// Events with `seq > after_seq`, in order, at most `limit`; `from_stream_seq` (a
    /// `LogMark`'s) lets the read start there. → `Fetched`.
    Fetch {
        token: u64,
        tenant_id: String,
        session_id: String,
        after_seq: u64,
        from_stream_seq: Option<u64>,
        limit: u32,
    },
    /// Deliver the session's events live (`LiveEvent`). → `Subscribed` once active.
    Subscribe {
        tenant_id: String,
        session_id: String,
    },
    Unsubscribe {
        tenant_id: String,
        session_id: String,
    },
    /// Answer `dim.cmd.<session>` requests (`CommandRequest`). → `Serving` once active.
    ServeCommands {
        session_id: String,
    },
    StopServing {
        session_id: String,
    },
    /// Answer a `CommandRequest`.
    Reply {
        request: u64,
        payload: Bytes,
    },
    /// Send a command to the session's owner and wait for its reply. → `Forwarded`.
    Forward {
        token: u64,
        session_id: String,
        payload: Bytes,
    },
    /// Deliver `dim.tenant.<tenant>` notifications (`TenantNotice`). → `Watching` once active.
    WatchTenant {
        tenant_id: String,
    },
    UnwatchTenant {
        tenant_id: String,
    },
    /// Publish a tenant notification (fire and forget; a failure answers `Failed`).
    Notify {
        tenant_id: String,
        payload: Bytes,
    },
    /// The live instances (`dim_instances`). → `Instances`.
    ListInstances {
        token: u64,
    },
    /// Remove every event of a deleted session from the stream; forgets its append chain.
    /// → `Purged`.
    PurgeLog {
        token: u64,
        tenant_id: String,
        session_id: String,
    },
}

/// What the engine hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCompletion {
    /// The connection changed state (reported on every change).
    Connection {
        state: ConnectionState,
    },
    /// Answer to `RegistryCreate`/`RegistryUpdate`/`RegistryDelete`: the new revision (0 for a
    /// delete), acknowledged by JetStream.
    Registry {
        token: u64,
        result: Result<u64, ClusterError>,
    },
    RegistryEntry {
        token: u64,
        result: Result<Option<RegistryEntry>, ClusterError>,
    },
    RegistryList {
        token: u64,
        result: Result<Vec<RegistryEntry>, ClusterError>,
    },
    /// Answer to `AcquireLease`/`RenewLease`/`ReleaseLease`: the lease's new revision.
    Lease {
        token: u64,
        session_id: String,
        result: Result<u64, ClusterError>,
    },
    LeaseHolder {
        token: u64,
        result: Result<Option<LeaseInfo>, ClusterError>,
    },
    /// The subject's last event (`None` for an empty log); appends are anchored on it.
    LogOpened {
        token: u64,
        session_id: String,
        result: Result<Option<LogEvent>, ClusterError>,
    },
    /// An append acknowledged by JetStream (its stream sequence), or refused.
    Appended {
        session_id: String,
        seq: u64,
        result: Result<u64, ClusterError>,
    },
    Fetched {
        token: u64,
        result: Result<(Vec<LogEvent>, bool), ClusterError>,
    },
    LiveEvent {
        tenant_id: String,
        session_id: String,
        event: LogEvent,
    },
    Subscribed {
        tenant_id: String,
        session_id: String,
        result: Result<(), ClusterError>,
    },
    CommandRequest {
        session_id: String,
        request: u64,
        payload: Bytes,
    },
    Serving {
        session_id: String,
        result: Result<(), ClusterError>,
    },
    Forwarded {
        token: u64,
        result: Result<Bytes, ClusterError>,
    },
    TenantNotice {
        tenant_id: String,
        payload: Bytes,
    },
    Watching {
        tenant_id: String,
        result: Result<(), ClusterError>,
    },
    Instances {
        token: u64,
        result: Result<Vec<InstanceInfo>, ClusterError>,
    },
    /// Answer to `PurgeLog`: how many events were removed.
    Purged {
        token: u64,
        result: Result<u64, ClusterError>,
    },
    /// A command without a token failed (`Notify`, `Reply`, ...).
    Failed {
        what: String,
        error: ClusterError,
    },
}

impl ClusterCommand {
    /// The answer that refuses this command with `error` without doing it; `None` for the
    /// commands that are never refused (subscriptions are kept and resumed by the client across
    /// reconnections; `CloseLog` is local).
    pub fn refusal(&self, error: ClusterError) -> Option<ClusterCompletion> {
        use ClusterCommand as C;
        use ClusterCompletion as D;
        Some(match self {
            C::RegistryCreate { token, .. }
            | C::RegistryUpdate { token, .. }
            | C::RegistryDelete { token, .. } => D::Registry {
                token: *token,
                result: Err(error),
            },
            C::RegistryGet { token, .. } => D::RegistryEntry {
                token: *token,
                result: Err(error),
            },
            C::RegistryList { token, .. } => D::RegistryList {
                token: *token,
                result: Err(error),
            },
            C::AcquireLease {
                token, session_id, ..
            }
            | C::RenewLease { token, session_id }
            | C::ReleaseLease { token, session_id } => D::Lease {
                token: *token,
                session_id: session_id.clone(),
                result: Err(error),
            },
            C::GetLease { token, .. } => D::LeaseHolder {
                token: *token,
                result: Err(error),
            },
            C::OpenLog {
                token, session_id, ..
            } => D::LogOpened {
                token: *token,
                session_id: session_id.clone(),
                result: Err(error),
            },
            C::Append {
                session_id, seq, ..
            } => D::Appended {
                session_id: session_id.clone(),
                seq: *seq,
                result: Err(error),
            },
            C::Fetch { token, .. } => D::Fetched {
                token: *token,
                result: Err(error),
            },
            C::Forward { token, .. } => D::Forwarded {
                token: *token,
                result: Err(error),
            },
            C::ListInstances { token } => D::Instances {
                token: *token,
                result: Err(error),
            },
            C::PurgeLog { token, .. } => D::Purged {
                token: *token,
                result: Err(error),
            },
            C::Reply { request, .. } => D::Failed {
                what: format!("reply to request {request}"),
                error,
            },
            C::Notify { tenant_id, .. } => D::Failed {
                what: format!("notification to tenant {tenant_id}"),
                error,
            },
            C::CloseLog { .. }
            | C::Subscribe { .. }
            | C::Unsubscribe { .. }
            | C::ServeCommands { .. }
            | C::StopServing { .. }
            | C::WatchTenant { .. }
            | C::UnwatchTenant { .. } => return None,
        })
    }
}
