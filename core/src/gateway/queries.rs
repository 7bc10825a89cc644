//! Joining sessions and reading their past (PROTOCOL section 6): `join_session` with and without
//! resume, `leave_session`, `get_events`, `get_history`, the storage queries they wait for and
//! the routing of storage's completions (`handle_storage`).
//!
//! A resume waits in the session's replay slot (see `session::replay`) until storage answers;
//! the answer is matched by token, so a later join of the same connection cannot take it.

use std::time::Instant;

use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::Handled;
use crate::protocol::request::{GetEvents, GetHistory, JoinSession, RequestContext, SessionRef};
use crate::protocol::session_reply::{
    HistoryTurn, JoinSnapshot, SessionMeta, SessionReply, StoredEvents,
};
use crate::protocol::{encode_frame, ErrorCode};
use crate::storage::{
    QueryResult, StorageCommand, StorageCompletion, StorageError, StorageQuery, StoredEvent,
};
use crate::Gateway;

/// Most events `get_events` returns at once (PROTOCOL section 5).
pub const MAX_EVENTS_PER_READ: u64 = 1000;
/// Most turns `get_history` returns at once.
pub const MAX_TURNS_PER_READ: u64 = 100;

/// A storage query in flight and what to do with its answer.
pub(crate) enum PendingQuery {
    Replay {
        connection: ConnectionId,
        session_id: SessionId,
        request_id: Option<String>,
        after_seq: u64,
        up_to: u64,
        /// The session's picture measured with `up_to`.
        snapshot: Box<JoinSnapshot>,
    },
    Events {
        connection: ConnectionId,
        session_id: SessionId,
        request_id: Option<String>,
    },
    History {
        connection: ConnectionId,
        session_id: SessionId,
        request_id: Option<String>,
    },
    /// The session's earlier turns, for the transcript that prefixes its next prompt (its agent
    /// could neither resume nor load its ACP session; `session/memory.rs`). Nobody waits for a
    /// reply.
    Transcript { session_id: SessionId },
}

impl PendingQuery {
    pub(crate) fn connection(&self) -> Option<ConnectionId> {
        self.requester().map(|(connection, _)| connection)
    }

    /// Who asked, and with which `requestId` (nobody for the session's own queries).
    pub(crate) fn requester(&self) -> Option<(ConnectionId, Option<&str>)> {
        Some(match self {
            PendingQuery::Replay {
                connection,
                request_id,
                ..
            }
            | PendingQuery::Events {
                connection,
                request_id,
                ..
            }
            | PendingQuery::History {
                connection,
                request_id,
                ..
            } => (*connection, request_id.as_deref()),
            PendingQuery::Transcript { .. } => return None,
        })
    }

    pub(crate) fn session_id(&self) -> &SessionId {
        match self {
            PendingQuery::Replay { session_id, .. }
            | PendingQuery::Events { session_id, .. }
            | PendingQuery::History { session_id, .. }
            | PendingQuery::Transcript { session_id } => session_id,
        }
    }
}

impl Gateway {
    pub(crate) fn join_session(
        &mut self,
        ctx: &RequestContext,
        request: &JoinSession,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let id = ctx.connection;
        let replay_limit = self.config.replay_limit;
        // A re-join replaces the connection's subscription, so it is never subscribed twice; an
        // earlier join still waiting for its replay is answered as superseded.
        if let Some(superseded) = self.unsubscribe(&session_id, id, now) {
            self.abandon(
                superseded,
                ErrorCode::InvalidState,
                "superseded by a later join_session",
                now,
            );
        }
        // Deltas still being coalesced are published first: the snapshot's agent text is then
        // exactly the deltas up to `lastSeq`.
        self.drive(&session_id, now, |session, sctx, out| {
            session.flush_coalescer(sctx, out)
        });
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(crate::protocol::refusal::Refusal::session_not_found());
        };
        let snapshot = session.snapshot();
        let last_seq = session.record().last_seq;
        let epoch_now = session.record().epoch.as_str();
        let after_seq = request.after_seq;
        let resumable = after_seq.filter(|after| {
            request
                .epoch
                .as_deref()
                .is_none_or(|epoch| epoch == epoch_now)
                && *after <= last_seq
                && last_seq - after <= replay_limit
        });
        match (after_seq, resumable) {
            (Some(after), Some(_)) if after < last_seq => {
                let token = self.next_token();
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.open_replay(id, token);
                }
                self.pending_queries.insert(
                    token,
                    PendingQuery::Replay {
                        connection: id,
                        session_id: session_id.clone(),
                        request_id: ctx.request_id.clone(),
                        after_seq: after,
                        up_to: last_seq,
                        snapshot: Box::new(snapshot),
                    },
                );
                self.storage(StorageCommand::Query {
                    token,
                    query: StorageQuery::EventsAfter {
                        session_id: session_id.to_string(),
                        after_seq: after,
                        limit: (last_seq - after) as u32,
                    },
                });
            }
            (after_seq, resumable) => {
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.subscribe(id);
                }
                let recovered = after_seq.is_some() && resumable.is_some();
                let result = if after_seq.is_none() {
                    "live"
                } else if recovered {
                    "recovered"
                } else {
                    "reload"
                };
                self.metrics.count_replay(result);
                let request_id = ctx.request_id.as_deref();
                let events: &[StoredEvent] = &[];
                let replay = (events, last_seq, recovered);
                self.send_joined(id, &session_id, request_id, replay, &snapshot, now);
            }
        }
        if let Some(client) = self.client_state_mut(id) {
            client.join(&session_id);
        }
        self.reschedule_session(&session_id, now);
        Ok(())
    }

    pub(crate) fn leave_session(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let id = ctx.connection;
        if let Some(abandoned) = self.unsubscribe(&session_id, id, now) {
            self.abandon(
                abandoned,
                ErrorCode::InvalidState,
                "the session was left before its replay was read",
                now,
            );
        }
        if let Some(client) = self.client_state_mut(id) {
            client.leave(&session_id);
        }
        self.feed_unwatched(&session_id);
        let frame = encode_frame(&SessionReply::SessionLeft {
            request_id: ctx.request_id.as_deref(),
            session_id: &session_id,
        });
        self.send(id, frame, now);
        Ok(())
    }

    pub(crate) fn get_events(
        &mut self,
        ctx: &RequestContext,
        request: &GetEvents,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let limit = request
            .limit
            .unwrap_or(MAX_EVENTS_PER_READ)
            .clamp(1, MAX_EVENTS_PER_READ);
        // Deltas still being coalesced are published first, so the read sees them.
        self.drive(&session_id, now, |session, sctx, out| {
            session.flush_coalescer(sctx, out)
        });
        let token = self.next_token();
        self.pending_queries.insert(
            token,
            PendingQuery::Events {
                connection: ctx.connection,
                session_id: session_id.clone(),
                request_id: ctx.request_id.clone(),
            },
        );
        self.storage(StorageCommand::Query {
            token,
            query: StorageQuery::EventsAfter {
                session_id: session_id.to_string(),
                after_seq: request.after_seq,
                limit: limit as u32,
            },
        });
        Ok(())
    }

    pub(crate) fn get_history(
        &mut self,
        ctx: &RequestContext,
        request: &GetHistory,
        _now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let limit = request.limit.unwrap_or(50).clamp(1, MAX_TURNS_PER_READ);
        let token = self.next_token();
        self.pending_queries.insert(
            token,
            PendingQuery::History {
                connection: ctx.connection,
                session_id: session_id.clone(),
                request_id: ctx.request_id.clone(),
            },
        );
        self.storage(StorageCommand::Query {
            token,
            query: StorageQuery::History {
                session_id: session_id.to_string(),
                before_turn: request.before_turn.clone(),
                limit: limit as u32,
            },
        });
        Ok(())
    }

    /// Takes the connection out of the session's subscribers. A join of it still waiting for
    /// its replay is abandoned: its storage query is forgotten and its request returned, to be
    /// answered by the caller (nobody, when the connection is gone).
    pub(crate) fn unsubscribe(
        &mut self,
        session_id: &SessionId,
        id: ConnectionId,
        now: Instant,
    ) -> Option<PendingQuery> {
        let token = self.sessions.get_mut(session_id)?.unsubscribe(id);
        self.reschedule_session(session_id, now);
        token.and_then(|token| self.pending_queries.remove(&token))
    }

    /// Answers a request that will not get its result with an error instead, so every request
    /// with a `requestId` still gets exactly one reply.
    pub(crate) fn abandon(
        &mut self,
        pending: PendingQuery,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) {
        if let Some((connection, request_id)) = pending.requester() {
            self.send_error(connection, code, message, request_id, now);
        }
    }

    /// A completion from storage.
    pub fn handle_storage(&mut self, completion: StorageCompletion, now: Instant) {
        match completion {
            StorageCompletion::QueryResult { token, result } => {
                if let Some(pending) = self.pending_queries.remove(&token) {
                    self.query_answered(token, pending, result, now);
                }
            }
            StorageCompletion::WriteFailed {
                database, commands, ..
            } => {
                // The log of this session may now miss events that clients saw: a new epoch
                // makes every resume with the old one reload instead of trusting a gap.
                self.metrics.storage_write_failures += commands as u64;
                if let crate::storage::DatabaseId::Session { session_id } = database {
                    if let Some((id, _)) = self.sessions.get_key_value(session_id.as_str()) {
                        let id = id.clone();
                        let epoch = self.new_epoch();
                        if let Some(session) = self.sessions.get_mut(&id) {
                            session.set_epoch(epoch);
                        }
                        self.persist_session(&id);
                    }
                }
            }
            StorageCompletion::Committed { token, result } => {
                self.durable_committed(token, result, now);
            }
            StorageCompletion::Health { writable, reason } => {
                self.storage_health_changed(writable, reason, now)
            }
            StorageCompletion::Backlog { congested } => self.storage_congested = congested,
            StorageCompletion::Flushed { .. } | StorageCompletion::ShutdownComplete { .. } => {}
        }
    }

    fn query_answered(
        &mut self,
        token: u64,
        pending: PendingQuery,
        result: Result<QueryResult, StorageError>,
        now: Instant,
    ) {
        // The largest replies (a replay, a page of events) fit half the connection's outbound
        // budget, leaving room for the live events that follow; otherwise a client that reads
        // at full speed would be closed as a slow consumer.
        let budget = self.config.outbound_queue_limit / 2;
        match pending {
            PendingQuery::Replay {
                session_id,
                request_id,
                after_seq,
                up_to,
                snapshot,
                ..
            } => {
                let Some((connection, waiting)) = self
                    .sessions
                    .get_mut(&session_id)
                    .and_then(|session| session.close_replay(token))
                else {
                    return;
                };
                let events = match result {
                    Ok(QueryResult::Events { events, .. })
                        if is_contiguous(&events, after_seq, up_to)
                            && events.iter().map(|e| e.payload.len()).sum::<usize>() <= budget =>
                    {
                        Some(events)
                    }
                    _ => None,
                };
                // Never a partial fill: a replay that is not exactly (afterSeq, lastSeq] becomes
                // `recovered: false`, and the client reloads.
                let recovered = events.is_some();
                self.metrics
                    .count_replay(if recovered { "recovered" } else { "reload" });
                let replay = (events.as_deref().unwrap_or(&[]), up_to, recovered);
                let request_id = request_id.as_deref();
                self.send_joined(connection, &session_id, request_id, replay, &snapshot, now);
                for frame in waiting {
                    self.send(connection, frame, now);
                }
            }
            PendingQuery::Events {
                connection,
                session_id,
                request_id,
            } => match result {
                Ok(QueryResult::Events {
                    mut events,
                    mut has_more,
                }) => {
                    // At most half the outbound budget per read (always at least one event);
                    // `hasMore` tells the client to read on.
                    let mut bytes = 0;
                    let keep = events
                        .iter()
                        .take_while(|event| {
                            bytes += event.payload.len();
                            bytes <= budget
                        })
                        .count()
                        .max(1);
                    if keep < events.len() {
                        events.truncate(keep);
                        has_more = true;
                    }
                    let Some(session) = self.sessions.get(&session_id) else {
                        return;
                    };
                    let frame = encode_frame(&SessionReply::Events {
                        request_id: request_id.as_deref(),
                        session_id: &session_id,
                        epoch: &session.record().epoch,
                        events: StoredEvents(&events),
                        last_seq: session.record().last_seq,
                        has_more,
                    });
                    self.send(connection, frame, now);
                }
                _ => self.send_error(
                    connection,
                    ErrorCode::Internal,
                    "the events could not be read",
                    request_id.as_deref(),
                    now,
                ),
            },
            PendingQuery::History {
                connection,
                session_id,
                request_id,
            } => match result {
                Ok(QueryResult::History { turns, has_more }) => {
                    let frame = encode_frame(&SessionReply::History {
                        request_id: request_id.as_deref(),
                        session_id: &session_id,
                        turns: turns.iter().map(HistoryTurn::from).collect(),
                        has_more,
                    });
                    self.send(connection, frame, now);
                }
                _ => self.send_error(
                    connection,
                    ErrorCode::Internal,
                    "the history could not be read",
                    request_id.as_deref(),
                    now,
                ),
            },
            PendingQuery::Transcript { session_id } => {
                self.drive(&session_id, now, |session, ctx, out| {
                    session.transcript_loaded(ctx, result, out)
                });
            }
        }
    }

    /// `session_joined {session, epoch, lastSeq, recovered, events}` whose `lastSeq` is the one
    /// measured at the join (the frames that waited for a replay carry the events after it).
    /// The events are the stored payloads, byte for byte as they were published.
    /// `replay` is the replayed events, `lastSeq` and `recovered`; `snapshot` the session's
    /// picture measured with that `lastSeq`.
    fn send_joined(
        &mut self,
        id: ConnectionId,
        session_id: &SessionId,
        request_id: Option<&str>,
        (events, last_seq, recovered): (&[StoredEvent], u64, bool),
        snapshot: &JoinSnapshot,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let mut meta = SessionMeta::from(session.record());
        meta.last_seq = last_seq;
        let frame = encode_frame(&SessionReply::SessionJoined {
            request_id,
            epoch: meta.epoch,
            session: meta.clone(),
            last_seq,
            recovered,
            turn: snapshot.turn.as_ref(),
            questions: &snapshot.questions,
            agent: snapshot.agent.as_ref(),
            events: StoredEvents(events),
        });
        self.send(id, frame, now);
    }
}

/// Exactly the events `after + 1 ..= up_to`, in order.
fn is_contiguous(events: &[StoredEvent], after: u64, up_to: u64) -> bool {
    events.len() as u64 == up_to - after
        && events
            .iter()
            .enumerate()
            .all(|(index, event)| event.seq == after + 1 + index as u64)
}
