//! The gateway protocol on `/ws` (PROTOCOL sections 3 to 5): the envelope, authentication, the
//! per-connection rate limit, roles, and the registry requests. Joins and reads are in
//! `queries.rs`, turns in `sessions.rs` (and the `session` machine).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::connection::Departed;
use crate::gateway::durable::{DurableAction, Previous};
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{
    AnswerQuestion, GetEvents, GetHistory, JoinSession, RequestContext, RunTurn, SessionRef,
};
use crate::protocol::session_reply::SessionReply;
use crate::protocol::{self, Envelope, EnvelopeError, ErrorCode, Identity, ServerMessage};
use crate::session::state::SessionStatus;
use crate::session::Session;
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
            _ => self.session_request(id, kind, identity, fields, request_id, now),
        }
    }

    /// The session requests, their fields checked in the order they always were (the session
    /// first, so a request for an unknown session is `SESSION_NOT_FOUND` whatever else it
    /// lacks), then handed to the typed entry points.
    fn session_request(
        &mut self,
        id: ConnectionId,
        kind: &str,
        identity: &Arc<Identity>,
        fields: &Fields<'_>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        let session_id = self.session_field(identity, fields)?.to_string();
        let ctx = RequestContext {
            connection: id,
            identity: identity.clone(),
            request_id: request_id.map(str::to_owned),
        };
        let string = |name: &str| fields.string(name).map(str::to_owned);
        let optional_string =
            |name: &str| Ok::<_, Refusal>(fields.optional_string(name)?.map(str::to_owned));
        match kind {
            "join_session" => {
                let request = JoinSession {
                    session_id,
                    after_seq: fields.optional_u64("afterSeq")?,
                    epoch: optional_string("epoch")?,
                };
                self.join_session(&ctx, &request, now)
            }
            "leave_session" => self.leave_session(&ctx, &SessionRef { session_id }, now),
            "get_events" => {
                let after_seq = fields
                    .optional_u64("afterSeq")?
                    .ok_or_else(|| Refusal::invalid("afterSeq must be a non-negative integer"))?;
                let request = GetEvents {
                    session_id,
                    after_seq,
                    limit: fields.optional_u64("limit")?,
                };
                self.get_events(&ctx, &request, now)
            }
            "get_history" => {
                let request = GetHistory {
                    session_id,
                    before_turn: optional_string("beforeTurn")?,
                    limit: fields.optional_u64("limit")?,
                };
                self.get_history(&ctx, &request, now)
            }
            "run_turn" | "steer" => {
                let request = RunTurn {
                    session_id,
                    text: string("text")?,
                };
                self.run_turn(&ctx, &request, kind == "steer", now)
            }
            "stop_turn" => self.stop_turn(&ctx, &SessionRef { session_id }, now),
            _ => {
                let request = AnswerQuestion {
                    session_id,
                    question_id: string("questionId")?,
                    option_id: optional_string("optionId")?,
                    cancelled: fields.optional_bool("cancelled")?,
                };
                self.answer_question(&ctx, &request, now)
            }
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
            session.forget_requester(id);
        }
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
                    .filter(|session| include_archived || !session.record().archived)
                    .map(Session::meta)
                    .collect()
            })
            .unwrap_or_default();
        let frame = protocol::encode_frame(&SessionReply::SessionList {
            request_id,
            sessions: list,
        });
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
            (Update::Rename, Some(name)) => Previous::Name(session.rename(name, at)),
            (Update::Archive(archived), _) => {
                Previous::Archived(session.set_archived(archived, at))
            }
            (Update::Rename, None) => {
                Previous::Name(session.rename(session.record().name.clone(), at))
            }
        };
        let record = session.record().clone();
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
        if let Some(agent) = session.agent_id() {
            self.agents.remove(&agent);
            self.agent_command(crate::gateway::AgentCommand::Stop { agent });
        }
        for subscriber in session.watchers() {
            if let Some(client) = self.client_state_mut(subscriber) {
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
                record: session.into_record(),
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
