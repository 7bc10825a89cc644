//! The gateway state machine: every connection's HTTP and WebSocket state, its outbound bytes and
//! its deadlines. Inputs are the `handle_*` methods; outputs are drained after every input with
//! `poll_event`, `poll_transmit` (+ `outbound`/`handle_sent`) and `poll_timeout`.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::http::request::Method;
use crate::http::{parse_head, HeadError, HeadParse, RequestHead, Response, Route};
use crate::id_hash::IdHashBuilder;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::protocol::{self, Envelope, EnvelopeError, ErrorCode, Identity, ServerMessage};
use crate::rng::{format_uuid, Rng};
use crate::timers::Timers;
use crate::ws::{self, close_code, Decoder, DecoderConfig, Message};

/// A connection, named by the adapter. Unique among open connections; may be reused after the
/// connection it named is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// An output that is not bytes for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Close the socket. Everything queued for it has been written (or deliberately discarded);
    /// the core has forgotten the connection, so no `handle_closed` follows.
    CloseConnection(ConnectionId),
}

struct Connection {
    peer: SocketAddr,
    state: State,
    outbound: Outbound,
    /// In the transmit queue already.
    transmit_queued: bool,
    /// Close the socket as soon as the outbound queue is empty; further input is ignored.
    close_after_flush: bool,
    /// When the connection is closed whatever remains unsent.
    close_deadline: Option<Instant>,
    last_received: Instant,
    last_sent: Instant,
    /// The deadline this connection is scheduled at in `Timers`.
    scheduled: Option<Instant>,
}

enum State {
    Http(HttpState),
    WebSocket(WebSocketState),
}

struct HttpState {
    /// An incomplete request head (kept only between reads; empty and unallocated otherwise).
    partial: Vec<u8>,
    /// When the first byte of the request in progress arrived.
    head_started: Option<Instant>,
    /// When the connection last finished a request (for the keep-alive timeout).
    idle_since: Instant,
}

struct WebSocketState {
    decoder: Decoder,
    /// The peer's close frame arrived, or the server sent its own close: data is ignored.
    close_sent: bool,
    endpoint: Endpoint,
}

enum Endpoint {
    /// `/echo`: every message back, for the conformance suite.
    Echo,
    /// `/ws`: the gateway protocol.
    Client(Box<ClientState>),
}

struct ClientState {
    client_id: u128,
    identity: Option<Arc<Identity>>,
    /// Close with 4001 if not authenticated by then.
    auth_deadline: Option<Instant>,
}

/// The sans-IO gateway. See `DESIGN.md` for the calling contract.
pub struct Gateway {
    config: CoreConfig,
    clock: Clock,
    rng: Rng,
    connections: HashMap<ConnectionId, Connection, IdHashBuilder>,
    events: VecDeque<Event>,
    transmit_queue: VecDeque<ConnectionId>,
    timers: Timers,
    metrics: Metrics,
    dev_identity: Arc<Identity>,
    draining: bool,
    storage_writable: bool,
}

/// What one parsed request leads to.
enum Answer {
    Respond(Response, bool),
    Upgrade(Route, Box<RequestHead>),
}

impl Gateway {
    /// `now` and `unix_ms` are the same moment on the monotonic and the wall clock; `seed` feeds
    /// every random choice the core makes.
    pub fn new(config: CoreConfig, seed: u64, now: Instant, unix_ms: u64) -> Self {
        Gateway {
            config,
            clock: Clock::new(now, unix_ms),
            rng: Rng::new(seed),
            connections: HashMap::with_hasher(IdHashBuilder),
            events: VecDeque::new(),
            transmit_queue: VecDeque::new(),
            timers: Timers::default(),
            metrics: Metrics::default(),
            dev_identity: Arc::new(Identity::dev()),
            draining: false,
            storage_writable: true,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    // ---------------------------------------------------------------- inputs

    /// A TCP connection was accepted.
    pub fn handle_accept(&mut self, id: ConnectionId, peer: SocketAddr, now: Instant) {
        self.metrics.connections_accepted += 1;
        self.metrics.http_connections_open += 1;
        if let Some(previous) = self.connections.remove(&id) {
            // The adapter reused a live id: forget the old connection rather than mix the two.
            self.count_gone(&previous);
        }
        let connection = Connection {
            peer,
            state: State::Http(HttpState {
                partial: Vec::new(),
                head_started: None,
                idle_since: now,
            }),
            outbound: Outbound::default(),
            transmit_queued: false,
            close_after_flush: false,
            close_deadline: None,
            last_received: now,
            last_sent: now,
            scheduled: None,
        };
        self.connections.insert(id, connection);
        if self.draining {
            self.close_now(id);
            return;
        }
        self.reschedule(id);
    }

    /// Bytes arrived on a connection. The core may modify `data` (it unmasks WebSocket payloads in
    /// place) and keeps nothing that refers to it.
    pub fn handle_data(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if connection.close_after_flush {
            return;
        }
        connection.last_received = now;
        match connection.state {
            State::Http(_) => self.http_input(id, data, now),
            State::WebSocket(_) => self.websocket_input(id, data, now),
        }
        self.reschedule(id);
    }

    /// The peer closed the connection, or it failed. The core forgets it.
    pub fn handle_closed(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.remove(&id) {
            self.count_gone(&connection);
        }
    }

    /// The socket can take bytes again after a write returned short: yields the connection from
    /// `poll_transmit` again if it has bytes waiting.
    pub fn handle_writable(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if !connection.outbound.is_empty() && !connection.transmit_queued {
                connection.transmit_queued = true;
                self.transmit_queue.push_back(id);
            }
        }
    }

    /// `written` bytes from the front of `outbound(id)` reached the socket.
    pub fn handle_sent(&mut self, id: ConnectionId, written: usize) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.outbound.consume(written);
        if connection.outbound.is_empty() && connection.close_after_flush {
            self.close_now(id);
        }
    }

    /// Deadlines up to `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            if connection.scheduled != Some(at) {
                continue;
            }
            connection.scheduled = None;
            self.connection_timers(id, now);
            self.reschedule(id);
        }
    }

    /// Start a graceful stop: refuse new work, tell every client to come back later, close every
    /// WebSocket with 1001. The adapter exits once `connection_count()` is zero (or on a second
    /// signal).
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            match &connection.state {
                State::Http(http) => {
                    if http.head_started.is_none() && connection.outbound.is_empty() {
                        self.close_now(id);
                    } else {
                        self.finish(id, now);
                    }
                    continue;
                }
                State::WebSocket(websocket) => {
                    if websocket.close_sent {
                        continue;
                    }
                    if matches!(websocket.endpoint, Endpoint::Client(_)) {
                        let reconnect_after_ms = self.rng.range(1000, 5000);
                        let frame = protocol::encode_frame(&ServerMessage::ServerShutdown {
                            reason: "the gateway is restarting",
                            reconnect_after_ms,
                        });
                        self.send(id, frame, now);
                    }
                    self.close_websocket(id, close_code::GOING_AWAY, "server shutting down", now);
                }
            }
            self.reschedule(id);
        }
    }

    /// Storage reports whether it can write (it drives `/readyz`).
    pub fn set_storage_writable(&mut self, writable: bool) {
        self.storage_writable = writable;
    }

    // ---------------------------------------------------------------- outputs

    /// The next non-byte output.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next connection with bytes waiting; write them with `outbound` and `handle_sent`.
    pub fn poll_transmit(&mut self) -> Option<ConnectionId> {
        while let Some(id) = self.transmit_queue.pop_front() {
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.transmit_queued = false;
                if !connection.outbound.is_empty() {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Fills `slices` with the bytes waiting for `id`, in order; returns how many it filled.
    pub fn outbound<'a>(&'a self, id: ConnectionId, slices: &mut [IoSlice<'a>]) -> usize {
        self.connections
            .get(&id)
            .map_or(0, |connection| connection.outbound.slices(slices))
    }

    /// Bytes waiting for `id`.
    pub fn outbound_len(&self, id: ConnectionId) -> usize {
        self.connections
            .get(&id)
            .map_or(0, |connection| connection.outbound.len())
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    // ---------------------------------------------------------------- observers

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn peer(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.connections.get(&id).map(|connection| connection.peer)
    }

    // ---------------------------------------------------------------- HTTP

    fn http_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let State::Http(http) = &mut connection.state else {
            return;
        };
        // Parse straight from the read when nothing is pending; copy only an unfinished head.
        let mut owned = std::mem::take(&mut http.partial);
        let from_owned = !owned.is_empty();
        if from_owned {
            owned.extend_from_slice(data);
        }
        let buffer: &mut [u8] = if from_owned { &mut owned } else { data };
        let mut offset = 0;
        while offset < buffer.len() {
            let parsed = parse_head(&buffer[offset..], self.config.max_request_head);
            match parsed {
                Ok(HeadParse::Partial) => {
                    let rest = buffer[offset..].to_vec();
                    if let Some(State::Http(http)) =
                        self.connections.get_mut(&id).map(|c| &mut c.state)
                    {
                        http.partial = rest;
                        http.head_started.get_or_insert(now);
                    }
                    return;
                }
                Err(HeadError::TooLarge) => {
                    self.respond(id, None, Response::plain(431).close(), false, now);
                    return;
                }
                Err(HeadError::Malformed) => {
                    self.respond(id, None, Response::plain(400).close(), false, now);
                    return;
                }
                Ok(HeadParse::Complete { head, len }) => {
                    offset += len;
                    if let Some(State::Http(http)) =
                        self.connections.get_mut(&id).map(|c| &mut c.state)
                    {
                        http.head_started = None;
                        http.idle_since = now;
                    }
                    match self.answer(&head, now) {
                        Answer::Respond(response, head_only) => {
                            let route = head.route;
                            let closing = head.wants_close || self.draining;
                            let response = if closing { response.close() } else { response };
                            let closes = response.closes();
                            self.respond(id, route, response, head_only, now);
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
        }
    }

    fn answer(&mut self, head: &RequestHead, now: Instant) -> Answer {
        let method = head.method();
        let head_only = method == Method::Head;
        if head.content_length_invalid {
            return Answer::Respond(Response::plain(400).close(), head_only);
        }
        if head.transfer_encoding || head.content_length.is_some_and(|length| length > 0) {
            // No route takes a body; rather than skip one, refuse it and end the connection.
            return Answer::Respond(Response::plain(413).close(), head_only);
        }
        let route = match head.route {
            Some(Route::Echo) if !self.config.conformance_echo => None,
            route => route,
        };
        let Some(route) = route else {
            return Answer::Respond(Response::plain(404), head_only);
        };
        if method == Method::Other {
            return Answer::Respond(Response::plain(405).header("Allow", "GET, HEAD"), false);
        }
        let response = match route {
            Route::Livez => {
                Response::new(200).body("text/plain; charset=utf-8", Bytes::from_static(b"ok\n"))
            }
            Route::Readyz => {
                if self.is_ready() {
                    Response::new(200)
                        .body("text/plain; charset=utf-8", Bytes::from_static(b"ready\n"))
                } else {
                    Response::new(503).body(
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"not ready\n"),
                    )
                }
            }
            Route::Health => {
                let body = serde_json::json!({
                    "status": if self.is_ready() { "ok" } else if self.draining { "draining" } else { "unavailable" },
                    "uptimeMs": self.clock.uptime_ms(now),
                    "connections": {
                        "http": self.metrics.http_connections_open,
                        "websocket": self.metrics.websocket_connections_open,
                    },
                });
                let status = if self.is_ready() { 200 } else { 503 };
                Response::new(status).body("application/json", Bytes::from(body.to_string()))
            }
            Route::Metrics => {
                let text = self.metrics.render(self.clock.uptime_ms(now));
                Response::new(200).body(
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(text),
                )
            }
            Route::WebSocket | Route::Echo => return self.check_upgrade(route, head, head_only),
        };
        Answer::Respond(response, head_only)
    }

    fn check_upgrade(&self, route: Route, head: &RequestHead, head_only: bool) -> Answer {
        let refuse = |response: Response| Answer::Respond(response, head_only);
        if head_only || !head.has_upgrade || !head.upgrade_websocket {
            return refuse(Response::plain(426).header("Upgrade", "websocket"));
        }
        if head.websocket_version.as_deref() != Some(b"13") {
            return refuse(Response::plain(426).header("Sec-WebSocket-Version", "13"));
        }
        let key_ok = head
            .websocket_key
            .as_deref()
            .is_some_and(ws::handshake::is_valid_client_key);
        if !head.http11 || !head.connection_upgrade || !key_ok {
            return refuse(Response::plain(400).close());
        }
        if !self.origin_allowed(head.origin.as_deref()) {
            return refuse(Response::plain(403));
        }
        if self.draining {
            return refuse(Response::plain(503).header("Retry-After", "5"));
        }
        if self.metrics.websocket_connections_open as usize >= self.config.max_connections {
            return refuse(Response::plain(503).header("Retry-After", "1"));
        }
        Answer::Upgrade(route, Box::new(head.clone()))
    }

    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.config.dev_mode || self.config.allowed_origins.is_empty() {
            return true;
        }
        match origin {
            // Non-browser clients send no Origin; the allowlist protects browsers' users.
            None => true,
            Some(origin) => self
                .config
                .allowed_origins
                .iter()
                .any(|allowed| allowed == origin),
        }
    }

    fn is_ready(&self) -> bool {
        !self.draining && self.storage_writable
    }

    fn respond(
        &mut self,
        id: ConnectionId,
        route: Option<Route>,
        response: Response,
        head_only: bool,
        now: Instant,
    ) {
        self.metrics.count_request(route, response.status());
        let closes = response.closes();
        self.send(id, response.encode(head_only), now);
        if closes {
            self.finish(id, now);
        }
    }

    fn upgrade(&mut self, id: ConnectionId, route: Route, head: &RequestHead, now: Instant) {
        let Some(key) = head.websocket_key.as_deref() else {
            return;
        };
        let mut response = Response::new(101)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Accept", ws::handshake::accept_key(key));
        if route == Route::WebSocket
            && head
                .websocket_protocols
                .iter()
                .any(|p| p == "diminuendo.v1")
        {
            response = response.header("Sec-WebSocket-Protocol", "diminuendo.v1");
        }
        self.metrics.count_request(Some(route), 101);
        self.send(id, response.encode(false), now);

        let endpoint = match route {
            Route::Echo => Endpoint::Echo,
            _ => Endpoint::Client(Box::new(ClientState {
                client_id: self.rng.uuid_v4(),
                identity: self.config.dev_mode.then(|| self.dev_identity.clone()),
                auth_deadline: (!self.config.dev_mode).then(|| now + self.config.auth_timeout),
            })),
        };
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.state = State::WebSocket(WebSocketState {
            decoder: Decoder::new(),
            close_sent: false,
            endpoint,
        });
        self.metrics.http_connections_open -= 1;
        self.metrics.websocket_connections_open += 1;
        if route == Route::WebSocket {
            self.greet(id, now);
        }
    }

    fn greet(&mut self, id: ConnectionId, now: Instant) {
        let Some(client) = self.client_state(id) else {
            return;
        };
        let client_id = format_uuid(client.client_id);
        let identity = client.identity.clone();
        let ts = self.clock.unix_ms(now);
        let welcome = ServerMessage::Welcome {
            protocol_version: protocol::PROTOCOL_VERSION,
            requires_auth: !self.config.dev_mode,
        };
        self.send_message(id, &welcome, now);
        let connected = ServerMessage::Connected {
            client_id: &client_id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            ts,
        };
        self.send_message(id, &connected, now);
        if let Some(identity) = identity {
            self.send_message(
                id,
                &ServerMessage::Authenticated {
                    identity: &identity,
                    request_id: None,
                },
                now,
            );
        }
    }

    // ---------------------------------------------------------------- WebSocket

    fn websocket_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let State::WebSocket(websocket) = &mut connection.state else {
            return;
        };
        let echo = matches!(websocket.endpoint, Endpoint::Echo);
        let config = DecoderConfig {
            max_message_size: if echo {
                self.config.echo_max_message_size
            } else {
                self.config.max_message_size
            },
            accept_binary: echo,
        };
        let mut decoder = std::mem::take(&mut websocket.decoder);
        let mut input = data;
        while !input.is_empty() {
            let (consumed, event) = decoder.decode(&config, &mut *input);
            match event {
                Some(Ok(message)) => self.websocket_message(id, message, now),
                Some(Err(error)) => {
                    self.fail_websocket(id, error.code, error.reason, now);
                    return;
                }
                None => {}
            }
            if consumed == 0
                || self
                    .connections
                    .get(&id)
                    .is_none_or(|c| c.close_after_flush)
            {
                break;
            }
            input = &mut std::mem::take(&mut input)[consumed..];
        }
        if let Some(State::WebSocket(websocket)) =
            self.connections.get_mut(&id).map(|c| &mut c.state)
        {
            websocket.decoder = decoder;
        }
    }

    fn websocket_message(&mut self, id: ConnectionId, message: Message<'_>, now: Instant) {
        self.metrics.websocket_messages_received += 1;
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let State::WebSocket(websocket) = &mut connection.state else {
            return;
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
                    self.send(id, frame, now);
                }
                self.finish(id, now);
            }
            _ if close_sent => {}
            Message::Ping(payload) => {
                let frame = ws::pong_frame(payload);
                self.send(id, frame, now);
            }
            Message::Pong(_) => {}
            Message::Text(text) if echo => {
                let frame = ws::text_frame(text);
                self.send(id, frame, now);
            }
            Message::Binary(bytes) if echo => {
                let frame = ws::encode_frame(ws::OpCode::Binary, bytes);
                self.send(id, frame, now);
            }
            Message::Text(text) => self.client_message(id, text, now),
            Message::Binary(_) => self.fail_websocket(
                id,
                close_code::UNSUPPORTED_DATA,
                "binary messages are not accepted",
                now,
            ),
        }
    }

    /// Fails the connection after a protocol violation: the stream cannot be parsed any further,
    /// so the close frame is the last thing sent and the socket closes once it is written.
    fn fail_websocket(&mut self, id: ConnectionId, code: u16, reason: &str, now: Instant) {
        self.close_websocket(id, code, reason, now);
        self.finish(id, now);
    }

    /// Starts the close handshake: the close frame is sent and the connection waits (at most
    /// `close_timeout`) for the peer's close frame.
    fn close_websocket(&mut self, id: ConnectionId, code: u16, reason: &str, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let State::WebSocket(websocket) = &mut connection.state else {
            return;
        };
        if websocket.close_sent {
            return;
        }
        websocket.close_sent = true;
        connection.close_deadline = Some(now + self.config.close_timeout);
        self.metrics.count_close(code);
        self.send(id, ws::close_frame(code, reason), now);
        self.reschedule(id);
    }

    // ---------------------------------------------------------------- the gateway protocol

    fn client_message(&mut self, id: ConnectionId, text: &str, now: Instant) {
        let envelope = match protocol::parse_envelope(text) {
            Ok(envelope) => envelope,
            Err(EnvelopeError::InvalidJson) => {
                self.send_error(
                    id,
                    ErrorCode::InvalidJson,
                    "the message is not valid JSON",
                    None,
                    now,
                );
                return;
            }
            Err(EnvelopeError::InvalidMessage { reason, request_id }) => {
                self.send_error(
                    id,
                    ErrorCode::InvalidMessage,
                    reason,
                    request_id.as_deref(),
                    now,
                );
                return;
            }
        };
        let Envelope {
            kind, request_id, ..
        } = envelope;
        let request_id = request_id.as_deref();
        let authenticated = self
            .client_state(id)
            .is_some_and(|client| client.identity.is_some());
        match kind.as_str() {
            "ping" => {
                let pong = ServerMessage::Pong {
                    ts: self.clock.unix_ms(now),
                    request_id,
                };
                self.send_message(id, &pong, now);
            }
            "authenticate" => {
                let identity = self
                    .client_state(id)
                    .and_then(|client| client.identity.clone());
                match identity {
                    Some(identity) => {
                        let reply = ServerMessage::Authenticated {
                            identity: &identity,
                            request_id,
                        };
                        self.send_message(id, &reply, now);
                    }
                    None => self.send_error(
                        id,
                        ErrorCode::AuthFailed,
                        "token verification is not configured on this gateway",
                        request_id,
                        now,
                    ),
                }
            }
            _ if !authenticated => self.send_error(
                id,
                ErrorCode::NotAuthenticated,
                "authenticate first",
                request_id,
                now,
            ),
            known if protocol::SESSION_MESSAGE_TYPES.contains(&known) => {
                let message = format!("'{known}' is not available in this build yet");
                self.send_error(id, ErrorCode::Internal, &message, request_id, now)
            }
            _ => self.send_error(
                id,
                ErrorCode::InvalidMessage,
                "unknown message type",
                request_id,
                now,
            ),
        }
    }

    fn client_state(&self, id: ConnectionId) -> Option<&ClientState> {
        match &self.connections.get(&id)?.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client),
            _ => None,
        }
    }

    fn send_error(
        &mut self,
        id: ConnectionId,
        code: ErrorCode,
        message: &str,
        request_id: Option<&str>,
        now: Instant,
    ) {
        let error = ServerMessage::Error {
            code,
            message,
            request_id,
            retry_after_ms: None,
        };
        self.send_message(id, &error, now);
    }

    fn send_message(&mut self, id: ConnectionId, message: &ServerMessage<'_>, now: Instant) {
        let frame = protocol::encode_frame(message);
        self.send(id, frame, now);
    }

    // ---------------------------------------------------------------- plumbing

    /// Queues bytes for a connection. Over the outbound limit, a WebSocket is closed as a slow
    /// consumer (4100): its queue is discarded and only the close frame is attempted.
    fn send(&mut self, id: ConnectionId, bytes: Bytes, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let (is_websocket, queue_limit) = match &connection.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Echo,
                ..
            }) => {
                // Echoing a conformance-sized message must fit: twice the largest echo message.
                (true, self.config.echo_max_message_size.saturating_mul(2))
            }
            State::WebSocket(_) => (true, self.config.outbound_queue_limit),
            State::Http(_) => (false, usize::MAX),
        };
        if is_websocket {
            self.metrics.websocket_messages_sent += 1;
        }
        connection.outbound.push(bytes);
        connection.last_sent = now;
        if !connection.transmit_queued {
            connection.transmit_queued = true;
            self.transmit_queue.push_back(id);
        }
        if connection.outbound.len() > queue_limit {
            connection.outbound.discard_unstarted();
            let already_closing =
                matches!(&connection.state, State::WebSocket(websocket) if websocket.close_sent);
            if !already_closing {
                self.close_websocket(id, close_code::SLOW_CONSUMER, "slow consumer", now);
            }
            self.finish(id, now);
        }
    }

    /// Ends the connection once its queued bytes are written (at most `close_timeout` from now).
    fn finish(&mut self, id: ConnectionId, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.close_after_flush = true;
        if connection.outbound.is_empty() {
            self.close_now(id);
            return;
        }
        let deadline = now + self.config.close_timeout;
        connection.close_deadline = Some(
            connection
                .close_deadline
                .map_or(deadline, |d| d.min(deadline)),
        );
        self.reschedule(id);
    }

    fn close_now(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.remove(&id) {
            self.count_gone(&connection);
            self.events.push_back(Event::CloseConnection(id));
        }
    }

    fn count_gone(&mut self, connection: &Connection) {
        match connection.state {
            State::Http(_) => self.metrics.http_connections_open -= 1,
            State::WebSocket(_) => self.metrics.websocket_connections_open -= 1,
        }
    }

    /// The earliest moment something must happen to this connection.
    fn deadline(&self, connection: &Connection) -> Option<Instant> {
        let mut earliest = connection.close_deadline;
        if connection.close_after_flush {
            return earliest;
        }
        match &connection.state {
            State::Http(http) => {
                let at = match http.head_started {
                    Some(started) => started + self.config.request_head_timeout,
                    None => http.idle_since + self.config.keep_alive_timeout,
                };
                earliest = earlier(earliest, at);
            }
            State::WebSocket(websocket) => {
                if let (false, Endpoint::Client(client)) =
                    (websocket.close_sent, &websocket.endpoint)
                {
                    earliest = earlier(
                        earliest,
                        connection.last_sent + self.config.heartbeat_interval,
                    );
                    earliest = earlier(
                        earliest,
                        connection.last_received + self.config.liveness_timeout(),
                    );
                    if let Some(at) = client.auth_deadline.filter(|_| client.identity.is_none()) {
                        earliest = earlier(earliest, at);
                    }
                }
            }
        }
        earliest
    }

    fn reschedule(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        let Some(deadline) = self.deadline(connection) else {
            return;
        };
        if let Some(connection) = self.connections.get_mut(&id) {
            self.timers
                .schedule(id, &mut connection.scheduled, deadline);
        }
    }

    fn connection_timers(&mut self, id: ConnectionId, now: Instant) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if connection.close_deadline.is_some_and(|at| at <= now) {
            self.close_now(id);
            return;
        }
        if connection.close_after_flush {
            return;
        }
        match &connection.state {
            State::Http(http) => match http.head_started {
                Some(started) if started + self.config.request_head_timeout <= now => {
                    self.respond(id, None, Response::plain(408).close(), false, now);
                }
                None if http.idle_since + self.config.keep_alive_timeout <= now => {
                    self.close_now(id)
                }
                _ => {}
            },
            State::WebSocket(websocket) => {
                let Endpoint::Client(client) = &websocket.endpoint else {
                    return;
                };
                if websocket.close_sent {
                    return;
                }
                if client.identity.is_none() && client.auth_deadline.is_some_and(|at| at <= now) {
                    self.close_websocket(
                        id,
                        close_code::AUTH_FAILED,
                        "authentication timed out",
                        now,
                    );
                } else if connection.last_received + self.config.liveness_timeout() <= now {
                    self.close_websocket(
                        id,
                        close_code::HEARTBEAT_TIMEOUT,
                        "no frame from the client",
                        now,
                    );
                } else if connection.last_sent + self.config.heartbeat_interval <= now {
                    let heartbeat = protocol::encode_frame(&ServerMessage::Heartbeat {
                        ts: self.clock.unix_ms(now),
                    });
                    self.send(id, heartbeat, now);
                    self.send(id, ws::ping_frame(b""), now);
                }
            }
        }
    }
}

fn earlier(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |at| at.min(candidate)))
}
