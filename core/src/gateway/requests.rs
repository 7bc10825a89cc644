//! The gateway protocol on `/ws` (PROTOCOL sections 3 to 5): the envelope, authentication, the
//! per-connection rate limit, roles, and the registry requests. Joins and replays are in
//! `replay.rs`; turns in `turns.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::durable::{DurableAction, Previous};
use crate::gateway::ClientState;
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{
    ClientRequest, CreateSession, ListSessions, RenameSession, RequestContext, RequestKind,
    SessionRef,
};
use crate::protocol::{
    self, role_allows, ClientMessage, EnvelopeError, ErrorCode, Identity, Parsed, ServerMessage,
};
use crate::session::state::SessionStatus;
use crate::session::{FrameWriter, PendingQuery, Session};
use crate::storage::{self, MemberRecord, SessionRecord, StorageCommand};
use crate::ws::close_code;
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
            .and_then(|client| client.identity.clone());
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
                self.request(&ctx, body, now)
            }
        };
        if let Err(refusal) = result {
            self.send_refusal(id, &refusal, request_id.as_deref(), now);
        }
    }

    /// Counts a message against the connection's budget. Over it: `RATE_LIMITED`, and a close
    /// with 4101 when the client keeps going. Returns false when the message must be dropped.
    fn count_message(&mut self, id: ConnectionId, request_id: Option<&str>, now: Instant) -> bool {
        let limit = self.config.rate_limit_messages;
        let window = self.config.rate_limit_window;
        let Some(client) = self.client_state_mut(id) else {
            return false;
        };
        match client.rate.hit(client.opened_at, now, limit, window) {
            Ok(()) => true,
            Err(retry_after) => {
                let refused = client.rate.refused;
                self.metrics.rate_limited += 1;
                if u32::from(refused) > limit.max(1) {
                    self.metrics.rate_limit_closes += 1;
                    self.close_websocket(
                        id,
                        close_code::RATE_LIMITED,
                        "rate limited too often",
                        now,
                    );
                    return false;
                }
                let error = ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: "too many messages; slow down",
                    request_id,
                    retry_after_ms: Some(retry_after.as_millis() as u64),
                };
                self.send_message(id, &error, now);
                false
            }
        }
    }

    /// An authenticated connection's request: unknown types, then the role, then field
    /// errors, then the handler of the request's type.
    fn request(&mut self, ctx: &RequestContext, body: Parsed, now: Instant) -> Handled {
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
        }
    }

    fn send_refusal(
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

    /// The session `session_id` of a request, in the caller's tenant.
    pub(crate) fn requested_session(
        &self,
        ctx: &RequestContext,
        session_id: &str,
    ) -> Result<SessionId, Refusal> {
        self.find_session(&ctx.identity.tenant_id, session_id)
            .ok_or_else(Refusal::session_not_found)
    }

    /// Sends `{type, requestId?, ...}` to one connection.
    pub(crate) fn reply(
        &mut self,
        id: ConnectionId,
        kind: &str,
        request_id: Option<&str>,
        build: impl FnOnce(&mut FrameWriter),
        now: Instant,
    ) {
        let mut writer = FrameWriter::new(kind);
        if let Some(request_id) = request_id {
            writer.field("requestId", request_id);
        }
        build(&mut writer);
        let (frame, _) = writer.finish();
        self.send(id, frame, now);
    }

    // ------------------------------------------------------------ authentication

    /// `authenticate`: `token` is the request's token, or the refusal of its fields (answered
    /// only when the connection is not authenticated yet).
    fn authenticate_message(
        &mut self,
        id: ConnectionId,
        token: Result<&str, Refusal>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        if let Some(identity) = self
            .client_state(id)
            .and_then(|client| client.identity.clone())
        {
            let reply = ServerMessage::Authenticated {
                identity: &identity,
                request_id,
            };
            self.send_message(id, &reply, now);
            return Ok(());
        }
        let identity = self.verify_token(id, token?, now)?;
        self.complete_authentication(id, identity, request_id, now);
        Ok(())
    }

    /// A token from the upgrade request: on failure the client is told and closed with 4001
    /// ("get a new token"); when it was only not verified yet (`AUTH_RATE_LIMITED`: its address
    /// is over its failure budget and used its verification slot), with 4101 ("reconnect with
    /// backoff"), since the token may well be valid.
    pub(crate) fn authenticate_upgrade_token(
        &mut self,
        id: ConnectionId,
        token: &str,
        now: Instant,
    ) {
        match self.verify_token(id, token, now) {
            Ok(identity) => self.complete_authentication(id, identity, None, now),
            Err(refusal) => {
                self.send_refusal(id, &refusal, None, now);
                let (code, reason) = if refusal.code == ErrorCode::AuthRateLimited {
                    (close_code::RATE_LIMITED, "try again shortly")
                } else {
                    (close_code::AUTH_FAILED, "authentication failed")
                };
                self.close_websocket(id, code, reason, now);
            }
        }
    }

    /// Verifies a token. A token in the verified-token cache is accepted before any limit (it
    /// costs one hash). A fresh one is verified at once while the client's address is within its
    /// failure budget; over it, at the limiter's verification rate (`AUTH_RATE_LIMITED` with a
    /// `retryAfterMs` of at most one interval otherwise), so others' failures behind the same
    /// address slow a valid token down but never lock it out.
    fn verify_token(
        &mut self,
        id: ConnectionId,
        token: &str,
        now: Instant,
    ) -> Result<Arc<Identity>, Refusal> {
        self.arm_sweep(now);
        let ip = self.client_state(id).map(|client| client.client_ip);
        let unix_ms = self.clock.unix_ms(now);
        let cached = self
            .auth
            .as_mut()
            .and_then(|auth| auth.cached(token, unix_ms));
        let verified = match (cached, self.auth.as_mut()) {
            (Some(identity), _) => Ok(identity),
            (None, Some(auth)) => {
                if let Some(ip) = ip {
                    if let Err(retry_after) = self.auth_failures.admit_verification(ip, now) {
                        return Err(Refusal {
                            retry_after: Some(retry_after.max(Duration::from_millis(1))),
                            ..Refusal::new(
                                ErrorCode::AuthRateLimited,
                                "too many failed authentications from this address; try again \
                                 shortly",
                            )
                        });
                    }
                }
                auth.verify_fresh(token, unix_ms)
                    .map_err(|error| error.to_string())
            }
            (None, None) => Err("token verification is not configured on this gateway".to_owned()),
        };
        let checked = verified.and_then(|identity| {
            if storage::is_valid_identifier(&identity.tenant_id) {
                Ok(identity)
            } else {
                Err("the token's tenant_id is not a valid identifier".to_owned())
            }
        });
        match checked {
            Ok(identity) => Ok(identity),
            Err(message) => {
                if let Some(ip) = ip {
                    self.auth_failures.record_failure(ip, now);
                }
                self.metrics.auth_failures += 1;
                Err(Refusal::new(ErrorCode::AuthFailed, message))
            }
        }
    }

    /// The connection is `identity` from now on: it joins its tenant's topic and is answered
    /// `authenticated`.
    pub(crate) fn complete_authentication(
        &mut self,
        id: ConnectionId,
        identity: Arc<Identity>,
        request_id: Option<&str>,
        now: Instant,
    ) {
        let Some(client) = self.client_state_mut(id) else {
            return;
        };
        client.identity = Some(identity.clone());
        client.auth_deadline = None;
        let tenant: Arc<str> = Arc::from(identity.tenant_id.as_str());
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .topic
            .subscribe(id);
        if self
            .known_members
            .insert((tenant, identity.user_id.clone()))
        {
            let at = self.clock.unix_ms(now) as i64;
            self.storage(StorageCommand::UpsertMember {
                member: MemberRecord {
                    tenant_id: identity.tenant_id.clone(),
                    user_id: identity.user_id.clone(),
                    role: identity.role.clone(),
                    created_at_ms: at,
                    updated_at_ms: at,
                },
            });
        }
        let reply = ServerMessage::Authenticated {
            identity: &identity,
            request_id,
        };
        self.send_message(id, &reply, now);
        self.reschedule(id);
    }

    /// A `/ws` connection is gone: it leaves its tenant topic and every session it joined.
    pub(crate) fn client_gone(&mut self, id: ConnectionId, client: ClientState, now: Instant) {
        if let Some(identity) = &client.identity {
            if let Some(tenant) = self.tenants.get_mut(identity.tenant_id.as_str()) {
                tenant.topic.unsubscribe(id);
            }
        }
        for session_id in client.joined {
            // Nobody is left to answer.
            let _ = self.unsubscribe(&session_id, id, now);
        }
        // Replies still owed to this connection are dropped: its id may be given to another
        // connection (of another tenant) next.
        self.pending_queries
            .retain(|_, pending| pending.connection() != id);
        self.forget_durable_requester(id);
        for session in self.sessions.values_mut() {
            if let Some(next) = session.next_turn.as_mut() {
                if next
                    .reply_to
                    .as_ref()
                    .is_some_and(|(connection, _)| *connection == id)
                {
                    next.reply_to = None;
                }
            }
        }
    }

    /// Takes the connection out of the session's topic. A join of it still waiting for its
    /// replay is abandoned: its storage query is forgotten and its request returned, to be
    /// answered by the caller (nobody, when the connection is gone).
    pub(crate) fn unsubscribe(
        &mut self,
        session_id: &SessionId,
        id: ConnectionId,
        now: Instant,
    ) -> Option<PendingQuery> {
        let session = self.sessions.get_mut(session_id)?;
        session.topic.unsubscribe(id);
        let token = session
            .replaying
            .iter()
            .position(|p| p.connection == id)
            .map(|index| session.replaying.remove(index).token);
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
        let (connection, request_id) = pending.requester();
        self.send_error(connection, code, message, request_id, now);
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
                    .filter(|session| include_archived || !session.record.archived)
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
            Update::Rename(name) => {
                Previous::Name(std::mem::replace(&mut session.record.name, name.to_owned()))
            }
            Update::Archive(archived) => {
                Previous::Archived(std::mem::replace(&mut session.record.archived, archived))
            }
        };
        session.record.updated_at_ms = at;
        let record = session.record.clone();
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
        _now: Instant,
    ) -> Handled {
        let (id, identity) = (ctx.connection, &ctx.identity);
        let request_id = ctx.request_id.as_deref();
        let session_id = self.requested_session(ctx, &request.session_id)?;
        let Some(session) = self.sessions.remove(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        if let Some(agent) = &session.agent {
            self.agents.remove(&agent.id);
            self.agent_command(crate::gateway::AgentCommand::Stop { agent: agent.id });
        }
        for subscriber in session
            .topic
            .subscribers()
            .iter()
            .chain(session.replaying.iter().map(|pending| &pending.connection))
        {
            if let Some(client) = self.client_state_mut(*subscriber) {
                client.joined.retain(|joined| *joined != session_id);
            }
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
                record: session.record,
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

/// At most `max` bytes of `text`, cut on a character boundary (for echoing client input).
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
