//! The simulated storage: a model of what the real one keeps, applying commands in the order the
//! core issues them, as the real writer commits them.

use std::collections::BTreeMap;

use crate::storage::{
    QueryResult, SessionRecord, SessionStatus, StorageCommand, StorageCompletion, StorageError,
    StorageQuery, StoredEvent, TurnRecord,
};

/// The simulated storage: the model of what the real one keeps.
#[derive(Debug, Default, Clone)]
pub struct SimStore {
    /// The registry, by session id.
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Each session's event log, in `seq` order.
    pub events: BTreeMap<String, Vec<StoredEvent>>,
    /// Each session's turns, oldest first.
    pub turns: BTreeMap<String, Vec<TurnRecord>>,
    /// Session members: `(session id, user id)` to role.
    pub members: BTreeMap<(String, String), String>,
    /// Appends whose `seq` did not continue the session's log (a gap or a duplicate). They are
    /// not applied; a correct core never produces one, and tests assert this stays empty.
    pub rejected_appends: Vec<(String, u64)>,
    /// Registry writes fail (as a full disk would): session upserts and deletes are not applied
    /// and `CommitNow` answers an error.
    pub fail_registry: bool,
}

impl SimStore {
    /// Executes one command; a query or flush yields its completion.
    pub fn apply(&mut self, command: StorageCommand) -> Option<StorageCompletion> {
        match command {
            StorageCommand::UpsertSession { .. } | StorageCommand::DeleteSession { .. }
                if self.fail_registry =>
            {
                None
            }
            StorageCommand::CommitNow { token, database } => Some(StorageCompletion::Committed {
                token,
                result: if self.fail_registry {
                    Err(StorageError::Sqlite {
                        database: database.to_string(),
                        message: "database or disk is full".into(),
                    })
                } else {
                    Ok(())
                },
            }),
            StorageCommand::UpsertSession { session } => {
                self.sessions.insert(session.id.clone(), session);
                None
            }
            StorageCommand::DeleteSession { session_id, .. } => {
                self.sessions.remove(&session_id);
                self.events.remove(&session_id);
                self.turns.remove(&session_id);
                None
            }
            StorageCommand::AppendEvent { session_id, event } => {
                let log = self.events.entry(session_id.clone()).or_default();
                if log.last().map_or(0, |last| last.seq) + 1 == event.seq {
                    log.push(event);
                } else {
                    self.rejected_appends.push((session_id, event.seq));
                }
                None
            }
            StorageCommand::UpsertTurn { session_id, turn } => {
                let turns = self.turns.entry(session_id).or_default();
                match turns.iter_mut().find(|t| t.turn_id == turn.turn_id) {
                    Some(existing) => *existing = turn,
                    None => turns.push(turn),
                }
                None
            }
            StorageCommand::UpsertMember { member } => {
                self.members
                    .insert((member.tenant_id, member.user_id), member.role);
                None
            }
            StorageCommand::DeleteMember { tenant_id, user_id } => {
                self.members.remove(&(tenant_id, user_id));
                None
            }
            StorageCommand::Flush { token } => Some(StorageCompletion::Flushed { token }),
            StorageCommand::Shutdown { token } => {
                Some(StorageCompletion::ShutdownComplete { token })
            }
            StorageCommand::Query { token, query } => {
                let result = match query {
                    StorageQuery::ListSessions {
                        tenant_id,
                        include_archived,
                    } => QueryResult::Sessions(
                        self.sessions
                            .values()
                            .filter(|s| {
                                s.tenant_id == tenant_id && (include_archived || !s.archived)
                            })
                            .cloned()
                            .collect(),
                    ),
                    StorageQuery::LoadSession {
                        tenant_id,
                        session_id,
                    } => QueryResult::Session(
                        self.sessions
                            .get(&session_id)
                            .filter(|s| s.tenant_id == tenant_id)
                            .cloned(),
                    ),
                    StorageQuery::EventsAfter {
                        session_id,
                        after_seq,
                        limit,
                    } => {
                        let log = self
                            .events
                            .get(&session_id)
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        let after: Vec<StoredEvent> =
                            log.iter().filter(|e| e.seq > after_seq).cloned().collect();
                        let has_more = after.len() > limit as usize;
                        QueryResult::Events {
                            events: after.into_iter().take(limit as usize).collect(),
                            has_more,
                        }
                    }
                    StorageQuery::History {
                        session_id,
                        before_turn,
                        limit,
                    } => {
                        let turns = self.turns.get(&session_id).cloned().unwrap_or_default();
                        let end = before_turn
                            .and_then(|before| turns.iter().position(|t| t.turn_id == before))
                            .unwrap_or(turns.len());
                        let start = end.saturating_sub(limit as usize);
                        QueryResult::History {
                            turns: turns[start..end].to_vec(),
                            has_more: start > 0,
                        }
                    }
                };
                Some(StorageCompletion::QueryResult {
                    token,
                    result: Ok(result),
                })
            }
        }
    }

    /// What storage recovery does on start: every session inactive, its `last_seq` from its log,
    /// and after an unclean stop a new epoch for every session.
    pub fn recover(&mut self, clean: bool, epoch_seed: u64) -> Vec<SessionRecord> {
        let mut counter = epoch_seed;
        for record in self.sessions.values_mut() {
            record.status = SessionStatus::Inactive;
            record.last_seq = self
                .events
                .get(&record.id)
                .and_then(|log| log.last())
                .map_or(0, |e| e.seq);
            if !clean {
                counter += 1;
                record.epoch = format!("{}-r{counter}", record.epoch);
            }
        }
        self.sessions.values().cloned().collect()
    }
}
