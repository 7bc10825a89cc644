//! Sessions: the in-memory registry (write-through to storage), event publishing with `seq`, the
//! state transitions, tenant notifications, session deadlines and the shutdown phases.

pub mod replay;
pub mod state;
pub mod turns;

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::acp::AcpClient;
use crate::ids::{AgentId, SessionId, TimerKey};
use crate::protocol::ErrorCode;
use crate::session::state::{self as session_state, SessionStatus};
use crate::storage::{SessionRecord, StorageCommand, StoredEvent, TurnRecord};
use crate::topic::Topic;
use crate::ws::encoder::{header_len, put_header, OpCode};
use crate::AgentCommand;
use crate::{ConnectionId, Event, Gateway};

/// How often stale entries of the failure limiter and the token cache are dropped.
pub(crate) const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A tenant: its notification topic (`tenant:{id}:sessions`) and its sessions, oldest first.
#[derive(Default)]
pub(crate) struct Tenant {
    pub(crate) topic: Topic,
    pub(crate) sessions: Vec<SessionId>,
}

pub(crate) struct Session {
    pub(crate) record: SessionRecord,
    /// Joined connections that receive live events (`session:{id}`).
    pub(crate) topic: Topic,
    /// Joined connections still waiting for their replay: live frames wait here for them, so
    /// they follow the replay with no gap and no duplicate.
    pub(crate) replaying: Vec<PendingReplay>,
    pub(crate) agent: Option<AgentLink>,
    pub(crate) turn: Option<Turn>,
    /// A turn to start as soon as the session can: a `run_turn` waiting for activation, or the
    /// text of a `steer` waiting for the cancelled turn to end.
    pub(crate) next_turn: Option<NextTurn>,
    pub(crate) coalescer: Option<Coalescer>,
    /// Since when the session is active with no joined connection and no turn.
    pub(crate) idle_since: Option<Instant>,
    /// When a stopping agent is given up on.
    pub(crate) stop_deadline: Option<Instant>,
    pub(crate) scheduled: Option<Instant>,
}

/// A join waiting for its replay to be read from storage.
pub(crate) struct PendingReplay {
    pub(crate) connection: ConnectionId,
    /// The storage query reading the replay: its answer is matched by token, never by
    /// connection, so a later join of the same connection cannot take it.
    pub(crate) token: u64,
    /// Live frames published since the join, sent after the replay.
    pub(crate) waiting: Vec<Bytes>,
}

pub(crate) struct AgentLink {
    pub(crate) id: AgentId,
    pub(crate) acp: AcpClient,
    /// The host reported the process started.
    pub(crate) spawned: bool,
    /// Why the host gave up on the process (`handle_agent_failed`), told in the turn's error
    /// once it exits.
    pub(crate) failure: Option<String>,
}

pub(crate) struct Turn {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) text: String,
    pub(crate) final_text: String,
    pub(crate) final_text_truncated: bool,
    pub(crate) tool_calls: Vec<Value>,
    pub(crate) usage: Option<Value>,
    pub(crate) started_at_ms: i64,
    /// `stop_turn`, `steer` or shutdown asked the agent to cancel.
    pub(crate) cancelling: bool,
}

pub(crate) struct NextTurn {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) text: String,
    /// Whom to answer `turn_accepted` once the agent process has started (activation only).
    pub(crate) reply_to: Option<(ConnectionId, Option<String>)>,
}

/// Deltas of one kind waiting to be published as one event.
pub(crate) struct Coalescer {
    pub(crate) kind: &'static str,
    pub(crate) turn_id: String,
    pub(crate) text: String,
    pub(crate) flush_at: Instant,
}

/// A storage query in flight and what to do with its answer.
pub(crate) enum PendingQuery {
    Replay {
        connection: ConnectionId,
        session_id: SessionId,
        request_id: Option<String>,
        after_seq: u64,
        up_to: u64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownPhase {
    Running,
    /// Running turns may finish until then.
    Grace {
        until: Instant,
    },
    /// Every connection has been told; agents are stopping.
    Closing,
}

/// SessionMeta on the wire (PROTOCOL section 5): a protocol type.
pub(crate) use crate::protocol::SessionMeta;

impl Session {
    pub(crate) fn new(record: SessionRecord) -> Self {
        Session {
            record,
            topic: Topic::default(),
            replaying: Vec::new(),
            agent: None,
            turn: None,
            next_turn: None,
            coalescer: None,
            idle_since: None,
            stop_deadline: None,
            scheduled: None,
        }
    }

    pub(crate) fn meta(&self) -> SessionMeta<'_> {
        SessionMeta::from(&self.record)
    }

    fn has_watchers(&self) -> bool {
        !self.topic.is_empty() || !self.replaying.is_empty()
    }
}

/// Builds a text frame whose payload is a JSON object, writing the payload behind room for the
/// header; returns the frame and the payload (a slice of the same allocation).
pub(crate) struct FrameWriter {
    buffer: BytesMut,
    first_field: bool,
}

const HEADER_ROOM: usize = 10;

impl FrameWriter {
    pub(crate) fn new(kind: &str) -> Self {
        let mut buffer = BytesMut::with_capacity(256);
        buffer.put_bytes(0, HEADER_ROOM);
        let mut writer = FrameWriter {
            buffer,
            first_field: true,
        };
        writer.buffer.put_u8(b'{');
        writer.field("type", kind);
        writer
    }

    fn key(&mut self, key: &str) {
        if !self.first_field {
            self.buffer.put_u8(b',');
        }
        self.first_field = false;
        self.raw_string(key);
        self.buffer.put_u8(b':');
    }

    fn raw_string(&mut self, text: &str) {
        // Serializing a string into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.buffer).writer(), text);
    }

    pub(crate) fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        self.key(key);
        let _ = serde_json::to_writer((&mut self.buffer).writer(), value);
        self
    }

    /// Adds a field whose value is already JSON text.
    pub(crate) fn raw_field(&mut self, key: &str, json: &[u8]) -> &mut Self {
        self.key(key);
        self.buffer.put_slice(json);
        self
    }

    /// Adds every field of `fields`.
    pub(crate) fn fields(&mut self, fields: &Map<String, Value>) -> &mut Self {
        for (key, value) in fields {
            self.field(key, value);
        }
        self
    }

    /// The frame, and its payload as a slice of the same bytes.
    pub(crate) fn finish(mut self) -> (Bytes, Bytes) {
        self.buffer.put_u8(b'}');
        let payload_len = self.buffer.len() - HEADER_ROOM;
        let header = header_len(payload_len);
        let mut head = BytesMut::with_capacity(header);
        put_header(&mut head, OpCode::Text, payload_len);
        self.buffer[HEADER_ROOM - header..HEADER_ROOM].copy_from_slice(&head);
        let frame = self.buffer.split_off(HEADER_ROOM - header).freeze();
        let payload = frame.slice(header..);
        (frame, payload)
    }
}

/// A session event's frame up to its own fields: `type`, `sessionId`, `seq`, `ts`, `turnId`.
fn event_writer(
    kind: &str,
    session_id: &str,
    seq: u64,
    ts: i64,
    turn_id: Option<&str>,
) -> FrameWriter {
    let mut writer = FrameWriter::new(kind);
    writer
        .field("sessionId", session_id)
        .field("seq", &seq)
        .field("ts", &ts);
    if let Some(turn_id) = turn_id {
        writer.field("turnId", turn_id);
    }
    writer
}

/// The code of the `turn_error` that closes a turn a crash cut off (PROTOCOL section 6).
pub const INTERRUPTED: &str = "INTERRUPTED";

/// The payload of a `turn_error` event exactly as the core publishes and stores one (the same
/// writer, the same field order), for storage recovery, which closes a turn a crash cut off.
pub fn turn_error_payload(
    session_id: &str,
    seq: u64,
    ts_ms: i64,
    turn_id: &str,
    code: &str,
    message: &str,
) -> Bytes {
    let mut writer = event_writer("turn_error", session_id, seq, ts_ms, Some(turn_id));
    writer.field("code", code).field("message", message);
    writer.finish().1
}

impl Gateway {
    // ------------------------------------------------------------ registry

    /// Loads the registry as storage recovered it (every session `inactive`).
    pub fn restore_sessions(&mut self, records: Vec<SessionRecord>) {
        for record in records {
            let id: SessionId = Arc::from(record.id.as_str());
            let tenant: Arc<str> = Arc::from(record.tenant_id.as_str());
            let entry = self.tenants.entry(tenant).or_default();
            if !entry.sessions.contains(&id) {
                entry.sessions.push(id.clone());
            }
            self.sessions.insert(id, Session::new(record));
        }
    }

    /// The session `session_id` of `tenant_id`, as a shared id; `None` also for another tenant's.
    pub(crate) fn find_session(&self, tenant_id: &str, session_id: &str) -> Option<SessionId> {
        let (id, session) = self.sessions.get_key_value(session_id)?;
        (session.record.tenant_id == tenant_id).then(|| id.clone())
    }

    pub(crate) fn storage(&mut self, command: StorageCommand) {
        self.events.push_back(Event::Storage(command));
    }

    pub(crate) fn agent_command(&mut self, command: AgentCommand) {
        self.events.push_back(Event::Agent(command));
    }

    pub(crate) fn next_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Persists the registry row of `session_id` as it is now.
    pub(crate) fn persist_session(&mut self, session_id: &SessionId) {
        if let Some(session) = self.sessions.get(session_id) {
            let record = session.record.clone();
            self.storage(StorageCommand::UpsertSession { session: record });
        }
    }

    /// Sends `kind {session}` to every connection of the session's tenant.
    /// Answers the requester with `kind {requestId, session}`, then sends `kind {session}` to
    /// the whole tenant (the requester included, PROTOCOL section 7).
    pub(crate) fn announce_session(
        &mut self,
        requester: ConnectionId,
        request_id: Option<&str>,
        session_id: &SessionId,
        kind: &str,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let mut writer = FrameWriter::new(kind);
        if let Some(request_id) = request_id {
            writer.field("requestId", request_id);
        }
        writer.field("session", &session.meta());
        let (frame, _) = writer.finish();
        self.send(requester, frame, now);
        self.notify_tenant_session(session_id, kind, now);
    }

    pub(crate) fn notify_tenant_session(
        &mut self,
        session_id: &SessionId,
        kind: &str,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let mut writer = FrameWriter::new(kind);
        writer.field("session", &session.meta());
        let (frame, _) = writer.finish();
        let tenant = session.record.tenant_id.clone();
        self.broadcast_tenant(&tenant, frame, now);
    }

    pub(crate) fn broadcast_tenant(&mut self, tenant_id: &str, frame: Bytes, now: Instant) {
        let Some(tenant) = self.tenants.get(tenant_id) else {
            return;
        };
        let mut subscribers = std::mem::take(&mut self.fanout_scratch);
        subscribers.extend_from_slice(tenant.topic.subscribers());
        self.fan_out(&mut subscribers, &frame, now);
    }

    /// Sends `frame` to each of `subscribers` (a copy of a topic's list: sending may close a
    /// connection, which unsubscribes it from the topic itself), then returns the scratch list.
    fn fan_out(&mut self, subscribers: &mut Vec<ConnectionId>, frame: &Bytes, now: Instant) {
        for connection in subscribers.drain(..) {
            self.send(connection, frame.clone(), now);
        }
        self.fanout_scratch = std::mem::take(subscribers);
    }

    // ------------------------------------------------------------ events

    /// Publishes one session event: assigns the next `seq`, persists it, and sends the same
    /// frame to every joined connection. `build` adds the fields after `turnId`.
    pub(crate) fn publish(
        &mut self,
        session_id: &SessionId,
        kind: &'static str,
        turn_id: Option<&str>,
        build: impl FnOnce(&mut FrameWriter),
        now: Instant,
    ) {
        if kind != "text_delta" && kind != "thinking_delta" {
            self.flush_coalescer(session_id, now);
        }
        self.publish_now(session_id, kind, turn_id, build, now);
    }

    fn publish_now(
        &mut self,
        session_id: &SessionId,
        kind: &'static str,
        turn_id: Option<&str>,
        build: impl FnOnce(&mut FrameWriter),
        now: Instant,
    ) {
        let ts = self.clock.unix_ms(now) as i64;
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.record.last_seq += 1;
        let seq = session.record.last_seq;
        let mut writer = event_writer(kind, session_id, seq, ts, turn_id);
        build(&mut writer);
        let (frame, payload) = writer.finish();
        for pending in &mut session.replaying {
            pending.waiting.push(frame.clone());
        }
        let mut subscribers = std::mem::take(&mut self.fanout_scratch);
        subscribers.extend_from_slice(session.topic.subscribers());
        self.metrics.events_published += 1;
        self.storage(StorageCommand::AppendEvent {
            session_id: session_id.to_string(),
            event: StoredEvent {
                seq,
                event_type: kind.to_string(),
                turn_id: turn_id.map(str::to_owned),
                payload,
                ts_ms: ts,
            },
        });
        self.fan_out(&mut subscribers, &frame, now);
    }

    /// A text or thinking delta: coalesced (when enabled) until the interval passes, the size
    /// threshold is reached, or another event is published.
    pub(crate) fn publish_delta(
        &mut self,
        session_id: &SessionId,
        kind: &'static str,
        turn_id: &str,
        text: &str,
        now: Instant,
    ) {
        if !self.config.coalesce_deltas {
            self.publish_now(
                session_id,
                kind,
                Some(turn_id),
                |w| {
                    w.field("text", text);
                },
                now,
            );
            return;
        }
        let interval = self.config.coalesce_interval;
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let same = session
            .coalescer
            .as_ref()
            .is_some_and(|c| c.kind == kind && c.turn_id == turn_id);
        if !same {
            self.flush_coalescer(session_id, now);
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let coalescer = session.coalescer.get_or_insert_with(|| Coalescer {
            kind,
            turn_id: turn_id.to_owned(),
            text: String::new(),
            flush_at: now + interval,
        });
        coalescer.text.push_str(text);
        if coalescer.text.len() >= self.config.coalesce_bytes {
            self.flush_coalescer(session_id, now);
        } else {
            self.reschedule_session(session_id, now);
        }
    }

    pub(crate) fn flush_coalescer(&mut self, session_id: &SessionId, now: Instant) {
        let Some(coalescer) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.coalescer.take())
        else {
            return;
        };
        let Coalescer {
            kind,
            turn_id,
            text,
            ..
        } = coalescer;
        self.publish_now(
            session_id,
            kind,
            Some(&turn_id),
            |w| {
                w.field("text", &text);
            },
            now,
        );
    }

    // ------------------------------------------------------------ state

    /// Moves the session to `to` if the table allows it: publishes `session_state`, persists the
    /// row, and tells the tenant. Returns false (and changes nothing) otherwise.
    pub(crate) fn transition(
        &mut self,
        session_id: &SessionId,
        to: SessionStatus,
        now: Instant,
    ) -> bool {
        let updated_at = self.clock.unix_ms(now) as i64;
        let Some(session) = self.sessions.get_mut(session_id) else {
            return false;
        };
        let from = session.record.status;
        if !session_state::allowed(from, to) {
            return false;
        }
        session.record.status = to;
        session.record.updated_at_ms = updated_at;
        self.publish(
            session_id,
            "session_state",
            None,
            |w| {
                w.field("status", to.as_str())
                    .field("previous", from.as_str());
            },
            now,
        );
        self.persist_session(session_id);
        self.notify_tenant_session(session_id, "session_updated", now);
        self.reschedule_session(session_id, now);
        true
    }

    pub(crate) fn status(&self, session_id: &SessionId) -> Option<SessionStatus> {
        self.sessions
            .get(session_id)
            .map(|session| session.record.status)
    }

    // ------------------------------------------------------------ turns' bookkeeping

    /// Persists the turn's history row as it stands.
    pub(crate) fn persist_turn(&mut self, session_id: &SessionId, completed: Option<(&str, i64)>) {
        let Some(turn) = self.sessions.get(session_id).and_then(|s| s.turn.as_ref()) else {
            return;
        };
        let record = TurnRecord {
            turn_id: turn.id.clone(),
            user_id: Some(turn.user_id.clone()),
            user_text: turn.text.clone(),
            final_text: completed.map(|_| turn.final_text.clone()),
            final_text_truncated: turn.final_text_truncated,
            stop_reason: completed.map(|(reason, _)| reason.to_owned()),
            usage_json: turn.usage.as_ref().map(Value::to_string),
            tool_calls_json: (!turn.tool_calls.is_empty())
                .then(|| Value::Array(turn.tool_calls.clone()).to_string()),
            started_at_ms: turn.started_at_ms,
            completed_at_ms: completed.map(|(_, at)| at),
        };
        self.storage(StorageCommand::UpsertTurn {
            session_id: session_id.to_string(),
            turn: record,
        });
    }

    // ------------------------------------------------------------ deadlines

    fn session_deadline(&self, session: &Session) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        };
        consider(session.coalescer.as_ref().map(|c| c.flush_at));
        consider(
            session
                .idle_since
                .map(|since| since + self.config.idle_session_timeout),
        );
        consider(session.stop_deadline);
        consider(
            session
                .agent
                .as_ref()
                .and_then(|agent| agent.acp.poll_timeout()),
        );
        earliest
    }

    pub(crate) fn reschedule_session(&mut self, session_id: &SessionId, now: Instant) {
        self.update_idle(session_id, now);
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let Some(deadline) = self.session_deadline(session) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(session_id) {
            self.timers.schedule(
                TimerKey::Session(session_id.clone()),
                &mut session.scheduled,
                deadline,
            );
        }
    }

    /// Starts or stops the idle clock: an active session with no joined connection and no turn
    /// is deactivated after `idle_session_timeout`.
    fn update_idle(&mut self, session_id: &SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let idle = matches!(
            session.record.status,
            SessionStatus::Ready | SessionStatus::Error
        ) && session.agent.is_some()
            && session.turn.is_none()
            && session.next_turn.is_none()
            && !session.has_watchers();
        if !idle {
            session.idle_since = None;
        } else if session.idle_since.is_none() {
            session.idle_since = Some(now);
        }
    }

    pub(crate) fn session_timers(&mut self, session_id: &SessionId, now: Instant) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session
            .coalescer
            .as_ref()
            .is_some_and(|c| c.flush_at <= now)
        {
            self.flush_coalescer(session_id, now);
        }
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session
            .agent
            .as_ref()
            .and_then(|a| a.acp.poll_timeout())
            .is_some_and(|at| at <= now)
        {
            if let Some(agent) = self
                .sessions
                .get_mut(session_id)
                .and_then(|s| s.agent.as_mut())
            {
                agent.acp.handle_timeout(now);
            }
            self.drain_agent(session_id, now);
        }
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session
            .idle_since
            .is_some_and(|since| since + self.config.idle_session_timeout <= now)
        {
            self.deactivate(session_id, now);
        }
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session.stop_deadline.is_some_and(|at| at <= now) {
            // The host never confirmed the exit; consider the process gone.
            if let Some(agent) = session.agent.as_ref().map(|agent| agent.id) {
                self.agent_gone(agent, now);
            }
        }
    }

    /// Stops the agent of an idle session: `deactivating`, then `inactive` once it exited.
    pub(crate) fn deactivate(&mut self, session_id: &SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.idle_since = None;
        let Some(agent) = session.agent.as_ref().map(|agent| agent.id) else {
            return;
        };
        if !self.transition(session_id, SessionStatus::Deactivating, now) {
            return;
        }
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.stop_deadline = Some(now + self.config.agent_stop_timeout);
        }
        self.agent_command(AgentCommand::Stop { agent });
        self.reschedule_session(session_id, now);
    }

    // ------------------------------------------------------------ shutdown

    /// PROTOCOL section 8: running turns get a grace period, then every connection is told and
    /// closed and every agent stopped.
    pub(crate) fn start_drain(&mut self, now: Instant) {
        let turns_running = self.sessions.values().any(|session| session.turn.is_some());
        if turns_running {
            let until = now + self.config.turn_grace;
            self.shutdown = ShutdownPhase::Grace { until };
            self.schedule_gateway_timer();
        } else {
            self.close_everything(now);
        }
    }

    /// The gateway's own deadlines: the end of the shutdown grace period, and the sweep that
    /// keeps the failure limiter and the token cache from holding stale entries (armed only
    /// while they hold any, so an idle gateway has no timer at all).
    pub(crate) fn gateway_timers(&mut self, now: Instant) {
        if let ShutdownPhase::Grace { until } = self.shutdown {
            if until <= now {
                self.end_grace(now);
            }
        }
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.auth_failures.sweep(now);
            let unix_ms = self.clock.unix_ms(now);
            let cached = self.auth.as_mut().map_or(0, |auth| {
                auth.purge_expired(unix_ms);
                auth.cached_tokens()
            });
            let holding = cached > 0 || self.auth_failures.tracked() > 0;
            self.next_sweep = holding.then_some(now + SWEEP_INTERVAL);
        }
        self.schedule_gateway_timer();
    }

    /// Arms the sweep (after an authentication attempt added an entry somewhere).
    pub(crate) fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
            self.schedule_gateway_timer();
        }
    }

    pub(crate) fn schedule_gateway_timer(&mut self) {
        let grace = match self.shutdown {
            ShutdownPhase::Grace { until } => Some(until),
            _ => None,
        };
        let at = match (self.next_sweep, grace) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(at) => at,
                None => return,
            },
        };
        self.timers
            .schedule(TimerKey::Gateway, &mut self.gateway_scheduled, at);
    }

    /// The grace period is over: cancel the turns still running, then close everything.
    fn end_grace(&mut self, now: Instant) {
        let running: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.turn.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in running {
            if let Some(agent) = self
                .sessions
                .get_mut(&session_id)
                .and_then(|s| s.agent.as_mut())
            {
                agent.acp.cancel(now);
            }
            self.drain_agent(&session_id, now);
            self.fail_turn(
                &session_id,
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
                false,
                now,
            );
        }
        if self.shutdown != ShutdownPhase::Closing {
            self.close_everything(now);
        }
    }

    /// A turn ended during the grace period: close once none is left.
    pub(crate) fn turn_ended_while_draining(&mut self, now: Instant) {
        if matches!(self.shutdown, ShutdownPhase::Grace { .. })
            && self.sessions.values().all(|s| s.turn.is_none())
        {
            self.close_everything(now);
        }
    }

    fn close_everything(&mut self, now: Instant) {
        self.shutdown = ShutdownPhase::Closing;
        // Agents are stopped on purpose: their sessions go through `deactivating` to `inactive`,
        // which clients see before `server_shutdown`.
        let active: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.agent.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in active {
            self.transition(&session_id, SessionStatus::Deactivating, now);
        }
        let agents: Vec<AgentId> = self.agents.keys().copied().collect();
        for agent in agents {
            self.agent_command(AgentCommand::Stop { agent });
        }
        self.close_all_connections(now);
    }

    /// Every session is flushed and every connection gone: the adapter may stop storage and exit.
    pub fn is_drained(&self) -> bool {
        self.shutdown == ShutdownPhase::Closing && self.connections.is_empty()
    }

    /// A new piece of work is refused while draining.
    pub(crate) fn refuse_while_draining(
        &mut self,
        connection: ConnectionId,
        request_id: Option<&str>,
        now: Instant,
    ) -> bool {
        if self.draining {
            self.send_error(
                connection,
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
                request_id,
                now,
            );
        }
        self.draining
    }
}
