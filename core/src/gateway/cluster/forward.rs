//! Client requests in cluster mode: what must wait for the cluster (a registry read, the
//! live feed of a session owned elsewhere, a lease) and what goes to another instance.
//!
//! A command for a session owned elsewhere (`run_turn`, `steer`, `stop_turn`,
//! `answer_question`, `set_mode`, `set_config_option`) is forwarded on `dim.cmd.<session>` with
//! the client's identity and exact text; the owner runs it as its own client's request, and its
//! reply (which carries the client's `requestId`) is relayed byte for byte. With no owner, a
//! `run_turn` or `steer` acquires the lease and runs here; the others are answered here (the
//! session is not active).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Deferred, Pending, Stage};
use crate::cluster::{ClusterCommand, ClusterError};
use crate::ids::ConnectionId;
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::request::{ClientRequest, RequestContext};
use crate::protocol::{self, ErrorCode, Identity, Parsed};
use crate::Gateway;

/// Connection ids from here up name forwarded requests on their owner (never an adapter's
/// connection: adapters number theirs from 1).
pub(crate) const RELAY_BASE: u64 = 1 << 62;
/// Forwarded requests waiting for their first reply before the old ones are swept.
const MAX_RELAYS: usize = 4096;
/// How long a forwarded request may wait for its reply before it is swept.
const RELAY_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A forwarded command (`dim.cmd.<session>`), JSON.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    tenant_id: String,
    user_id: String,
    email: String,
    role: String,
    /// The client's message, exactly as it sent it.
    text: String,
}

/// The session a request names, and whether it is a command for the session's owner.
fn session_of(request: &ClientRequest) -> Option<(&str, bool)> {
    use ClientRequest as R;
    Some(match request {
        R::RunTurn(r) | R::Steer(r) => (r.session_id.as_str(), true),
        R::StopTurn(r) => (r.session_id.as_str(), true),
        R::AnswerQuestion(r) => (r.session_id.as_str(), true),
        R::SetMode(r) => (r.session_id.as_str(), true),
        R::SetConfigOption(r) => (r.session_id.as_str(), true),
        R::RenameSession(r) => (r.session_id.as_str(), false),
        R::ArchiveSession(r) | R::UnarchiveSession(r) | R::DeleteSession(r) => {
            (r.session_id.as_str(), false)
        }
        R::LeaveSession(r) => (r.session_id.as_str(), false),
        R::JoinSession(r) => (r.session_id.as_str(), false),
        R::GetEvents(r) => (r.session_id.as_str(), false),
        R::GetHistory(r) => (r.session_id.as_str(), false),
        _ => return None,
    })
}

fn starts_turn(request: &ClientRequest) -> bool {
    matches!(request, ClientRequest::RunTurn(_) | ClientRequest::Steer(_))
}

/// Whether the client's text is a `run_turn` or `steer`.
fn starts_turn_text(text: &str) -> bool {
    protocol::parse_client_message(text).is_ok_and(|message| match &message.body {
        Parsed::Request(request) => starts_turn(request),
        _ => false,
    })
}

fn writes(request: &ClientRequest) -> bool {
    use ClientRequest as R;
    matches!(
        request,
        R::CreateSession(_)
            | R::RenameSession(_)
            | R::ArchiveSession(_)
            | R::UnarchiveSession(_)
            | R::DeleteSession(_)
            | R::RunTurn(_)
            | R::Steer(_)
    )
}

impl Gateway {
    /// An authenticated client's request in cluster mode: `None` when it is handled as on one
    /// node; otherwise it waits for the cluster or was sent to the session's owner.
    pub(crate) fn cluster_request(
        &mut self,
        ctx: &RequestContext,
        body: &Parsed,
        text: &str,
        stage: Stage,
        now: Instant,
    ) -> Option<Handled> {
        let cluster = self.cluster.as_mut()?;
        cluster.last_now = Some(now);
        let tenant_id = ctx.identity.tenant_id.as_str();
        if !cluster.watching.contains(tenant_id) {
            cluster.watching.insert(tenant_id.to_owned());
            self.cluster_command(ClusterCommand::WatchTenant {
                tenant_id: tenant_id.to_owned(),
            });
        }
        let Parsed::Request(request) = body else {
            return None;
        };
        if writes(request) && !self.cluster_connected() {
            let mut refusal = Refusal::new(
                ErrorCode::Internal,
                "the cluster's store (NATS) is unreachable; try again",
            );
            refusal.retry_after = Some(std::time::Duration::from_secs(1));
            return Some(Err(refusal));
        }
        let deferred = || Deferred {
            ctx: ctx.clone(),
            text: Arc::from(text),
            stage,
        };
        if let ClientRequest::ListSessions(_) = request {
            if stage.listed {
                return None;
            }
            self.registry_lookup(deferred(), None);
            return Some(Ok(()));
        }
        let (session_id, command) = session_of(request)?;
        let Some(id) = self.find_session(tenant_id, session_id) else {
            if stage.looked_up {
                return None;
            }
            self.registry_lookup(deferred(), Some(session_id));
            return Some(Ok(()));
        };
        if let ClientRequest::JoinSession(_) = request {
            if self.feed_ready(&id, deferred()) {
                return None;
            }
            // The join replaces the connection's subscription now, as on one node: nothing of
            // the old one arrives while it waits.
            if let Some(superseded) = self.unsubscribe(&id, ctx.connection, now) {
                self.abandon(
                    superseded,
                    ErrorCode::InvalidState,
                    "superseded by a later join_session",
                    now,
                );
            }
            return Some(Ok(()));
        }
        if !command || self.is_owned(&id) {
            return None;
        }
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.acquiring.contains_key(&id))
        {
            self.acquire(&id, deferred());
            return Some(Ok(()));
        }
        if stage.forwarded {
            if starts_turn(request) && !stage.acquired {
                self.acquire(&id, deferred());
                return Some(Ok(()));
            }
            return None;
        }
        let envelope = Envelope {
            tenant_id: ctx.identity.tenant_id.clone(),
            user_id: ctx.identity.user_id.clone(),
            email: ctx.identity.email.clone(),
            role: ctx.identity.role.clone(),
            text: text.to_owned(),
        };
        let payload = Bytes::from(serde_json::to_vec(&envelope).ok()?);
        let token = self.cluster_pending(Pending::Forward {
            session_id: id.to_string(),
            then: deferred(),
        });
        self.metrics.cluster_forwarded += 1;
        self.cluster_command(ClusterCommand::Forward {
            token,
            session_id: id.to_string(),
            payload,
        });
        Some(Ok(()))
    }

    /// Runs a held request again, from where it stopped.
    pub(crate) fn rerun(&mut self, deferred: Deferred, now: Instant) {
        let Deferred { ctx, text, stage } = deferred;
        if ctx.connection.0 < RELAY_BASE && !self.connections.contains_key(&ctx.connection) {
            return;
        }
        let Ok(message) = protocol::parse_client_message(&text) else {
            return;
        };
        let body = message.body;
        let result = match self.cluster_request(&ctx, &body, &text, stage, now) {
            Some(result) => result,
            None => self.request(&ctx, body, now),
        };
        if let Err(refusal) = result {
            self.send_refusal(ctx.connection, &refusal, ctx.request_id.as_deref(), now);
        }
    }

    /// The owner's reply to a forwarded command, or why there was none.
    pub(crate) fn forwarded(
        &mut self,
        token: u64,
        result: Result<Bytes, ClusterError>,
        now: Instant,
    ) {
        let Some(Pending::Forward { session_id, then }) =
            self.take_pending(token, |p| matches!(p, Pending::Forward { .. }))
        else {
            return;
        };
        let _ = session_id;
        match result {
            Ok(reply) => self.send(then.ctx.connection, reply, now),
            // Nobody serves the session (no owner), or its owner does not answer (frozen, cut
            // off: its lease may have expired): a `run_turn`/`steer` tries the lease; other
            // commands are answered here.
            Err(ClusterError::NoResponders) if !then.stage.acquired => {
                let mut then = then;
                then.stage.forwarded = true;
                self.rerun(then, now);
            }
            Err(ClusterError::Timeout) if !then.stage.acquired && starts_turn_text(&then.text) => {
                let mut then = then;
                then.stage.forwarded = true;
                self.rerun(then, now);
            }
            Err(error) => {
                let message = match error {
                    ClusterError::NoResponders => {
                        "the session's owner is not reachable; try again".to_owned()
                    }
                    other => format!("the session's owner did not answer ({other})"),
                };
                self.send_error(
                    then.ctx.connection,
                    ErrorCode::AgentUnavailable,
                    &message,
                    then.ctx.request_id.as_deref(),
                    now,
                );
            }
        }
    }

    /// A command forwarded to this instance as the session's owner: run as a request of its
    /// own client, whose first reply is the answer.
    pub(crate) fn command_request(
        &mut self,
        session_id: &str,
        request: u64,
        payload: &[u8],
        now: Instant,
    ) {
        let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) else {
            let frame = crate::protocol::reply::error_frame(
                ErrorCode::InvalidMessage,
                "unreadable forwarded command",
                None,
            );
            self.cluster_command(ClusterCommand::Reply {
                request,
                payload: frame,
            });
            return;
        };
        let message = protocol::parse_client_message(&envelope.text).ok();
        let request_id = message.as_ref().and_then(|m| m.request_id.clone());
        let command = message.as_ref().is_some_and(|m| match &m.body {
            Parsed::Request(r) => {
                session_of(r).is_some_and(|(id, command)| command && id == session_id)
            }
            _ => false,
        });
        let owned = self.is_owned(session_id);
        let (Some(message), true, true) = (message, command, owned) else {
            let frame = crate::protocol::reply::error_frame(
                ErrorCode::AgentUnavailable,
                "the session is not active on the instance asked; try again",
                request_id.as_deref(),
            );
            self.cluster_command(ClusterCommand::Reply {
                request,
                payload: frame,
            });
            return;
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.next_relay += 1;
        let relay = ConnectionId(RELAY_BASE + cluster.next_relay);
        if cluster.relays.len() >= MAX_RELAYS {
            // Requests that never produced a reply: the forwarding instance gave up on them
            // long ago (its timeout is seconds).
            cluster
                .relays
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < RELAY_TTL);
        }
        cluster.relays.insert(relay, (request, now));
        let ctx = RequestContext {
            connection: relay,
            identity: Arc::new(Identity {
                user_id: envelope.user_id,
                email: envelope.email,
                tenant_id: envelope.tenant_id,
                role: envelope.role,
            }),
            request_id,
        };
        let stage = Stage {
            looked_up: true,
            listed: true,
            forwarded: true,
            acquired: true,
        };
        let result = match self.cluster_request(&ctx, &message.body, &envelope.text, stage, now) {
            Some(result) => result,
            None => self.request(&ctx, message.body, now),
        };
        if let Err(refusal) = result {
            self.send_refusal(relay, &refusal, ctx.request_id.as_deref(), now);
        }
    }

    /// A frame for a forwarded request's pseudo connection: its reply, sent back to the
    /// instance that forwarded it (the first one only; later frames have nobody to go to).
    pub(crate) fn relay_send(&mut self, id: ConnectionId, frame: Bytes) {
        let Some((request, _)) = self.cluster.as_mut().and_then(|c| c.relays.remove(&id)) else {
            return;
        };
        self.cluster_command(ClusterCommand::Reply {
            request,
            payload: frame,
        });
    }
}
