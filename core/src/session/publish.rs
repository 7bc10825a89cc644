//! Publishing: every event gets the session's next `seq`, is encoded once (the frame for the
//! subscribers and the joins waiting for their replay, the payload for storage), and text and
//! thinking deltas are coalesced. Also the state transitions (each one an event, a registry
//! write and a tenant notification) and the session's deadlines.

use std::time::Instant;

use crate::protocol::encode_frame_with_payload;
use crate::protocol::event::{Delta, EventBody, SessionEvent, SessionState};
use crate::protocol::ServerMessage;
use crate::session::state::{self, SessionStatus};
use crate::session::{Session, SessionContext, SessionOutput};
use crate::storage::{StorageCommand, StoredEvent, TurnRecord};
use crate::AgentCommand;

/// Deltas of one kind waiting to be published as one event.
pub(crate) struct Coalescer {
    thinking: bool,
    turn_id: String,
    text: String,
    flush_at: Instant,
}

impl Session {
    /// Publishes one event; a non-delta publishes the coalesced deltas first.
    pub(super) fn publish(
        &mut self,
        ctx: &SessionContext<'_>,
        turn_id: Option<&str>,
        body: EventBody<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        if !body.is_delta() {
            self.flush_coalescer(ctx, out);
        }
        self.publish_now(ctx, turn_id, body, out);
    }

    /// Assigns the next `seq`, stores the event, holds it for the joins waiting for their
    /// replay and publishes it to the subscribers.
    fn publish_now(
        &mut self,
        ctx: &SessionContext<'_>,
        turn_id: Option<&str>,
        body: EventBody<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        self.record.last_seq += 1;
        let seq = self.record.last_seq;
        let kind = body.kind();
        let event = SessionEvent::new(&self.record.id, seq, ctx.unix_ms, turn_id, body);
        let (frame, payload) = encode_frame_with_payload(&event);
        for slot in &mut self.replaying {
            slot.hold(frame.clone());
        }
        out.push(SessionOutput::Storage(StorageCommand::AppendEvent {
            session_id: self.record.id.clone(),
            event: StoredEvent {
                seq,
                event_type: kind.to_string(),
                turn_id: turn_id.map(str::to_owned),
                payload,
                ts_ms: ctx.unix_ms,
            },
        }));
        out.push(SessionOutput::Publish(frame));
    }

    /// A text or thinking delta: coalesced (when enabled) until the interval passes, the size
    /// threshold is reached, or another event is published.
    pub(super) fn publish_delta(
        &mut self,
        ctx: &SessionContext<'_>,
        thinking: bool,
        turn_id: &str,
        text: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        let body = |text| {
            if thinking {
                EventBody::ThinkingDelta(Delta { text })
            } else {
                EventBody::TextDelta(Delta { text })
            }
        };
        if !ctx.config.coalesce_deltas {
            self.publish_now(ctx, Some(turn_id), body(text), out);
            return;
        }
        let same = self
            .coalescer
            .as_ref()
            .is_some_and(|c| c.thinking == thinking && c.turn_id == turn_id);
        if !same {
            self.flush_coalescer(ctx, out);
        }
        let coalescer = self.coalescer.get_or_insert_with(|| Coalescer {
            thinking,
            turn_id: turn_id.to_owned(),
            text: String::new(),
            flush_at: ctx.now + ctx.config.coalesce_interval,
        });
        coalescer.text.push_str(text);
        if coalescer.text.len() >= ctx.config.coalesce_bytes {
            self.flush_coalescer(ctx, out);
        }
    }

    /// Publishes the coalesced deltas, if any.
    pub(crate) fn flush_coalescer(
        &mut self,
        ctx: &SessionContext<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(Coalescer {
            thinking,
            turn_id,
            text,
            ..
        }) = self.coalescer.take()
        else {
            return;
        };
        let body = if thinking {
            EventBody::ThinkingDelta(Delta { text: &text })
        } else {
            EventBody::TextDelta(Delta { text: &text })
        };
        self.publish_now(ctx, Some(&turn_id), body, out);
    }

    // ------------------------------------------------------------ state

    /// Moves the session to `to` if the table allows it: publishes `session_state`, persists the
    /// row, and tells the tenant. Returns false (and changes nothing) otherwise.
    pub(crate) fn transition(
        &mut self,
        ctx: &SessionContext<'_>,
        to: SessionStatus,
        out: &mut Vec<SessionOutput>,
    ) -> bool {
        let from = self.record.status;
        if !state::allowed(from, to) {
            return false;
        }
        self.record.status = to;
        self.record.updated_at_ms = ctx.unix_ms;
        let body = EventBody::SessionState(SessionState {
            status: to.as_str(),
            previous: from.as_str(),
        });
        self.publish(ctx, None, body, out);
        out.push(SessionOutput::Storage(StorageCommand::UpsertSession {
            session: self.record.clone(),
        }));
        let notification = ServerMessage::SessionUpdated {
            request_id: None,
            session: self.meta(),
        };
        out.push(SessionOutput::NotifyTenant(crate::protocol::encode_frame(
            &notification,
        )));
        self.update_idle(ctx.now);
        true
    }

    /// Persists the turn's history row as it stands.
    pub(super) fn persist_turn(
        &self,
        completed: Option<(&str, i64)>,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let record = TurnRecord {
            turn_id: turn.id.clone(),
            user_id: Some(turn.user_id.clone()),
            user_text: turn.text.clone(),
            final_text: completed.map(|_| turn.final_text.clone()),
            final_text_truncated: turn.final_text_truncated,
            stop_reason: completed.map(|(reason, _)| reason.to_owned()),
            usage_json: turn.usage.as_ref().map(serde_json::Value::to_string),
            tool_calls_json: (!turn.tool_calls.is_empty())
                .then(|| serde_json::Value::Array(turn.tool_calls.clone()).to_string()),
            started_at_ms: turn.started_at_ms,
            completed_at_ms: completed.map(|(_, at)| at),
            content_json: (!turn.content.is_empty())
                .then(|| serde_json::to_string(&turn.content).ok())
                .flatten(),
        };
        out.push(SessionOutput::Storage(StorageCommand::UpsertTurn {
            session_id: self.record.id.clone(),
            turn: record,
        }));
    }

    // ------------------------------------------------------------ deadlines

    /// The earliest moment something must happen to this session.
    pub(crate) fn poll_timeout(&self, config: &crate::config::CoreConfig) -> Option<Instant> {
        [
            self.coalescer.as_ref().map(|c| c.flush_at),
            self.idle_since
                .map(|since| since + config.idle_session_timeout),
            self.stop_deadline,
            self.turn_deadline(),
            self.agent
                .as_ref()
                .and_then(|agent| agent.acp.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Starts or stops the idle clock: an active session with no joined connection and no turn
    /// is deactivated after `idle_session_timeout`.
    pub(crate) fn update_idle(&mut self, now: Instant) {
        let idle = matches!(
            self.record.status,
            SessionStatus::Ready | SessionStatus::Error
        ) && self.agent.is_some()
            && self.turn.is_none()
            && self.next_turn.is_none()
            && self.topic.is_empty()
            && self.replaying.is_empty();
        if !idle {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// Deadlines up to `ctx.now` have passed.
    pub(crate) fn handle_timeout(
        &mut self,
        ctx: &SessionContext<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        let now = ctx.now;
        if self.coalescer.as_ref().is_some_and(|c| c.flush_at <= now) {
            self.flush_coalescer(ctx, out);
        }
        if let Some(agent) = self
            .agent
            .as_mut()
            .filter(|a| a.acp.poll_timeout().is_some_and(|at| at <= now))
        {
            agent.acp.handle_timeout(now);
            self.drain_agent(ctx, out);
        }
        if self.turn_deadline().is_some_and(|at| at <= now) {
            self.turn_timeout(ctx, out);
        }
        if self
            .idle_since
            .is_some_and(|since| since + ctx.config.idle_session_timeout <= now)
        {
            self.deactivate(ctx, out);
        }
        if self.stop_deadline.is_some_and(|at| at <= now) {
            // The host never confirmed the exit; consider the process gone.
            if let Some(agent) = self.agent_id() {
                out.push(SessionOutput::AgentUnlinked(agent));
                self.agent_gone(ctx, agent, out);
            }
        }
        self.update_idle(now);
    }

    /// Stops the agent of an idle session: `deactivating`, then `inactive` once it exited.
    pub(crate) fn deactivate(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        self.idle_since = None;
        let Some(agent) = self.agent_id() else {
            return;
        };
        if !self.transition(ctx, SessionStatus::Deactivating, out) {
            return;
        }
        self.stop_deadline = Some(ctx.now + ctx.config.agent_stop_timeout);
        out.push(SessionOutput::Agent(AgentCommand::Stop { agent }));
        self.update_idle(ctx.now);
    }

    /// The gateway closes: a session with an agent goes to `deactivating` (the gateway stops
    /// every agent itself).
    pub(crate) fn begin_closing(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        if self.agent.is_some() {
            self.transition(ctx, SessionStatus::Deactivating, out);
        }
    }
}
