//! A connection while it speaks HTTP/1.1: request heads read across reads, keep-alive, the
//! request-head timeout, responses, and the upgrade to a WebSocket. Which answer a request gets
//! is the gateway's (its routes); the connection parses, times and sends.

use std::time::{Duration, Instant};

use crate::config::CoreConfig;
use crate::http::{parse_head, HeadError, HeadParse, RequestHead, Response, Route};
use crate::protocol::{self, ServerMessage};
use crate::rng::format_uuid;
use crate::ws::{self, Decoder};

use super::rate_limit::SlidingWindow;
use super::websocket::{ClientState, Endpoint, WebSocketState};
use super::{Connection, Env, State};

pub(super) struct HttpState {
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

/// Which HTTP timeout passed.
pub(super) enum Timeout {
    /// A request head started and did not complete in time: 408.
    Head,
    /// No request in progress for too long: closed without an answer.
    Idle,
}

impl HttpState {
    pub(super) fn new(now: Instant) -> Self {
        HttpState {
            partial: Vec::new(),
            head_started: None,
            idle_since: now,
            served: false,
        }
    }

    /// A request is in progress.
    pub(super) fn busy(&self) -> bool {
        self.head_started.is_some()
    }

    /// How long an HTTP connection with no request in progress is kept: the keep-alive timeout
    /// between requests, but only the request-head timeout for a connection that has not sent a
    /// request yet (or was refused).
    fn idle_timeout(&self, config: &CoreConfig) -> Duration {
        if self.served {
            config.keep_alive_timeout
        } else {
            config.request_head_timeout
        }
    }

    pub(super) fn deadline(&self, config: &CoreConfig) -> Instant {
        match self.head_started {
            Some(started) => started + config.request_head_timeout,
            None => self.idle_since + self.idle_timeout(config),
        }
    }

    pub(super) fn timed_out(&self, now: Instant, config: &CoreConfig) -> Option<Timeout> {
        match self.head_started {
            Some(started) if started + config.request_head_timeout <= now => Some(Timeout::Head),
            None if self.idle_since + self.idle_timeout(config) <= now => Some(Timeout::Idle),
            _ => None,
        }
    }
}

/// What an upgraded connection asks the gateway to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgraded {
    /// `/echo`: nothing.
    Echo,
    /// `/ws`: greeted; authenticate it (dev mode, or the token the upgrade request offered).
    Client { token: Option<String> },
}

impl Connection {
    /// The unfinished request head kept from the previous read (empty when there is none); the
    /// caller appends the new bytes and parses from the start.
    pub(crate) fn take_partial_head(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Http(http) => std::mem::take(&mut http.partial),
            State::WebSocket(_) => Vec::new(),
        }
    }

    /// Reads the next request head from `input` (bytes after the previous request): a complete
    /// head and its length; nothing when more bytes are needed (they are kept) or the head is
    /// refused (431 or 400, and the connection ends).
    pub(crate) fn read_request(
        &mut self,
        input: &[u8],
        now: Instant,
        env: &mut Env<'_>,
    ) -> Option<(Box<RequestHead>, usize)> {
        let State::Http(http) = &mut self.state else {
            return None;
        };
        match parse_head(input, env.config.max_request_head) {
            Ok(HeadParse::Partial) => {
                http.partial = input.to_vec();
                http.head_started.get_or_insert(now);
                None
            }
            Err(HeadError::TooLarge) => {
                self.respond(None, Response::plain(431).close(), false, now, env);
                None
            }
            Err(HeadError::Malformed) => {
                self.respond(None, Response::plain(400).close(), false, now, env);
                None
            }
            Ok(HeadParse::Complete { head, len }) => {
                http.head_started = None;
                http.idle_since = now;
                http.served = true;
                Some((head, len))
            }
        }
    }

    /// Sends a response (its head only for `HEAD`); a response that closes ends the connection
    /// once it is written.
    pub(crate) fn respond(
        &mut self,
        route: Option<Route>,
        response: Response,
        head_only: bool,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        env.metrics.count_request(route, response.status());
        let closes = response.closes();
        self.send(response.encode(head_only), now, env);
        if closes {
            self.finish(now, env);
        }
    }

    /// Switches to a WebSocket on `route` (the gateway checked the request): 101, and for `/ws`
    /// the greeting (`welcome`, `connected` with `client_id`). `unix_ms` is `now` on the wall
    /// clock. Nothing happens without a key.
    pub(crate) fn upgrade(
        &mut self,
        route: Route,
        head: &RequestHead,
        client_id: u128,
        unix_ms: u64,
        now: Instant,
        env: &mut Env<'_>,
    ) -> Option<Upgraded> {
        let key = head.websocket_key.as_deref()?;
        let config = env.config;
        let mut response = Response::new(101)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Accept", ws::handshake::accept_key(key));
        let subprotocol = match route {
            Route::WebSocket => Some("diminuendo.v1"),
            Route::Acp => Some("acp.v1"),
            _ => None,
        };
        if let Some(subprotocol) =
            subprotocol.filter(|name| head.websocket_protocols.iter().any(|p| p == name))
        {
            response = response.header("Sec-WebSocket-Protocol", subprotocol);
        }
        if route == Route::Acp {
            // The transports proposal names the connection on the 101 (the SDK's reference
            // server does the same); nothing depends on it.
            response = response.header("Acp-Connection-Id", format_uuid(client_id));
        }
        env.metrics.count_request(Some(route), 101);
        self.send(response.encode(false), now, env);

        let endpoint = match route {
            Route::Echo => Endpoint::Echo,
            _ => Endpoint::Client(Box::new(ClientState {
                client_ip: crate::net::client_address(
                    self.peer.ip(),
                    &config.trusted_proxies,
                    &head.x_forwarded_for,
                    &head.forwarded,
                ),
                identity: None,
                auth_deadline: (!config.dev_mode).then(|| now + config.auth_timeout),
                opened_at: now,
                rate: SlidingWindow::default(),
                joined: Vec::new(),
                acp: (route == Route::Acp).then(Box::default),
            })),
        };
        self.state = State::WebSocket(WebSocketState {
            decoder: Decoder::new(),
            close_sent: false,
            endpoint,
        });
        if route == Route::Echo {
            return Some(Upgraded::Echo);
        }
        if route == Route::Acp {
            // ACP has no greeting: the client speaks first (`initialize`).
            return Some(Upgraded::Client {
                token: super::auth::upgrade_token(head),
            });
        }
        let client_id = format_uuid(client_id);
        let welcome = ServerMessage::Welcome {
            protocol_version: protocol::PROTOCOL_VERSION,
            requires_auth: !config.dev_mode,
        };
        self.send_message(&welcome, now, env);
        let connected = ServerMessage::Connected {
            client_id: &client_id,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            ts: unix_ms,
        };
        self.send_message(&connected, now, env);
        Some(Upgraded::Client {
            token: super::auth::upgrade_token(head),
        })
    }
}
