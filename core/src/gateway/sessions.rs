//! The gateway's session side: the session and tenant tables, the agents' routing, and the
//! routing of what a `Session` outputs (frames to its subscribers or one connection, storage
//! and agent commands, tenant notifications, its deadline). Also the turn requests
//! (`run_turn`, `steer`, `stop_turn`, `answer_question`), checked here and handed to the session.
//!
//! A session is driven through `Gateway::drive`: the session gets a `SessionContext` and a
//! list to push its outputs into, and the gateway routes them, in order, once it returns (so a
//! send that closes a connection, which leaves every session it joined, never finds a session
//! in the middle of an input).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::ids::{AgentId, ConnectionId, SessionId, TimerKey};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{
    AnswerQuestion, RequestContext, RunTurn, SessionRef, SetConfigOption, SetMode,
};
use crate::protocol::ServerMessage;
use crate::protocol::{encode_frame, ErrorCode};
use crate::session::{Counter, NextTurn, Session, SessionContext, SessionOutput};
use crate::storage::{SessionRecord, StorageCommand, StorageQuery};

use super::queries::PendingQuery;
use crate::topic::Topic;
use crate::{AgentCommand, Event, Gateway};

/// A tenant: its notification topic (`tenant:{id}:sessions`) and its sessions, oldest first.
#[derive(Default)]
pub(crate) struct Tenant {
    pub(crate) topic: Topic,
    pub(crate) sessions: Vec<SessionId>,
}

impl Gateway {
    // ------------------------------------------------------------ the tables

    /// Loads the registry as storage recovered it (every session `inactive`).
    pub fn restore_sessions(&mut self, records: Vec<SessionRecord>) {
        for record in records {
            self.insert_session(record);
        }
    }

    /// Adds a session to the registry (and to its tenant's list, once).
    pub(crate) fn insert_session(&mut self, record: SessionRecord) -> SessionId {
        let id: SessionId = Arc::from(record.id.as_str());
        let tenant: Arc<str> = Arc::from(record.tenant_id.as_str());
        let entry = self.tenants.entry(tenant).or_default();
        if !entry.sessions.contains(&id) {
            entry.sessions.push(id.clone());
        }
        self.sessions.insert(id.clone(), Session::new(record));
        id
    }

    /// The session `session_id` of `tenant_id`, as a shared id; `None` also for another tenant's.
    pub(crate) fn find_session(&self, tenant_id: &str, session_id: &str) -> Option<SessionId> {
        let (id, session) = self.sessions.get_key_value(session_id)?;
        (session.record().tenant_id == tenant_id).then(|| id.clone())
    }

    /// The session a request names, in the caller's tenant.
    pub(crate) fn requested_session(
        &self,
        ctx: &RequestContext,
        session_id: &str,
    ) -> Result<SessionId, Refusal> {
        self.find_session(&ctx.identity.tenant_id, session_id)
            .ok_or_else(Refusal::session_not_found)
    }

    pub(crate) fn storage(&mut self, command: StorageCommand) {
        if self.cluster.is_some() {
            self.cluster_storage(command);
            return;
        }
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
            let record = session.record().clone();
            self.storage(StorageCommand::UpsertSession { session: record });
        }
    }

    // ------------------------------------------------------------ tenant notifications

    /// Answers the requester with `kind {requestId, session}`, then sends `kind {session}` to
    /// the whole tenant (the requester included, PROTOCOL section 7). `created` picks
    /// `session_created`, else `session_updated`.
    pub(crate) fn announce_session(
        &mut self,
        requester: Option<(ConnectionId, Option<&str>)>,
        session_id: &SessionId,
        created: bool,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let session_meta = session.meta();
        let tenant = session.record().tenant_id.clone();
        let reply = requester.map(|(connection, request_id)| {
            let reply = if created {
                ServerMessage::SessionCreated {
                    request_id,
                    session: session_meta.clone(),
                }
            } else {
                ServerMessage::SessionUpdated {
                    request_id,
                    session: session_meta.clone(),
                }
            };
            (connection, encode_frame(&reply))
        });
        let notification = if created {
            ServerMessage::SessionCreated {
                request_id: None,
                session: session_meta,
            }
        } else {
            ServerMessage::SessionUpdated {
                request_id: None,
                session: session_meta,
            }
        };
        let frame = encode_frame(&notification);
        if let Some((connection, reply)) = reply {
            self.send(connection, reply, now);
        }
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
    /// An `/acp` subscriber gets the frame translated, decoded once for all of them.
    fn fan_out(&mut self, subscribers: &mut Vec<ConnectionId>, frame: &Bytes, now: Instant) {
        let mut translated: Option<super::acp::TranslatedEvent> = None;
        for connection in subscribers.drain(..) {
            if !self.send_unless_acp(connection, frame, now) {
                let event =
                    translated.get_or_insert_with(|| super::acp::TranslatedEvent::new(frame));
                self.acp_deliver(connection, frame, Some(event), now);
            }
        }
        self.fanout_scratch = std::mem::take(subscribers);
    }

    // ------------------------------------------------------------ driving a session

    /// Runs one input of the session `session_id` and routes its outputs; `None` when there is
    /// no such session.
    pub(crate) fn drive<R>(
        &mut self,
        session_id: &SessionId,
        now: Instant,
        input: impl FnOnce(&mut Session, &SessionContext<'_>, &mut Vec<SessionOutput>) -> R,
    ) -> Option<R> {
        let mut out = std::mem::take(&mut self.session_outputs);
        let ctx = SessionContext {
            config: &self.config,
            now,
            unix_ms: self.clock.unix_ms(now) as i64,
            draining: self.draining,
            next_agent: AgentId(self.next_agent + 1),
        };
        let result = self
            .sessions
            .get_mut(session_id)
            .map(|session| input(session, &ctx, &mut out));
        self.route(session_id, &mut out, now);
        self.session_outputs = out;
        self.reschedule_session(session_id, now);
        result
    }

    /// Routes a session's outputs, in order.
    fn route(&mut self, session_id: &SessionId, out: &mut Vec<SessionOutput>, now: Instant) {
        for output in out.drain(..) {
            match output {
                SessionOutput::Publish(frame) => {
                    self.metrics.events_published += 1;
                    let Some(session) = self.sessions.get(session_id) else {
                        continue;
                    };
                    let mut subscribers = std::mem::take(&mut self.fanout_scratch);
                    subscribers.extend_from_slice(session.subscribers());
                    self.fan_out(&mut subscribers, &frame, now);
                }
                SessionOutput::Reply { to, frame } => self.send(to, frame, now),
                SessionOutput::Storage(command) => self.storage(command),
                SessionOutput::Agent(command) => self.agent_command(command),
                SessionOutput::NotifyTenant(frame) => {
                    let Some(session) = self.sessions.get(session_id) else {
                        continue;
                    };
                    let tenant = session.record().tenant_id.clone();
                    self.broadcast_tenant(&tenant, frame, now);
                }
                SessionOutput::AgentLinked(agent) => {
                    self.next_agent = self.next_agent.max(agent.0);
                    self.agents.insert(agent, session_id.clone());
                }
                SessionOutput::AgentUnlinked(agent) => {
                    self.agents.remove(&agent);
                }
                SessionOutput::Count(counter) => match counter {
                    Counter::TurnStarted => self.metrics.turns_started += 1,
                    Counter::TurnCompleted => self.metrics.turns_completed += 1,
                    Counter::TurnFailed => self.metrics.turns_failed += 1,
                    Counter::AgentStarted => self.metrics.agents_started += 1,
                    Counter::AgentFailure => self.metrics.agent_failures += 1,
                },
                SessionOutput::TurnEnded => self.turn_ended_while_draining(now),
                SessionOutput::QueryTranscript { limit } => {
                    let token = self.next_token();
                    self.pending_queries.insert(
                        token,
                        PendingQuery::Transcript {
                            session_id: session_id.clone(),
                        },
                    );
                    self.storage(StorageCommand::Query {
                        token,
                        query: StorageQuery::History {
                            session_id: session_id.to_string(),
                            before_turn: None,
                            limit,
                        },
                    });
                }
            }
        }
    }

    /// Arms the session's timer at its earliest deadline (after its idle clock is updated).
    pub(crate) fn reschedule_session(&mut self, session_id: &SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.update_idle(now);
        let Some(deadline) = session.poll_timeout(&self.config) else {
            return;
        };
        self.timers.schedule(
            TimerKey::Session(session_id.clone()),
            session.scheduled_mut(),
            deadline,
        );
    }

    /// The session's timer fired at `at` (ignored unless it is the one armed).
    pub(crate) fn session_timer(&mut self, session_id: &SessionId, at: Instant, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        if *session.scheduled_mut() != Some(at) {
            return;
        }
        *session.scheduled_mut() = None;
        self.drive(session_id, now, |session, ctx, out| {
            session.handle_timeout(ctx, out)
        });
    }

    // ------------------------------------------------------------ turn requests

    pub(crate) fn run_turn(
        &mut self,
        ctx: &RequestContext,
        request: &RunTurn,
        steer: bool,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        if self.refuse_while_draining(ctx.connection, ctx.request_id.as_deref(), now) {
            return Ok(());
        }
        self.refuse_new_work_for_storage()?;
        let next = NextTurn {
            id: crate::rng::format_uuid(self.rng.uuid_v4()),
            user_id: ctx.identity.user_id.clone(),
            text: request.text.clone(),
            content: request.content.clone().unwrap_or_default(),
            reply_to: Some((ctx.connection, ctx.request_id.clone())),
        };
        self.drive(&session_id, now, |session, sctx, out| {
            session.run_turn(sctx, next, steer, out)
        })
        .unwrap_or_else(|| Err(Refusal::session_not_found()))
    }

    pub(crate) fn stop_turn(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let request_id = ctx.request_id.as_deref();
        self.drive(&session_id, now, |session, sctx, out| {
            session.stop_turn(sctx, ctx.connection, request_id, out)
        })
        .unwrap_or_else(|| Err(Refusal::session_not_found()))
    }

    pub(crate) fn answer_question(
        &mut self,
        ctx: &RequestContext,
        request: &AnswerQuestion,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let option_id = request.option_id.as_deref();
        if option_id.is_some() == request.cancelled.unwrap_or(false) {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "give either optionId or cancelled: true",
            ));
        }
        let request_id = ctx.request_id.as_deref();
        let user_id = ctx.identity.user_id.as_str();
        self.drive(&session_id, now, |session, sctx, out| {
            let question_id = request.question_id.as_str();
            session.answer_question(
                sctx,
                ctx.connection,
                request_id,
                user_id,
                question_id,
                option_id,
                out,
            )
        })
        .unwrap_or_else(|| Err(Refusal::session_not_found()))
    }

    /// `set_mode`: handed to the session, which asks its agent.
    pub(crate) fn set_mode(
        &mut self,
        ctx: &RequestContext,
        request: &SetMode,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let request_id = ctx.request_id.as_deref();
        self.drive(&session_id, now, |session, sctx, out| {
            session.set_mode(sctx, ctx.connection, request_id, &request.mode_id, out)
        })
        .unwrap_or_else(|| Err(Refusal::session_not_found()))
    }

    /// `set_config_option`: handed to the session, which asks its agent.
    pub(crate) fn set_config_option(
        &mut self,
        ctx: &RequestContext,
        request: &SetConfigOption,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let request_id = ctx.request_id.as_deref();
        self.drive(&session_id, now, |session, sctx, out| {
            let config_id = request.config_id.as_str();
            session.set_config_option(
                sctx,
                ctx.connection,
                request_id,
                config_id,
                &request.value,
                out,
            )
        })
        .unwrap_or_else(|| Err(Refusal::session_not_found()))
    }

    // ------------------------------------------------------------ agent host inputs

    /// The session an agent process's reports go to.
    fn agent_session(&self, agent: AgentId) -> Option<SessionId> {
        self.agents.get(&agent).cloned()
    }

    /// The agent process of `agent` started; `workspace` is its working directory.
    pub fn handle_agent_spawned(&mut self, agent: AgentId, workspace: &str, now: Instant) {
        if let Some(session_id) = self.agent_session(agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_spawned(ctx, agent, workspace, out)
            });
        }
    }

    /// The agent process of `agent` could not be started (unknown command, too many processes).
    pub fn handle_agent_spawn_failed(&mut self, agent: AgentId, reason: &str, now: Instant) {
        if let Some(session_id) = self.agents.remove(&agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_spawn_failed(ctx, agent, reason, out)
            });
        }
    }

    /// One line from the agent's stdout (without its newline).
    pub fn handle_agent_line(&mut self, agent: AgentId, line: &[u8], now: Instant) {
        if let Some(session_id) = self.agent_session(agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_line(ctx, agent, line, out)
            });
        }
    }

    /// The agent host's answer to an `AgentCommand::ReadTextFile`: the text, or why not.
    pub fn handle_agent_file_read(
        &mut self,
        agent: AgentId,
        request: u64,
        result: Result<String, crate::FileError>,
        now: Instant,
    ) {
        if let Some(session_id) = self.agent_session(agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_file_read(ctx, agent, request, result, out)
            });
        }
    }

    /// The agent host's answer to an `AgentCommand::WriteTextFile`: on success `path` is the
    /// written file's path relative to the workspace (published as `file_changed`).
    pub fn handle_agent_file_written(
        &mut self,
        agent: AgentId,
        request: u64,
        result: Result<String, crate::FileError>,
        now: Instant,
    ) {
        if let Some(session_id) = self.agent_session(agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_file_written(ctx, agent, request, result, out)
            });
        }
    }

    /// The agent host gave up on the process (a line over the limit, a stdin backlog, the
    /// workspace over its quota) and is stopping it; `handle_agent_exited` follows, and the
    /// turn it ends fails with this reason.
    pub fn handle_agent_failed(&mut self, agent: AgentId, reason: &str, _now: Instant) {
        let Some(session_id) = self.agents.get(&agent) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.agent_failed(agent, reason);
        }
    }

    /// The agent process exited (or the host gave up on it).
    pub fn handle_agent_exited(&mut self, agent: AgentId, now: Instant) {
        if let Some(session_id) = self.agents.remove(&agent) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.agent_gone(ctx, agent, out)
            });
        }
    }
}
