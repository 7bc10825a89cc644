//! The agent's controls (issue 13 item 7): `set_mode` and `set_config_option` sent to the agent
//! and answered with its result, and the agent's `current_mode_update`,
//! `available_commands_update` and `config_option_update` published as their typed events.

use serde::Serialize;
use serde_json::Value;

use crate::acp::{schema, ControlEvent};
use crate::ids::ConnectionId;
use crate::protocol::event::{
    AvailableCommandsUpdate, ConfigOptionUpdate, CurrentModeUpdate, EventBody,
};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::ConfigValue;
use crate::protocol::session_reply::{
    AgentControls, JoinSnapshot, OpenQuestion, RunningTurn, SessionReply,
};
use crate::protocol::{encode_frame, ErrorCode};
use crate::session::{error_frame, Session, SessionContext, SessionOutput};

/// A `set_mode` or `set_config_option` waiting for the agent's answer.
pub(super) struct PendingControl {
    /// The ACP client's request number.
    request: u64,
    to: ConnectionId,
    request_id: Option<String>,
}

/// The agent's typed value as JSON, keys sorted at every depth (the published bytes do not
/// depend on the schema crate's field order).
pub(crate) fn sorted_json<T: Serialize>(value: &T) -> Value {
    let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
    value.sort_all_objects();
    value
}

impl Session {
    /// What `session_joined` carries besides the session (issue 13 item 4): the running turn
    /// (its agent text as published so far: the gateway flushes the coalescer first), the
    /// unanswered questions and the agent's controls.
    pub(crate) fn snapshot(&self) -> JoinSnapshot {
        if let (None, Some(remote)) = (&self.agent, self.remote_view()) {
            // Cluster mode: the session runs on another instance.
            return JoinSnapshot {
                turn: remote.turn.clone(),
                questions: remote.questions.clone(),
                agent: None,
            };
        }
        let turn = self.turn.as_ref().map(|turn| RunningTurn {
            turn_id: turn.id.clone(),
            text: turn.text.clone(),
            user_id: turn.user_id.clone(),
            started_at: turn.started_at_ms,
            agent_text: turn.final_text.clone(),
            agent_text_truncated: turn.final_text_truncated,
        });
        let acp = self
            .agent
            .as_ref()
            .map(|link| &link.acp)
            .filter(|acp| acp.is_ready());
        let questions = match acp {
            Some(acp) => {
                let pending: Vec<&str> = acp.pending_questions().collect();
                self.questions
                    .iter()
                    .filter(|question| pending.contains(&question.question_id.as_str()))
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let agent = acp.map(|acp| AgentControls {
            current_mode_id: acp.current_mode().map(str::to_owned),
            available_modes: sorted_json(&acp.available_modes()),
            config_options: acp.config_options().map(|options| sorted_json(&options)),
            available_commands: acp
                .available_commands()
                .map(|commands| sorted_json(&commands)),
        });
        JoinSnapshot {
            turn,
            questions,
            agent,
        }
    }

    /// A question the agent asked; the answered ones are forgotten (the ACP client knows which
    /// are pending).
    pub(super) fn remember_question(&mut self, question: OpenQuestion) {
        if let Some(acp) = self.agent.as_ref().map(|link| &link.acp) {
            let pending: Vec<&str> = acp.pending_questions().collect();
            self.questions
                .retain(|known| pending.contains(&known.question_id.as_str()));
        }
        self.questions.push(question);
    }

    /// `set_mode`: sent to the agent; answered when the agent answers.
    pub(crate) fn set_mode(
        &mut self,
        ctx: &SessionContext<'_>,
        to: ConnectionId,
        request_id: Option<&str>,
        mode_id: &str,
        out: &mut Vec<SessionOutput>,
    ) -> Handled {
        let request = self
            .ready_acp()?
            .set_mode(mode_id)
            .map_err(|_| not_running())?;
        self.wait_for_control(request, to, request_id);
        self.drain_agent(ctx, out);
        Ok(())
    }

    /// `set_config_option`: sent to the agent; answered when the agent answers.
    pub(crate) fn set_config_option(
        &mut self,
        ctx: &SessionContext<'_>,
        to: ConnectionId,
        request_id: Option<&str>,
        config_id: &str,
        value: &ConfigValue,
        out: &mut Vec<SessionOutput>,
    ) -> Handled {
        let value = match value {
            ConfigValue::Bool(value) => schema::SessionConfigOptionValue::boolean(*value),
            ConfigValue::Id(id) => schema::SessionConfigOptionValue::value_id(id.clone()),
        };
        let request = self
            .ready_acp()?
            .set_config_option(config_id, value)
            .map_err(|_| not_running())?;
        self.wait_for_control(request, to, request_id);
        self.drain_agent(ctx, out);
        Ok(())
    }

    fn ready_acp(&mut self) -> Result<&mut crate::acp::AcpClient, Refusal> {
        self.agent
            .as_mut()
            .map(|link| &mut link.acp)
            .filter(|acp| acp.is_ready())
            .ok_or_else(not_running)
    }

    fn wait_for_control(&mut self, request: u64, to: ConnectionId, request_id: Option<&str>) {
        self.pending_controls.push(PendingControl {
            request,
            to,
            request_id: request_id.map(str::to_owned),
        });
    }

    /// One of the ACP client's [`ControlEvent`]s.
    pub(super) fn control_event(
        &mut self,
        ctx: &SessionContext<'_>,
        event: ControlEvent,
        out: &mut Vec<SessionOutput>,
    ) {
        let turn_id = self.turn.as_ref().map(|turn| turn.id.clone());
        let turn_id = turn_id.as_deref();
        match event {
            ControlEvent::ModeChanged { mode_id } => self.publish_mode(ctx, turn_id, &mode_id, out),
            ControlEvent::CommandsChanged { commands } => {
                let commands = sorted_json(&commands);
                let body = EventBody::AvailableCommandsUpdate(AvailableCommandsUpdate {
                    available_commands: &commands,
                });
                self.publish(ctx, turn_id, body, out);
            }
            ControlEvent::ConfigOptionsChanged { options } => {
                self.publish_options(ctx, turn_id, &sorted_json(&options), out);
            }
            ControlEvent::ModeSet {
                request,
                mode_id,
                result,
            } => {
                let Some(pending) = self.take_control(request) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        let frame = encode_frame(&SessionReply::ModeSet {
                            request_id: pending.request_id.as_deref(),
                            session_id: &self.record.id,
                            mode_id: &mode_id,
                        });
                        out.push(SessionOutput::Reply {
                            to: pending.to,
                            frame,
                        });
                        self.publish_mode(ctx, turn_id, &mode_id, out);
                    }
                    Err(message) => self.refuse_control(&pending, &message, out),
                }
            }
            ControlEvent::ConfigOptionSet { request, result } => {
                let Some(pending) = self.take_control(request) else {
                    return;
                };
                match result {
                    Ok(options) => {
                        let options = sorted_json(&options);
                        let frame = encode_frame(&SessionReply::ConfigOptionSet {
                            request_id: pending.request_id.as_deref(),
                            session_id: &self.record.id,
                            config_options: &options,
                        });
                        out.push(SessionOutput::Reply {
                            to: pending.to,
                            frame,
                        });
                        self.publish_options(ctx, turn_id, &options, out);
                    }
                    Err(message) => self.refuse_control(&pending, &message, out),
                }
            }
            // The agent's file requests: not advertised (issue 13 item 8 serves them).
            ControlEvent::ReadTextFile { .. } | ControlEvent::WriteTextFile { .. } => {}
        }
    }

    fn publish_mode(
        &mut self,
        ctx: &SessionContext<'_>,
        turn_id: Option<&str>,
        mode_id: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        let body = EventBody::CurrentModeUpdate(CurrentModeUpdate {
            current_mode_id: mode_id,
        });
        self.publish(ctx, turn_id, body, out);
    }

    fn publish_options(
        &mut self,
        ctx: &SessionContext<'_>,
        turn_id: Option<&str>,
        options: &Value,
        out: &mut Vec<SessionOutput>,
    ) {
        let body = EventBody::ConfigOptionUpdate(ConfigOptionUpdate {
            config_options: options,
        });
        self.publish(ctx, turn_id, body, out);
    }

    fn take_control(&mut self, request: u64) -> Option<PendingControl> {
        let index = self
            .pending_controls
            .iter()
            .position(|pending| pending.request == request)?;
        Some(self.pending_controls.remove(index))
    }

    /// The agent answered with an error (`AGENT_REFUSED`, its message), or is gone
    /// (`AGENT_UNAVAILABLE`).
    fn refuse_control(
        &self,
        pending: &PendingControl,
        message: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        let gone = self.agent.as_ref().is_none_or(|link| link.acp.is_closed());
        let (code, message) = if gone {
            (
                ErrorCode::AgentUnavailable,
                format!("the agent stopped before answering: {message}"),
            )
        } else {
            (
                ErrorCode::AgentRefused,
                format!("the agent refused: {message}"),
            )
        };
        let frame = error_frame(code, &message, pending.request_id.as_deref());
        out.push(SessionOutput::Reply {
            to: pending.to,
            frame,
        });
    }

    /// Answers every waiting control request once the agent is gone without answering.
    pub(super) fn fail_pending_controls(&mut self, out: &mut Vec<SessionOutput>) {
        if self.agent.is_some() {
            return;
        }
        for pending in std::mem::take(&mut self.pending_controls) {
            let frame = error_frame(
                ErrorCode::AgentUnavailable,
                "the agent stopped before answering",
                pending.request_id.as_deref(),
            );
            out.push(SessionOutput::Reply {
                to: pending.to,
                frame,
            });
        }
    }
}

fn not_running() -> Refusal {
    Refusal::new(
        ErrorCode::InvalidState,
        "the session's agent is not running (run a turn first)",
    )
}
