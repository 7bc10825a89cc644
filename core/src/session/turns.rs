//! Turns (PROTOCOL sections 5, 6 and 9): `run_turn`, `steer`, `stop_turn`, `answer_question`, and
//! everything that comes back from the agent process through the session's ACP client.
//!
//! A turn's events come in this order: `session_state` `activating` and `ready` (only when the
//! session was not active), `session_state` `running`, `turn_started`, the turn's events, then
//! `turn_complete` or `turn_error`, then `session_state` `ready` (or `error`).

use std::time::Instant;

use serde_json::Value;

use crate::acp::{AcpClient, AcpError, AgentEvent};
use crate::ids::AgentId;
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{AnswerQuestion, RequestContext, RunTurn, SessionRef};
use crate::protocol::ErrorCode;
use crate::session::state::{self as session_state, SessionStatus};
use crate::session::{AgentLink, NextTurn, Turn};
use crate::AgentCommand;
use crate::Gateway;

/// `turn_complete.finalText` is cut at this many bytes (PROTOCOL section 5).
pub const FINAL_TEXT_LIMIT: usize = 64 * 1024;

impl Gateway {
    pub(crate) fn run_turn(
        &mut self,
        ctx: &RequestContext,
        request: &RunTurn,
        steer: bool,
        now: Instant,
    ) -> Handled {
        let (id, identity, request_id) = (ctx.connection, &ctx.identity, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let text = request.text.as_str();
        if self.refuse_while_draining(id, request_id, now) {
            return Ok(());
        }
        self.refuse_new_work_for_storage()?;
        let turn_id = crate::rng::format_uuid(self.rng.uuid_v4());
        let next = NextTurn {
            id: turn_id.clone(),
            user_id: identity.user_id.clone(),
            text: text.to_owned(),
            reply_to: None,
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        if steer && session.turn.is_some() {
            // Cancel the running turn; the steering text is prompted as soon as it has ended.
            session.next_turn = Some(next);
            self.cancel_turn(&session_id, now);
            self.turn_accepted(id, &session_id, &turn_id, request_id, now);
            return Ok(());
        }
        let status = session.record.status;
        if session.turn.is_some()
            || session.next_turn.is_some()
            || !session_state::accepts_turn(status)
        {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                format!("the session is {}", status.as_str()),
            ));
        }
        if status == SessionStatus::Ready && session.agent.is_some() {
            self.turn_accepted(id, &session_id, &turn_id, request_id, now);
            self.start_turn(&session_id, next, now);
        } else {
            self.activate(
                &session_id,
                NextTurn {
                    reply_to: Some((id, request_id.map(str::to_owned))),
                    ..next
                },
                now,
            );
        }
        Ok(())
    }

    fn turn_accepted(
        &mut self,
        id: ConnectionId,
        session_id: &SessionId,
        turn_id: &str,
        request_id: Option<&str>,
        now: Instant,
    ) {
        self.reply(
            id,
            "turn_accepted",
            request_id,
            |w| {
                w.field("sessionId", &**session_id).field("turnId", turn_id);
            },
            now,
        );
    }

    /// Starts the session's agent process; the turn follows once it is ready.
    fn activate(&mut self, session_id: &SessionId, next: NextTurn, now: Instant) {
        if let Some(old) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.agent.take())
        {
            // An agent left over from an error: stop it before starting a fresh one.
            self.agents.remove(&old.id);
            self.agent_command(AgentCommand::Stop { agent: old.id });
        }
        if !self.transition(session_id, SessionStatus::Activating, now) {
            return;
        }
        self.next_agent += 1;
        let agent = AgentId(self.next_agent);
        self.agents.insert(agent, session_id.clone());
        let acp = AcpClient::new(self.config.acp.clone());
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.agent = Some(AgentLink {
            id: agent,
            acp,
            spawned: false,
            failure: None,
        });
        session.next_turn = Some(next);
        let agent_type = session.record.agent_type.clone();
        let tenant_id = session.record.tenant_id.clone();
        self.metrics.agents_started += 1;
        self.agent_command(AgentCommand::Spawn {
            agent,
            session_id: session_id.to_string(),
            tenant_id,
            agent_type,
        });
    }

    fn start_turn(&mut self, session_id: &SessionId, next: NextTurn, now: Instant) {
        if !self.transition(session_id, SessionStatus::Running, now) {
            return;
        }
        let started_at_ms = self.clock.unix_ms(now) as i64;
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.turn = Some(Turn {
            id: next.id.clone(),
            user_id: next.user_id.clone(),
            text: next.text.clone(),
            final_text: String::new(),
            final_text_truncated: false,
            tool_calls: Vec::new(),
            usage: None,
            started_at_ms,
            cancelling: false,
        });
        self.metrics.turns_started += 1;
        self.publish(
            session_id,
            "turn_started",
            Some(&next.id),
            |w| {
                w.field("text", &next.text).field("userId", &next.user_id);
            },
            now,
        );
        self.persist_turn(session_id, None);
        let prompted = match self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.agent.as_mut())
        {
            Some(agent) => agent.acp.prompt(&next.text, now),
            None => Err(AcpError::NotReady),
        };
        if let Err(error) = prompted {
            self.fail_turn(
                session_id,
                ErrorCode::AgentUnavailable,
                &format!("the agent cannot take a prompt: {error}"),
                true,
                now,
            );
        }
        self.drain_agent(session_id, now);
    }

    /// Asks the agent to cancel the running turn; it ends with `stopReason: "cancelled"`.
    fn cancel_turn(&mut self, session_id: &SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let Some(turn) = session.turn.as_mut() else {
            return;
        };
        if turn.cancelling {
            return;
        }
        turn.cancelling = true;
        if let Some(agent) = session.agent.as_mut() {
            agent.acp.cancel(now);
        }
        self.drain_agent(session_id, now);
    }

    pub(crate) fn stop_turn(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        now: Instant,
    ) -> Handled {
        let (id, request_id) = (ctx.connection, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let Some(turn_id) = self
            .sessions
            .get(&session_id)
            .and_then(|s| s.turn.as_ref())
            .map(|t| t.id.clone())
        else {
            return Err(Refusal::new(ErrorCode::InvalidState, "no turn is running"));
        };
        self.reply(
            id,
            "turn_stopping",
            request_id,
            |w| {
                w.field("sessionId", &*session_id).field("turnId", &turn_id);
            },
            now,
        );
        self.cancel_turn(&session_id, now);
        Ok(())
    }

    pub(crate) fn answer_question(
        &mut self,
        ctx: &RequestContext,
        request: &AnswerQuestion,
        now: Instant,
    ) -> Handled {
        let (id, identity, request_id) = (ctx.connection, &ctx.identity, ctx.request_id.as_deref());
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let question_id = request.question_id.as_str();
        let option_id = request.option_id.as_deref();
        let cancelled = request.cancelled.unwrap_or(false);
        if option_id.is_some() == cancelled {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "give either optionId or cancelled: true",
            ));
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        let (Some(turn), Some(agent)) = (session.turn.as_ref(), session.agent.as_mut()) else {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "no question is pending",
            ));
        };
        let turn_id = turn.id.clone();
        match agent.acp.answer_permission(question_id, option_id) {
            Ok(()) => {}
            Err(AcpError::UnknownOption) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    "optionId is not one of the question's options",
                ))
            }
            Err(_) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidState,
                    "the question is not pending (answered already?)",
                ))
            }
        }
        self.reply(
            id,
            "question_answered",
            request_id,
            |w| {
                w.field("sessionId", &*session_id)
                    .field("questionId", question_id);
            },
            now,
        );
        self.publish(
            &session_id,
            "permission_resolved",
            Some(&turn_id),
            |w| {
                w.field("questionId", question_id);
                match option_id {
                    Some(option_id) => w.field("optionId", option_id),
                    None => w.field("cancelled", &true),
                };
                w.field("userId", &identity.user_id);
            },
            now,
        );
        self.resume_running(&session_id, now);
        self.drain_agent(&session_id, now);
        Ok(())
    }

    /// Back to `running` once no question is pending.
    fn resume_running(&mut self, session_id: &SessionId, now: Instant) {
        let pending = self
            .sessions
            .get(session_id)
            .and_then(|s| s.agent.as_ref())
            .is_some_and(|a| a.acp.pending_questions().next().is_some());
        if self.status(session_id) == Some(SessionStatus::Waiting) && !pending {
            self.transition(session_id, SessionStatus::Running, now);
        }
    }

    // ------------------------------------------------------------ agent host inputs

    /// The agent process of `agent` started; `workspace` is its working directory.
    pub fn handle_agent_spawned(&mut self, agent: AgentId, workspace: &str, now: Instant) {
        self.last_input = now;
        let Some(session_id) = self.agents.get(&agent).cloned() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let Some(link) = session.agent.as_mut().filter(|link| link.id == agent) else {
            return;
        };
        link.spawned = true;
        link.acp.start(workspace, now);
        let reply_to = session
            .next_turn
            .as_mut()
            .and_then(|next| next.reply_to.take().map(|to| (to, next.id.clone())));
        if let Some(((connection, request_id), turn_id)) = reply_to {
            self.turn_accepted(
                connection,
                &session_id,
                &turn_id,
                request_id.as_deref(),
                now,
            );
        }
        self.drain_agent(&session_id, now);
    }

    /// The agent process of `agent` could not be started (unknown command, too many processes).
    pub fn handle_agent_spawn_failed(&mut self, agent: AgentId, reason: &str, now: Instant) {
        self.last_input = now;
        let Some(session_id) = self.agents.remove(&agent) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if session.agent.as_ref().is_some_and(|link| link.id == agent) {
            session.agent = None;
        }
        let next = session.next_turn.take();
        self.metrics.agent_failures += 1;
        if let Some((connection, request_id)) = next.and_then(|next| next.reply_to) {
            let message = format!("the agent could not be started: {reason}");
            self.send_error(
                connection,
                ErrorCode::AgentUnavailable,
                &message,
                request_id.as_deref(),
                now,
            );
        }
        self.transition(&session_id, SessionStatus::Error, now);
    }

    /// One line from the agent's stdout (without its newline).
    pub fn handle_agent_line(&mut self, agent: AgentId, line: &[u8], now: Instant) {
        self.last_input = now;
        let Some(session_id) = self.agents.get(&agent).cloned() else {
            return;
        };
        let Some(link) = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.agent.as_mut())
            .filter(|l| l.id == agent)
        else {
            return;
        };
        link.acp.handle_line(line, now);
        self.drain_agent(&session_id, now);
    }

    /// The agent process exited (or the host gave up on it).
    /// The agent host gave up on the process (a line over the limit, a stdin backlog, the
    /// workspace over its quota) and is stopping it; `handle_agent_exited` follows, and the
    /// turn it ends fails with this reason.
    pub fn handle_agent_failed(&mut self, agent: AgentId, reason: &str, now: Instant) {
        self.last_input = now;
        let Some(session_id) = self.agents.get(&agent) else {
            return;
        };
        if let Some(link) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.agent.as_mut())
            .filter(|link| link.id == agent)
        {
            link.failure.get_or_insert_with(|| reason.to_owned());
        }
    }

    pub fn handle_agent_exited(&mut self, agent: AgentId, now: Instant) {
        self.last_input = now;
        self.agent_gone(agent, now);
    }

    pub(crate) fn agent_gone(&mut self, agent: AgentId, now: Instant) {
        let Some(session_id) = self.agents.remove(&agent) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if session.agent.as_ref().is_none_or(|link| link.id != agent) {
            return;
        }
        session.stop_deadline = None;
        if session.record.status == SessionStatus::Deactivating {
            session.agent = None;
            self.transition(&session_id, SessionStatus::Inactive, now);
            return;
        }
        // The host gave up on the process for a reason: the turn's error says it (before the
        // ACP client's generic "exited mid-turn").
        let failure = session.agent.as_mut().and_then(|link| link.failure.take());
        if let Some(reason) = failure {
            if session_state::is_active(session.record.status) {
                self.fail_turn(
                    &session_id,
                    ErrorCode::AgentUnavailable,
                    &format!("the agent was stopped: {reason}"),
                    true,
                    now,
                );
            }
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if let Some(link) = session.agent.as_mut() {
            link.acp.handle_exit(now);
        }
        self.drain_agent(&session_id, now);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        session.agent = None;
        let status = session.record.status;
        if session_state::is_active(status) {
            self.fail_turn(
                &session_id,
                ErrorCode::AgentUnavailable,
                "the agent process exited",
                true,
                now,
            );
        }
    }

    /// Hands the ACP client's output on: lines to the agent, events to the session.
    pub(crate) fn drain_agent(&mut self, session_id: &SessionId, now: Instant) {
        while let Some(link) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.agent.as_mut())
        {
            let agent = link.id;
            if let Some(line) = link.acp.poll_write() {
                self.agent_command(AgentCommand::Write { agent, line });
                continue;
            }
            let Some(event) = link.acp.poll_event() else {
                break;
            };
            self.agent_event(session_id, agent, event, now);
        }
        self.reschedule_session(session_id, now);
    }

    fn agent_event(
        &mut self,
        session_id: &SessionId,
        agent: AgentId,
        event: AgentEvent,
        now: Instant,
    ) {
        let turn_id = self
            .sessions
            .get(session_id)
            .and_then(|s| s.turn.as_ref())
            .map(|t| t.id.clone());
        match event {
            AgentEvent::Ready => {
                if self.transition(session_id, SessionStatus::Ready, now) {
                    if let Some(next) = self
                        .sessions
                        .get_mut(session_id)
                        .and_then(|s| s.next_turn.take())
                    {
                        self.start_turn(session_id, next, now);
                    }
                }
            }
            AgentEvent::Update { kind, fields } => {
                let turn_id = turn_id.as_deref();
                match (kind, fields.get("text").and_then(Value::as_str), turn_id) {
                    ("text_delta", Some(text), Some(turn_id)) => {
                        self.record_final_text(session_id, text);
                        self.publish_delta(session_id, "text_delta", turn_id, text, now);
                    }
                    ("thinking_delta", Some(text), Some(turn_id)) => {
                        self.publish_delta(session_id, "thinking_delta", turn_id, text, now);
                    }
                    _ => {
                        if let Some(turn) = self
                            .sessions
                            .get_mut(session_id)
                            .and_then(|s| s.turn.as_mut())
                        {
                            match kind {
                                "tool_call" => turn.tool_calls.push(Value::Object(fields.clone())),
                                "usage" => turn.usage = Some(Value::Object(fields.clone())),
                                _ => {}
                            }
                        }
                        self.publish(
                            session_id,
                            kind,
                            turn_id,
                            |w| {
                                w.fields(&fields);
                            },
                            now,
                        );
                    }
                }
            }
            AgentEvent::PermissionRequested {
                question_id,
                tool_call_id,
                title,
                options,
            } => {
                self.publish(session_id, "permission_requested", turn_id.as_deref(), |w| {
                    w.field("questionId", &question_id).field("toolCallId", &tool_call_id).field("title", &title);
                    let options: Vec<Value> = options
                        .iter()
                        .map(|o| serde_json::json!({"optionId": o.option_id, "name": o.name, "kind": o.kind}))
                        .collect();
                    w.field("options", &options);
                }, now);
                if self.status(session_id) == Some(SessionStatus::Running) {
                    self.transition(session_id, SessionStatus::Waiting, now);
                }
            }
            AgentEvent::PermissionCancelled { question_id } => {
                self.publish(
                    session_id,
                    "permission_resolved",
                    turn_id.as_deref(),
                    |w| {
                        w.field("questionId", &question_id)
                            .field("cancelled", &true);
                    },
                    now,
                );
                self.resume_running(session_id, now);
            }
            AgentEvent::TurnComplete { stop_reason } => {
                self.complete_turn(session_id, &stop_reason, now)
            }
            AgentEvent::TurnError { code, message } => {
                let _ = code;
                self.fail_turn(
                    session_id,
                    ErrorCode::AgentUnavailable,
                    &message,
                    false,
                    now,
                );
            }
            AgentEvent::Failed { message } => {
                self.metrics.agent_failures += 1;
                self.fail_turn(session_id, ErrorCode::AgentUnavailable, &message, true, now);
                // The process broke the protocol: stop it; the next run_turn starts a fresh one.
                self.agents.remove(&agent);
                if let Some(session) = self.sessions.get_mut(session_id) {
                    session.agent = None;
                }
                self.agent_command(AgentCommand::Stop { agent });
            }
        }
    }

    fn record_final_text(&mut self, session_id: &SessionId, text: &str) {
        let Some(turn) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.turn.as_mut())
        else {
            return;
        };
        if turn.final_text_truncated {
            return;
        }
        let room = FINAL_TEXT_LIMIT - turn.final_text.len();
        if text.len() <= room {
            turn.final_text.push_str(text);
        } else {
            turn.final_text
                .push_str(crate::gateway::requests::truncate(text, room));
            turn.final_text_truncated = true;
        }
    }

    fn complete_turn(&mut self, session_id: &SessionId, stop_reason: &str, now: Instant) {
        self.flush_coalescer(session_id, now);
        let Some(turn) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.turn.take())
        else {
            return;
        };
        // A stopped turn ends `cancelled` (PROTOCOL section 5) even when the agent, as some do,
        // answers the cancel with another stop reason.
        let stop_reason = if turn.cancelling {
            "cancelled"
        } else {
            stop_reason
        };
        self.publish(
            session_id,
            "turn_complete",
            Some(&turn.id),
            |w| {
                w.field("stopReason", stop_reason)
                    .field("finalText", &turn.final_text);
                if turn.final_text_truncated {
                    w.field("finalTextTruncated", &true);
                }
            },
            now,
        );
        let completed_at = self.clock.unix_ms(now) as i64;
        self.persist_finished_turn(session_id, turn, stop_reason, completed_at);
        self.metrics.turns_completed += 1;
        self.transition(session_id, SessionStatus::Ready, now);
        self.after_turn(session_id, now);
    }

    /// Ends the running turn with `turn_error`, then `session_state` `error` when the agent is
    /// broken (or `ready` when it can take another prompt). A session activating for a turn that
    /// never started ends that turn the same way.
    pub(crate) fn fail_turn(
        &mut self,
        session_id: &SessionId,
        code: ErrorCode,
        message: &str,
        agent_broken: bool,
        now: Instant,
    ) {
        self.flush_coalescer(session_id, now);
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let turn = session.turn.take();
        let pending = if turn.is_none() {
            session.next_turn.take()
        } else {
            None
        };
        let turn_id = turn
            .as_ref()
            .map(|t| t.id.clone())
            .or_else(|| pending.as_ref().map(|n| n.id.clone()));
        let code_text = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(turn_id) = &turn_id {
            self.publish(
                session_id,
                "turn_error",
                Some(turn_id),
                |w| {
                    w.field("code", &code_text).field("message", message);
                },
                now,
            );
            self.metrics.turns_failed += 1;
        }
        if let Some(turn) = turn {
            let completed_at = self.clock.unix_ms(now) as i64;
            self.persist_finished_turn(session_id, turn, "error", completed_at);
        }
        let to = if agent_broken {
            SessionStatus::Error
        } else {
            SessionStatus::Ready
        };
        self.transition(session_id, to, now);
        self.after_turn(session_id, now);
    }

    fn persist_finished_turn(
        &mut self,
        session_id: &SessionId,
        turn: Turn,
        stop_reason: &str,
        completed_at: i64,
    ) {
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.turn = Some(turn);
        }
        self.persist_turn(session_id, Some((stop_reason, completed_at)));
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.turn = None;
        }
    }

    /// A turn ended: a steer waiting for it starts now; a drain may finish.
    fn after_turn(&mut self, session_id: &SessionId, now: Instant) {
        let ready = self.status(session_id) == Some(SessionStatus::Ready);
        let next = self.sessions.get_mut(session_id).and_then(|s| {
            if ready {
                s.next_turn.take()
            } else {
                None
            }
        });
        if let Some(next) = next {
            if self.draining {
                self.fail_pending(session_id, &next, now);
            } else {
                self.start_turn(session_id, next, now);
            }
        }
        if self.draining {
            self.turn_ended_while_draining(now);
        }
        self.reschedule_session(session_id, now);
    }

    /// A queued turn that will not start (the gateway is draining) still ends visibly.
    fn fail_pending(&mut self, session_id: &SessionId, next: &NextTurn, now: Instant) {
        self.publish(
            session_id,
            "turn_error",
            Some(&next.id),
            |w| {
                w.field("code", "SHUTTING_DOWN")
                    .field("message", "the gateway is shutting down");
            },
            now,
        );
    }
}
