//! The gateway state machine: every connection's HTTP and WebSocket state, its outbound bytes and
//! its deadlines. Inputs are the `handle_*` methods; outputs are drained after every input with
//! `poll_event`, `poll_transmit` (+ `outbound`/`handle_sent`) and `poll_timeout`.

pub mod durable;
pub mod requests;
pub mod storage_health;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

pub use crate::agent_types::AgentCommand;
use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::connection::outbound::Outbound;
use crate::connection::rate_limit::SlidingWindow;
use crate::http::request::Method;
use crate::http::{parse_head, HeadError, HeadParse, RequestHead, Response, Route};
use crate::id_hash::IdHashBuilder;
pub use crate::ids::{AgentId, ConnectionId};
use crate::ids::{SessionId, TimerKey};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Identity, ServerMessage};
use crate::rng::{format_uuid, Entropy, Random, Rng};
use crate::session::{PendingQuery, Session, Tenant};
use crate::storage::StorageCommand;
use crate::timers::Timers;
use crate::ws::{self, close_code, Decoder, DecoderConfig, Message};

/// An output that is not bytes for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Close the socket. Everything queued for it has been written (or deliberately discarded);
    /// the core has forgotten the connection, so no `handle_closed` follows.
    CloseConnection(ConnectionId),
    /// Hand this command to storage; its completion comes back through `handle_storage`.
    Storage(StorageCommand),
    /// Start, write to, or stop an agent process (see `AgentCommand`).
    Agent(AgentCommand),
}

pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    pub(crate) state: State,
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
    /// Accepted over `max_connections` or `max_connections_per_ip`: its first request is answered
    /// 503 with `Connection: close`, and it counts toward neither limit.
    refused: bool,
}

pub(crate) enum State {
    Http(HttpState),
    WebSocket(WebSocketState),
}

pub(crate) struct HttpState {
    /// An incomplete request head (kept only between reads; empty and unallocated otherwise).
    partial: Vec<u8>,
    /// When the first byte of the request in progress arrived.
    head_started: Option<Instant>,
    /// When the connection last finished a request (for the keep-alive timeout), or was
    /// accepted.
    idle_since: Instant,
    /// A request was answered: between requests the keep-alive timeout applies; before the first
    /// one, the request-head timeout (a connection that sends nothing is not held for a minute).
    served: bool,
}

pub(crate) struct WebSocketState {
    decoder: Decoder,
    /// The peer's close frame arrived, or the server sent its own close: data is ignored.
    close_sent: bool,
    pub(crate) endpoint: Endpoint,
}

pub(crate) enum Endpoint {
    /// `/echo`: every message back, for the conformance suite.
    Echo,
    /// `/ws`: the gateway protocol.
    Client(Box<ClientState>),
}

pub(crate) struct ClientState {
    pub(crate) client_id: u128,
    /// The client's address for the authentication limits: the TCP peer, or what a trusted proxy
    /// reported for it (`net::client_address`).
    pub(crate) client_ip: IpAddr,
    pub(crate) identity: Option<Arc<Identity>>,
    /// Close with 4001 if not authenticated by then.
    pub(crate) auth_deadline: Option<Instant>,
    /// When the connection was upgraded (the rate window's origin).
    pub(crate) opened_at: Instant,
    pub(crate) rate: SlidingWindow,
    /// Sessions this connection has joined.
    pub(crate) joined: Vec<SessionId>,
}

/// The sans-IO gateway. See `DESIGN.md` for the calling contract.
pub struct Gateway {
    pub(crate) config: CoreConfig,
    pub(crate) clock: Clock,
    pub(crate) rng: Random,
    pub(crate) connections: HashMap<ConnectionId, Connection, IdHashBuilder>,
    pub(crate) events: VecDeque<Event>,
    transmit_queue: VecDeque<ConnectionId>,
    pub(crate) timers: Timers<TimerKey>,
    /// The gateway's own deadline in `timers`.
    pub(crate) gateway_scheduled: Option<Instant>,
    pub(crate) metrics: Metrics,
    dev_identity: Arc<Identity>,
    pub(crate) draining: bool,
    storage_writable: bool,
    /// Why storage cannot write (`StorageCompletion::Health`), while it cannot.
    pub(crate) storage_unwritable: Option<String>,
    /// The storage queue is over its soft limit (`StorageCompletion::Backlog`).
    pub(crate) storage_congested: bool,
    /// The registry, in memory: the core is its only writer and persists every change.
    pub(crate) sessions: HashMap<SessionId, Session>,
    pub(crate) tenants: HashMap<Arc<str>, Tenant>,
    pub(crate) agents: HashMap<AgentId, SessionId>,
    pub(crate) next_agent: u64,
    pub(crate) pending_queries: HashMap<u64, PendingQuery>,
    /// Registry changes whose reply waits for their commit (see `durable`).
    pub(crate) pending_durable: HashMap<u64, crate::gateway::durable::PendingDurable>,
    pub(crate) next_token: u64,
    /// Members already written to their tenant's registry by this process.
    pub(crate) known_members: HashSet<(Arc<str>, String)>,
    pub(crate) shutdown: crate::session::ShutdownPhase,
    pub(crate) auth: Option<crate::auth::Authenticator>,
    pub(crate) auth_failures: crate::auth::FailureLimiter,
    /// Reused for every fan-out, so publishing allocates no subscriber list.
    pub(crate) fanout_scratch: Vec<ConnectionId>,
    /// When the failure limiter and the token cache are next swept (while they hold entries).
    pub(crate) next_sweep: Option<Instant>,
    /// Admitted (not refused) connections per TCP peer (`net::limit_key`); an address leaves
    /// the map with its last connection, so it never holds more than the connections open.
    per_ip: HashMap<IpAddr, u32>,
    /// Connections accepted as refused and waiting for their 503 (at most `MAX_REFUSED_OPEN`).
    refused_open: usize,
}

/// Most refused connections kept open at once to be answered 503; beyond, a connection over the
/// limits is closed as soon as it is accepted, without an answer.
pub const MAX_REFUSED_OPEN: usize = 1024;

/// What one parsed request leads to.
enum Answer {
    Respond(Response, bool),
    Upgrade(Route, Box<RequestHead>),
}

impl Gateway {
    /// `now` and `unix_ms` are the same moment on the monotonic and the wall clock; `seed` feeds
    /// every random choice the core makes, through a seeded generator: reproducible, and so only
    /// for tests, simulations and examples. A gateway serving clients uses `with_entropy` with
    /// the operating system's CSPRNG, since the ids it hands out must not be guessable.
    pub fn new(config: CoreConfig, seed: u64, now: Instant, unix_ms: u64) -> Self {
        Gateway::with_entropy(config, Box::new(Rng::new(seed)), now, unix_ms)
    }

    /// As `new`, with every random choice (client, session and turn ids, epochs, reconnect
    /// jitter) drawn from `entropy`.
    pub fn with_entropy(
        config: CoreConfig,
        entropy: Box<dyn Entropy>,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        Gateway {
            clock: Clock::new(now, unix_ms),
            rng: Random::new(entropy),
            connections: HashMap::with_hasher(IdHashBuilder),
            events: VecDeque::new(),
            transmit_queue: VecDeque::new(),
            timers: Timers::default(),
            gateway_scheduled: None,
            metrics: Metrics::default(),
            dev_identity: Arc::new(Identity::dev()),
            draining: false,
            storage_writable: true,
            storage_unwritable: None,
            storage_congested: false,
            sessions: HashMap::new(),
            tenants: HashMap::new(),
            agents: HashMap::new(),
            next_agent: 0,
            pending_queries: HashMap::new(),
            pending_durable: HashMap::new(),
            next_token: 0,
            known_members: HashSet::new(),
            shutdown: crate::session::ShutdownPhase::Running,
            auth_failures: crate::auth::FailureLimiter::new(
                config.auth_failures_per_minute,
                std::time::Duration::from_secs(60),
                config.auth_limiter_capacity,
            )
            .with_verification_rate(config.auth_verifications_per_second),
            config,
            auth: None,
            next_sweep: None,
            fanout_scratch: Vec::new(),
            per_ip: HashMap::new(),
            refused_open: 0,
        }
    }

    /// Verifies tokens with `authenticator` (without one, only dev mode can authenticate).
    pub fn set_authenticator(&mut self, authenticator: crate::auth::Authenticator) {
        self.auth = Some(authenticator);
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    // ---------------------------------------------------------------- inputs

    /// A TCP connection was accepted. Over `max_connections` (HTTP and WebSocket alike) or
    /// `max_connections_per_ip` (by TCP peer, IPv6 per /64), it is refused: its first request is
    /// answered 503 with `Connection: close` (or, with `MAX_REFUSED_OPEN` refusals already
    /// waiting, it is closed at once).
    pub fn handle_accept(&mut self, id: ConnectionId, peer: SocketAddr, now: Instant) {
        self.metrics.connections_accepted += 1;
        self.metrics.http_connections_open += 1;
        if let Some(previous) = self.connections.remove(&id) {
            // The adapter reused a live id: forget the old connection rather than mix the two.
            self.count_gone(id, previous, now);
        }
        let key = crate::net::limit_key(peer.ip());
        let admitted = self.connections.len() - self.refused_open;
        let from_peer = self.per_ip.get(&key).copied().unwrap_or(0) as usize;
        let refused = admitted >= self.config.max_connections
            || from_peer >= self.config.max_connections_per_ip;
        if refused {
            self.refused_open += 1;
        } else {
            *self.per_ip.entry(key).or_default() += 1;
        }
        let connection = Connection {
            peer,
            state: State::Http(HttpState {
                partial: Vec::new(),
                head_started: None,
                idle_since: now,
                served: false,
            }),
            outbound: Outbound::default(),
            transmit_queued: false,
            close_after_flush: false,
            close_deadline: None,
            last_received: now,
            last_sent: now,
            scheduled: None,
            refused,
        };
        // While draining, new connections are still served: probes get `/readyz` 503 and upgrades
        // 503, each with `Connection: close`.
        self.connections.insert(id, connection);
        if refused && self.refused_open > MAX_REFUSED_OPEN {
            self.close_now(id, now);
            return;
        }
        self.reschedule(id);
    }

    /// The address the authentication limits count `id` under: for a `/ws` client, what a
    /// trusted proxy reported (`--trusted-proxies`), otherwise the TCP peer's. For logs.
    pub fn client_ip(&self, id: ConnectionId) -> Option<IpAddr> {
        let connection = self.connections.get(&id)?;
        match &connection.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client.client_ip),
            _ => Some(connection.peer.ip().to_canonical()),
        }
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
        match connection.state {
            State::Http(_) => self.http_input(id, data, now),
            State::WebSocket(_) => self.websocket_input(id, data, now),
        }
        self.reschedule(id);
    }

    /// The peer closed the connection, or it failed. The core forgets it.
    pub fn handle_closed(&mut self, id: ConnectionId, now: Instant) {
        if let Some(connection) = self.connections.remove(&id) {
            self.count_gone(id, connection, now);
        }
    }

    /// The socket can take bytes again after a write returned short: yields the connection from
    /// `poll_transmit` again if it has bytes waiting.
    pub fn handle_writable(&mut self, id: ConnectionId, _now: Instant) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if !connection.outbound.is_empty() && !connection.transmit_queued {
                connection.transmit_queued = true;
                self.transmit_queue.push_back(id);
            }
        }
    }

    /// `written` bytes from the front of `outbound(id)` reached the socket.
    pub fn handle_sent(&mut self, id: ConnectionId, written: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.outbound.consume(written);
        if connection.outbound.is_empty() && connection.close_after_flush {
            self.close_now(id, now);
        }
    }

    /// Deadlines up to `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, key)) = self.timers.pop_due(now) {
            match key {
                TimerKey::Connection(id) => {
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
                TimerKey::Session(session_id) => {
                    let Some(session) = self.sessions.get_mut(&session_id) else {
                        continue;
                    };
                    if session.scheduled != Some(at) {
                        continue;
                    }
                    session.scheduled = None;
                    self.session_timers(&session_id, now);
                    self.reschedule_session(&session_id, now);
                }
                TimerKey::Gateway => {
                    if self.gateway_scheduled != Some(at) {
                        continue;
                    }
                    self.gateway_scheduled = None;
                    self.gateway_timers(now);
                }
            }
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
        self.start_drain(now);
    }

    /// Tells every client to come back later and closes every connection: `/ws` clients get
    /// `server_shutdown` then close 1001; idle HTTP connections close now, busy ones after their
    /// response.
    pub(crate) fn close_all_connections(&mut self, now: Instant) {
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            match &connection.state {
                State::Http(http) => {
                    if http.head_started.is_none() {
                        if connection.outbound.is_empty() {
                            self.close_now(id, now);
                        } else {
                            self.finish(id, now);
                        }
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

    /// Storage's count of events committed (for `/metrics`).
    pub fn record_events_persisted(&mut self, events: u64) {
        self.metrics.events_persisted = events;
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
                    let Some(connection) = self.connections.get_mut(&id) else {
                        return;
                    };
                    let refused = connection.refused;
                    if let State::Http(http) = &mut connection.state {
                        http.head_started = None;
                        http.idle_since = now;
                        http.served = true;
                    }
                    let answer = if refused {
                        let response = Response::plain(503).header("Retry-After", "1").close();
                        Answer::Respond(response, head.method() == Method::Head)
                    } else {
                        self.answer(&head, now)
                    };
                    match answer {
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
                let mut body = serde_json::json!({
                    "status": if self.is_ready() { "ok" } else if self.draining { "draining" } else { "unavailable" },
                    "uptimeMs": self.clock.uptime_ms(now),
                    "connections": {
                        "http": self.metrics.http_connections_open,
                        "websocket": self.metrics.websocket_connections_open,
                    },
                    "sessions": {
                        "total": self.sessions.len(),
                        "active": self.sessions.values()
                            .filter(|s| crate::session::state::is_active(s.record.status))
                            .count(),
                    },
                    "agents": self.config.agent_types.iter().map(|name| {
                        let sandbox = self.config.agent_sandbox.get(name).map_or("unknown", String::as_str);
                        (name.clone(), serde_json::json!({ "sandbox": sandbox }))
                    }).collect::<serde_json::Map<_, _>>(),
                });
                if let Some(reason) = self.not_ready_reason() {
                    body["reason"] = serde_json::Value::String(reason);
                }
                let status = if self.is_ready() { 200 } else { 503 };
                Response::new(status).body("application/json", Bytes::from(body.to_string()))
            }
            Route::Metrics => {
                let text = self
                    .metrics
                    .render(self.clock.uptime_ms(now), &self.gauges());
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

    /// The gauges `/metrics` shows, from the current state.
    fn gauges(&self) -> crate::metrics::Gauges {
        let mut gauges = crate::metrics::Gauges {
            storage_writable: self.storage_writable && self.storage_unwritable.is_none(),
            storage_congested: self.storage_congested,
            ..Default::default()
        };
        for session in self.sessions.values() {
            *gauges
                .sessions
                .entry(session.record.status.as_str())
                .or_default() += 1;
        }
        for connection in self.connections.values() {
            if let State::WebSocket(websocket) = &connection.state {
                let state = match &websocket.endpoint {
                    _ if websocket.close_sent || connection.close_after_flush => "closing",
                    Endpoint::Client(client) if client.identity.is_some() => "authenticated",
                    Endpoint::Client(_) => "unauthenticated",
                    Endpoint::Echo => "echo",
                };
                *gauges.websocket_by_state.entry(state).or_default() += 1;
            }
        }
        gauges
    }

    fn is_ready(&self) -> bool {
        !self.draining && self.storage_writable && self.storage_unwritable.is_none()
    }

    /// Why the gateway is not ready (`/health`'s `reason`).
    fn not_ready_reason(&self) -> Option<String> {
        if self.draining {
            Some("the gateway is draining".to_owned())
        } else if let Some(reason) = &self.storage_unwritable {
            Some(reason.clone())
        } else if !self.storage_writable {
            Some("storage: reported that it cannot write".to_owned())
        } else {
            None
        }
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
                client_ip: self.connections.get(&id).map_or(
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    |connection| {
                        crate::net::client_address(
                            connection.peer.ip(),
                            &self.config.trusted_proxies,
                            &head.x_forwarded_for,
                            &head.forwarded,
                        )
                    },
                ),
                identity: None,
                auth_deadline: (!self.config.dev_mode).then(|| now + self.config.auth_timeout),
                opened_at: now,
                rate: SlidingWindow::default(),
                joined: Vec::new(),
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
            self.greet(id, upgrade_token(head), now);
        }
    }

    fn greet(&mut self, id: ConnectionId, upgrade_token: Option<String>, now: Instant) {
        let Some(client) = self.client_state(id) else {
            return;
        };
        let client_id = format_uuid(client.client_id);
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
        if self.config.dev_mode {
            let identity = self.dev_identity.clone();
            self.complete_authentication(id, identity, None, now);
        } else if let Some(token) = upgrade_token {
            self.authenticate_upgrade_token(id, &token, now);
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
        // Liveness counts whole frames (PROTOCOL section 4), so a trickle of bytes that never
        // completes one cannot keep a connection open.
        connection.last_received = now;
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
                    self.queue(id, frame, now);
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
    pub(crate) fn close_websocket(
        &mut self,
        id: ConnectionId,
        code: u16,
        reason: &str,
        now: Instant,
    ) {
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
        self.queue(id, ws::close_frame(code, reason), now);
        self.reschedule(id);
    }

    // ---------------------------------------------------------------- the gateway protocol

    pub(crate) fn client_state(&self, id: ConnectionId) -> Option<&ClientState> {
        match &self.connections.get(&id)?.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client),
            _ => None,
        }
    }

    pub(crate) fn client_state_mut(&mut self, id: ConnectionId) -> Option<&mut ClientState> {
        match &mut self.connections.get_mut(&id)?.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client),
            _ => None,
        }
    }

    pub(crate) fn send_error(
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

    pub(crate) fn send_message(
        &mut self,
        id: ConnectionId,
        message: &ServerMessage<'_>,
        now: Instant,
    ) {
        let frame = protocol::encode_frame(message);
        self.send(id, frame, now);
    }

    // ---------------------------------------------------------------- plumbing

    /// Queues bytes for a connection. Over the outbound limit, a WebSocket is closed as a slow
    /// consumer (4100): its queue is discarded and only the close frame is attempted.
    pub(crate) fn send(&mut self, id: ConnectionId, bytes: Bytes, now: Instant) {
        // Nothing may follow a close frame (RFC 6455 section 5.5.1).
        self.enqueue(id, bytes, now, false);
    }

    /// Queues a close frame (the one thing sent once a close has begun).
    fn queue(&mut self, id: ConnectionId, bytes: Bytes, now: Instant) {
        self.enqueue(id, bytes, now, true);
    }

    /// Queues bytes for a connection: one lookup per delivery, on the fan-out's hot path.
    fn enqueue(&mut self, id: ConnectionId, bytes: Bytes, now: Instant, after_close: bool) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if !after_close
            && matches!(&connection.state, State::WebSocket(websocket) if websocket.close_sent)
        {
            return;
        }
        let (is_websocket, queue_limit) = match &connection.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Echo,
                ..
            }) => {
                // Echoing a conformance-sized message must fit: twice the largest echo message.
                (true, self.config.echo_max_message_size.saturating_mul(2))
            }
            State::WebSocket(_) => (true, self.config.outbound_queue_limit),
            State::Http(_) => (false, self.config.outbound_queue_limit),
        };
        if is_websocket {
            self.metrics.websocket_messages_sent += 1;
        }
        // One frame onto an empty queue is never a slow consumer's fault (the largest replies,
        // replays and event pages, are capped at half the budget); only bytes piling up are.
        let had_backlog = !connection.outbound.is_empty();
        connection.outbound.push(bytes);
        connection.last_sent = now;
        if !connection.transmit_queued {
            connection.transmit_queued = true;
            self.transmit_queue.push_back(id);
        }
        if had_backlog && connection.outbound.len() > queue_limit {
            connection.outbound.discard_unstarted();
            if is_websocket {
                self.metrics.slow_consumer_closes += 1;
                let already_closing = matches!(&connection.state, State::WebSocket(websocket) if websocket.close_sent);
                if !already_closing {
                    self.close_websocket(id, close_code::SLOW_CONSUMER, "slow consumer", now);
                }
            }
            // An HTTP client that pipelines requests and never reads is simply dropped.
            self.finish(id, now);
        }
    }

    /// Ends the connection once its queued bytes are written (at most `close_timeout` from now).
    pub(crate) fn finish(&mut self, id: ConnectionId, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.close_after_flush = true;
        if connection.outbound.is_empty() {
            self.close_now(id, now);
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

    pub(crate) fn close_now(&mut self, id: ConnectionId, now: Instant) {
        if let Some(connection) = self.connections.remove(&id) {
            self.count_gone(id, connection, now);
            self.events.push_back(Event::CloseConnection(id));
        }
    }

    /// A connection is gone: its counters, its topics, its joins.
    fn count_gone(&mut self, id: ConnectionId, connection: Connection, now: Instant) {
        if connection.refused {
            self.refused_open -= 1;
        } else {
            let key = crate::net::limit_key(connection.peer.ip());
            if let Some(count) = self.per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&key);
                }
            }
        }
        match connection.state {
            State::Http(_) => self.metrics.http_connections_open -= 1,
            State::WebSocket(websocket) => {
                self.metrics.websocket_connections_open -= 1;
                if let Endpoint::Client(client) = websocket.endpoint {
                    self.client_gone(id, *client, now);
                }
            }
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
                    None => http.idle_since + self.idle_timeout(http),
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

    /// How long an HTTP connection with no request in progress is kept: the keep-alive timeout
    /// between requests, but only the request-head timeout for a connection that has not sent a
    /// request yet (or was refused).
    fn idle_timeout(&self, http: &HttpState) -> std::time::Duration {
        if http.served {
            self.config.keep_alive_timeout
        } else {
            self.config.request_head_timeout
        }
    }

    pub(crate) fn reschedule(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        let Some(deadline) = self.deadline(connection) else {
            return;
        };
        if let Some(connection) = self.connections.get_mut(&id) {
            let key = TimerKey::Connection(id);
            self.timers
                .schedule(key, &mut connection.scheduled, deadline);
        }
    }

    fn connection_timers(&mut self, id: ConnectionId, now: Instant) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if connection.close_deadline.is_some_and(|at| at <= now) {
            self.close_now(id, now);
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
                None if http.idle_since + self.idle_timeout(http) <= now => self.close_now(id, now),
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

/// A token offered in the upgrade request: `Authorization: Bearer <token>`, or (browsers) the
/// subprotocol `bearer.<token>`.
fn upgrade_token(head: &RequestHead) -> Option<String> {
    if let Some(token) = head.authorization.as_deref().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }) {
        return Some(token);
    }
    head.websocket_protocols
        .iter()
        .find_map(|protocol| protocol.strip_prefix("bearer.").map(str::to_owned))
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    /// What an idle connection costs the core (the benchmark holds the whole process to under
    /// 1.5 KiB per idle connection).
    #[test]
    fn an_idle_connection_is_small() {
        let connection = std::mem::size_of::<Connection>();
        let client = std::mem::size_of::<ClientState>();
        println!("Connection {connection} bytes, ClientState {client} bytes (boxed)");
        assert!(connection <= 224, "Connection grew to {connection} bytes");
        assert!(client <= 128, "ClientState grew to {client} bytes");
    }
}
