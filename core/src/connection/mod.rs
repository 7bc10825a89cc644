//! One connection's machine: HTTP keep-alive, the upgrade, the WebSocket codec, authentication,
//! the rate limit, the outbound queue, heartbeats and the close.
//!
//! A `Connection` owns its fields; the gateway feeds it inputs (bytes, a parsed request's answer,
//! a deadline, bytes written), each with its `now`, and routes what it reports in `Output`s
//! (a transmit to queue, a socket to close, an identity to join to its tenant, a deadline that
//! moved). A connection never sees another connection, a session or the gateway: the settings,
//! the counters and the shared authentication state are borrowed for one input (`Env`).

mod auth;
mod http;
pub mod outbound;
pub mod rate_limit;
mod websocket;

#[cfg(test)]
mod tests;

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::CoreConfig;
use crate::http::Response;
use crate::ids::{ConnectionId, SessionId, TimerKey};
use crate::metrics::Metrics;
use crate::protocol::{self, Identity, ServerMessage};
use crate::timers::Timers;
use crate::ws::{self, close_code};

pub(crate) use self::auth::{upgrade_token, Verifier};
use self::http::HttpState;
pub(crate) use self::http::Upgraded;
use self::outbound::Outbound;
pub(crate) use self::websocket::ClientState;
use self::websocket::{Endpoint, WebSocketState};

/// What a connection asks of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Bytes were queued on a connection that was not waiting to be written: put it in the
    /// transmit queue.
    Transmit,
    /// The connection is over: close the socket now and forget the connection.
    Close,
    /// The connection's earliest deadline may have moved earlier: schedule it again.
    Deadline,
    /// The connection is this identity from now on: join it to its tenant.
    Authenticated(Arc<Identity>),
}

/// What a connection borrows from the gateway for one input: the settings, the counters, and
/// where its outputs go.
pub(crate) struct Env<'a> {
    pub config: &'a CoreConfig,
    pub metrics: &'a mut Metrics,
    pub out: &'a mut Vec<Output>,
}

/// A `/ws` client that is gone: what the gateway undoes for it (its tenant topic, its joins).
#[derive(Debug)]
pub(crate) struct Departed {
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) joined: Vec<SessionId>,
}

/// A forgotten connection, for the gateway's counts.
#[derive(Debug)]
pub(crate) struct Gone {
    pub peer: SocketAddr,
    /// It was accepted over a limit (and so counted in neither).
    pub refused: bool,
    /// It was a WebSocket (else still HTTP).
    pub websocket: bool,
    /// A `/ws` client's joins and identity.
    pub client: Option<Departed>,
}

pub(crate) struct Connection {
    peer: SocketAddr,
    state: State,
    outbound: Outbound,
    /// In the transmit queue already.
    transmit_queued: bool,
    /// Close the socket as soon as the outbound queue is empty; further input is ignored.
    close_after_flush: bool,
    /// `Output::Close` was given: the connection does nothing more.
    closed: bool,
    /// Accepted over `max_connections` or `max_connections_per_ip`: its first request is answered
    /// 503 with `Connection: close`, and it counts toward neither limit.
    refused: bool,
    /// When the connection is closed whatever remains unsent.
    close_deadline: Option<Instant>,
    last_received: Instant,
    last_sent: Instant,
    /// The deadline this connection is scheduled at in the gateway's `Timers`.
    scheduled: Option<Instant>,
}

enum State {
    Http(HttpState),
    WebSocket(WebSocketState),
}

impl Connection {
    /// A connection accepted at `now` from `peer`, speaking HTTP.
    pub fn new(peer: SocketAddr, refused: bool, now: Instant) -> Self {
        Connection {
            peer,
            state: State::Http(HttpState::new(now)),
            outbound: Outbound::default(),
            transmit_queued: false,
            close_after_flush: false,
            closed: false,
            refused,
            close_deadline: None,
            last_received: now,
            last_sent: now,
            scheduled: None,
        }
    }

    // ------------------------------------------------------------ observers

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// The connection is ending: input is ignored.
    pub fn is_closing(&self) -> bool {
        self.close_after_flush || self.closed
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::WebSocket(_))
    }

    /// The address the authentication limits count it under: for a `/ws` client, what a trusted
    /// proxy reported, otherwise the TCP peer's.
    pub fn client_ip(&self) -> IpAddr {
        match self.client() {
            Some(client) => client.client_ip,
            None => self.peer.ip().to_canonical(),
        }
    }

    /// A `/ws` client's state (none for HTTP and `/echo`).
    pub fn client(&self) -> Option<&ClientState> {
        match &self.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client),
            _ => None,
        }
    }

    pub fn client_mut(&mut self) -> Option<&mut ClientState> {
        match &mut self.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Client(client),
                ..
            }) => Some(client),
            _ => None,
        }
    }

    /// The state `/metrics` counts a WebSocket under (none for HTTP).
    pub fn gauge_state(&self) -> Option<&'static str> {
        let State::WebSocket(websocket) = &self.state else {
            return None;
        };
        Some(match &websocket.endpoint {
            _ if websocket.close_sent || self.close_after_flush => "closing",
            Endpoint::Client(client) if client.identity.is_some() => "authenticated",
            Endpoint::Client(_) => "unauthenticated",
            Endpoint::Echo => "echo",
        })
    }

    /// The connection is forgotten: what the gateway's counts and tables must undo.
    pub fn depart(self) -> Gone {
        let (websocket, client) = match self.state {
            State::Http(_) => (false, None),
            State::WebSocket(websocket) => match websocket.endpoint {
                Endpoint::Echo => (true, None),
                Endpoint::Client(client) => (
                    true,
                    Some(Departed {
                        identity: client.identity,
                        joined: client.joined,
                    }),
                ),
            },
        };
        Gone {
            peer: self.peer,
            refused: self.refused,
            websocket,
            client,
        }
    }

    // ------------------------------------------------------------ the outbound queue

    /// Fills `slices` with the bytes waiting, in order; returns how many it filled.
    pub fn outbound<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        self.outbound.slices(slices)
    }

    /// Bytes waiting to be written.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Taken off the transmit queue: whether it has bytes to write.
    pub fn poll_transmit(&mut self) -> bool {
        self.transmit_queued = false;
        !self.outbound.is_empty()
    }

    /// The socket can take bytes again: back in the transmit queue if bytes wait.
    pub fn handle_writable(&mut self, _now: Instant, env: &mut Env<'_>) {
        if !self.outbound.is_empty() && !self.transmit_queued {
            self.transmit_queued = true;
            env.out.push(Output::Transmit);
        }
    }

    /// `written` bytes from the front of the queue reached the socket.
    pub fn handle_sent(&mut self, written: usize, _now: Instant, env: &mut Env<'_>) {
        self.outbound.consume(written);
        if self.outbound.is_empty() && self.close_after_flush {
            self.close_now(env);
        }
    }

    /// Queues bytes. Over the outbound limit, a WebSocket is closed as a slow consumer (4100):
    /// its queue is discarded and only the close frame is attempted.
    pub fn send(&mut self, bytes: Bytes, now: Instant, env: &mut Env<'_>) {
        // Nothing may follow a close frame (RFC 6455 section 5.5.1).
        self.enqueue(bytes, now, false, env);
    }

    /// Queues a message of the gateway protocol. An `/acp` client is not sent the `/ws`
    /// protocol's own messages (`authenticated`, `heartbeat`, `server_shutdown`, the refusals
    /// of its upgrade token): its heartbeat is the ping alone, its refusals are close codes,
    /// and its replies are translated by the gateway (`gateway/acp.rs`).
    pub fn send_message(&mut self, message: &ServerMessage<'_>, now: Instant, env: &mut Env<'_>) {
        if self.is_acp() {
            return;
        }
        self.send(protocol::encode_frame(message), now, env);
    }

    /// An `/acp` client (JSON-RPC 2.0 over this WebSocket).
    pub fn is_acp(&self) -> bool {
        self.client().is_some_and(|client| client.acp.is_some())
    }

    /// Queues a close frame (the one thing sent once a close has begun).
    fn queue_close_frame(&mut self, bytes: Bytes, now: Instant, env: &mut Env<'_>) {
        self.enqueue(bytes, now, true, env);
    }

    fn close_sent(&self) -> bool {
        matches!(&self.state, State::WebSocket(websocket) if websocket.close_sent)
    }

    fn enqueue(&mut self, bytes: Bytes, now: Instant, after_close: bool, env: &mut Env<'_>) {
        if self.closed || (!after_close && self.close_sent()) {
            return;
        }
        let (is_websocket, queue_limit) = match &self.state {
            State::WebSocket(WebSocketState {
                endpoint: Endpoint::Echo,
                ..
            }) => {
                // Echoing a conformance-sized message must fit: twice the largest echo message.
                (true, env.config.echo_max_message_size.saturating_mul(2))
            }
            State::WebSocket(_) => (true, env.config.outbound_queue_limit),
            State::Http(_) => (false, env.config.outbound_queue_limit),
        };
        if is_websocket {
            env.metrics.websocket_messages_sent += 1;
        }
        // One frame onto an empty queue is never a slow consumer's fault (the largest replies,
        // replays and event pages, are capped at half the budget); only bytes piling up are.
        let had_backlog = !self.outbound.is_empty();
        self.outbound.push(bytes);
        self.last_sent = now;
        if !self.transmit_queued {
            self.transmit_queued = true;
            env.out.push(Output::Transmit);
        }
        if had_backlog && self.outbound.len() > queue_limit {
            self.outbound.discard_unstarted();
            if is_websocket {
                env.metrics.slow_consumer_closes += 1;
                if !self.close_sent() {
                    self.close_websocket(close_code::SLOW_CONSUMER, "slow consumer", now, env);
                }
            }
            // An HTTP client that pipelines requests and never reads is simply dropped.
            self.finish(now, env);
        }
    }

    /// Ends the connection once its queued bytes are written (at most `close_timeout` from now).
    pub fn finish(&mut self, now: Instant, env: &mut Env<'_>) {
        if self.closed {
            return;
        }
        self.close_after_flush = true;
        if self.outbound.is_empty() {
            self.close_now(env);
            return;
        }
        let deadline = now + env.config.close_timeout;
        self.close_deadline = Some(self.close_deadline.map_or(deadline, |d| d.min(deadline)));
        env.out.push(Output::Deadline);
    }

    /// Closes the socket now, whatever waits.
    fn close_now(&mut self, env: &mut Env<'_>) {
        if !self.closed {
            self.closed = true;
            env.out.push(Output::Close);
        }
    }

    // ------------------------------------------------------------ deadlines

    /// The earliest moment something must happen to this connection.
    pub fn deadline(&self, config: &CoreConfig) -> Option<Instant> {
        let mut earliest = self.close_deadline;
        if self.close_after_flush {
            return earliest;
        }
        match &self.state {
            State::Http(http) => earliest = earlier(earliest, http.deadline(config)),
            State::WebSocket(websocket) => {
                if let (false, Endpoint::Client(client)) =
                    (websocket.close_sent, &websocket.endpoint)
                {
                    earliest = earlier(earliest, self.last_sent + config.heartbeat_interval);
                    earliest = earlier(earliest, self.last_received + config.liveness_timeout());
                    if let Some(at) = client.auth_deadline.filter(|_| client.identity.is_none()) {
                        earliest = earlier(earliest, at);
                    }
                }
            }
        }
        earliest
    }

    /// Schedules the connection `id` at its deadline in `timers`.
    pub fn schedule(
        &mut self,
        id: ConnectionId,
        timers: &mut Timers<TimerKey>,
        config: &CoreConfig,
    ) {
        if let Some(deadline) = self.deadline(config) {
            timers.schedule(TimerKey::Connection(id), &mut self.scheduled, deadline);
        }
    }

    /// A timer entry for this connection at `at` popped: whether it is the current one (a stale
    /// entry is skipped). The connection is then unscheduled until `schedule`.
    pub fn timer_fired(&mut self, at: Instant) -> bool {
        if self.scheduled != Some(at) {
            return false;
        }
        self.scheduled = None;
        true
    }

    /// Its deadline passed: the close, the request-head and keep-alive timeouts, the
    /// authentication timeout, liveness and heartbeats. `unix_ms` is `now` on the wall clock.
    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64, env: &mut Env<'_>) {
        if self.closed {
            return;
        }
        if self.close_deadline.is_some_and(|at| at <= now) {
            self.close_now(env);
            return;
        }
        if self.close_after_flush {
            return;
        }
        let config = env.config;
        match &self.state {
            State::Http(http) => match http.timed_out(now, config) {
                Some(http::Timeout::Head) => {
                    self.respond(None, Response::plain(408).close(), false, now, env);
                }
                Some(http::Timeout::Idle) => self.close_now(env),
                None => {}
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
                        close_code::AUTH_FAILED,
                        "authentication timed out",
                        now,
                        env,
                    );
                } else if self.last_received + config.liveness_timeout() <= now {
                    self.close_websocket(
                        close_code::HEARTBEAT_TIMEOUT,
                        "no frame from the client",
                        now,
                        env,
                    );
                } else if self.last_sent + config.heartbeat_interval <= now {
                    let heartbeat = ServerMessage::Heartbeat { ts: unix_ms };
                    self.send_message(&heartbeat, now, env);
                    self.send(ws::ping_frame(b""), now, env);
                }
            }
        }
    }

    // ------------------------------------------------------------ shutdown

    /// Whether the shutdown tells this connection when to come back (`server_shutdown`): a `/ws`
    /// client whose close has not begun.
    pub fn wants_shutdown_notice(&self) -> bool {
        matches!(
            &self.state,
            State::WebSocket(WebSocketState {
                close_sent: false,
                endpoint: Endpoint::Client(_),
                ..
            })
        )
    }

    /// The gateway stops: an idle HTTP connection closes now and a busy one after its response;
    /// a WebSocket is told `server_shutdown` (a `/ws` client, with `reconnect_after_ms`) and
    /// closed with 1001.
    pub fn begin_shutdown(
        &mut self,
        reconnect_after_ms: Option<u64>,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        match &self.state {
            State::Http(http) => {
                if !http.busy() {
                    self.finish(now, env);
                }
            }
            State::WebSocket(websocket) => {
                if websocket.close_sent {
                    return;
                }
                if let Some(reconnect_after_ms) = reconnect_after_ms {
                    let notice = ServerMessage::ServerShutdown {
                        reason: "the gateway is restarting",
                        reconnect_after_ms,
                    };
                    self.send_message(&notice, now, env);
                }
                self.close_websocket(close_code::GOING_AWAY, "server shutting down", now, env);
            }
        }
    }
}

fn earlier(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |at| at.min(candidate)))
}
