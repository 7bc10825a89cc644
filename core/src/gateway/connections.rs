//! The gateway's side of its connections: it hands each input to the `Connection` it is for,
//! routes what the connection reports (`connection::Output`: a transmit, a close, a deadline, an
//! identity), answers parsed HTTP requests (`routes`), dispatches `/ws` text messages
//! (`requests`), and keeps the counts a connection cannot see (open connections, per-IP
//! admissions, tenants).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::connection::{ClientState, Connection, Env, Output, Upgraded, Verifier};
use crate::http::request::Method;
use crate::http::{RequestHead, Response, Route};
use crate::ids::ConnectionId;
use crate::protocol::refusal::{Handled, Refusal};
use crate::protocol::{ErrorCode, Identity, ServerMessage};
use crate::storage::{MemberRecord, StorageCommand};

use super::routes::Answer;
use super::{Event, Gateway};

impl Gateway {
    /// Gives one input to the connection `id` (with the settings, the counters and an output
    /// list), then routes its outputs. Nothing happens for an unknown connection.
    pub(crate) fn with_connection<R>(
        &mut self,
        id: ConnectionId,
        now: Instant,
        input: impl FnOnce(&mut Connection, &mut Env<'_>) -> R,
    ) -> Option<R> {
        let connection = self.connections.get_mut(&id)?;
        let mut out = std::mem::take(&mut self.connection_outputs);
        let result = input(
            connection,
            &mut Env {
                config: &self.config,
                metrics: &mut self.metrics,
                out: &mut out,
            },
        );
        for output in out.drain(..) {
            match output {
                Output::Transmit => self.transmit_queue.push_back(id),
                Output::Close => self.close_now(id, now),
                Output::Deadline => self.reschedule(id),
                Output::Authenticated(identity) => self.join_tenant(id, &identity, now),
            }
        }
        self.connection_outputs = out;
        Some(result)
    }

    // ------------------------------------------------------------ HTTP

    pub(super) fn http_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        // Parse straight from the read when nothing is pending; copy only an unfinished head.
        let mut owned = connection.take_partial_head();
        let from_owned = !owned.is_empty();
        if from_owned {
            owned.extend_from_slice(data);
        }
        let buffer: &mut [u8] = if from_owned { &mut owned } else { data };
        let mut offset = 0;
        while offset < buffer.len() {
            let input = &buffer[offset..];
            let Some(Some((head, len))) = self.with_connection(id, now, |connection, env| {
                connection.read_request(input, now, env)
            }) else {
                return;
            };
            offset += len;
            let refused = self
                .connections
                .get(&id)
                .is_some_and(Connection::is_refused);
            let answer = if refused {
                let response = Response::plain(503).header("Retry-After", "1").close();
                Answer::Respond(response, head.method() == Method::Head)
            } else {
                self.answer(&head, now)
            };
            match answer {
                Answer::Respond(response, head_only) => {
                    let route = self.metrics_route(&head);
                    let closing = head.wants_close || self.draining;
                    let response = if closing { response.close() } else { response };
                    let closes = response.closes();
                    self.with_connection(id, now, |connection, env| {
                        connection.respond(route, response, head_only, now, env);
                    });
                    if closes {
                        return;
                    }
                }
                Answer::Upgrade(route, head) => {
                    self.upgrade(id, route, &head, now);
                    let rest = &mut buffer[offset..];
                    if !rest.is_empty() {
                        self.websocket_input(id, rest, now);
                    }
                    return;
                }
            }
        }
    }

    fn upgrade(&mut self, id: ConnectionId, route: Route, head: &RequestHead, now: Instant) {
        let client_id = if route != Route::Echo && head.websocket_key.is_some() {
            self.rng.uuid_v4()
        } else {
            0
        };
        let unix_ms = self.clock.unix_ms(now);
        let upgraded = self.with_connection(id, now, |connection, env| {
            connection.upgrade(route, head, client_id, unix_ms, now, env)
        });
        let Some(Some(upgraded)) = upgraded else {
            return;
        };
        self.metrics.http_connections_open -= 1;
        self.metrics.websocket_connections_open += 1;
        if let Upgraded::Client { token } = upgraded {
            if self.config.dev_mode {
                let identity = self.dev_identity.clone();
                self.complete_authentication(id, identity, None, now);
            } else if let Some(token) = token {
                self.authenticate_upgrade_token(id, &token, now);
            }
        }
    }

    // ------------------------------------------------------------ WebSocket

    pub(super) fn websocket_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some((mut decoder, limits)) = self
            .connections
            .get_mut(&id)
            .and_then(|connection| connection.take_decoder(&self.config))
        else {
            return;
        };
        let mut input = data;
        while !input.is_empty() {
            let (consumed, event) = decoder.decode(&limits, &mut *input);
            match event {
                Some(Ok(message)) => {
                    let text = self.with_connection(id, now, |connection, env| {
                        connection.receive(message, now, env)
                    });
                    if let Some(Some(text)) = text {
                        if self.connections.get(&id).is_some_and(Connection::is_acp) {
                            self.acp_message(id, text, now);
                        } else {
                            self.client_message(id, text, now);
                        }
                    }
                }
                Some(Err(error)) => {
                    self.with_connection(id, now, |connection, env| {
                        connection.fail_websocket(error.code, error.reason, now, env);
                    });
                    return;
                }
                None => {}
            }
            if consumed == 0 || self.connections.get(&id).is_none_or(Connection::is_closing) {
                break;
            }
            input = &mut std::mem::take(&mut input)[consumed..];
        }
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.put_decoder(decoder);
        }
    }

    /// Starts the close handshake: the close frame is sent and the connection waits (at most
    /// `close_timeout`) for the peer's close frame. (For request handlers that end a client.)
    #[allow(dead_code)]
    pub(crate) fn close_websocket(
        &mut self,
        id: ConnectionId,
        code: u16,
        reason: &str,
        now: Instant,
    ) {
        self.with_connection(id, now, |connection, env| {
            connection.close_websocket(code, reason, now, env);
        });
    }

    pub(crate) fn client_state(&self, id: ConnectionId) -> Option<&ClientState> {
        self.connections.get(&id)?.client()
    }

    pub(crate) fn client_state_mut(&mut self, id: ConnectionId) -> Option<&mut ClientState> {
        self.connections.get_mut(&id)?.client_mut()
    }

    // ------------------------------------------------------------ sending

    /// Queues bytes for a connection. Over the outbound limit, a WebSocket is closed as a slow
    /// consumer (4100): its queue is discarded and only the close frame is attempted.
    ///
    /// Every message of the gateway protocol for one connection comes here: for an `/acp`
    /// client it is translated (`gateway/acp.rs`) instead of being sent as it is.
    pub(crate) fn send(&mut self, id: ConnectionId, bytes: Bytes, now: Instant) {
        if id.0 >= crate::gateway::cluster::RELAY_BASE {
            // A command forwarded by another instance (cluster mode): its reply goes back.
            self.relay_send(id, bytes);
            return;
        }
        if !self.send_unless_acp(id, &bytes, now) {
            self.acp_deliver(id, &bytes, None, now);
        }
    }

    /// Queues the frame unless `id` is an `/acp` client (one lookup on the `/ws` path); false
    /// when it is one, and so still needs its translation.
    pub(crate) fn send_unless_acp(
        &mut self,
        id: ConnectionId,
        bytes: &Bytes,
        now: Instant,
    ) -> bool {
        self.with_connection(id, now, |connection, env| {
            if connection.is_acp() {
                return false;
            }
            connection.send(bytes.clone(), now, env);
            true
        })
        .unwrap_or(true)
    }

    /// Queues bytes for a connection as they are (an `/acp` client's JSON-RPC frames).
    pub(crate) fn send_raw(&mut self, id: ConnectionId, bytes: Bytes, now: Instant) {
        self.with_connection(id, now, |connection, env| {
            connection.send(bytes, now, env);
        });
    }

    pub(crate) fn send_message(
        &mut self,
        id: ConnectionId,
        message: &ServerMessage<'_>,
        now: Instant,
    ) {
        self.send(id, crate::protocol::encode_frame(message), now);
    }

    pub(crate) fn send_error(
        &mut self,
        id: ConnectionId,
        code: ErrorCode,
        message: &str,
        request_id: Option<&str>,
        now: Instant,
    ) {
        let frame = crate::protocol::reply::error_frame(code, message, request_id);
        self.send(id, frame, now);
    }

    /// Forgets the connection and tells the adapter to close its socket.
    pub(crate) fn close_now(&mut self, id: ConnectionId, now: Instant) {
        if let Some(connection) = self.connections.remove(&id) {
            self.count_gone(id, connection, now);
            self.events.push_back(Event::CloseConnection(id));
        }
    }

    /// A connection is gone: its counters, its tenant, its joins.
    pub(super) fn count_gone(&mut self, id: ConnectionId, connection: Connection, now: Instant) {
        let gone = connection.depart();
        if gone.refused {
            self.refused_open -= 1;
        } else {
            let key = crate::net::limit_key(gone.peer.ip());
            if let Some(count) = self.per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&key);
                }
            }
        }
        if gone.websocket {
            self.metrics.websocket_connections_open -= 1;
        } else {
            self.metrics.http_connections_open -= 1;
        }
        if let Some(client) = gone.client {
            self.client_gone(id, client, now);
        }
        self.connection_gone_cluster(id);
    }

    /// Schedules the connection at its earliest deadline.
    pub(crate) fn reschedule(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.schedule(id, &mut self.timers, &self.config);
        }
    }

    // ------------------------------------------------------------ the rate limit

    /// Counts a message against the connection's budget. Over it: `RATE_LIMITED`, and a close
    /// with 4101 when the client keeps going. Returns false when the message must be dropped.
    pub(crate) fn count_message(
        &mut self,
        id: ConnectionId,
        request_id: Option<&str>,
        now: Instant,
    ) -> bool {
        self.with_connection(id, now, |connection, env| {
            connection.count_message(request_id, now, env)
        })
        .unwrap_or(false)
    }

    // ------------------------------------------------------------ authentication

    /// The `authenticate` message: an authenticated connection is answered `authenticated`
    /// again; otherwise its `token` is verified.
    pub(crate) fn authenticate_message(
        &mut self,
        id: ConnectionId,
        token: Result<&str, Refusal>,
        request_id: Option<&str>,
        now: Instant,
    ) -> Handled {
        if let Some(identity) = self
            .client_state(id)
            .and_then(|client| client.identity().cloned())
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

    /// A token from the upgrade request: on failure the client is told and closed (4001, or
    /// 4101 when it was only not verified yet; see `Connection::refuse_upgrade_token`).
    pub(crate) fn authenticate_upgrade_token(
        &mut self,
        id: ConnectionId,
        token: &str,
        now: Instant,
    ) {
        match self.verify_token(id, token, now) {
            Ok(identity) => self.complete_authentication(id, identity, None, now),
            Err(refusal) => {
                self.with_connection(id, now, |connection, env| {
                    connection.refuse_upgrade_token(&refusal, now, env);
                });
            }
        }
    }

    /// Verifies a token for the connection `id` with the gateway's authenticator and failure
    /// limiter (see `Connection::verify_token`).
    fn verify_token(
        &mut self,
        id: ConnectionId,
        token: &str,
        now: Instant,
    ) -> Result<Arc<Identity>, Refusal> {
        self.arm_sweep(now);
        let unix_ms = self.clock.unix_ms(now);
        let Some(connection) = self.connections.get(&id) else {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "the connection is gone",
            ));
        };
        connection.verify_token(
            token,
            now,
            unix_ms,
            Verifier {
                authenticator: self.auth.as_mut(),
                failures: &mut self.auth_failures,
                metrics: &mut self.metrics,
            },
        )
    }

    /// The connection is `identity` from now on: it is answered `authenticated` and joins its
    /// tenant's topic.
    pub(crate) fn complete_authentication(
        &mut self,
        id: ConnectionId,
        identity: Arc<Identity>,
        request_id: Option<&str>,
        now: Instant,
    ) {
        self.with_connection(id, now, |connection, env| {
            connection.complete_authentication(identity, request_id, now, env);
        });
    }

    /// An authenticated connection joins its tenant's topic; a member first seen by this process
    /// is recorded.
    /// (An `/acp` client is not subscribed: ACP has no notification of the tenant's sessions.)
    fn join_tenant(&mut self, id: ConnectionId, identity: &Identity, now: Instant) {
        let tenant: Arc<str> = Arc::from(identity.tenant_id.as_str());
        let acp = self.connections.get(&id).is_some_and(Connection::is_acp);
        let entry = self.tenants.entry(tenant.clone()).or_default();
        if !acp {
            entry.topic.subscribe(id);
        }
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
    }
}
