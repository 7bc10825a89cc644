//! The gateway protocol on `/ws` (PROTOCOL sections 3 to 5): the envelope, authentication, the
//! per-connection rate limit, roles, and the registry requests. Joins and replays are in
//! `replay.rs`; turns in `turns.rs`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::connection::Departed;
use crate::gateway::durable::{DurableAction, Previous};
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::{self, Envelope, EnvelopeError, ErrorCode, Identity, ServerMessage};
use crate::session::state::SessionStatus;
use crate::session::{FrameWriter, PendingQuery, Session};
use crate::storage::{SessionRecord, StorageCommand};
use crate::Gateway;

/// What a role may do (PROTOCOL section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Create,
    Write,
    Archive,
    Delete,
    Steer,
}

pub fn role_allows(role: &str, permission: Permission) -> bool {
    match role {
        "owner" | "admin" => true,
        "member" => permission != Permission::Delete,
        "viewer" => permission == Permission::Read,
        _ => false,
    }
}

/// Longest session name accepted.
pub const MAX_SESSION_NAME: usize = 200;

/// Typed access to a message's fields; a missing or mistyped field is `INVALID_MESSAGE`.
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(crate) fn string(&self, name: &str) -> Result<&'a str, Refusal> {
        match self.0.get(name) {
            Some(Value::String(text)) => Ok(text),
            _ => Err(Refusal::invalid(format!("{name} must be a string"))),
        }
    }

    pub(crate) fn optional_string(&self, name: &str) -> Result<Option<&'a str>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(Refusal::invalid(format!("{name} must be a string"))),
        }
    }

    pub(crate) fn optional_bool(&self, name: &str) -> Result<Option<bool>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(Refusal::invalid(format!("{name} must be a boolean"))),
        }
    }

    pub(crate) fn optional_u64(&self, name: &str) -> Result<Option<u64>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => number
                .as_u64()
                .map(Some)
                .ok_or_else(|| Refusal::invalid(format!("{name} must be a non-negative integer"))),
            Some(_) => Err(Refusal::invalid(format!(
                "{name} must be a non-negative integer"
            ))),
        }
    }
}

impl Gateway {
    /// A text message on `/ws`.
    pub(crate) fn client_message(&mut self, id: ConnectionId, text: &str, now: Instant) {
        let envelope = match protocol::parse_envelope(text) {
            Ok(envelope) => Some(envelope),
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
                None
            }
        };
        let Some(Envelope {
            kind,
            request_id,
            fields,
        }) = envelope
        else {
            return;
        };
        let request_id = request_id.as_deref();
        if kind == "ping" {
            let pong = ServerMessage::Pong {
                ts: self.clock.unix_ms(now),
                request_id,
            };
            self.send_message(id, &pong, now);
            return;
        }
        if !self.count_message(id, request_id, now) {
            return;
        }
        let identity = self
            .client_state(id)
            .and_then(|client| client.identity().cloned());
        let result = match (kind.as_str(), identity) {
            ("authenticate", _) => self.authenticate_message(id, &Fields(&fields), request_id, now),
            (_, None) => Err(Refusal::new(
                ErrorCode::NotAuthenticated,
                "authenticate first",
            )),
            (kind, Some(identity)) => {
                self.request(id, kind, &identity, &Fields(&fields), request_id, now)
            }
        };
        if let Err(refusal) = result {
            self.send_refusal(id, &refusal, request_id, now);
        }
    }

    fn request(
        &mut self,
        id: ConnectionId,
        kind: &str,
        identity: &Arc<Identity>,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        use Permission::*;
        let needs = match kind {
            "list_sessions" | "join_session" | "leave_session" | "get_events" | "get_history" => {
                Read
            }
            "create_session" => Create,
            "rename_session" | "run_turn" | "stop_turn" | "answer_question" => Write,
            "archive_session" | "unarchive_session" => Archive,
            "delete_session" => Delete,
            "steer" => Steer,
            _ => return Err(Refusal::invalid("unknown message type")),
        };
        if !role_allows(&identity.role, needs) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the role {} may not {kind}", identity.role),
            ));
        }
        match kind {
            "list_sessions" => self.list_sessions(id, identity, fields, request_id, now),
            "create_session" => self.create_session(id, identity, fields, request_id, now),
            "rename_session" => {
                self.update_session(id, identity, fields, request_id, Update::Rename, now)
            }
            "archive_session" => {
                self.update_session(id, identity, fields, request_id, Update::Archive(true), now)
            }
            "unarchive_session" => self.update_session(
                id,
                identity,
                fields,
                request_id,
                Update::Archive(false),
                now,
            ),
            "delete_session" => self.delete_session(id, identity, fields, request_id, now),
            "join_session" => self.join_session(id, identity, fields, request_id, now),
            "leave_session" => self.leave_session(id, identity, fields, request_id, now),
            "get_events" => self.get_events(id, identity, fields, request_id, now),
            "get_history" => self.get_history(id, identity, fields, request_id, now),
            "run_turn" => self.run_turn(id, identity, fields, request_id, false, now),
            "steer" => self.run_turn(id, identity, fields, request_id, true, now),
            "stop_turn" => self.stop_turn(id, identity, fields, request_id, now),
            _ => self.answer_question(id, identity, fields, request_id, now),
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

    /// The session named by the message's `sessionId`, in the caller's tenant.
    pub(crate) fn session_field(
        &self,
        identity: &Identity,
        fields: &Fields<'_>,
    ) -> Result<SessionId, Refusal> {
        let session_id = fields.string("sessionId")?;
        self.find_session(&identity.tenant_id, session_id)
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
        id: ConnectionId,
        identity: &Identity,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        let include_archived = fields.optional_bool("includeArchived")?.unwrap_or(false);
        let list: Vec<_> = self
            .tenants
            .get(identity.tenant_id.as_str())
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
        let mut writer = FrameWriter::new("session_list");
        if let Some(request_id) = request_id {
            writer.field("requestId", request_id);
        }
        writer.field("sessions", &list);
        let (frame, _) = writer.finish();
        self.send(id, frame, now);
        Ok(())
    }

    fn create_session(
        &mut self,
        id: ConnectionId,
        identity: &Identity,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        if self.refuse_while_draining(id, request_id, now) {
            return Ok(());
        }
        let agent_type = fields.string("agentType")?;
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
        let name = fields.optional_string("name")?.unwrap_or("New session");
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

    fn update_session(
        &mut self,
        id: ConnectionId,
        identity: &Identity,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        update: Update,
        now: Instant,
    ) -> Handled {
        let session_id = self.session_field(identity, fields)?;
        let name = match update {
            Update::Rename => {
                let name = fields.string("name")?;
                check_name(name)?;
                Some(name.to_owned())
            }
            Update::Archive(_) => None,
        };
        let at = self.clock.unix_ms(now) as i64;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(Refusal::session_not_found());
        };
        let previous = match (update, name) {
            (Update::Rename, Some(name)) => {
                Previous::Name(std::mem::replace(&mut session.record.name, name))
            }
            (Update::Archive(archived), _) => {
                Previous::Archived(std::mem::replace(&mut session.record.archived, archived))
            }
            (Update::Rename, None) => Previous::Name(session.record.name.clone()),
        };
        session.record.updated_at_ms = at;
        let record = session.record.clone();
        self.persist_session(&session_id);
        // `session_updated` goes out once the change is committed (see `durable`).
        self.await_commit(
            &identity.tenant_id,
            id,
            request_id,
            DurableAction::Update { record, previous },
        );
        Ok(())
    }

    fn delete_session(
        &mut self,
        id: ConnectionId,
        identity: &Identity,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        _now: Instant,
    ) -> Handled {
        let session_id = self.session_field(identity, fields)?;
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
                client.leave(&session_id);
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
enum Update {
    Rename,
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
