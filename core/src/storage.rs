//! Storage commands the core emits and the completions it consumes (see the storage crate).
//!
//! Everything here is plain data: the core builds [`StorageCommand`]s, an adapter hands them to
//! the storage crate (`diminuendo-storage`), which executes them on its own threads and returns
//! [`StorageCompletion`]s that the adapter feeds back into the core. Nothing in this module does
//! I/O, reads a clock or knows about SQLite.
//!
//! Ordering contract: commands are executed in the order they are submitted. Plain writes are
//! fire-and-forget (only a failure produces a completion, [`StorageCompletion::WriteFailed`]);
//! [`StorageCommand::Flush`], [`StorageCommand::Shutdown`], [`StorageCommand::Query`] and
//! [`StorageCommand::CommitNow`] are answered exactly once, carrying the caller's token. A query sees every write submitted before
//! it (read-your-writes).

use bytes::Bytes;
use std::fmt;

/// The seven session states of PROTOCOL section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// No agent process; the state of a new session and of every session after a restart.
    Inactive,
    /// The agent process is starting (spawn, ACP `initialize` and `session/new`).
    Activating,
    /// The agent is up and no turn is running: `run_turn` is accepted.
    Ready,
    /// A turn is running.
    Running,
    /// A turn is waiting for the answer to a permission question.
    Waiting,
    /// The agent process is being stopped; `inactive` follows.
    Deactivating,
    /// The agent failed (it would not start, broke the protocol or exited mid-turn); the next
    /// `run_turn` starts a fresh process.
    Error,
}

impl SessionStatus {
    /// Every state, in the order of PROTOCOL section 5 (`inactive` first).
    pub const ALL: [SessionStatus; 7] = [
        SessionStatus::Inactive,
        SessionStatus::Activating,
        SessionStatus::Ready,
        SessionStatus::Running,
        SessionStatus::Waiting,
        SessionStatus::Deactivating,
        SessionStatus::Error,
    ];

    /// The wire (and stored) spelling: `inactive`, `activating`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Inactive => "inactive",
            SessionStatus::Activating => "activating",
            SessionStatus::Ready => "ready",
            SessionStatus::Running => "running",
            SessionStatus::Waiting => "waiting",
            SessionStatus::Deactivating => "deactivating",
            SessionStatus::Error => "error",
        }
    }

    /// Parses the wire spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<SessionStatus> {
        SessionStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's registry row: the SessionMeta of PROTOCOL section 5 (times in epoch ms).
///
/// `last_seq` as stored in the registry is whatever the core last wrote; on start the storage
/// crate corrects it from the session's own event log (see [`RecoveryReport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id (a random UUID); unique across tenants, it names the session's directory.
    pub id: String,
    /// The tenant that owns the session; only its connections ever see it.
    pub tenant_id: String,
    /// The display name, 1 to 200 characters (`New session` unless the creator gave one).
    pub name: String,
    /// The configured agent type whose process serves the session.
    pub agent_type: String,
    /// Where the session is in its life cycle (stored `inactive` after every restart).
    pub status: SessionStatus,
    /// Hidden from `list_sessions` unless it asks for `includeArchived`.
    pub archived: bool,
    /// The user id (the token's `sub`) of whoever created the session.
    pub created_by: String,
    /// When the session was created, in epoch ms; `list_sessions` orders by it.
    pub created_at_ms: i64,
    /// When the name, archived flag or status last changed, in epoch ms.
    pub updated_at_ms: i64,
    /// The seq of the session's last event (0 before the first).
    pub last_seq: u64,
    /// The epoch of the session's event log (16 hex digits); replaced whenever the log may have
    /// lost events, so no `(epoch, seq)` ever names two different events.
    pub epoch: String,
    /// The agent's own ACP session id (what its `session/new` answered), kept so a later
    /// activation reopens that conversation (`session/resume`, else `session/load`); `None`
    /// until the session's agent first started.
    pub acp_session_id: Option<String>,
}

/// One persisted session event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// 1, 2, 3, ... per session, forever.
    pub seq: u64,
    /// The event's `type` (`text_delta`, `turn_complete`, ...), kept for filtering and history.
    pub event_type: String,
    /// The `turnId` of a turn's event; `None` for events outside a turn (`session_state`, ...).
    pub turn_id: Option<String>,
    /// The exact JSON text that was published, so a replay is byte-identical.
    pub payload: Bytes,
    /// The event's `ts`, in epoch ms.
    pub ts_ms: i64,
}

/// One turn of a session, as `get_history` reports it. Written with [`StorageCommand::UpsertTurn`]
/// when the turn starts and again when it ends; the last write wins, the turn keeps its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRecord {
    /// The turn's id (the `turnId` of its events); the row's key.
    pub turn_id: String,
    /// Who ran the turn; `None` only when recovery rebuilt the row from a `turn_started` event
    /// that lacked it.
    pub user_id: Option<String>,
    /// The text of the `run_turn` (or `steer`) that started the turn.
    pub user_text: String,
    /// The agent's message text, at most 64 KiB; `None` until the turn ends.
    pub final_text: Option<String>,
    /// `final_text` was cut at 64 KiB (the whole text is in the turn's deltas).
    pub final_text_truncated: bool,
    /// `turn_complete`'s `stopReason`, or `error` for a turn that ended with `turn_error`; `None`
    /// until the turn ends.
    pub stop_reason: Option<String>,
    /// JSON text of the last usage report (`{"used":..,"size":..,"cost":..}`), if any.
    pub usage_json: Option<String>,
    /// JSON text of the turn's tool calls (an array), if any.
    pub tool_calls_json: Option<String>,
    /// When the turn started, in epoch ms.
    pub started_at_ms: i64,
    /// When the turn ended, in epoch ms; `None` while it runs.
    pub completed_at_ms: Option<i64>,
    /// JSON text of the prompt's content blocks besides its text (an array of `run_turn`'s
    /// `content`), if it had any.
    pub content_json: Option<String>,
}

/// A row of `tenant_members`: a user seen authenticating in a tenant, written the first time
/// this gateway process sees that user there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The tenant (the token's `tenant_id`).
    pub tenant_id: String,
    /// The user (the token's `sub`).
    pub user_id: String,
    /// The role the token carried: `owner`, `admin`, `member` or `viewer`.
    pub role: String,
    /// When the row was first written, in epoch ms.
    pub created_at_ms: i64,
    /// When the row was last written, in epoch ms.
    pub updated_at_ms: i64,
}

/// Longest identifier that may become a path segment, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 128;

/// Whether an identifier (a tenant or session id) may become a path segment: 1 to
/// [`MAX_IDENTIFIER_LEN`] bytes of `[A-Za-z0-9._-]`, and neither `.` nor `..`; so it holds no
/// separator, no NUL and no parent reference.
pub fn is_valid_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_IDENTIFIER_LEN
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// What a query costs in the storage queue (see [`StorageCommand::queued_bytes`]).
pub const QUERY_QUEUED_BYTES: u64 = 96;

/// What the core asks storage to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageCommand {
    /// Insert or replace a session's registry row (in `session.tenant_id`'s registry).
    UpsertSession {
        /// The whole row, as it is to be stored.
        session: SessionRecord,
    },
    /// Delete the registry row and, once that is committed, the session's whole directory.
    DeleteSession {
        /// The tenant whose registry holds the row.
        tenant_id: String,
        /// The session to delete.
        session_id: String,
    },
    /// Append one event to the session's log. `seq` must be the next one; a duplicate `seq` is
    /// refused (reported as `WriteFailed`), never overwritten.
    AppendEvent {
        /// The session whose log takes the event.
        session_id: String,
        /// The event, with its seq and the exact published text.
        event: StoredEvent,
    },
    /// Insert or update a turn of the session's history.
    UpsertTurn {
        /// The session whose history holds the turn.
        session_id: String,
        /// The turn's row as it stands now (keyed by `turn_id`).
        turn: TurnRecord,
    },
    /// Insert or update a tenant member.
    UpsertMember {
        /// The row, keyed by `(tenant_id, user_id)`.
        member: MemberRecord,
    },
    /// Remove a tenant member.
    DeleteMember {
        /// The tenant whose registry holds the row.
        tenant_id: String,
        /// The member to remove.
        user_id: String,
    },
    /// Commit everything submitted before, then answer [`StorageCompletion::Flushed`].
    Flush {
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// Commit everything, close every handle, end the threads, then answer
    /// [`StorageCompletion::ShutdownComplete`]. Later commands are ignored.
    Shutdown {
        /// The caller's token, returned in the answer.
        token: u64,
    },
    /// Answer a query with [`StorageCompletion::QueryResult`]; sees every earlier write.
    Query {
        /// The caller's token, returned in the answer.
        token: u64,
        /// What to read.
        query: StorageQuery,
    },
    /// Commit every write to `database` submitted before this one as soon as the writer is free
    /// (without waiting for the batch interval; writes queued meanwhile join the same commit:
    /// group commit), then answer [`StorageCompletion::Committed`] with this token: `Ok` once
    /// they are on disk, the error if any of them could not be stored. Ordered like a write.
    /// The core sends it after a registry change whose reply must mean "on disk"
    /// (`create_session`, `rename_session`, `archive_session`, `delete_session`, ...).
    CommitNow {
        /// The caller's token, returned in [`StorageCompletion::Committed`].
        token: u64,
        /// The database whose earlier writes must be on disk.
        database: DatabaseId,
    },
}

impl StorageCommand {
    /// What the command costs in the storage queue, in bytes: its payload and strings plus a
    /// fixed overhead (an estimate of the memory it holds until it is written or answered).
    pub fn queued_bytes(&self) -> u64 {
        const OVERHEAD: usize = QUERY_QUEUED_BYTES as usize;
        let strings = match self {
            StorageCommand::UpsertSession { session: s } => {
                s.id.len()
                    + s.tenant_id.len()
                    + s.name.len()
                    + s.agent_type.len()
                    + s.created_by.len()
                    + s.epoch.len()
                    + s.acp_session_id.as_ref().map_or(0, String::len)
            }
            StorageCommand::DeleteSession {
                tenant_id,
                session_id,
            } => tenant_id.len() + session_id.len(),
            StorageCommand::AppendEvent { session_id, event } => {
                session_id.len()
                    + event.event_type.len()
                    + event.turn_id.as_ref().map_or(0, String::len)
                    + event.payload.len()
            }
            StorageCommand::UpsertTurn { session_id, turn } => {
                session_id.len()
                    + turn.turn_id.len()
                    + turn.user_text.len()
                    + turn.final_text.as_ref().map_or(0, String::len)
                    + turn.usage_json.as_ref().map_or(0, String::len)
                    + turn.tool_calls_json.as_ref().map_or(0, String::len)
            }
            StorageCommand::UpsertMember { member } => {
                member.tenant_id.len() + member.user_id.len() + member.role.len()
            }
            StorageCommand::DeleteMember { tenant_id, user_id } => tenant_id.len() + user_id.len(),
            // A marker in its database's group: held until that group commits.
            StorageCommand::CommitNow { .. } => 0,
            // Never refused, never held long: they cost nothing.
            StorageCommand::Flush { .. } | StorageCommand::Shutdown { .. } => return 0,
            StorageCommand::Query { .. } => return QUERY_QUEUED_BYTES,
        };
        (OVERHEAD + strings) as u64
    }

    /// True for the writes (everything but flush, shutdown and queries); a
    /// [`StorageCommand::CommitNow`] counts as one: it is ordered with the writes it follows.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            StorageCommand::Flush { .. }
                | StorageCommand::Shutdown { .. }
                | StorageCommand::Query { .. }
        )
    }
}

/// Reads. Results come back in [`QueryResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageQuery {
    /// The tenant's sessions, oldest first (by `created_at`, then id).
    ListSessions {
        /// The tenant whose registry is read.
        tenant_id: String,
        /// List archived sessions too.
        include_archived: bool,
    },
    /// One session's registry row, `None` when the tenant has no such session.
    LoadSession {
        /// The tenant whose registry is read (another tenant's session is not found).
        tenant_id: String,
        /// The session to load.
        session_id: String,
    },
    /// Stored events with `seq > after_seq`, in order, at most `limit`.
    EventsAfter {
        /// The session whose log is read.
        session_id: String,
        /// The seq the client already has; 0 reads from the first event.
        after_seq: u64,
        /// Most events returned.
        limit: u32,
    },
    /// Up to `limit` turns that started before `before_turn` (or the latest ones), oldest first.
    History {
        /// The session whose history is read.
        session_id: String,
        /// The turn id the page ends before; `None` for the latest turns.
        before_turn: Option<String>,
        /// Most turns returned.
        limit: u32,
    },
}

/// The answer to a [`StorageQuery`], variant for variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    /// For [`StorageQuery::ListSessions`]: the rows, oldest first.
    Sessions(Vec<SessionRecord>),
    /// For [`StorageQuery::LoadSession`]: the row, `None` when the tenant has no such session.
    Session(Option<SessionRecord>),
    /// For [`StorageQuery::EventsAfter`].
    Events {
        /// The events after `after_seq`, in seq order.
        events: Vec<StoredEvent>,
        /// More stored events follow the last one returned.
        has_more: bool,
    },
    /// For [`StorageQuery::History`].
    History {
        /// The turns of the page, oldest first.
        turns: Vec<TurnRecord>,
        /// Older turns exist before the first one returned.
        has_more: bool,
    },
}

/// Which database a failure concerns, so the core can react (e.g. give a session a new epoch
/// when its events could not be written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DatabaseId {
    /// A tenant's `registry.db` (its sessions' rows and its members).
    Registry {
        /// The tenant.
        tenant_id: String,
    },
    /// A session's `session.db` (its event log and turn history).
    Session {
        /// The session.
        session_id: String,
    },
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseId::Registry { tenant_id } => write!(f, "registry of tenant {tenant_id}"),
            DatabaseId::Session { session_id } => write!(f, "session {session_id}"),
        }
    }
}

/// What went wrong. Messages describe, they carry no secret; `database` strings are the
/// database's path relative to the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// An identifier that would become a path segment is empty, too long, or has a character
    /// outside `[A-Za-z0-9._-]`, or is `.` / `..`.
    InvalidIdentifier {
        /// What the identifier names (`tenant id`, `session id`).
        what: &'static str,
        /// The identifier as given.
        value: String,
    },
    /// The file was written by a newer version; it was not modified.
    NewerSchema {
        /// The database's path relative to the data directory.
        database: String,
        /// The file's schema version (`PRAGMA user_version`).
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// SQLite refused (corruption, disk full, constraint, ...).
    Sqlite {
        /// The database's path relative to the data directory.
        database: String,
        /// SQLite's description of the failure.
        message: String,
    },
    /// A filesystem error outside SQLite.
    Io {
        /// The database's path relative to the data directory.
        database: String,
        /// The operating system's description of the failure.
        message: String,
    },
    /// The storage threads have stopped (after shutdown, or a thread is gone).
    Closed,
    /// The storage queue holds `queued` bytes; taking this command would pass its hard limit
    /// `limit`. Nothing was queued.
    QueueFull {
        /// Bytes queued when the command arrived.
        queued: u64,
        /// The queue's hard limit, in bytes.
        limit: u64,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::InvalidIdentifier { what, value } => {
                write!(f, "invalid {what} {value:?} (allowed: 1-128 of A-Z a-z 0-9 . _ -, not . or ..)")
            }
            StorageError::NewerSchema {
                database,
                found,
                supported,
            } => write!(
                f,
                "{database}: schema version {found} is newer than the supported {supported}; refusing to open it"
            ),
            StorageError::Sqlite { database, message } => write!(f, "{database}: sqlite: {message}"),
            StorageError::Io { database, message } => write!(f, "{database}: {message}"),
            StorageError::Closed => f.write_str("storage is closed"),
            StorageError::QueueFull { queued, limit } => write!(
                f,
                "the storage queue is full ({queued} bytes queued, limit {limit})"
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// What storage hands back to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageCompletion {
    /// Everything submitted before the `Flush` with this token is committed (or was reported
    /// failed with `WriteFailed`).
    Flushed {
        /// The token of the [`StorageCommand::Flush`].
        token: u64,
    },
    /// Storage flushed everything, closed its handles and stopped.
    ShutdownComplete {
        /// The token of the [`StorageCommand::Shutdown`].
        token: u64,
    },
    /// The answer to [`StorageCommand::Query`].
    QueryResult {
        /// The token of the query.
        token: u64,
        /// The rows read (the variant matching the query), or why they could not be.
        result: Result<QueryResult, StorageError>,
    },
    /// The answer to [`StorageCommand::CommitNow`]: the writes it follows are committed (`Ok`),
    /// or some of them could not be stored (`Err`; they are also reported with `WriteFailed`).
    Committed {
        /// The token of the [`StorageCommand::CommitNow`].
        token: u64,
        /// `Ok` once every write before the marker is on disk.
        result: Result<(), StorageError>,
    },
    /// `commands` writes to `database` were not stored.
    WriteFailed {
        /// The database the writes were for.
        database: DatabaseId,
        /// How many writes were lost.
        commands: usize,
        /// Why.
        error: StorageError,
    },
    /// Whether storage can write, reported on every change: `writable: false` when a write
    /// failed because the storage medium refused it (disk full, read-only file system, I/O
    /// error), with a one-line `reason` naming the cause and the database; `writable: true` once
    /// a write (or storage's own write probe) succeeds again.
    Health {
        /// Storage can write (again).
        writable: bool,
        /// Why it cannot, e.g. `storage: disk full (SQLITE_FULL) writing sessions/{id}/session.db`;
        /// `None` when writable.
        reason: Option<String>,
    },
    /// Whether the storage queue (bytes submitted and not yet written or answered) is over its
    /// soft limit, reported on every change by the adapter's services layer: while `congested`,
    /// the core refuses new work (`create_session`, `run_turn`, `steer`) with `RATE_LIMITED`.
    Backlog {
        /// The queue is over its soft limit (until it drains under a quarter of the hard one).
        congested: bool,
    },
}

/// Where a session resumes after a start: its sequence counter and epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResume {
    /// The tenant whose registry lists the session.
    pub tenant_id: String,
    /// The session.
    pub session_id: String,
    /// The highest stored event seq (0 when none); the next event gets `last_seq + 1`.
    pub last_seq: u64,
    /// The epoch the session's log continues under (new when `new_epoch`).
    pub epoch: String,
    /// This start gave the session a new epoch (its log may have lost events).
    pub new_epoch: bool,
}

/// What recovery did when storage opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run ended with a clean shutdown (its marker was found).
    pub clean_shutdown: bool,
    /// Tenant registries found.
    pub tenants: usize,
    /// Sessions listed by those registries.
    pub sessions: usize,
    /// Sessions whose stored status was not `inactive` and were set to `inactive`.
    pub sessions_deactivated: usize,
    /// Sessions given a new epoch.
    pub sessions_new_epoch: usize,
    /// Sessions whose stored `last_seq` was corrected from their event log.
    pub last_seq_corrected: usize,
    /// Session directories with no registry row (found).
    pub orphan_session_dirs: usize,
    /// Of those, how many recovery removed (all of them, unless some registry could not be read:
    /// then none, since the missing rows may be in that registry).
    pub orphan_session_dirs_removed: usize,
    /// Turns that a crash cut off (a `turn_started` with no `turn_complete`/`turn_error` after
    /// it, or a history row with no end) and that recovery closed with `turn_error`
    /// `INTERRUPTED`.
    pub turns_interrupted: usize,
    /// Databases that could not be opened or recovered (they are left as they are).
    pub failed: Vec<StorageError>,
    /// Where each session resumes: its `last_seq` and epoch (one entry per session recovered).
    pub resume: Vec<SessionResume>,
    /// Every session's registry row after recovery (status `inactive`, `last_seq` and `epoch`
    /// as resumed), for the core's in-memory registry.
    pub records: Vec<SessionRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for st in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(st.as_str()), Some(st));
        }
        assert_eq!(SessionStatus::parse("bogus"), None);
    }
}
