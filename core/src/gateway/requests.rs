//! The gateway protocol's requests on `/ws` (PROTOCOL sections 3 to 5): a text message parsed
//! once, its role checked, and routed to its handler; the registry requests are handled here.
//! Authentication and the rate limit are the connection's (`connections.rs`, `connection/`);
//! joins and reads are in `queries.rs`; turns go to the session (`sessions.rs`).

use std::time::Instant;

use crate::connection::Departed;
use crate::gateway::durable::{DurableAction, Previous};
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{
    ClientRequest, CreateSession, ListSessions, RenameSession, RequestContext, RequestKind,
    SessionRef,
};
use crate::protocol::{
    self, role_allows, ClientMessage, EnvelopeError, ErrorCode, Parsed, ServerMessage,
};
use crate::session::state::SessionStatus;
use crate::session::turns::truncate;
use crate::session::Session;
use crate::storage::{SessionRecord, StorageCommand};
use crate::Gateway;

/// Longest session name accepted.
pub const MAX_SESSION_NAME: usize = 200;

impl Gateway {
    /// A text message on `/ws`: parsed once, then answered in the protocol's order: envelope
    /// errors, `ping` (before the rate limit), the rate limit, `authenticate`, authentication,
    /// unknown types, the role, field errors, then the request itself.
    pub(crate) fn client_message(&mut self, id: ConnectionId, text: &str, now: Instant) {
        let ClientMessage { request_id, body } = match protocol::parse_client_message(text) {
            Ok(message) => message,
            Err(error) => {
                if !self.count_message(id, None, now) {
                    return;
                }
                match error {
                    EnvelopeError::InvalidJson => self.send_error(
                        id,
                        ErrorCode::InvalidJson,
                        "the message is not valid JSON",
                        None,
                        now,
                    ),
                    EnvelopeError::InvalidMessage { reason, request_id } => self.send_error(
                        id,
                        ErrorCode::InvalidMessage,
                        reason,
                        request_id.as_deref(),
                        now,
                    ),
                }
                return;
            }
        };
        if body == Parsed::Request(ClientRequest::Ping) {
            let pong = ServerMessage::Pong {
                ts: self.clock.unix_ms(now),
                request_id: request_id.as_deref(),
            };
            self.send_message(id, &pong, now);
            return;
        }
        if !self.count_message(id, request_id.as_deref(), now) {
            return;
        }
        let identity = self
            .client_state(id)
            .and_then(|client| client.identity().cloned());
        let result = match (body, identity) {
            (Parsed::Request(ClientRequest::Authenticate(request)), _) => {
                self.authenticate_message(id, Ok(&request.token), request_id.as_deref(), now)
            }
            (
                Parsed::Invalid {
                    kind: RequestKind::Authenticate,
                    reason,
                },
                _,
            ) => self.authenticate_message(
                id,
                Err(Refusal::invalid(reason)),
                request_id.as_deref(),
                now,
            ),
            (_, None) => Err(Refusal::new(
                ErrorCode::NotAuthenticated,
                "authenticate first",
            )),
            (body, Some(identity)) => {
                let ctx = RequestContext {
                    connection: id,
                    identity,
                    request_id: request_id.clone(),
                };
                let stage = crate::gateway::cluster::Stage::default();
                match self.cluster_request(&ctx, &body, text, stage, now) {
                    Some(result) => result,
                    None => self.request(&ctx, body, now),
                }
            }
        };
        if let Err(refusal) = result {
            self.send_refusal(id, &refusal, request_id.as_deref(), now);
        }
    }

    /// An authenticated connection's request: unknown types, then the role, then field
    /// errors, then the handler of the request's type.
    pub(crate) fn request(&mut self, ctx: &RequestContext, body: Parsed, now: Instant) -> Handled {
        let (kind, request) = match body {
            Parsed::Unknown => return Err(Refusal::invalid("unknown message type")),
            Parsed::Invalid { kind, reason } => (kind, Err(Refusal::invalid(reason))),
            Parsed::Request(request) => (request.kind(), Ok(request)),
        };
        if let Some(needs) = kind.permission() {
            if !role_allows(&ctx.identity.role, needs) {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!("the role {} may not {}", ctx.identity.role, kind.name()),
                ));
            }
        }
        match request? {
            // Both are answered before (`client_message`).
            ClientRequest::Ping | ClientRequest::Authenticate(_) => Ok(()),
            ClientRequest::ListSessions(request) => self.list_sessions(ctx, &request, now),
            ClientRequest::CreateSession(request) => self.create_session(ctx, &request, now),
            ClientRequest::RenameSession(request) => self.rename_session(ctx, &request, now),
            ClientRequest::ArchiveSession(request) => {
                self.archive_session(ctx, &request, true, now)
            }
            ClientRequest::UnarchiveSession(request) => {
                self.archive_session(ctx, &request, false, now)
            }
            ClientRequest::DeleteSession(request) => self.delete_session(ctx, &request, now),
            ClientRequest::JoinSession(request) => self.join_session(ctx, &request, now),
            ClientRequest::LeaveSession(request) => self.leave_session(ctx, &request, now),
            ClientRequest::GetEvents(request) => self.get_events(ctx, &request, now),
            ClientRequest::GetHistory(request) => self.get_history(ctx, &request, now),
            ClientRequest::RunTurn(request) => self.run_turn(ctx, &request, false, now),
            ClientRequest::Steer(request) => self.run_turn(ctx, &request, true, now),
            ClientRequest::StopTurn(request) => self.stop_turn(ctx, &request, now),
            ClientRequest::AnswerQuestion(request) => self.answer_question(ctx, &request, now),
            ClientRequest::SetMode(request) => self.set_mode(ctx, &request, now),
            ClientRequest::SetConfigOption(request) => self.set_config_option(ctx, &request, now),
        }
    }

    pub(crate) fn send_refusal(
        &mut self,
        id: ConnectionId,
        refusal: &Refusal,
        request_id: Option<&str>,
        now: Instant,
    ) {
        let error = ServerMessage::Error {
            code: refusal.code,
            message: &refusal.message,
            request_id,
            retry_after_ms: refusal.retry_after.map(|after| after.as_millis() as u64),
        };
        self.send_message(id, &error, now);
    }

    /// A `/ws` connection is gone: it leaves its tenant topic and every session it joined.
    pub(crate) fn client_gone(&mut self, id: ConnectionId, client: Departed, now: Instant) {
        if let Some(identity) = &client.identity {
            if let Some(tenant) = self.tenants.get_mut(identity.tenant_id.as_str()) {
                tenant.topic.unsubscribe(id);
            }
        }
        for session_id in client.joined {
            // Nobody is left to answer.
            let _ = self.unsubscribe(&session_id, id, now);
            self.feed_unwatched(&session_id);
        }
        // Replies still owed to this connection are dropped: its id may be given to another
        // connection (of another tenant) next.
        self.pending_queries
            .retain(|_, pending| pending.connection() != Some(id));
        self.forget_durable_requester(id);
        for session in self.sessions.values_mut() {
            session.forget_requester(id);
        }
    }

    // ------------------------------------------------------------ the registry

    fn list_sessions(
        &mut self,
        ctx: &RequestContext,
        request: &ListSessions,
        now: Instant,
    ) -> Handled {
        let include_archived = request.include_archived.unwrap_or(false);
        let sessions: Vec<_> = self
            .tenants
            .get(ctx.identity.tenant_id.as_str())
            .map(|tenant| {
                tenant
                    .sessions
                    .iter()
                    .filter_map(|session_id| self.sessions.get(session_id))
                    .filter(|session| include_archived || !session.record().archived)
                    .map(Session::meta)
                    .collect()
            })
            .unwrap_or_default();
        let frame = protocol::encode_frame(&ServerMessage::SessionList {
            request_id: ctx.request_id.as_deref(),
            sessions,
        });
        self.send(ctx.connection, frame, now);
        Ok(())
    }

    fn create_session(
        &mut self,
        ctx: &RequestContext,
        request: &CreateSession,
        now: Instant,
    ) -> Handled {
        let (id, identity) = (ctx.connection, &ctx.identity);
        let request_id = ctx.request_id.as_deref();
        if self.refuse_while_draining(id, request_id, now) {
            return Ok(());
        }
        let agent_type = request.agent_type.as_str();
        if !self
            .config
            .agent_types
            .iter()
            .any(|known| known == agent_type)
        {
            return Err(Refusal::new(
                ErrorCode::AgentUnavailable,
                format!("unknown agent type {}", truncate(agent_type, 64)),
            ));
        }
        let name = request.name.as_deref().unwrap_or("New session");
        check_name(name)?;
        self.refuse_new_work_for_storage()?;
        let at = self.clock.unix_ms(now) as i64;
        let session_id = crate::rng::format_uuid(self.rng.uuid_v4());
        let record = SessionRecord {
            id: session_id.clone(),
            tenant_id: identity.tenant_id.clone(),
            name: name.to_owned(),
            agent_type: agent_type.to_owned(),
            status: SessionStatus::Inactive,
            archived: false,
            created_by: identity.user_id.clone(),
            created_at_ms: at,
            updated_at_ms: at,
            last_seq: 0,
            epoch: self.new_epoch(),
            acp_session_id: None,
        };
        // The session joins the in-memory registry, and `session_created` goes out, once its
        // row is committed (see `durable`).
        self.storage(StorageCommand::UpsertSession {
            session: record.clone(),
        });
        self.await_commit(
            &identity.tenant_id,
            id,
            request_id,
            DurableAction::Create(record),
        );
        Ok(())
    }

    /// A fresh epoch: random, so no two logs (or two lives of one log) share one.
    pub(crate) fn new_epoch(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
    }

    fn rename_session(
        &mut self,
        ctx: &RequestContext,
        request: &RenameSession,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        check_name(&request.name)?;
        self.update_session(ctx, &session_id, Update::Rename(&request.name), now)
    }

    /// `archive_session` (`archived`) and `unarchive_session`.
    fn archive_session(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        archived: bool,
        now: Instant,
    ) -> Handled {
        let session_id = self.requested_session(ctx, &request.session_id)?;
        self.update_session(ctx, &session_id, Update::Archive(archived), now)
    }

    fn update_session(
        &mut self,
        ctx: &RequestContext,
        session_id: &SessionId,
        update: Update<'_>,
        now: Instant,
    ) -> Handled {
        let at = self.clock.unix_ms(now) as i64;
        let Some(session) = self.sessions.get_mut(session_id) else {
            return Err(Refusal::session_not_found());
        };
        let previous = match update {
            Update::Rename(name) => Previous::Name(session.rename(name.to_owned(), at)),
            Update::Archive(archived) => Previous::Archived(session.set_archived(archived, at)),
        };
        let record = session.record().clone();
        self.persist_session(session_id);
        // `session_updated` goes out once the change is committed (see `durable`).
        self.await_commit(
            &ctx.identity.tenant_id,
            ctx.connection,
            ctx.request_id.as_deref(),
            DurableAction::Update { record, previous },
        );
        Ok(())
    }

    fn delete_session(
        &mut self,
        ctx: &RequestContext,
        request: &SessionRef,
        now: Instant,
    ) -> Handled {
        let (id, identity) = (ctx.connection, &ctx.identity);
        let request_id = ctx.request_id.as_deref();
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let Some(mut session) = self.sessions.remove(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        // A run_turn still waiting for the activation is answered now: it never will be else.
        if let Some((to, pending_request)) = session.take_pending_requester() {
            let frame = crate::session::error_frame(
                ErrorCode::SessionNotFound,
                "the session was deleted",
                pending_request.as_deref(),
            );
            self.send(to, frame, now);
        }
        if let Some(agent) = session.agent_id() {
            self.agents.remove(&agent);
            self.agent_command(crate::gateway::AgentCommand::Stop { agent });
        }
        for subscriber in session.watchers() {
            if let Some(client) = self.client_state_mut(subscriber) {
                client.leave(&session_id);
            }
            self.acp_session_deleted(subscriber, &session_id, now);
        }
        if let Some(tenant) = self.tenants.get_mut(identity.tenant_id.as_str()) {
            tenant.sessions.retain(|listed| *listed != session_id);
        }
        self.storage(StorageCommand::DeleteSession {
            tenant_id: identity.tenant_id.clone(),
            session_id: session_id.to_string(),
        });
        // Joins, reads and histories of this session still waiting for storage are answered
        // after the deletion itself: `session_deleted` goes out, to the requester and the
        // tenant, once the delete is committed, then they are (see `durable`).
        let tokens: Vec<u64> = self
            .pending_queries
            .iter()
            .filter(|(_, pending)| pending.session_id() == &session_id)
            .map(|(token, _)| *token)
            .collect();
        let orphaned = tokens
            .iter()
            .filter_map(|token| self.pending_queries.remove(token))
            .collect();
        self.await_commit(
            &identity.tenant_id,
            id,
            request_id,
            DurableAction::Delete {
                record: session.into_record(),
                orphaned,
            },
        );
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Update<'a> {
    Rename(&'a str),
    Archive(bool),
}

fn check_name(name: &str) -> Handled {
    if name.trim().is_empty() || name.chars().count() > MAX_SESSION_NAME {
        return Err(Refusal::invalid(format!(
            "name must be 1 to {MAX_SESSION_NAME} characters"
        )));
    }
    Ok(())
}
