//! The gateway state machine: it routes. It holds the tables (connections, sessions, tenants,
//! agents), the timer heap and the queues of outputs, and hands every input to the machine it
//! belongs to: a `Connection` (`crate::connection`) or a `Session` (`crate::session`), routing
//! what they report. Inputs are the `handle_*` methods; outputs are drained after every input
//! with `poll_event`, `poll_transmit` (+ `outbound`/`handle_sent`) and `poll_timeout`.

mod acp;
pub mod cluster;
mod connections;
pub mod durable;
pub mod queries;
pub mod requests;
mod routes;
pub mod sessions;
pub mod shutdown;
pub mod storage_health;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub use crate::agent_types::AgentCommand;
use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::connection::{self, Connection};
use crate::gateway::queries::PendingQuery;
use crate::gateway::sessions::Tenant;
use crate::id_hash::IdHashBuilder;
pub use crate::ids::{AgentId, ConnectionId};
use crate::ids::{SessionId, TimerKey};
use crate::metrics::Metrics;
use crate::protocol::Identity;
use crate::rng::{Entropy, Random, Rng};
use crate::session::{Session, SessionOutput};
use crate::storage::StorageCommand;
use crate::timers::Timers;

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
    /// Cluster mode only (`Gateway::enable_cluster`): hand this command to the cluster engine;
    /// its completion comes back through `handle_cluster`.
    Cluster(crate::cluster::ClusterCommand),
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
    pub(crate) shutdown: crate::gateway::shutdown::ShutdownPhase,
    /// Reused for every session input's outputs, so driving a session allocates no list.
    pub(crate) session_outputs: Vec<SessionOutput>,
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
    /// What the connection being driven reported, routed after each of its inputs (reused).
    connection_outputs: Vec<connection::Output>,
    /// Cluster mode's state (`gateway::cluster`); `None` in single-node mode.
    pub(crate) cluster: Option<Box<crate::gateway::cluster::ClusterState>>,
}

/// Most refused connections kept open at once to be answered 503; beyond, a connection over the
/// limits is closed as soon as it is accepted, without an answer.
pub const MAX_REFUSED_OPEN: usize = 1024;

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
            shutdown: crate::gateway::shutdown::ShutdownPhase::Running,
            session_outputs: Vec::new(),
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
            connection_outputs: Vec::new(),
            cluster: None,
        }
    }

    /// Verifies tokens with `authenticator` (without one, only dev mode can authenticate).
    pub fn set_authenticator(&mut self, authenticator: crate::auth::Authenticator) {
        self.auth = Some(authenticator);
    }

    /// The configuration the gateway was built with.
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
        // While draining, new connections are still served: probes get `/readyz` 503 and upgrades
        // 503, each with `Connection: close`.
        self.connections
            .insert(id, Connection::new(peer, refused, now));
        if refused && self.refused_open > MAX_REFUSED_OPEN {
            self.close_now(id, now);
            return;
        }
        self.reschedule(id);
    }

    /// The address the authentication limits count `id` under: for a `/ws` client, what a
    /// trusted proxy reported (`--trusted-proxies`), otherwise the TCP peer's. For logs.
    pub fn client_ip(&self, id: ConnectionId) -> Option<IpAddr> {
        self.connections.get(&id).map(Connection::client_ip)
    }

    /// Bytes arrived on a connection. The core may modify `data` (it unmasks WebSocket payloads in
    /// place) and keeps nothing that refers to it.
    pub fn handle_data(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if connection.is_closing() {
            return;
        }
        if connection.is_websocket() {
            self.websocket_input(id, data, now);
        } else {
            self.http_input(id, data, now);
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
    pub fn handle_writable(&mut self, id: ConnectionId, now: Instant) {
        self.with_connection(id, now, |connection, env| {
            connection.handle_writable(now, env);
        });
    }

    /// `written` bytes from the front of `outbound(id)` reached the socket.
    pub fn handle_sent(&mut self, id: ConnectionId, written: usize, now: Instant) {
        let acp = self
            .with_connection(id, now, |connection, env| {
                connection.handle_sent(written, now, env);
                connection.is_acp() && !connection.is_closing()
            })
            .unwrap_or(false);
        if acp {
            self.acp_written(id, now);
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
                    if !connection.timer_fired(at) {
                        continue;
                    }
                    let unix_ms = self.clock.unix_ms(now);
                    self.with_connection(id, now, |connection, env| {
                        connection.handle_timeout(now, unix_ms, env);
                    });
                    self.reschedule(id);
                }
                TimerKey::Session(session_id) => self.session_timer(&session_id, at, now),
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
            let Some(connection) = self.connections.get(&id) else {
                continue;
            };
            let reconnect_after_ms = connection
                .wants_shutdown_notice()
                .then(|| self.rng.range(1000, 5000));
            self.with_connection(id, now, |connection, env| {
                connection.begin_shutdown(reconnect_after_ms, now, env);
            });
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
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            // Cluster mode: storage completions the core answers itself, handled now.
            if !self.run_deferred() {
                return None;
            }
        }
    }

    /// The next connection with bytes waiting; write them with `outbound` and `handle_sent`.
    pub fn poll_transmit(&mut self) -> Option<ConnectionId> {
        while let Some(id) = self.transmit_queue.pop_front() {
            if let Some(connection) = self.connections.get_mut(&id) {
                if connection.poll_transmit() {
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
            .map_or(0, |connection| connection.outbound(slices))
    }

    /// Bytes waiting for `id`.
    pub fn outbound_len(&self, id: ConnectionId) -> usize {
        self.connections
            .get(&id)
            .map_or(0, Connection::outbound_len)
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    // ---------------------------------------------------------------- observers

    /// The open connections (HTTP and WebSocket).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Whether shutdown has begun (new work is refused).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The gateway's counters and gauges (served at `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The TCP peer address of connection `id`; `None` once it is closed.
    pub fn peer(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.connections.get(&id).map(Connection::peer)
    }
}
