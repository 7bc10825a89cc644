//! `/acp` clients on the gateway (docs/ACP.md): each ACP method becomes a request of the gateway
//! protocol, parsed by the same parser and answered by the same handlers as on `/ws`
//! (`requests.rs`, `sessions.rs`, `queries.rs`), with a `requestId` of the client's
//! `AcpEdge`; what the gateway sends the connection (every reply and session event goes through
//! `Gateway::send`, or the fan-out) comes back here to be translated
//! (`acp_server::translate`). Nothing of a session is duplicated: `/ws` and `/acp` subscribers
//! of one session see the same events, published once, and a session event is translated once
//! for all its `/acp` subscribers.

use std::sync::Arc;
use std::time::Instant;

use agent_client_protocol_schema::v1::{
    CancelNotification, ClientRequest as AcpRequest, Error, RequestId, RequestPermissionOutcome,
    RequestPermissionResponse,
};
use agent_client_protocol_schema::MethodDispatchError;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::acp_server::jsonrpc::{self, code, Incoming};
use crate::acp_server::translate;
use crate::acp_server::{AcpEdge, Pending, Question, Stage, LIST_PAGE};
use crate::connection::Connection;
use crate::ids::ConnectionId;
use crate::protocol::request::RequestContext;
use crate::protocol::{self, ClientMessage, Identity};
use crate::Gateway;

/// A session event decoded once for every `/acp` subscriber: the event and its
/// `session/update` frames.
pub(crate) struct TranslatedEvent {
    event: Value,
    updates: Vec<Bytes>,
}

impl TranslatedEvent {
    /// Decodes a published frame (a session event).
    pub(crate) fn new(frame: &Bytes) -> Self {
        let event = decode(frame);
        let updates = update_frames(&event);
        TranslatedEvent { event, updates }
    }
}

fn decode(frame: &[u8]) -> Value {
    serde_json::from_slice(jsonrpc::frame_payload(frame)).unwrap_or_default()
}

fn update_frames(event: &Value) -> Vec<Bytes> {
    translate::session_updates(event)
        .into_iter()
        .map(|update| jsonrpc::notification("session/update", update))
        .collect()
}

fn invalid_params(message: impl Into<String>) -> Error {
    Error::new(code::INVALID_PARAMS, message)
}

fn method_not_found(method: &str) -> Error {
    Error::new(code::METHOD_NOT_FOUND, "Method not found").data(json!({ "method": method }))
}

fn internal(why: String) -> Error {
    Error::new(code::INTERNAL_ERROR, "Internal error")
        .data(json!({ "code": "INTERNAL", "details": why }))
}

impl Gateway {
    fn acp_edge(&mut self, id: ConnectionId) -> Option<&mut AcpEdge> {
        self.client_state_mut(id)?.acp.as_deref_mut()
    }

    fn acp_respond<T: Serialize>(
        &mut self,
        id: ConnectionId,
        rid: &RequestId,
        result: Result<T, String>,
        now: Instant,
    ) {
        let frame = match result {
            Ok(result) => jsonrpc::response(rid, result),
            Err(why) => jsonrpc::error(rid, internal(why)),
        };
        self.send_raw(id, frame, now);
    }

    fn acp_error(&mut self, id: ConnectionId, rid: &RequestId, error: Error, now: Instant) {
        self.send_raw(id, jsonrpc::error(rid, error), now);
    }

    // ------------------------------------------------------------ client messages

    /// A text message on `/acp`: counted by the rate limit, read as one JSON-RPC message, then
    /// handled.
    pub(crate) fn acp_message(&mut self, id: ConnectionId, text: &str, now: Instant) {
        let parsed = jsonrpc::parse(text);
        if !self.count_message(id, None, now) {
            // Over the budget (the connection is closed with 4101 when it keeps going).
            if let (Ok(Incoming::Request { id: rid, .. }), false) = (
                &parsed,
                self.connections.get(&id).is_none_or(Connection::is_closing),
            ) {
                let error =
                    jsonrpc::gateway_error("RATE_LIMITED", "too many messages; slow down", None);
                self.acp_error(id, rid, error, now);
            }
            return;
        }
        let incoming = match parsed {
            Ok(incoming) => incoming,
            Err(refused) => {
                let (rid, error) = *refused;
                return self.acp_error(id, &rid, error, now);
            }
        };
        let identity = self
            .client_state(id)
            .and_then(|client| client.identity().cloned());
        let Some(identity) = identity else {
            if let Incoming::Request { id: rid, .. } = &incoming {
                let error = Error::new(code::AUTH_REQUIRED, "Authentication required");
                self.acp_error(id, rid, error, now);
            }
            return;
        };
        match incoming {
            Incoming::Request {
                id: rid,
                method,
                params,
            } => {
                if let Err(error) = self.acp_request(id, &identity, &rid, &method, &params, now) {
                    self.acp_error(id, &rid, error, now);
                }
            }
            Incoming::Notification { method, params } => {
                if method == "session/cancel" {
                    if let Ok(cancel) = translate::typed::<CancelNotification>(params) {
                        let message =
                            json!({ "type": "stop_turn", "sessionId": cancel.session_id });
                        self.acp_dispatch(id, &identity, None, Stage::Cancel, message, now);
                    }
                }
                // Any other notification is ignored, as JSON-RPC asks.
            }
            Incoming::Response { id: rid, result } => {
                self.acp_answer(id, &identity, &rid, result, now)
            }
        }
    }

    /// One ACP request. `Err` is answered at once; `Ok` means the gateway answers later (or
    /// already did).
    fn acp_request(
        &mut self,
        id: ConnectionId,
        identity: &Arc<Identity>,
        rid: &RequestId,
        method: &str,
        params: &Value,
        now: Instant,
    ) -> Result<(), Error> {
        let request =
            AcpRequest::from_method_and_params(method, params).map_err(|error| match error {
                MethodDispatchError::InvalidPayload { source, .. } => {
                    invalid_params(format!("Invalid params: {source}"))
                }
                _ => method_not_found(method),
            })?;
        let initialized = self.acp_edge(id).is_some_and(|edge| edge.initialized);
        let initialize = matches!(request, AcpRequest::InitializeRequest(_));
        if initialized == initialize {
            let why = if initialized {
                "Invalid Request: initialize is allowed once per connection"
            } else {
                "Invalid Request: the first request must be initialize"
            };
            return Err(Error::new(code::INVALID_REQUEST, why));
        }
        let rid = Some(rid.clone());
        let (stage, message) = match request {
            AcpRequest::InitializeRequest(_) => {
                if let Some(edge) = self.acp_edge(id) {
                    edge.initialized = true;
                }
                let result = translate::initialize(&self.config.agent_types);
                if let Some(rid) = rid {
                    self.acp_respond(id, &rid, result, now);
                }
                return Ok(());
            }
            AcpRequest::NewSessionRequest(request) => {
                check_cwd(&request.cwd)?;
                let meta = request.meta.unwrap_or_default();
                let agent_type = match meta.get("agentType") {
                    None | Some(Value::Null) => {
                        self.config.agent_types.first().cloned().unwrap_or_default()
                    }
                    Some(Value::String(name)) => name.clone(),
                    Some(_) => return Err(invalid_params("_meta.agentType must be a string")),
                };
                if !self.config.agent_types.contains(&agent_type) {
                    let available = self.config.agent_types.join(", ");
                    return Err(invalid_params(format!(
                        "unknown agent type {}; available: {available}",
                        crate::session::turns::truncate(&agent_type, 64)
                    ))
                    .data(json!({
                        "code": "AGENT_UNAVAILABLE",
                        "agentTypes": self.config.agent_types,
                    })));
                }
                let mut message = json!({ "type": "create_session", "agentType": agent_type });
                if let Some(name) = meta.get("name") {
                    message["name"] = name.clone();
                }
                (Stage::NewCreate, message)
            }
            AcpRequest::LoadSessionRequest(request) => {
                check_cwd(&request.cwd)?;
                let session_id = request.session_id.to_string();
                let message =
                    json!({ "type": "get_events", "sessionId": session_id, "afterSeq": 0 });
                (Stage::LoadEvents { session_id }, message)
            }
            AcpRequest::ResumeSessionRequest(request) => {
                check_cwd(&request.cwd)?;
                let message = json!({ "type": "join_session", "sessionId": request.session_id });
                (Stage::Resume, message)
            }
            AcpRequest::ListSessionsRequest(request) => {
                let offset = match request.cursor.as_deref() {
                    None => 0,
                    Some(cursor) => cursor
                        .parse()
                        .map_err(|_| invalid_params("cursor is not one this gateway gave"))?,
                };
                (Stage::List { offset }, json!({ "type": "list_sessions" }))
            }
            AcpRequest::PromptRequest(request) => {
                let session_id = request.session_id.to_string();
                self.attached(id, identity, &session_id)?;
                let mut text = String::new();
                let mut content = Vec::new();
                for block in params
                    .get("prompt")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if block.get("type").and_then(Value::as_str) == Some("text") {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(
                            block
                                .get("text")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        );
                    } else {
                        content.push(block.clone());
                    }
                }
                let message = json!({
                    "type": "run_turn",
                    "sessionId": session_id,
                    "text": text,
                    "content": content,
                });
                (Stage::Prompt, message)
            }
            AcpRequest::SetSessionModeRequest(request) => {
                self.attached(id, identity, &request.session_id.to_string())?;
                let message = json!({
                    "type": "set_mode",
                    "sessionId": request.session_id,
                    "modeId": request.mode_id,
                });
                (Stage::SetMode, message)
            }
            AcpRequest::SetSessionConfigOptionRequest(request) => {
                self.attached(id, identity, &request.session_id.to_string())?;
                let message = json!({
                    "type": "set_config_option",
                    "sessionId": request.session_id,
                    "configId": request.config_id,
                    "value": params.get("value"),
                });
                (Stage::SetConfigOption, message)
            }
            _ => return Err(method_not_found(method)),
        };
        self.acp_dispatch(id, identity, rid, stage, message, now);
        Ok(())
    }

    /// A session the client may drive here: its tenant's, and joined on this connection
    /// (`session/new`, `session/load` or `session/resume` first).
    fn attached(
        &self,
        id: ConnectionId,
        identity: &Identity,
        session_id: &str,
    ) -> Result<(), Error> {
        let Some(session) = self.find_session(&identity.tenant_id, session_id) else {
            return Err(jsonrpc::gateway_error(
                "SESSION_NOT_FOUND",
                "session not found",
                None,
            ));
        };
        let joined = self
            .client_state(id)
            .is_some_and(|client| client.joined().contains(&session));
        if !joined {
            return Err(jsonrpc::gateway_error(
                "INVALID_STATE",
                "load or resume the session on this connection first",
                None,
            ));
        }
        Ok(())
    }

    /// Hands a gateway request (as its `/ws` JSON) to the gateway's own parser and dispatch,
    /// with a `requestId` that brings its reply back to `stage`.
    fn acp_dispatch(
        &mut self,
        id: ConnectionId,
        identity: &Arc<Identity>,
        rid: Option<RequestId>,
        stage: Stage,
        mut message: Value,
        now: Instant,
    ) {
        let Some(edge) = self.acp_edge(id) else {
            return;
        };
        message["requestId"] = Value::String(edge.open(rid, stage));
        let text = message.to_string();
        match protocol::parse_client_message(&text) {
            Ok(ClientMessage { request_id, body }) => {
                let ctx = RequestContext {
                    connection: id,
                    identity: identity.clone(),
                    request_id,
                };
                if let Err(refusal) = self.request(&ctx, body, now) {
                    self.send_refusal(id, &refusal, ctx.request_id.as_deref(), now);
                }
            }
            Err(error) => {
                let (reason, request_id) = match error {
                    protocol::EnvelopeError::InvalidJson => {
                        ("the message is not valid JSON".to_owned(), None)
                    }
                    protocol::EnvelopeError::InvalidMessage { reason, request_id } => {
                        (reason.to_string(), request_id)
                    }
                };
                let frame = crate::protocol::reply::error_frame(
                    crate::protocol::ErrorCode::InvalidMessage,
                    &reason,
                    request_id.as_deref(),
                );
                self.send(id, frame, now);
            }
        }
    }

    /// The client answered a permission request: the answer goes to the session as
    /// `answer_question` (the first valid answer, from `/ws` or `/acp`, wins; a later one is
    /// refused by the session and dropped here).
    fn acp_answer(
        &mut self,
        id: ConnectionId,
        identity: &Arc<Identity>,
        rid: &RequestId,
        result: Result<Value, Value>,
        now: Instant,
    ) {
        let Some(question) = self.acp_edge(id).and_then(|edge| edge.answered(rid)) else {
            return;
        };
        let mut message = json!({
            "type": "answer_question",
            "sessionId": question.session_id,
            "questionId": question.question_id,
        });
        let selected = result
            .ok()
            .and_then(|result| translate::typed::<RequestPermissionResponse>(result).ok())
            .and_then(|response| match response.outcome {
                RequestPermissionOutcome::Selected(selected) => {
                    Some(selected.option_id.to_string())
                }
                _ => None,
            });
        match selected {
            Some(option_id) => message["optionId"] = json!(option_id),
            None => message["cancelled"] = json!(true),
        }
        self.acp_dispatch(id, identity, None, Stage::Answer, message, now);
    }

    // ------------------------------------------------------------ what the gateway sends

    /// A frame of the gateway protocol for an `/acp` client: a reply to one of its requests is
    /// the answer to the ACP method; a session event its `session/update`s (`translated`
    /// when the fan-out decoded it already for every `/acp` subscriber).
    pub(crate) fn acp_deliver(
        &mut self,
        id: ConnectionId,
        frame: &Bytes,
        translated: Option<&TranslatedEvent>,
        now: Instant,
    ) {
        if let Some(translated) = translated {
            return self.acp_event(id, &translated.event, &translated.updates, now);
        }
        let message = decode(frame);
        let pending = message
            .get("requestId")
            .and_then(Value::as_str)
            .and_then(|request_id| self.acp_edge(id)?.take(request_id));
        match pending {
            Some(pending) => self.acp_reply(id, pending, &message, now),
            None if message.get("seq").is_some() => {
                let updates = update_frames(&message);
                self.acp_event(id, &message, &updates, now);
            }
            // The `/ws` protocol's own messages have no ACP counterpart.
            None => {}
        }
    }

    /// A live session event for one client.
    fn acp_event(&mut self, id: ConnectionId, event: &Value, updates: &[Bytes], now: Instant) {
        for update in updates {
            self.send_raw(id, update.clone(), now);
        }
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
        match text("type") {
            "permission_requested" => self.acp_ask(id, text("sessionId"), event, now),
            "permission_resolved" => {
                let Some(question) = self
                    .acp_edge(id)
                    .and_then(|edge| edge.resolved(text("questionId")))
                else {
                    return;
                };
                if let Some(update) = translate::permission_resolved(
                    &question.session_id,
                    &question.tool_call_id,
                    event,
                ) {
                    self.send_raw(id, jsonrpc::notification("session/update", update), now);
                }
            }
            "turn_complete" => {
                let Some(rid) = self
                    .acp_edge(id)
                    .and_then(|edge| edge.turn_ended(text("turnId")))
                else {
                    return;
                };
                let result = translate::prompt(text("stopReason"), text("turnId"));
                self.acp_respond(id, &rid, result, now);
            }
            "turn_error" => {
                let Some(rid) = self
                    .acp_edge(id)
                    .and_then(|edge| edge.turn_ended(text("turnId")))
                else {
                    return;
                };
                let mut error = jsonrpc::gateway_error(text("code"), text("message"), None);
                if let (Some(data), Some(agent_code)) =
                    (error.data.as_mut(), event.get("agentCode"))
                {
                    data["agentCode"] = agent_code.clone();
                }
                self.acp_error(id, &rid, error, now);
            }
            _ => {}
        }
    }

    /// Forwards an open question to the client as `session/request_permission` (once).
    fn acp_ask(&mut self, id: ConnectionId, session_id: &str, question: &Value, now: Instant) {
        let text = |key: &str| {
            question
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let Some(request) = translate::permission_request(session_id, question) else {
            return;
        };
        let Some(edge) = self.acp_edge(id) else {
            return;
        };
        if edge.asked(&text("questionId")) {
            return;
        }
        let number = edge.ask(Question {
            session_id: session_id.to_owned(),
            question_id: text("questionId"),
            tool_call_id: text("toolCallId"),
        });
        self.send_raw(
            id,
            jsonrpc::request(number, "session/request_permission", request),
            now,
        );
    }

    /// Asks for the next page of a `session/load`'s events.
    fn acp_next_page(
        &mut self,
        id: ConnectionId,
        identity: &Arc<Identity>,
        rid: Option<RequestId>,
        session_id: String,
        after: u64,
        now: Instant,
    ) {
        let message = json!({ "type": "get_events", "sessionId": session_id, "afterSeq": after });
        let stage = Stage::LoadEvents { session_id };
        self.acp_dispatch(id, identity, rid, stage, message, now);
    }

    /// The client read some of what waited for it: a `session/load` whose next page waited for
    /// that goes on once nothing is left.
    pub(crate) fn acp_written(&mut self, id: ConnectionId, now: Instant) {
        if self.outbound_len(id) > 0 {
            return;
        }
        let Some((rid, session_id, after)) =
            self.acp_edge(id).and_then(AcpEdge::take_deferred_load)
        else {
            return;
        };
        let identity = self
            .client_state(id)
            .and_then(|client| client.identity().cloned());
        if let Some(identity) = identity {
            self.acp_next_page(id, &identity, rid, session_id, after, now);
        }
    }

    /// Replays stored events (a load): their `session/update`s only, since the questions and
    /// turns they show are over (the join's snapshot has the open ones).
    fn acp_replay(
        &mut self,
        id: ConnectionId,
        events: Option<&Value>,
        now: Instant,
    ) -> Option<u64> {
        let mut last = None;
        for event in events.and_then(Value::as_array).into_iter().flatten() {
            for update in update_frames(event) {
                self.send_raw(id, update, now);
            }
            last = event.get("seq").and_then(Value::as_u64).or(last);
        }
        last
    }

    /// The gateway's reply to a request made for the client.
    fn acp_reply(&mut self, id: ConnectionId, pending: Pending, reply: &Value, now: Instant) {
        let Pending { id: rid, stage } = pending;
        let kind = reply
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let identity = self
            .client_state(id)
            .and_then(|client| client.identity().cloned());
        if kind == "error" {
            if let Some(rid) = rid {
                let text = |key: &str| reply.get(key).and_then(Value::as_str).unwrap_or_default();
                let retry = reply.get("retryAfterMs").and_then(Value::as_u64);
                let error = jsonrpc::gateway_error(text("code"), text("message"), retry);
                self.acp_error(id, &rid, error, now);
            }
            return;
        }
        let session_id = reply
            .get("sessionId")
            .or_else(|| reply.get("session").and_then(|session| session.get("id")))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match (stage, rid) {
            (Stage::NewCreate, rid) => {
                if let Some(identity) = identity {
                    let message = json!({ "type": "join_session", "sessionId": session_id });
                    self.acp_dispatch(id, &identity, rid, Stage::NewJoin, message, now);
                }
            }
            (Stage::NewJoin, Some(rid)) => {
                self.acp_respond(id, &rid, translate::new_session(reply), now);
            }
            (Stage::List { offset }, Some(rid)) => {
                let sessions = reply
                    .get("sessions")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice);
                let result = translate::list_sessions(sessions, offset, LIST_PAGE);
                self.acp_respond(id, &rid, result, now);
            }
            (Stage::LoadEvents { session_id }, rid) => {
                let last = self.acp_replay(id, reply.get("events"), now);
                let after = last.unwrap_or(0);
                let has_more = reply
                    .get("hasMore")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let Some(identity) = identity else {
                    return;
                };
                if has_more && last.is_some() {
                    // The next page waits until the client has read this one: a page is at most
                    // half the outbound budget as events, and its notifications are larger (by
                    // up to about 1.8 times for the smallest deltas), so a long history never
                    // piles up past the slow-consumer limit.
                    if self.outbound_len(id) > 0 {
                        if let Some(edge) = self.acp_edge(id) {
                            edge.defer_load(rid, session_id, after);
                        }
                        return;
                    }
                    self.acp_next_page(id, &identity, rid, session_id, after, now);
                } else {
                    let message = json!({
                        "type": "join_session",
                        "sessionId": session_id,
                        "afterSeq": after,
                        "epoch": reply.get("epoch"),
                    });
                    self.acp_dispatch(id, &identity, rid, Stage::LoadJoin, message, now);
                }
            }
            (stage @ (Stage::LoadJoin | Stage::Resume), rid) => {
                if stage == Stage::LoadJoin {
                    self.acp_replay(id, reply.get("events"), now);
                }
                if let Some(rid) = rid {
                    if stage == Stage::LoadJoin {
                        self.acp_respond(id, &rid, translate::load_session(reply), now);
                    } else {
                        self.acp_respond(id, &rid, translate::resume_session(reply), now);
                    }
                }
                for question in reply
                    .get("questions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.acp_ask(id, &session_id, question, now);
                }
            }
            (Stage::Prompt, Some(rid)) => {
                if let (Some(turn_id), Some(edge)) = (
                    reply
                        .get("turnId")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    self.acp_edge(id),
                ) {
                    edge.await_turn(turn_id, rid);
                }
            }
            (Stage::SetMode, Some(rid)) => self.acp_respond(id, &rid, Ok(json!({})), now),
            (Stage::SetConfigOption, Some(rid)) => {
                self.acp_respond(id, &rid, translate::config_option_set(reply), now);
            }
            // Notifications (`session/cancel`) and the client's own answers get no reply.
            _ => {}
        }
    }
}

/// ACP's `cwd` must be an absolute path; it names a directory on the client's machine, not the
/// gateway's, so it is checked and otherwise ignored (the agent runs in the session's
/// workspace).
fn check_cwd(cwd: &std::path::Path) -> Result<(), Error> {
    if cwd.is_absolute() {
        Ok(())
    } else {
        Err(invalid_params("cwd must be an absolute path"))
    }
}
