//! The session's agent process, through its ACP client: what the agent host reports (started,
//! could not start, a line, gave up, exited) and what the client makes of the agent's lines
//! (events published, lines written back, the turn completed or failed).

use serde_json::Value;

use crate::acp::{schema, AgentEvent, ControlEvent, FileRequestId};
use crate::ids::AgentId;
use crate::protocol::event::{
    agent_update_body, EventBody, FileChanged, PermissionRequested, PermissionResolved,
    QuestionOption,
};
use crate::protocol::session_reply::{OpenQuestion, OpenQuestionOption};
use crate::protocol::ErrorCode;
use crate::session::state::{self, SessionStatus};
use crate::session::{error_frame, Counter, Session, SessionContext, SessionOutput};
use crate::{AgentCommand, FileError, FileErrorKind};

impl Session {
    /// The agent process started; `workspace` is its working directory.
    pub(crate) fn agent_spawned(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        workspace: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        if self.agent.as_ref().is_none_or(|link| link.id != agent) {
            return;
        }
        self.open_acp_session(ctx, workspace);
        let reply_to = self
            .next_turn
            .as_mut()
            .and_then(|next| next.reply_to.take().map(|to| (to, next.id.clone())));
        if let Some((to, turn_id)) = reply_to {
            self.turn_accepted(Some(to), &turn_id, out);
        }
        self.drain_agent(ctx, out);
    }

    /// The agent process could not be started (the gateway no longer routes its reports here).
    pub(crate) fn agent_spawn_failed(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        reason: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        if self.agent.as_ref().is_some_and(|link| link.id == agent) {
            self.agent = None;
        }
        let next = self.next_turn.take();
        out.push(SessionOutput::Count(Counter::AgentFailure));
        if let Some((to, request_id)) = next.and_then(|next| next.reply_to) {
            let message = format!("the agent could not be started: {reason}");
            let frame = error_frame(ErrorCode::AgentUnavailable, &message, request_id.as_deref());
            out.push(SessionOutput::Reply { to, frame });
        }
        self.transition(ctx, SessionStatus::Error, out);
    }

    /// One line from the agent's stdout (without its newline).
    pub(crate) fn agent_line(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        line: &[u8],
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(link) = self.agent.as_mut().filter(|l| l.id == agent) else {
            return;
        };
        link.acp.handle_line(line, ctx.now);
        self.drain_agent(ctx, out);
    }

    /// The agent host served (or refused) the agent's `fs/read_text_file`.
    pub(crate) fn agent_file_read(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        request: u64,
        result: Result<String, FileError>,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(link) = self.agent.as_mut().filter(|l| l.id == agent) else {
            return;
        };
        // A request the client dropped (it failed or the agent exited) needs no answer.
        let _ = link
            .acp
            .answer_read_text_file(FileRequestId(request), result.map_err(rpc_error));
        self.drain_agent(ctx, out);
    }

    /// The agent host wrote (or refused to write) the agent's `fs/write_text_file`; `Ok` holds
    /// the path relative to the workspace, published as `file_changed`.
    pub(crate) fn agent_file_written(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        request: u64,
        result: Result<String, FileError>,
        out: &mut Vec<SessionOutput>,
    ) {
        let Some(link) = self.agent.as_mut().filter(|l| l.id == agent) else {
            return;
        };
        let (answer, written) = match result {
            Ok(path) => (Ok(()), Some(path)),
            Err(error) => (Err(rpc_error(error)), None),
        };
        let _ = link
            .acp
            .answer_write_text_file(FileRequestId(request), answer);
        // The file changed whether or not the client still waits for the answer.
        if let Some(path) = written {
            let turn_id = self.turn.as_ref().map(|t| t.id.clone());
            let body = EventBody::FileChanged(FileChanged { path: &path });
            self.publish(ctx, turn_id.as_deref(), body, out);
        }
        self.drain_agent(ctx, out);
    }

    /// The agent host gave up on the process (a line over the limit, a stdin backlog, the
    /// workspace over its quota) and is stopping it; its exit follows, and the turn it ends
    /// fails with this reason.
    pub(crate) fn agent_failed(&mut self, agent: AgentId, reason: &str) {
        if let Some(link) = self.agent.as_mut().filter(|link| link.id == agent) {
            link.failure.get_or_insert_with(|| reason.to_owned());
        }
    }

    /// The agent process exited, or is considered gone (the gateway no longer routes its
    /// reports here).
    pub(crate) fn agent_gone(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        out: &mut Vec<SessionOutput>,
    ) {
        if self.agent.as_ref().is_none_or(|link| link.id != agent) {
            return;
        }
        self.stop_deadline = None;
        if self.record.status == SessionStatus::Deactivating {
            self.agent = None;
            self.transition(ctx, SessionStatus::Inactive, out);
            return;
        }
        // The host gave up on the process for a reason: the turn's error says it (before the
        // ACP client's generic "exited mid-turn").
        if let Some(reason) = self.agent.as_mut().and_then(|link| link.failure.take()) {
            if state::is_active(self.record.status) {
                let message = format!("the agent was stopped: {reason}");
                self.fail_turn(ctx, ErrorCode::AgentUnavailable, &message, true, out);
            }
        }
        if let Some(link) = self.agent.as_mut() {
            link.acp.handle_exit(ctx.now);
        }
        self.drain_agent(ctx, out);
        self.agent = None;
        self.fail_pending_controls(out);
        if state::is_active(self.record.status) {
            let message = "the agent process exited";
            self.fail_turn(ctx, ErrorCode::AgentUnavailable, message, true, out);
        }
    }

    /// The shutdown's grace period is over: the running turn is cancelled and ends
    /// `SHUTTING_DOWN`.
    pub(crate) fn end_for_shutdown(
        &mut self,
        ctx: &SessionContext<'_>,
        out: &mut Vec<SessionOutput>,
    ) {
        if let Some(agent) = self.agent.as_mut() {
            agent.acp.cancel(ctx.now);
        }
        self.drain_agent(ctx, out);
        let message = "the gateway is shutting down";
        self.fail_turn(ctx, ErrorCode::ShuttingDown, message, false, out);
    }

    /// Hands the ACP client's output on: lines to the agent, events to the session.
    pub(super) fn drain_agent(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        while let Some(link) = self.agent.as_mut() {
            let agent = link.id;
            if let Some(line) = link.acp.poll_write() {
                out.push(SessionOutput::Agent(AgentCommand::Write { agent, line }));
                continue;
            }
            let Some(event) = link.acp.poll_event() else {
                let Some(control) = link.acp.poll_control() else {
                    break;
                };
                // The agent's file requests go to the host; modes and options to the session.
                if matches!(
                    control,
                    ControlEvent::ReadTextFile { .. } | ControlEvent::WriteTextFile { .. }
                ) {
                    control_command(agent, control, out);
                } else {
                    self.control_event(ctx, control, out);
                }
                continue;
            };
            self.agent_event(ctx, agent, event, out);
        }
        self.fail_pending_controls(out);
        self.update_idle(ctx.now);
    }

    fn agent_event(
        &mut self,
        ctx: &SessionContext<'_>,
        agent: AgentId,
        event: AgentEvent,
        out: &mut Vec<SessionOutput>,
    ) {
        let turn_id = self.turn.as_ref().map(|t| t.id.clone());
        match event {
            AgentEvent::Ready => self.agent_ready(ctx, out),
            AgentEvent::Update { kind, fields } => {
                let text = fields.get("text").and_then(Value::as_str);
                match (kind, text, turn_id.as_deref()) {
                    ("text_delta", Some(text), Some(turn_id)) => {
                        self.record_final_text(text);
                        self.publish_delta(ctx, false, turn_id, text, out);
                    }
                    ("thinking_delta", Some(text), Some(turn_id)) => {
                        self.publish_delta(ctx, true, turn_id, text, out);
                    }
                    _ => {
                        if let Some(turn) = self.turn.as_mut() {
                            match kind {
                                "tool_call" | "tool_call_update" => {
                                    record_tool_call(&mut turn.tool_calls, &fields)
                                }
                                "usage" => turn.usage = Some(Value::Object(fields.clone())),
                                _ => {}
                            }
                        }
                        let body = agent_update_body(kind, &fields);
                        self.publish(ctx, turn_id.as_deref(), body, out);
                    }
                }
            }
            AgentEvent::PermissionRequested {
                question_id,
                tool_call_id,
                title,
                options,
            } => {
                let body = EventBody::PermissionRequested(PermissionRequested {
                    question_id: &question_id,
                    tool_call_id: &tool_call_id,
                    title: &title,
                    options: options
                        .iter()
                        .map(|o| QuestionOption {
                            kind: &o.kind,
                            name: &o.name,
                            option_id: &o.option_id,
                        })
                        .collect(),
                });
                self.publish(ctx, turn_id.as_deref(), body, out);
                self.remember_question(OpenQuestion {
                    question_id,
                    tool_call_id,
                    title,
                    options: options
                        .into_iter()
                        .map(|o| OpenQuestionOption {
                            kind: o.kind,
                            name: o.name,
                            option_id: o.option_id,
                        })
                        .collect(),
                });
                if self.record.status == SessionStatus::Running {
                    self.transition(ctx, SessionStatus::Waiting, out);
                }
            }
            AgentEvent::PermissionCancelled { question_id } => {
                let body = EventBody::PermissionResolved(PermissionResolved {
                    question_id: &question_id,
                    option_id: None,
                    cancelled: Some(true),
                    user_id: None,
                });
                self.publish(ctx, turn_id.as_deref(), body, out);
                self.resume_running(ctx, out);
            }
            AgentEvent::TurnComplete { .. } if self.turn_timed_out() => {
                self.end_timed_out_turn(ctx, out);
            }
            AgentEvent::TurnComplete { stop_reason } => self.complete_turn(ctx, &stop_reason, out),
            AgentEvent::TurnError { .. } if self.turn_timed_out() => {
                self.end_timed_out_turn(ctx, out);
            }
            // A stopped turn ends `cancelled`, even when the agent answers the cancel with an
            // error (PROTOCOL section 5).
            AgentEvent::TurnError { .. } if self.turn_cancelling() => {
                self.complete_turn(ctx, "cancelled", out);
            }
            // The agent's own code (`AGENT_ERROR`) and message, unchanged.
            AgentEvent::TurnError {
                code,
                message,
                agent_code,
            } => {
                self.end_turn_with_error(ctx, &code, &message, agent_code, false, out);
            }
            AgentEvent::Failed { message } => {
                out.push(SessionOutput::Count(Counter::AgentFailure));
                self.fail_turn(ctx, ErrorCode::AgentUnavailable, &message, true, out);
                // The process broke the protocol: stop it; the next run_turn starts a fresh one.
                if let Some(link) = self.agent.take() {
                    link.stop(out);
                } else {
                    out.push(SessionOutput::AgentUnlinked(agent));
                    out.push(SessionOutput::Agent(AgentCommand::Stop { agent }));
                }
            }
        }
    }
}

/// The agent's file requests go to the agent host (the core does no file I/O); the other
/// control events are the session's (`controls.rs`).
fn control_command(agent: AgentId, control: ControlEvent, out: &mut Vec<SessionOutput>) {
    let command = match control {
        ControlEvent::ReadTextFile {
            request,
            path,
            line,
            limit,
        } => AgentCommand::ReadTextFile {
            agent,
            request: request.0,
            path,
            line,
            limit,
        },
        ControlEvent::WriteTextFile {
            request,
            path,
            content,
        } => AgentCommand::WriteTextFile {
            agent,
            request: request.0,
            path,
            content,
        },
        _ => return,
    };
    out.push(SessionOutput::Agent(command));
}

/// The JSON-RPC error an agent gets for a file request the host did not serve.
fn rpc_error(error: FileError) -> schema::Error {
    let code = match error.kind {
        FileErrorKind::NotFound => -32002,
        FileErrorKind::Refused => -32602,
        FileErrorKind::Failed => -32603,
    };
    schema::Error::new(code, error.message)
}

/// Keeps the turn's tool calls at their latest state (for `get_history`): a `tool_call`'s
/// fields, with each later `tool_call_update`'s fields written over them (`truncated` stays once
/// set). An update of a call the turn has not seen is kept as it is.
pub(super) fn record_tool_call(calls: &mut Vec<Value>, fields: &serde_json::Map<String, Value>) {
    let id = fields.get("toolCallId");
    let known = calls
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .find(|call| call.get("toolCallId") == id);
    match known {
        Some(call) => {
            let was_truncated = call.get("truncated") == Some(&Value::Bool(true));
            for (key, value) in fields {
                call.insert(key.clone(), value.clone());
            }
            if was_truncated {
                call.insert("truncated".into(), Value::Bool(true));
            }
            let mut sorted = Value::Object(std::mem::take(call));
            sorted.sort_all_objects();
            if let Value::Object(sorted) = sorted {
                *call = sorted;
            }
        }
        None => calls.push(Value::Object(fields.clone())),
    }
}
