//! Turns (PROTOCOL sections 5, 6 and 9): `run_turn`, `steer`, `stop_turn`, `answer_question`,
//! and everything that comes back from the agent process through the session's ACP client.
//!
//! A turn's events come in this order: `session_state` `activating` and `ready` (only when the
//! session was not active), `session_state` `running`, `turn_started`, the turn's events, then
//! `turn_complete` or `turn_error`, then `session_state` `ready` (or `error`).

use crate::acp::schema::ContentBlock;
use crate::acp::{AcpError, AgentFeatures};
use crate::ids::ConnectionId;
use crate::protocol::encode_frame;
use crate::protocol::event::{EventBody, PermissionResolved, TurnComplete, TurnError, TurnStarted};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::PromptBlock;
use crate::protocol::session_reply::SessionReply;
use crate::protocol::ErrorCode;
use crate::session::state::{self, SessionStatus};
use crate::session::{AgentLink, Counter, NextTurn, Session, SessionContext, SessionOutput, Turn};
use crate::AgentCommand;

/// `turn_complete.finalText` is cut at this many bytes (PROTOCOL section 5).
pub const FINAL_TEXT_LIMIT: usize = 64 * 1024;

impl Session {
    /// `run_turn` (or `steer`) accepted by the gateway (role, draining, storage checked; the turn
    /// id drawn). `next.reply_to` is who asked.
    pub(crate) fn run_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        next: NextTurn,
        steer: bool,
        out: &mut Vec<SessionOutput>,
    ) -> Handled {
        let reply_to = next.reply_to.clone();
        // With the agent running its capabilities are known: a block it cannot take is refused
        // now. During an activation they are checked once `initialize` answered (`start_turn`).
        let features = self.agent.as_ref().and_then(|a| a.acp.agent_features());
        if let Some(features) = features {
            if let Some(message) = refused_block(&features, &next.content) {
                return Err(Refusal::new(ErrorCode::InvalidMessage, message));
            }
        }
        if steer && self.turn.is_some() {
            if self.next_turn.is_some() {
                // One steer waits at a time: a second would be a turn accepted behind a turn
                // that has not started; the client steers again once `turn_started` came.
                return Err(Refusal::new(
                    ErrorCode::InvalidState,
                    "a steer is already queued; steer again once its turn has started",
                ));
            }
            // Cancel the running turn; the steering text is prompted as soon as it has ended.
            let turn_id = next.id.clone();
            self.next_turn = Some(NextTurn {
                reply_to: None,
                ..next
            });
            self.cancel_turn(ctx, out);
            self.turn_accepted(reply_to, &turn_id, out);
            return Ok(());
        }
        let status = self.record.status;
        if self.turn.is_some() || self.next_turn.is_some() || !state::accepts_turn(status) {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                format!("the session is {}", status.as_str()),
            ));
        }
        if status == SessionStatus::Ready && self.agent.is_some() {
            self.turn_accepted(reply_to, &next.id, out);
            self.start_turn(
                ctx,
                NextTurn {
                    reply_to: None,
                    ..next
                },
                out,
            );
        } else {
            self.activate(ctx, next, out);
        }
        self.update_idle(ctx.now);
        Ok(())
    }

    pub(super) fn turn_accepted(
        &self,
        to: Option<(ConnectionId, Option<String>)>,
        turn_id: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some((to, request_id)) = to else {
            return;
        };
        let frame = encode_frame(&SessionReply::TurnAccepted {
            request_id: request_id.as_deref(),
            session_id: &self.record.id,
            turn_id,
        });
        out.push(SessionOutput::Reply { to, frame });
    }

    /// Starts the session's agent process; the turn follows once it is ready.
    fn activate(&mut self, ctx: &SessionContext<'_>, next: NextTurn, out: &mut Vec<SessionOutput>) {
        if let Some(old) = self.agent.take() {
            // An agent left over from an error: stop it before starting a fresh one.
            old.stop(out);
        }
        let had_history = self.record.last_seq > 0;
        if !self.transition(ctx, SessionStatus::Activating, out) {
            return;
        }
        self.had_history = had_history;
        self.transcript = None;
        let agent = ctx.next_agent;
        out.push(SessionOutput::AgentLinked(agent));
        self.agent = Some(AgentLink::new(agent, ctx.config, &self.record.agent_type));
        self.next_turn = Some(next);
        out.push(SessionOutput::Count(Counter::AgentStarted));
        out.push(SessionOutput::Agent(AgentCommand::Spawn {
            agent,
            session_id: self.record.id.clone(),
            tenant_id: self.record.tenant_id.clone(),
            agent_type: self.record.agent_type.clone(),
        }));
    }

    pub(super) fn start_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        next: NextTurn,
        out: &mut Vec<SessionOutput>,
    ) {
        if !self.transition(ctx, SessionStatus::Running, out) {
            return;
        }
        self.turn = Some(Turn {
            id: next.id.clone(),
            user_id: next.user_id.clone(),
            text: next.text.clone(),
            content: next.content.clone(),
            final_text: String::new(),
            final_text_truncated: false,
            tool_calls: Vec::new(),
            usage: None,
            started_at_ms: ctx.unix_ms,
            cancelling: false,
            deadline: ctx.now.checked_add(self.options(ctx).turn_timeout),
            timed_out: false,
            cancel_deadline: None,
        });
        out.push(SessionOutput::Count(Counter::TurnStarted));
        let body = EventBody::TurnStarted(TurnStarted {
            text: &next.text,
            user_id: &next.user_id,
            content: &next.content,
        });
        self.publish(ctx, Some(&next.id), body, out);
        self.persist_turn(None, out);
        // A turn accepted during an activation meets the agent's capabilities only now: a block
        // the agent cannot take ends the turn (the agent stays up for the next one).
        let features = self.agent.as_ref().and_then(|a| a.acp.agent_features());
        let refused = match (&features, next.content.is_empty()) {
            (_, true) => None,
            (Some(features), false) => refused_block(features, &next.content),
            (None, false) => Some("the agent's prompt capabilities are unknown".to_owned()),
        };
        let blocks = match refused {
            Some(message) => Err(message),
            None => acp_blocks(&next.content),
        };
        let blocks = match blocks {
            Ok(blocks) => blocks,
            Err(message) => {
                self.fail_turn(ctx, ErrorCode::InvalidMessage, &message, false, out);
                self.drain_agent(ctx, out);
                return;
            }
        };
        let text = self.prompt_text(&next.text);
        let prompted = match self.agent.as_mut() {
            Some(agent) => agent.acp.prompt_with(&text, blocks, ctx.now),
            None => Err(AcpError::NotReady),
        };
        if let Err(error) = prompted {
            let message = format!("the agent cannot take a prompt: {error}");
            self.fail_turn(ctx, ErrorCode::AgentUnavailable, &message, true, out);
        }
        self.drain_agent(ctx, out);
    }

    /// Asks the agent to cancel the running turn; it ends with `stopReason: "cancelled"`.
    pub(super) fn cancel_turn(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.cancelling {
            return;
        }
        turn.cancelling = true;
        let grace = ctx
            .config
            .agent_options(&self.record.agent_type)
            .cancel_grace;
        turn.cancel_deadline = ctx.now.checked_add(grace);
        if let Some(agent) = self.agent.as_mut() {
            agent.acp.cancel(ctx.now);
        }
        self.drain_agent(ctx, out);
    }

    /// `stop_turn`: answered `turn_stopping`, then the turn ends `cancelled`.
    pub(crate) fn stop_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        to: ConnectionId,
        request_id: Option<&str>,
        out: &mut Vec<SessionOutput>,
    ) -> Handled {
        let Some(turn_id) = self.turn.as_ref().map(|t| t.id.clone()) else {
            if self.record.status == SessionStatus::Activating && self.next_turn.is_some() {
                self.stop_pending_turn(ctx, to, request_id, out);
                return Ok(());
            }
            return Err(Refusal::new(ErrorCode::InvalidState, "no turn is running"));
        };
        let frame = encode_frame(&SessionReply::TurnStopping {
            request_id,
            session_id: &self.record.id,
            turn_id: &turn_id,
        });
        out.push(SessionOutput::Reply { to, frame });
        self.cancel_turn(ctx, out);
        self.update_idle(ctx.now);
        Ok(())
    }

    /// `stop_turn` while the agent process for a turn is still starting: the `run_turn` is
    /// answered `turn_accepted` (if it was not yet), the stop `turn_stopping`, and the turn ends
    /// `turn_complete` `cancelled` before it started; the process still starts (`ready`).
    fn stop_pending_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        to: ConnectionId,
        request_id: Option<&str>,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(next) = self.next_turn.take() else {
            return;
        };
        self.turn_accepted(next.reply_to, &next.id, out);
        let frame = encode_frame(&SessionReply::TurnStopping {
            request_id,
            session_id: &self.record.id,
            turn_id: &next.id,
        });
        out.push(SessionOutput::Reply { to, frame });
        let body = EventBody::TurnComplete(TurnComplete {
            stop_reason: "cancelled",
            final_text: "",
            final_text_truncated: false,
        });
        self.publish(ctx, Some(&next.id), body, out);
        self.update_idle(ctx.now);
    }

    /// The agent type's options (turn timeout, cancel grace).
    pub(super) fn options<'c>(&self, ctx: &SessionContext<'c>) -> &'c crate::config::AgentOptions {
        ctx.config.agent_options(&self.record.agent_type)
    }

    /// The running turn's deadlines: past its timeout it is cancelled; past the cancel grace
    /// the agent is killed and the turn ends `AGENT_UNRESPONSIVE` at once.
    pub(super) fn turn_deadline(&self) -> Option<std::time::Instant> {
        let turn = self.turn.as_ref()?;
        if turn.cancelling {
            turn.cancel_deadline
        } else {
            turn.deadline
        }
    }

    /// Deadlines of the running turn up to `ctx.now` have passed.
    pub(super) fn turn_timeout(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !turn.cancelling && turn.deadline.is_some_and(|at| at <= ctx.now) {
            turn.timed_out = true;
            self.cancel_turn(ctx, out);
            return;
        }
        if turn.cancelling && turn.cancel_deadline.is_some_and(|at| at <= ctx.now) {
            let grace = self.options(ctx).cancel_grace.as_millis();
            let message = format!("the agent ignored session/cancel for {grace} ms and was killed");
            out.push(SessionOutput::Count(Counter::AgentFailure));
            // The turn ends now, not when the host confirms the exit: the process's reports
            // go nowhere from here on, and the next run_turn starts a fresh one.
            let agent = self.agent.take();
            if let Some(link) = &agent {
                link.kill(out);
            }
            self.fail_turn(ctx, ErrorCode::AgentUnresponsive, &message, true, out);
        }
    }

    /// The agent answered a turn that ran past its timeout (after the cancel): it ends
    /// `TURN_TIMEOUT`, the process is stopped and the session goes to `error`.
    pub(super) fn end_timed_out_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        let timeout = self.options(ctx).turn_timeout.as_millis();
        let message = format!("the turn did not finish within {timeout} ms and was cancelled");
        if let Some(link) = self.agent.take() {
            link.stop(out);
        }
        self.fail_turn(ctx, ErrorCode::TurnTimeout, &message, true, out);
    }

    /// Whether the running turn ran past its timeout.
    pub(super) fn turn_timed_out(&self) -> bool {
        self.turn.as_ref().is_some_and(|turn| turn.timed_out)
    }

    /// Whether the running turn was asked to stop (by `stop_turn` or `steer`).
    pub(super) fn turn_cancelling(&self) -> bool {
        self.turn.as_ref().is_some_and(|turn| turn.cancelling)
    }

    /// `answer_question` (its `optionId`/`cancelled` checked by the gateway) from `user_id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn answer_question(
        &mut self,
        ctx: &SessionContext<'_>,
        to: ConnectionId,
        request_id: Option<&str>,
        user_id: &str,
        question_id: &str,
        option_id: Option<&str>,
        out: &mut Vec<SessionOutput>,
    ) -> Handled {
        let (Some(turn), Some(agent)) = (self.turn.as_ref(), self.agent.as_mut()) else {
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
        let frame = encode_frame(&SessionReply::QuestionAnswered {
            request_id,
            session_id: &self.record.id,
            question_id,
        });
        out.push(SessionOutput::Reply { to, frame });
        let body = EventBody::PermissionResolved(PermissionResolved {
            question_id,
            option_id,
            cancelled: option_id.is_none().then_some(true),
            user_id: Some(user_id),
        });
        self.publish(ctx, Some(&turn_id), body, out);
        self.resume_running(ctx, out);
        self.drain_agent(ctx, out);
        Ok(())
    }

    /// Back to `running` once no question is pending.
    pub(super) fn resume_running(
        &mut self,
        ctx: &SessionContext<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        let pending = self
            .agent
            .as_ref()
            .is_some_and(|a| a.acp.pending_questions().next().is_some());
        if self.record.status == SessionStatus::Waiting && !pending {
            self.transition(ctx, SessionStatus::Running, out);
        }
    }

    pub(super) fn record_final_text(&mut self, text: &str) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.final_text_truncated {
            return;
        }
        let room = FINAL_TEXT_LIMIT - turn.final_text.len();
        if text.len() <= room {
            turn.final_text.push_str(text);
        } else {
            turn.final_text.push_str(truncate(text, room));
            turn.final_text_truncated = true;
        }
    }

    pub(super) fn complete_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        stop_reason: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        self.flush_coalescer(ctx, out);
        let Some(turn) = self.turn.take() else {
            return;
        };
        // A stopped turn ends `cancelled` (PROTOCOL section 5) even when the agent, as some do,
        // answers the cancel with another stop reason.
        let stop_reason = if turn.cancelling {
            "cancelled"
        } else {
            stop_reason
        };
        let body = EventBody::TurnComplete(TurnComplete {
            stop_reason,
            final_text: &turn.final_text,
            final_text_truncated: turn.final_text_truncated,
        });
        self.publish(ctx, Some(&turn.id), body, out);
        // The history row is written from the turn as it ended.
        self.turn = Some(turn);
        self.persist_turn(Some((stop_reason, ctx.unix_ms)), out);
        self.turn = None;
        out.push(SessionOutput::Count(Counter::TurnCompleted));
        self.transition(ctx, SessionStatus::Ready, out);
        self.after_turn(ctx, out);
    }

    /// Ends the running turn with `turn_error`, then `session_state` `error` when the agent is
    /// broken (or `ready` when it can take another prompt). A session activating for a turn that
    /// never started ends that turn the same way.
    pub(crate) fn fail_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        code: ErrorCode,
        message: &str,
        agent_broken: bool,
        out: &mut Vec<SessionOutput>,
    ) {
        let code_text = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.end_turn_with_error(ctx, &code_text, message, None, agent_broken, out);
    }

    /// [`Session::fail_turn`] with the code as text (the agent's own, `AGENT_ERROR`).
    pub(crate) fn end_turn_with_error(
        &mut self,
        ctx: &SessionContext<'_>,
        code_text: &str,
        message: &str,
        agent_code: Option<i64>,
        agent_broken: bool,
        out: &mut Vec<SessionOutput>,
    ) {
        self.flush_coalescer(ctx, out);
        let turn = self.turn.take();
        let mut pending = if turn.is_none() {
            self.next_turn.take()
        } else {
            None
        };
        // A run_turn not answered yet (the process never reported its start) is answered with
        // the error instead: its turn was never accepted.
        if let Some((to, request_id)) = pending.as_mut().and_then(|next| next.reply_to.take()) {
            let frame = crate::session::error_frame(
                ErrorCode::AgentUnavailable,
                &format!("the agent could not be started: {message}"),
                request_id.as_deref(),
            );
            out.push(SessionOutput::Reply { to, frame });
            pending = None;
        }
        let turn_id = turn
            .as_ref()
            .map(|t| t.id.clone())
            .or_else(|| pending.as_ref().map(|n| n.id.clone()));
        if let Some(turn_id) = &turn_id {
            let body = EventBody::TurnError(TurnError {
                code: code_text,
                message,
                agent_code,
            });
            self.publish(ctx, Some(turn_id), body, out);
            out.push(SessionOutput::Count(Counter::TurnFailed));
        }
        if turn.is_some() {
            self.turn = turn;
            self.persist_turn(Some(("error", ctx.unix_ms)), out);
            self.turn = None;
        }
        let to = if agent_broken {
            SessionStatus::Error
        } else {
            SessionStatus::Ready
        };
        self.transition(ctx, to, out);
        self.after_turn(ctx, out);
    }

    /// A turn ended: a steer waiting for it starts now; a drain may finish.
    fn after_turn(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        let next = if self.record.status == SessionStatus::Ready {
            self.next_turn.take()
        } else {
            None
        };
        // A steer queued behind a turn that failed (the session is in `error`) never starts:
        // it was accepted, so it ends too.
        if self.turn.is_none() && self.record.status == SessionStatus::Error {
            if let Some(next) = self.next_turn.take() {
                let body = EventBody::TurnError(TurnError {
                    code: "AGENT_UNAVAILABLE",
                    message: "not started: the turn it was queued behind failed",
                    agent_code: None,
                });
                self.publish(ctx, Some(&next.id), body, out);
                out.push(SessionOutput::Count(Counter::TurnFailed));
            }
        }
        if let Some(next) = next {
            if ctx.draining {
                // A queued turn that will not start still ends visibly.
                let body = EventBody::TurnError(TurnError {
                    code: "SHUTTING_DOWN",
                    message: "the gateway is shutting down",
                    agent_code: None,
                });
                self.publish(ctx, Some(&next.id), body, out);
            } else {
                self.start_turn(ctx, next, out);
            }
        }
        if ctx.draining {
            out.push(SessionOutput::TurnEnded);
        }
        self.update_idle(ctx.now);
    }
}

/// Why the agent cannot take one of `content`'s blocks (the first it cannot), from its
/// `promptCapabilities`; `None` when it can take them all. A `resource_link` is always allowed.
pub(crate) fn refused_block(features: &AgentFeatures, content: &[PromptBlock]) -> Option<String> {
    content.iter().find_map(|block| {
        let capability = match block {
            PromptBlock::Image(_) if !features.image => "image",
            PromptBlock::Audio(_) if !features.audio => "audio",
            PromptBlock::Resource(_) if !features.embedded_context => "embeddedContext",
            _ => return None,
        };
        Some(format!(
            "the agent does not accept {} content (its promptCapabilities.{capability} is false)",
            block.kind()
        ))
    })
}

/// The blocks in the ACP client's types (the wire shapes are the same).
fn acp_blocks(content: &[PromptBlock]) -> Result<Vec<ContentBlock>, String> {
    content
        .iter()
        .map(|block| {
            serde_json::to_value(block)
                .and_then(serde_json::from_value::<ContentBlock>)
                .map_err(|error| format!("a {} block is not valid ACP: {error}", block.kind()))
        })
        .collect()
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
