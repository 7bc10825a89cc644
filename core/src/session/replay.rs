//! Joining sessions and reading their past (PROTOCOL section 6): `join_session` with and without
//! resume, `leave_session`, `get_events`, `get_history`, and the storage answers they wait for.
//!
//! A resume is read from storage, whose reads see every earlier write (read-your-writes), so the
//! replay holds every event up to the `lastSeq` measured at the join. Events published while the
//! read is in flight wait in the joining connection's slot of the session and follow the replay:
//! no gap and no duplicate.

use std::time::Instant;

use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{GetEvents, GetHistory, JoinSession, RequestContext, SessionRef};
use crate::protocol::ErrorCode;
use crate::session::{FrameWriter, PendingQuery, PendingReplay};
use crate::storage::{
    QueryResult, StorageCommand, StorageCompletion, StorageError, StorageQuery, StoredEvent,
    TurnRecord,
};
use crate::Gateway;

/// Most events `get_events` returns at once (PROTOCOL section 5).
pub const MAX_EVENTS_PER_READ: u64 = 1000;
/// Most turns `get_history` returns at once.
pub const MAX_TURNS_PER_READ: u64 = 100;

impl PendingQuery {
    pub(crate) fn connection(&self) -> ConnectionId {
        match self {
            PendingQuery::Replay { connection, .. }
            | PendingQuery::Events { connection, .. }
            | PendingQuery::History { connection, .. } => *connection,
        }
    }

    /// Who asked, and with which `requestId`.
    pub(crate) fn requester(&self) -> (ConnectionId, Option<&str>) {
        match self {
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
        }
    }

    pub(crate) fn session_id(&self) -> &SessionId {
        match self {
            PendingQuery::Replay { session_id, .. }
            | PendingQuery::Events { session_id, .. }
            | PendingQuery::History { session_id, .. } => session_id,
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
        let (id, request_id) = (ctx.connection, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let after_seq = request.after_seq;
        let epoch = request.epoch.as_deref();
        let replay_limit = self.config.replay_limit;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        let last_seq = session.record.last_seq;
        let epoch_now = session.record.epoch.clone();
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
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        let resumable = after_seq.filter(|after| {
            epoch.is_none_or(|epoch| epoch == epoch_now)
                && *after <= last_seq
                && last_seq - after <= replay_limit
        });
        match (after_seq, resumable) {
            (Some(after), Some(_)) if after < last_seq => {
                self.next_token += 1;
                let token = self.next_token;
                session.replaying.push(PendingReplay {
                    connection: id,
                    token,
                    waiting: Vec::new(),
                });
                self.pending_queries.insert(
                    token,
                    PendingQuery::Replay {
                        connection: id,
                        session_id: session_id.clone(),
                        request_id: request_id.map(str::to_owned),
                        after_seq: after,
                        up_to: last_seq,
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
                session.topic.subscribe(id);
                let recovered = after_seq.is_some() && resumable.is_some();
                let result = if after_seq.is_none() {
                    "live"
                } else if recovered {
                    "recovered"
                } else {
                    "reload"
                };
                self.metrics.count_replay(result);
                self.send_joined(id, &session_id, request_id, recovered, &[], now);
            }
        }
        self.remember_join(id, &session_id);
        self.reschedule_session(&session_id, now);
        Ok(())
    }

    fn remember_join(&mut self, id: ConnectionId, session_id: &SessionId) {
        if let Some(client) = self.client_state_mut(id) {
            if !client.joined.contains(session_id) {
                client.joined.push(session_id.clone());
            }
        }
    }

    /// `session_joined` for a join that replays nothing: `lastSeq` is the session's now.
    fn send_joined(
        &mut self,
        id: ConnectionId,
        session_id: &SessionId,
        request_id: Option<&str>,
        recovered: bool,
        events: &[StoredEvent],
        now: Instant,
    ) {
        let Some(last_seq) = self.sessions.get(session_id).map(|s| s.record.last_seq) else {
            return;
        };
        self.send_joined_at(id, session_id, request_id, events, last_seq, recovered, now);
    }

    pub(crate) fn leave_session(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        now: Instant,
    ) -> Handled {
        let (id, request_id) = (ctx.connection, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        if let Some(abandoned) = self.unsubscribe(&session_id, id, now) {
            self.abandon(
                abandoned,
                ErrorCode::InvalidState,
                "the session was left before its replay was read",
                now,
            );
        }
        if let Some(client) = self.client_state_mut(id) {
            client.joined.retain(|joined| *joined != session_id);
        }
        self.reply(
            id,
            "session_left",
            request_id,
            |w| {
                w.field("sessionId", &*session_id);
            },
            now,
        );
        Ok(())
    }

    pub(crate) fn get_events(
        &mut self,
        ctx: &RequestContext,
        request: &GetEvents,
        _now: Instant,
    ) -> Handled {
        let (id, request_id) = (ctx.connection, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let after_seq = request.after_seq;
        let limit = request
            .limit
            .unwrap_or(MAX_EVENTS_PER_READ)
            .clamp(1, MAX_EVENTS_PER_READ);
        // Deltas still being coalesced are published first, so the read sees them.
        self.flush_coalescer(&session_id, _now);
        let token = self.next_token();
        self.pending_queries.insert(
            token,
            PendingQuery::Events {
                connection: id,
                session_id: session_id.clone(),
                request_id: request_id.map(str::to_owned),
            },
        );
        self.storage(StorageCommand::Query {
            token,
            query: StorageQuery::EventsAfter {
                session_id: session_id.to_string(),
                after_seq,
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
        let (id, request_id) = (ctx.connection, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let before_turn = request.before_turn.clone();
        let limit = request.limit.unwrap_or(50).clamp(1, MAX_TURNS_PER_READ);
        let token = self.next_token();
        self.pending_queries.insert(
            token,
            PendingQuery::History {
                connection: id,
                session_id: session_id.clone(),
                request_id: request_id.map(str::to_owned),
            },
        );
        self.storage(StorageCommand::Query {
            token,
            query: StorageQuery::History {
                session_id: session_id.to_string(),
                before_turn,
                limit: limit as u32,
            },
        });
        Ok(())
    }

    /// A completion from storage.
    pub fn handle_storage(&mut self, completion: StorageCompletion, now: Instant) {
        self.last_input = now;
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
                            session.record.epoch = epoch;
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
        match pending {
            PendingQuery::Replay {
                connection,
                session_id,
                request_id,
                after_seq,
                up_to,
            } => {
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return;
                };
                let Some(index) = session.replaying.iter().position(|p| p.token == token) else {
                    return;
                };
                let waiting = session.replaying.remove(index).waiting;
                session.topic.subscribe(connection);
                // A replay must also fit the connection's outbound budget (half of it, leaving
                // room for the live events that follow), or it would close a client that reads
                // at full speed as a slow consumer.
                let budget = self.config.outbound_queue_limit / 2;
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
                self.send_joined_at(
                    connection,
                    &session_id,
                    request_id.as_deref(),
                    events.as_deref().unwrap_or(&[]),
                    up_to,
                    recovered,
                    now,
                );
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
                    let budget = self.config.outbound_queue_limit / 2;
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
                    let mut writer = FrameWriter::new("events");
                    if let Some(request_id) = &request_id {
                        writer.field("requestId", request_id);
                    }
                    writer
                        .field("sessionId", &*session_id)
                        .field("epoch", &session.record.epoch)
                        .raw_field("events", &join_payloads(&events))
                        .field("lastSeq", &session.record.last_seq)
                        .field("hasMore", &has_more);
                    let (frame, _) = writer.finish();
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
                    let turns: Vec<serde_json::Value> = turns.iter().map(turn_json).collect();
                    let mut writer = FrameWriter::new("history");
                    if let Some(request_id) = &request_id {
                        writer.field("requestId", request_id);
                    }
                    writer
                        .field("sessionId", &*session_id)
                        .field("turns", &turns)
                        .field("hasMore", &has_more);
                    let (frame, _) = writer.finish();
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
        }
    }

    /// `session_joined {session, epoch, lastSeq, recovered, events}` whose `lastSeq` is the one
    /// measured at the join (the frames that waited for a replay carry the events after it).
    /// The events are the stored payloads, byte for byte as they were published.
    #[allow(clippy::too_many_arguments)]
    fn send_joined_at(
        &mut self,
        id: ConnectionId,
        session_id: &SessionId,
        request_id: Option<&str>,
        events: &[StoredEvent],
        last_seq: u64,
        recovered: bool,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let mut meta = session.record.clone();
        meta.last_seq = last_seq;
        let mut writer = FrameWriter::new("session_joined");
        if let Some(request_id) = request_id {
            writer.field("requestId", request_id);
        }
        writer
            .field("session", &crate::session::SessionMeta::from(&meta))
            .field("epoch", &meta.epoch)
            .field("lastSeq", &last_seq)
            .field("recovered", &recovered)
            .raw_field("events", &join_payloads(events));
        let (frame, _) = writer.finish();
        self.send(id, frame, now);
    }
}

/// The events' stored JSON texts as one JSON array, byte for byte.
fn join_payloads(events: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + events.iter().map(|e| e.payload.len() + 1).sum::<usize>());
    out.push(b'[');
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.payload);
    }
    out.push(b']');
    out
}

/// Exactly the events `after + 1 ..= up_to`, in order.
fn is_contiguous(events: &[StoredEvent], after: u64, up_to: u64) -> bool {
    events.len() as u64 == up_to - after
        && events
            .iter()
            .enumerate()
            .all(|(index, event)| event.seq == after + 1 + index as u64)
}

/// A turn of `get_history` on the wire.
fn turn_json(turn: &TurnRecord) -> serde_json::Value {
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    };
    serde_json::json!({
        "turnId": turn.turn_id,
        "userId": turn.user_id,
        "userText": turn.user_text,
        "finalText": turn.final_text,
        "finalTextTruncated": turn.final_text_truncated,
        "toolCalls": parse(&turn.tool_calls_json).unwrap_or_else(|| serde_json::Value::Array(Vec::new())),
        "stopReason": turn.stop_reason,
        "usage": parse(&turn.usage_json),
        "startedAt": turn.started_at_ms,
        "completedAt": turn.completed_at_ms,
    })
}
