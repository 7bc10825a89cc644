//! The registry in `dim_registry`, and storage's commands mapped onto the engine.
//!
//! Each session's writes go one at a time (compare-and-set on the revision of the previous
//! one); a change made while one is in flight waits, the latest replacing an earlier waiting
//! one. A `CommitNow` (a durable reply) waits for the write it follows: the reply goes out once
//! JetStream acknowledged it, as on one node after the SQLite commit. A conflict re-reads the
//! entry and writes again (at most 3 times). The owner writes the session as it runs, with
//! `lastSeq` the last *acknowledged* event (the rule take-over compares the log against); an
//! instance that does not own the session changes only the name and the archived flag of the
//! entry as it last read it. Every acknowledged write is announced on `dim.tenant.<tenant>`.

use std::time::Instant;

use super::{Deferred, Pending};
use crate::cluster::{ClusterCommand, ClusterError, RegistryEntry, SessionMeta};
use crate::storage::{
    SessionRecord, StorageCommand, StorageCompletion, StorageError, StorageQuery,
};
use crate::Gateway;

/// A session's registry entry as known here, and its writes.
#[derive(Default)]
pub(crate) struct Reg {
    /// The entry as last read or written.
    pub(crate) meta: Option<SessionMeta>,
    pub(crate) revision: Option<u64>,
    pub(super) in_flight: Option<InFlight>,
    queued: Option<Write>,
    /// `CommitNow` tokens waiting for the queued write.
    queued_waiters: Vec<u64>,
    /// What the writes waiting here change of the entry as it was known (the rest of the row is
    /// taken as it is when the write is sent).
    changes: Changes,
    conflicts: u8,
}

/// The fields a client asked to change (`rename_session`, `archive_session`).
#[derive(Default, Clone)]
struct Changes {
    name: Option<String>,
    archived: Option<bool>,
}

impl Changes {
    /// `newer` on top of `self`.
    fn then(self, newer: Changes) -> Changes {
        Changes {
            name: newer.name.or(self.name),
            archived: newer.archived.or(self.archived),
        }
    }
}

pub(super) struct InFlight {
    write: Write,
    sent: Option<SessionMeta>,
    changes: Changes,
    waiters: Vec<u64>,
    created: bool,
}

#[derive(Clone)]
enum Write {
    Upsert(Box<SessionRecord>),
    Delete { tenant_id: String },
}

impl Gateway {
    /// A storage command in cluster mode: registry writes and appends go to the engine, reads
    /// of the log become fetches, the rest (turn history, members) is not kept.
    pub(crate) fn cluster_storage(&mut self, command: StorageCommand) {
        match command {
            StorageCommand::UpsertSession { session } => {
                let id = session.id.clone();
                self.queue_write(&id, Write::Upsert(Box::new(session)));
            }
            StorageCommand::DeleteSession {
                tenant_id,
                session_id,
            } => self.queue_write(&session_id, Write::Delete { tenant_id }),
            StorageCommand::CommitNow { token, .. } => self.attach_commit(token),
            StorageCommand::AppendEvent { session_id, event } => {
                self.append(&session_id, event.seq, event.payload)
            }
            StorageCommand::Query { token, query } => self.cluster_query(token, query),
            StorageCommand::Flush { token } => self.defer(StorageCompletion::Flushed { token }),
            StorageCommand::Shutdown { token } => {
                self.defer(StorageCompletion::ShutdownComplete { token })
            }
            StorageCommand::UpsertTurn { .. }
            | StorageCommand::UpsertMember { .. }
            | StorageCommand::DeleteMember { .. } => {}
        }
    }

    pub(crate) fn defer(&mut self, completion: StorageCompletion) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.deferred.push_back(completion);
        }
    }

    fn cluster_query(&mut self, token: u64, query: StorageQuery) {
        match query {
            StorageQuery::EventsAfter {
                session_id,
                after_seq,
                limit,
            } => {
                let Some(tenant_id) = self
                    .sessions
                    .get(session_id.as_str())
                    .map(|s| s.record().tenant_id.clone())
                else {
                    self.defer(StorageCompletion::QueryResult {
                        token,
                        result: Err(StorageError::Closed),
                    });
                    return;
                };
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.pending.insert(token, Pending::Query);
                }
                self.cluster_command(ClusterCommand::Fetch {
                    token,
                    tenant_id,
                    session_id,
                    after_seq,
                    from_stream_seq: None,
                    limit,
                });
            }
            // No turn table in cluster mode: the turns are rebuilt from the log.
            StorageQuery::History {
                session_id,
                before_turn,
                limit,
            } => self.history_from_log(token, session_id, before_turn, limit),
            StorageQuery::ListSessions { .. } | StorageQuery::LoadSession { .. } => {
                self.defer(StorageCompletion::QueryResult {
                    token,
                    result: Err(StorageError::Closed),
                })
            }
        }
    }

    pub(super) fn reg(&mut self, session_id: &str) -> Option<&mut super::registry::Reg> {
        let cluster = self.cluster.as_mut()?;
        Some(cluster.registry.entry(session_id.to_owned()).or_default())
    }

    fn queue_write(&mut self, session_id: &str, write: Write) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.last_write = Some(session_id.to_owned());
        }
        if let Write::Upsert(record) = &write {
            self.note_status(session_id, record.status);
        }
        if let Some(reg) = self.reg(session_id) {
            if let (Write::Upsert(record), Some(known)) = (&write, reg.meta.as_ref()) {
                let changes = Changes {
                    name: (record.name != known.name).then(|| record.name.clone()),
                    archived: (record.archived != known.archived).then_some(record.archived),
                };
                reg.changes = std::mem::take(&mut reg.changes).then(changes);
            }
            reg.queued = Some(write);
        }
        self.flush_registry(session_id);
    }

    /// A `CommitNow`: answered when the write it follows is acknowledged.
    fn attach_commit(&mut self, token: u64) {
        let target = self.cluster.as_ref().and_then(|c| c.last_write.clone());
        let attached = target.and_then(|id| self.reg(&id)).is_some_and(|reg| {
            if reg.queued.is_some() {
                reg.queued_waiters.push(token);
            } else if let Some(in_flight) = reg.in_flight.as_mut() {
                in_flight.waiters.push(token);
            } else {
                return false;
            }
            true
        });
        if !attached {
            self.defer(StorageCompletion::Committed {
                token,
                result: Ok(()),
            });
        }
    }

    /// Sends the session's next registry write, unless one is in flight. With nothing queued,
    /// the owner writes the session when every event it published is acknowledged and the
    /// entry's `lastSeq` is behind (so the entry records the last acknowledged event).
    pub(crate) fn flush_registry(&mut self, session_id: &str) {
        let owned_quiet = self.owner_quiescent(session_id);
        let current = self.sessions.get(session_id).map(|s| s.record().clone());
        let Some(reg) = self.reg(session_id) else {
            return;
        };
        if reg.in_flight.is_some() {
            return;
        }
        let write = match reg.queued.take() {
            Some(write) => write,
            None => match (owned_quiet, current.clone()) {
                (Some(acked), Some(record))
                    if reg.meta.as_ref().is_none_or(|m| m.last_seq < acked) =>
                {
                    Write::Upsert(Box::new(record))
                }
                _ => return,
            },
        };
        // The session as it is now (a re-read entry after a conflict may have changed it since
        // the write was queued); a session not in the registry here yet is a creation.
        let write = match (write, current) {
            (Write::Upsert(_), Some(record)) => Write::Upsert(Box::new(record)),
            (write, _) => write,
        };
        let waiters = std::mem::take(&mut reg.queued_waiters);
        let changes = std::mem::take(&mut reg.changes);
        let created = reg.revision.is_none() && reg.meta.is_none();
        let revision = reg.revision;
        let known = reg.meta.clone();
        let (command_meta, token) = match &write {
            Write::Upsert(record) => {
                let meta = self.meta_to_write(record, known, &changes);
                let token = self.cluster_pending(Pending::Registry {
                    session_id: session_id.to_owned(),
                });
                let command = match revision {
                    Some(revision) if !created => ClusterCommand::RegistryUpdate {
                        token,
                        meta: meta.clone(),
                        revision,
                    },
                    _ => ClusterCommand::RegistryCreate {
                        token,
                        meta: meta.clone(),
                    },
                };
                self.cluster_command(command);
                (Some(meta), token)
            }
            Write::Delete { tenant_id } => {
                let token = self.cluster_pending(Pending::Registry {
                    session_id: session_id.to_owned(),
                });
                self.cluster_command(ClusterCommand::RegistryDelete {
                    token,
                    tenant_id: tenant_id.clone(),
                    session_id: session_id.to_owned(),
                    revision: None,
                });
                (None, token)
            }
        };
        let _ = token;
        if let Some(reg) = self.reg(session_id) {
            reg.in_flight = Some(InFlight {
                write,
                sent: command_meta,
                changes,
                waiters,
                created,
            });
        }
    }

    /// What this instance writes for `record`: when it owns the session, the row as it is now
    /// with the acknowledged `lastSeq`; otherwise the entry as last read. Either way the name and
    /// archived flag are the entry's, except those a client here changed (`changes`).
    fn meta_to_write(
        &self,
        record: &SessionRecord,
        known: Option<SessionMeta>,
        changes: &Changes,
    ) -> SessionMeta {
        let Some(known) = known else {
            return SessionMeta::from(record);
        };
        let mut meta = match self.acked_seq(&record.id) {
            Some(acked) => {
                let mut meta = SessionMeta::from(record);
                meta.last_seq = acked;
                meta.name = known.name.clone();
                meta.archived = known.archived;
                meta
            }
            None => known.clone(),
        };
        if let Some(name) = &changes.name {
            meta.name = name.clone();
        }
        if let Some(archived) = changes.archived {
            meta.archived = archived;
        }
        meta.updated_at_ms = meta.updated_at_ms.max(record.updated_at_ms);
        meta
    }

    pub(crate) fn registry_written(
        &mut self,
        token: u64,
        result: Result<u64, ClusterError>,
        now: Instant,
    ) {
        let Some(Pending::Registry { session_id }) =
            self.take_pending(token, |p| matches!(p, Pending::Registry { .. }))
        else {
            return;
        };
        let Some(reg) = self.reg(&session_id) else {
            return;
        };
        let Some(in_flight) = reg.in_flight.take() else {
            return;
        };
        match result {
            Ok(revision) => {
                reg.conflicts = 0;
                let deleted = matches!(in_flight.write, Write::Delete { .. });
                if deleted {
                    reg.revision = None;
                    reg.meta = None;
                } else {
                    reg.revision = Some(revision);
                    reg.meta = in_flight.sent.clone();
                }
                if let Some(meta) = &in_flight.sent {
                    if let Some(session) = self.sessions.get_mut(session_id.as_str()) {
                        session.apply_names(&meta.name, meta.archived);
                    }
                }
                for waiter in in_flight.waiters {
                    self.durable_committed(waiter, Ok(()), now);
                }
                match in_flight.write {
                    Write::Upsert(_) => {
                        if let Some(meta) = in_flight.sent {
                            self.notify(
                                &meta.tenant_id.clone(),
                                Some(meta),
                                in_flight.created,
                                None,
                            );
                        }
                        self.registry_caught_up(&session_id, now);
                    }
                    Write::Delete { tenant_id } => {
                        self.notify(&tenant_id, None, false, Some(session_id.clone()));
                        let token = self.cluster_pending(Pending::Purge);
                        self.cluster_command(ClusterCommand::PurgeLog {
                            token,
                            tenant_id,
                            session_id: session_id.clone(),
                        });
                        if let Some(cluster) = self.cluster.as_mut() {
                            cluster.registry.remove(&session_id);
                        }
                        return;
                    }
                }
                self.flush_registry(&session_id);
            }
            Err(ClusterError::Conflict) if !in_flight.created && reg.conflicts < 3 => {
                // Someone wrote since: read the entry again and write on its revision.
                reg.conflicts += 1;
                if reg.queued.is_none() {
                    reg.queued = Some(in_flight.write);
                }
                reg.changes = in_flight.changes.then(std::mem::take(&mut reg.changes));
                let mut waiters = in_flight.waiters;
                waiters.append(&mut reg.queued_waiters);
                reg.queued_waiters = waiters;
                let tenant_id = reg.meta.as_ref().map(|m| m.tenant_id.clone());
                let tenant_id = tenant_id.or_else(|| {
                    self.sessions
                        .get(session_id.as_str())
                        .map(|s| s.record().tenant_id.clone())
                });
                let token = self.cluster_pending(Pending::Get {
                    session_id: session_id.clone(),
                    then: None,
                });
                self.cluster_command(ClusterCommand::RegistryGet {
                    token,
                    tenant_id: tenant_id.unwrap_or_default(),
                    session_id,
                });
            }
            Err(error) => {
                reg.conflicts = 0;
                let failure = StorageError::Io {
                    database: "cluster registry".to_owned(),
                    message: error.to_string(),
                };
                for waiter in in_flight.waiters {
                    self.durable_committed(waiter, Err(failure.clone()), now);
                }
                self.flush_registry(&session_id);
            }
        }
    }

    /// `RegistryGet` answered: the entry is learned, then the write or the request waiting for
    /// it goes on.
    pub(crate) fn registry_read(
        &mut self,
        token: u64,
        result: Result<Option<RegistryEntry>, ClusterError>,
        now: Instant,
    ) {
        let Some(Pending::Get { session_id, then }) =
            self.take_pending(token, |p| matches!(p, Pending::Get { .. }))
        else {
            return;
        };
        if let Ok(Some(entry)) = result {
            self.learn_entry(entry);
        }
        match then {
            Some(mut deferred) => {
                deferred.stage.looked_up = true;
                self.rerun(deferred, now);
            }
            None => self.flush_registry(&session_id),
        }
    }

    pub(crate) fn registry_listed(
        &mut self,
        token: u64,
        result: Result<Vec<RegistryEntry>, ClusterError>,
        now: Instant,
    ) {
        let Some(Pending::List { mut then }) =
            self.take_pending(token, |p| matches!(p, Pending::List { .. }))
        else {
            return;
        };
        for entry in result.unwrap_or_default() {
            self.learn_entry(entry);
        }
        then.stage.listed = true;
        self.rerun(then, now);
    }

    /// An entry read from the registry: the session joins the local registry, or its
    /// registry-held fields are updated (not what this instance decides itself).
    fn learn_entry(&mut self, entry: RegistryEntry) {
        let RegistryEntry { meta, revision } = entry;
        let id = meta.id.clone();
        if let Some(reg) = self.reg(&id) {
            if reg.in_flight.is_none() {
                reg.revision = Some(revision);
                reg.meta = Some(meta.clone());
            }
        }
        self.apply_meta(&meta);
    }

    /// The registry says `meta`: insert the session, or update what this instance does not own.
    /// Returns whether the session was new here.
    pub(super) fn apply_meta(&mut self, meta: &SessionMeta) -> bool {
        let Some(record) = meta.to_record() else {
            return false;
        };
        let owned = self.is_owned(&record.id);
        let fed = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.feeds.contains_key(record.id.as_str()));
        match self.sessions.get_mut(record.id.as_str()) {
            None => {
                self.insert_session(record);
                true
            }
            Some(session) => {
                session.apply_registry(&record, !owned, !owned && !fed);
                false
            }
        }
    }

    /// A client request that needs the tenant's registry (`list_sessions`) or a session the
    /// local registry does not know: read it first.
    pub(crate) fn registry_lookup(&mut self, deferred: Deferred, session_id: Option<&str>) {
        let tenant_id = deferred.ctx.identity.tenant_id.clone();
        match session_id {
            None => {
                let token = self.cluster_pending(Pending::List { then: deferred });
                self.cluster_command(ClusterCommand::RegistryList { token, tenant_id });
            }
            Some(session_id) => {
                let token = self.cluster_pending(Pending::Get {
                    session_id: session_id.to_owned(),
                    then: Some(deferred),
                });
                self.cluster_command(ClusterCommand::RegistryGet {
                    token,
                    tenant_id,
                    session_id: session_id.to_owned(),
                });
            }
        }
    }
}
