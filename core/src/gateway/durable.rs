//! Durable replies (PROTOCOL section 5): `create_session`, `rename_session`,
//! `archive_session`/`unarchive_session` and `delete_session` are answered once storage says the
//! registry change is committed ([`StorageCommand::CommitNow`] → [`StorageCompletion::Committed`]).
//!
//! The reply waits in `pending_durable`, keyed by the storage token. The connection that asked
//! may close meanwhile and its id be given to another connection: `client_gone` forgets the
//! requester then, so the reply is never sent to a stranger (the tenant broadcast still goes out:
//! the change is on disk all the same).
//!
//! A failed commit answers `INTERNAL` and leaves the in-memory registry as the disk has it:
//! - a create that failed is not in the registry (it was never inserted: a session becomes
//!   visible, to its creator and to `list_sessions`, only once its row is committed), and a
//!   `DeleteSession` makes sure its row is not left on disk either;
//! - a delete that failed puts the session back (`inactive`, its agent already stopped);
//! - a rename or (un)archive that failed is undone, unless a later change of the same field
//!   replaced it meanwhile (that one has its own pending reply).
//!
//! Until the commit, a rename or archive is visible in memory (to `list_sessions` and to the
//! session's own events); its `session_updated` goes out, to the requester and the tenant, only
//! after the commit.
//!
//! [`StorageCommand::CommitNow`]: crate::storage::StorageCommand::CommitNow
//! [`StorageCompletion::Committed`]: crate::storage::StorageCompletion::Committed

use std::sync::Arc;
use std::time::Instant;

use crate::gateway::queries::PendingQuery;
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::ServerMessage;
use crate::protocol::SessionMeta;
use crate::protocol::{encode_frame, ErrorCode};
use crate::storage::{DatabaseId, SessionRecord, SessionStatus, StorageCommand, StorageError};
use crate::Gateway;

/// A registry change waiting for its commit.
pub(crate) struct PendingDurable {
    /// Who asked and with which `requestId`; `None` once that connection is gone.
    pub(crate) requester: Option<(ConnectionId, Option<String>)>,
    pub(crate) action: DurableAction,
}

pub(crate) enum DurableAction {
    /// The new session, not yet in the in-memory registry.
    Create(SessionRecord),
    /// The session as the change left it, and the value it replaced.
    Update {
        record: SessionRecord,
        previous: Previous,
    },
    /// The removed session (already gone from memory), and the requests about it that were
    /// waiting for storage: they are answered after the deletion.
    Delete {
        record: SessionRecord,
        orphaned: Vec<PendingQuery>,
    },
}

#[derive(Clone)]
pub(crate) enum Previous {
    Name(String),
    Archived(bool),
}

impl Gateway {
    /// Asks storage to commit the registry of `tenant_id` now and keeps `action` until it has.
    pub(crate) fn await_commit(
        &mut self,
        tenant_id: &str,
        requester: ConnectionId,
        request_id: Option<&str>,
        action: DurableAction,
    ) {
        let token = self.next_token();
        self.pending_durable.insert(
            token,
            PendingDurable {
                requester: Some((requester, request_id.map(str::to_owned))),
                action,
            },
        );
        self.storage(StorageCommand::CommitNow {
            token,
            database: DatabaseId::Registry {
                tenant_id: tenant_id.to_owned(),
            },
        });
    }

    /// The connection is gone: replies owed to it are dropped (its id may be reused), the
    /// changes themselves still complete.
    pub(crate) fn forget_durable_requester(&mut self, id: ConnectionId) {
        for pending in self.pending_durable.values_mut() {
            if pending
                .requester
                .as_ref()
                .is_some_and(|(connection, _)| *connection == id)
            {
                pending.requester = None;
            }
            if let DurableAction::Delete { orphaned, .. } = &mut pending.action {
                orphaned.retain(|query| query.connection() != Some(id));
            }
        }
    }

    /// Storage answered a `CommitNow`.
    pub(crate) fn durable_committed(
        &mut self,
        token: u64,
        result: Result<(), StorageError>,
        now: Instant,
    ) {
        let Some(PendingDurable { requester, action }) = self.pending_durable.remove(&token) else {
            return;
        };
        let (requester, request_id) = match requester {
            Some((connection, request_id)) => (Some(connection), request_id),
            None => (None, None),
        };
        let request_id = request_id.as_deref();
        match (action, result) {
            (DurableAction::Create(record), Ok(())) => {
                let session_id = self.insert_session(record);
                self.metrics.sessions_created += 1;
                let requester = requester.map(|connection| (connection, request_id));
                self.announce_session(requester, &session_id, true, now);
            }
            (DurableAction::Create(record), Err(error)) => {
                // The row may have been stored after all (the error may concern a write before
                // it): delete it, so a session nobody was told of does not appear later.
                self.storage(StorageCommand::DeleteSession {
                    tenant_id: record.tenant_id,
                    session_id: record.id,
                });
                if let Some(connection) = requester {
                    let message = format!(
                        "the session could not be stored, it was not created ({})",
                        storage_reason(&error)
                    );
                    self.send_error(connection, ErrorCode::Internal, &message, request_id, now);
                }
            }
            (DurableAction::Update { record, .. }, Ok(())) => {
                let session_id: SessionId = Arc::from(record.id.as_str());
                if self.sessions.contains_key(&session_id) {
                    let requester = requester.map(|connection| (connection, request_id));
                    self.announce_session(requester, &session_id, false, now);
                } else if let Some(connection) = requester {
                    // Deleted meanwhile: the change was stored all the same; the reply says so
                    // with the session as the change left it.
                    let frame = encode_frame(&ServerMessage::SessionUpdated {
                        request_id,
                        session: SessionMeta::from(&record),
                    });
                    self.send(connection, frame, now);
                }
            }
            (DurableAction::Update { record, previous }, Err(error)) => {
                if let Some(session) = self.sessions.get_mut(record.id.as_str()) {
                    match previous {
                        Previous::Name(name) => session.undo_rename(&record.name, name),
                        Previous::Archived(archived) => {
                            session.undo_archive(record.archived, archived)
                        }
                    }
                }
                if let Some(connection) = requester {
                    let message = format!(
                        "the change could not be stored and was undone ({})",
                        storage_reason(&error)
                    );
                    self.send_error(connection, ErrorCode::Internal, &message, request_id, now);
                }
            }
            (DurableAction::Delete { record, orphaned }, Ok(())) => {
                let tenant_id = record.tenant_id.clone();
                let frame = encode_frame(&ServerMessage::SessionDeleted {
                    request_id: None,
                    session_id: &record.id,
                });
                if let Some(connection) = requester {
                    let reply = encode_frame(&ServerMessage::SessionDeleted {
                        request_id,
                        session_id: &record.id,
                    });
                    self.send(connection, reply, now);
                }
                self.broadcast_tenant(&tenant_id, frame, now);
                for query in orphaned {
                    self.abandon(
                        query,
                        ErrorCode::SessionNotFound,
                        "the session was deleted",
                        now,
                    );
                }
            }
            (
                DurableAction::Delete {
                    mut record,
                    orphaned,
                },
                Err(error),
            ) => {
                // Still on disk: put it back, so memory and disk agree. Its agent is stopped.
                record.status = SessionStatus::Inactive;
                self.insert_session(record);
                if let Some(connection) = requester {
                    let message = format!(
                        "the deletion could not be stored; the session still exists ({})",
                        storage_reason(&error)
                    );
                    self.send_error(connection, ErrorCode::Internal, &message, request_id, now);
                }
                for query in orphaned {
                    self.abandon(
                        query,
                        ErrorCode::Internal,
                        "interrupted by a deletion that failed; the session still exists",
                        now,
                    );
                }
            }
        }
    }
}

/// A short reason for a client: what kind of failure, without paths.
fn storage_reason(error: &StorageError) -> &'static str {
    match error {
        StorageError::Closed => "storage is closed",
        StorageError::NewerSchema { .. } => "the registry has a newer schema",
        StorageError::InvalidIdentifier { .. } => "invalid identifier",
        StorageError::Sqlite { .. } | StorageError::Io { .. } => "storage write failed",
        StorageError::QueueFull { .. } => "the storage queue is full",
    }
}
