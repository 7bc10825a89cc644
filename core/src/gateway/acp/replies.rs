//! What the gateway sends an `/acp` client, translated: replies to the requests the edge made
//! for it (each the answer to an ACP method, or the next step of one), and session events (their
//! `session/update`s, the permission requests forwarded to the client, the end of a prompt's
//! turn).

use std::sync::Arc;
use std::time::Instant;

use agent_client_protocol_schema::v1::RequestId;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::acp_server::jsonrpc;
use crate::acp_server::translate;
use crate::acp_server::{AcpEdge, Pending, Question, Stage, LIST_PAGE};
use crate::ids::ConnectionId;
use crate::protocol::Identity;
use crate::Gateway;

use super::{decode, update_frames, TranslatedEvent};

impl Gateway {
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
            options: question
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|option| option.get("optionId")?.as_str().map(str::to_owned))
                .collect(),
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
                self.acp_respond(
                    id,
                    &rid,
                    translate::new_session(reply, self.session_features(&session_id)),
                    now,
                );
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
                        self.acp_respond(
                            id,
                            &rid,
                            translate::load_session(reply, self.session_features(&session_id)),
                            now,
                        );
                    } else {
                        self.acp_respond(
                            id,
                            &rid,
                            translate::resume_session(reply, self.session_features(&session_id)),
                            now,
                        );
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
                    edge.await_turn(turn_id, session_id, rid);
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
