//! The gateway's HTTP routes (PROTOCOL section 1): `/livez`, `/readyz`, `/health`, `/metrics`,
//! and the checks of an upgrade to `/ws` or `/echo`. They read the gateway's state (readiness,
//! counters, gauges); the connection that asked sends the answer.

use std::time::Instant;

use bytes::Bytes;

use crate::http::request::Method;
use crate::http::{RequestHead, Response, Route};
use crate::ws;

use super::Gateway;

/// What one parsed request leads to.
pub(super) enum Answer {
    /// This response; its head only (`HEAD`) when the flag is set.
    Respond(Response, bool),
    /// Upgrade to a WebSocket on this route.
    Upgrade(Route, Box<RequestHead>),
}

impl Gateway {
    /// The answer to a request head: a response, or the upgrade to a WebSocket.
    pub(super) fn answer(&mut self, head: &RequestHead, now: Instant) -> Answer {
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
            return Answer::Respond(self.console_answer(head), head_only);
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
                            .filter(|s| crate::session::state::is_active(s.status()))
                            .count(),
                    },
                    "agents": self.config.agent_types.iter().map(|name| {
                        let sandbox = self.config.agent_sandbox.get(name).map_or("unknown", String::as_str);
                        (name.clone(), serde_json::json!({ "sandbox": sandbox }))
                    }).collect::<serde_json::Map<_, _>>(),
                });
                if let Some(status) = self.cluster_status() {
                    body["cluster"] = serde_json::json!({
                        "instance": status.instance_id,
                        "nats": status.connection.as_str(),
                        "ownedSessions": status.owned,
                    });
                }
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
            Route::WebSocket | Route::Acp | Route::Echo => {
                return self.check_upgrade(route, head, head_only)
            }
            // Never parsed from a path (see `console_answer`).
            Route::Console => Response::plain(404),
        };
        Answer::Respond(response, head_only)
    }

    /// A path with no route of its own: one of the console's assets when the console is on
    /// (`GET`/`HEAD`; another method is `405`), else `404`.
    fn console_answer(&self, head: &RequestHead) -> Response {
        let Some(path) = self.console_path(head) else {
            return Response::plain(404);
        };
        if head.method() == Method::Other {
            return Response::plain(405).header("Allow", "GET, HEAD");
        }
        self.config
            .console
            .as_ref()
            .and_then(|assets| assets.respond(path, head.if_none_match.as_deref()))
            .unwrap_or_else(|| Response::plain(404))
    }

    /// The request's path when it names one of the console's assets (and the console is on).
    fn console_path<'a>(&self, head: &'a RequestHead) -> Option<&'a str> {
        let path = head.asset_path.as_deref()?;
        self.config.console.as_ref()?.get(path)?;
        Some(path)
    }

    /// The route a request is counted under in metrics: its own, or [`Route::Console`] for one of
    /// the console's assets.
    pub(super) fn metrics_route(&self, head: &RequestHead) -> Option<Route> {
        head.route
            .or_else(|| self.console_path(head).map(|_| Route::Console))
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
        if route == Route::Acp
            && !self.config.dev_mode
            && crate::connection::upgrade_token(head).is_none()
        {
            // ACP has no message of ours to authenticate with after the upgrade: the token
            // must come with it.
            return refuse(Response::plain(401).header("WWW-Authenticate", "Bearer"));
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
                .entry(session.status().as_str())
                .or_default() += 1;
        }
        for connection in self.connections.values() {
            if let Some(state) = connection.gauge_state() {
                *gauges.websocket_by_state.entry(state).or_default() += 1;
            }
        }
        gauges
    }

    fn is_ready(&self) -> bool {
        !self.draining
            && self.storage_writable
            && self.storage_unwritable.is_none()
            && self.cluster_connected()
    }

    /// Why the gateway is not ready (`/health`'s `reason`).
    fn not_ready_reason(&self) -> Option<String> {
        if self.draining {
            Some("the gateway is draining".to_owned())
        } else if let Some(reason) = &self.storage_unwritable {
            Some(reason.clone())
        } else if !self.storage_writable {
            Some("storage: reported that it cannot write".to_owned())
        } else if let Some(status) = self.cluster_status().filter(|_| !self.cluster_connected()) {
            Some(format!("cluster: NATS is {}", status.connection.as_str()))
        } else {
            None
        }
    }
}
