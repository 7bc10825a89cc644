//! A connection once upgraded: the decoder's limits, control frames (ping, pong, the close
//! handshake), `/echo`, and the state of a `/ws` client. Client text messages go to the gateway,
//! whose request dispatch answers them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::CoreConfig;
use crate::ids::SessionId;
use crate::protocol::Identity;
use crate::ws::{self, close_code, Decoder, DecoderConfig, Message};

use super::rate_limit::SlidingWindow;
use super::{Connection, Env, Output, State};

pub(super) struct WebSocketState {
    pub(super) decoder: Decoder,
    /// The peer's close frame arrived, or the server sent its own close: data is ignored.
    pub(super) close_sent: bool,
    pub(super) endpoint: Endpoint,
}

pub(super) enum Endpoint {
    /// `/echo`: every message back, for the conformance suite.
    Echo,
    /// `/ws`: the gateway protocol.
    Client(Box<ClientState>),
}

/// A `/ws` client: who it is, its budget, the sessions it joined.
pub(crate) struct ClientState {
    /// The client's address for the authentication limits: the TCP peer, or what a trusted proxy
    /// reported for it (`net::client_address`).
    pub(super) client_ip: IpAddr,
    pub(super) identity: Option<Arc<Identity>>,
    /// Close with 4001 if not authenticated by then.
    pub(super) auth_deadline: Option<Instant>,
    /// When the connection was upgraded (the rate window's origin).
    pub(super) opened_at: Instant,
    pub(super) rate: SlidingWindow,
    /// Sessions this connection has joined.
    pub(super) joined: Vec<SessionId>,
    /// An `/acp` client: its JSON-RPC state (none on `/ws`). Everything else, the identity, the
    /// budget and the joins, is the same machinery as a `/ws` client's.
    pub(crate) acp: Option<Box<crate::acp_server::AcpEdge>>,
}

impl ClientState {
    /// Who the client authenticated as (none before it did).
    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref()
    }

    /// Remembers a join (once).
    pub(crate) fn join(&mut self, session_id: &SessionId) {
        if !self.joined.contains(session_id) {
            self.joined.push(session_id.clone());
        }
    }

    /// The sessions this connection has joined.
    pub(crate) fn joined(&self) -> &[SessionId] {
        &self.joined
    }

    /// Forgets a join (a leave, or the session is gone).
    pub(crate) fn leave(&mut self, session_id: &SessionId) {
        self.joined.retain(|joined| joined != session_id);
    }
}

impl Connection {
    /// Takes the decoder out for one read, with this endpoint's limits: the caller decodes and
    /// hands each message to `receive`, then gives the decoder back with `put_decoder`.
    pub(crate) fn take_decoder(&mut self, config: &CoreConfig) -> Option<(Decoder, DecoderConfig)> {
        let State::WebSocket(websocket) = &mut self.state else {
            return None;
        };
        let echo = matches!(websocket.endpoint, Endpoint::Echo);
        let limits = DecoderConfig {
            max_message_size: if echo {
                config.echo_max_message_size
            } else {
                config.max_message_size
            },
            accept_binary: echo,
        };
        Some((std::mem::take(&mut websocket.decoder), limits))
    }

    pub(crate) fn put_decoder(&mut self, decoder: Decoder) {
        if let State::WebSocket(websocket) = &mut self.state {
            websocket.decoder = decoder;
        }
    }

    /// A whole message arrived. Control frames and `/echo` are handled here; a `/ws` client's
    /// text message is returned for the gateway to dispatch.
    pub(crate) fn receive<'m>(
        &mut self,
        message: Message<'m>,
        now: Instant,
        env: &mut Env<'_>,
    ) -> Option<&'m str> {
        env.metrics.websocket_messages_received += 1;
        // Liveness counts whole frames (PROTOCOL section 4), so a trickle of bytes that never
        // completes one cannot keep a connection open.
        self.last_received = now;
        let State::WebSocket(websocket) = &mut self.state else {
            return None;
        };
        let echo = matches!(websocket.endpoint, Endpoint::Echo);
        let close_sent = websocket.close_sent;
        match message {
            Message::Close { code, .. } => {
                if !close_sent {
                    // Echo the peer's code (RFC 6455 section 5.5.1), then end the connection.
                    let frame = match code {
                        Some(code) => ws::close_frame(code, ""),
                        None => ws::encode_frame(ws::OpCode::Close, &[]),
                    };
                    websocket.close_sent = true;
                    self.queue_close_frame(frame, now, env);
                }
                self.finish(now, env);
            }
            _ if close_sent => {}
            Message::Ping(payload) => self.send(ws::pong_frame(payload), now, env),
            Message::Pong(_) => {}
            Message::Text(text) if echo => self.send(ws::text_frame(text), now, env),
            Message::Binary(bytes) if echo => {
                self.send(ws::encode_frame(ws::OpCode::Binary, bytes), now, env);
            }
            Message::Text(text) => return Some(text),
            Message::Binary(_) => self.fail_websocket(
                close_code::UNSUPPORTED_DATA,
                "binary messages are not accepted",
                now,
                env,
            ),
        }
        None
    }

    /// Fails the connection after a protocol violation: the stream cannot be parsed any further,
    /// so the close frame is the last thing sent and the socket closes once it is written.
    pub(crate) fn fail_websocket(
        &mut self,
        code: u16,
        reason: &str,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        self.close_websocket(code, reason, now, env);
        self.finish(now, env);
    }

    /// Starts the close handshake: the close frame is sent and the connection waits (at most
    /// `close_timeout`) for the peer's close frame.
    pub(crate) fn close_websocket(
        &mut self,
        code: u16,
        reason: &str,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        let State::WebSocket(websocket) = &mut self.state else {
            return;
        };
        if websocket.close_sent || self.closed {
            return;
        }
        websocket.close_sent = true;
        self.close_deadline = Some(now + env.config.close_timeout);
        env.metrics.count_close(code);
        self.queue_close_frame(ws::close_frame(code, reason), now, env);
        env.out.push(Output::Deadline);
    }
}
