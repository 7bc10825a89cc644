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
use crate::acp_server::{AcpEdge, Stage};
use crate::ids::ConnectionId;
use crate::protocol::request::RequestContext;
use crate::protocol::{self, ClientMessage, Identity};
use crate::Gateway;

mod replies;

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

pub(super) fn decode(frame: &[u8]) -> Value {
    serde_json::from_slice(jsonrpc::frame_payload(frame)).unwrap_or_default()
}

pub(super) fn update_frames(event: &Value) -> Vec<Bytes> {
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
    pub(super) fn acp_edge(&mut self, id: ConnectionId) -> Option<&mut AcpEdge> {
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

    pub(super) fn acp_error(
        &mut self,
        id: ConnectionId,
        rid: &RequestId,
        error: Error,
        now: Instant,
    ) {
        self.send_raw(id, jsonrpc::error(rid, error), now);
    }

    // ------------------------------------------------------------ client messages

    /// A text message on `/acp`: counted by the rate limit, read as one JSON-RPC message, then
    /// handled.
    pub(crate) fn acp_message(&mut self, id: ConnectionId, text: &str, now: Instant) {
        let parsed = jsonrpc::parse(text);
        let counted = self
            .with_connection(id, now, |connection, env| connection.count(now, env))
            .unwrap_or(Err(None));
        if let Err(retry_after) = counted {
            // Over the budget; `None`: closed with 4101 as the client kept going.
            if let (Ok(Incoming::Request { id: rid, .. }), Some(retry_after)) =
                (&parsed, retry_after)
            {
                let error = jsonrpc::gateway_error(
                    "RATE_LIMITED",
                    "too many messages; slow down",
                    Some(retry_after.as_millis() as u64),
                );
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
                let result =
                    translate::initialize(&self.config.agent_types, &self.known_features());
                if let Some(rid) = rid {
                    self.acp_respond(id, &rid, result, now);
                }
                return Ok(());
            }
            AcpRequest::NewSessionRequest(request) => {
                check_cwd(&request.cwd)?;
                let meta = request.meta.unwrap_or_default();
                // `_meta.diminuendo.agentType` (namespaced, as the gateway's own `_meta`), or
                // `_meta.agentType`; the same for `name`.
                let field = |key: &str| {
                    meta.get("diminuendo")
                        .and_then(|ours| ours.get(key))
                        .or_else(|| meta.get(key))
                        .cloned()
                };
                let agent_type = match field("agentType") {
                    None | Some(Value::Null) => {
                        self.config.agent_types.first().cloned().unwrap_or_default()
                    }
                    Some(Value::String(name)) => name,
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
                if let Some(name) = field("name") {
                    message["name"] = name;
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

    /// A session was deleted: an `/acp` client attached to it has its waiting prompts answered
    /// (`-32002`, as every request gets one answer) and its questions forgotten.
    pub(crate) fn acp_session_deleted(&mut self, id: ConnectionId, session_id: &str, now: Instant) {
        let Some(prompts) = self.acp_edge(id).map(|edge| edge.session_gone(session_id)) else {
            return;
        };
        for rid in prompts {
            let error =
                jsonrpc::gateway_error("SESSION_NOT_FOUND", "the session was deleted", None);
            self.acp_error(id, &rid, error, now);
        }
    }

    /// The prompt capabilities known per agent type: those of a running agent of the type.
    fn known_features(&self) -> Vec<(String, crate::acp::AgentFeatures)> {
        let mut known: Vec<(String, crate::acp::AgentFeatures)> = Vec::new();
        for session in self.sessions.values() {
            let agent_type = &session.record().agent_type;
            if known.iter().any(|(name, _)| name == agent_type) {
                continue;
            }
            if let Some(features) = session.agent_features() {
                known.push((agent_type.clone(), features));
            }
        }
        known
    }

    /// What the agent of `session_id` takes in a prompt: its own running agent's answer, else
    /// a running agent's of the same type, else unknown.
    pub(super) fn session_features(&self, session_id: &str) -> Option<crate::acp::AgentFeatures> {
        let session = self.sessions.get(session_id)?;
        session.agent_features().or_else(|| {
            let agent_type = &session.record().agent_type;
            self.sessions
                .values()
                .filter(|other| &other.record().agent_type == agent_type)
                .find_map(crate::session::Session::agent_features)
        })
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
    pub(super) fn acp_dispatch(
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
                // In cluster mode the request may wait for the cluster or go to the owner.
                let cluster_stage = crate::gateway::cluster::Stage::default();
                let result = match self.cluster_request(&ctx, &body, &text, cluster_stage, now) {
                    Some(result) => result,
                    None => self.request(&ctx, body, now),
                };
                if let Err(refusal) = result {
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
        // An error answer, or one naming an option that was not offered, counts as cancelled:
        // the client is not asked twice, and the turn must not wait for an answer that will
        // never come.
        let selected = result
            .ok()
            .and_then(|result| translate::typed::<RequestPermissionResponse>(result).ok())
            .and_then(|response| match response.outcome {
                RequestPermissionOutcome::Selected(selected) => {
                    Some(selected.option_id.to_string())
                }
                _ => None,
            })
            .filter(|option_id| question.options.contains(option_id));
        match selected {
            Some(option_id) => message["optionId"] = json!(option_id),
            None => message["cancelled"] = json!(true),
        }
        self.acp_dispatch(id, identity, None, Stage::Answer, message, now);
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
