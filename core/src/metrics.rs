//! Counters kept by the core and their Prometheus text exposition (format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::http::Route;

/// The gateway's counters, and the two values the adapter sets from storage's statistics. Counts
/// start at 0 when the gateway starts; `render` turns them into the `/metrics` page
/// (docs/PROTOCOL.md, "Metrics").
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted (`diminuendo_connections_accepted_total`), refused ones included.
    pub connections_accepted: u64,
    /// Connections open now that speak HTTP (not upgraded); a gauge.
    pub http_connections_open: u64,
    /// Connections open now that were upgraded to WebSocket (`/ws` and `/echo`); a gauge.
    pub websocket_connections_open: u64,
    /// Requests by (route label, status).
    pub http_requests: BTreeMap<(&'static str, u16), u64>,
    /// WebSocket messages received, data and control.
    pub websocket_messages_received: u64,
    /// WebSocket messages queued to clients, data and control.
    pub websocket_messages_sent: u64,
    /// WebSocket closes the server initiated, by close code.
    pub websocket_closes: BTreeMap<u16, u64>,
    /// Session events published (each counted once, however many connections receive it).
    pub events_published: u64,
    /// Events storage reports committed (set by the adapter from storage's statistics).
    pub events_persisted: u64,
    /// Cluster mode: commands forwarded to a session's owner on another instance.
    pub cluster_forwarded: u64,
    /// Cluster mode: lease renewals that succeeded.
    pub cluster_lease_renewals: u64,
    /// Cluster mode: sessions whose ownership was lost here (lease gone, append fenced).
    pub cluster_leases_lost: u64,
    /// Cluster mode: fetches that filled a gap in a session's live events.
    pub cluster_catchup_fetches: u64,
    /// Messages refused with `RATE_LIMITED` by the per-connection message limit.
    pub rate_limited: u64,
    /// Connections closed with 4101 (rate limited too often).
    pub rate_limit_closes: u64,
    /// Connections closed with 4100 (slow consumer).
    pub slow_consumer_closes: u64,
    /// Authentications that failed (bad token, or a tenant id that is not a valid identifier).
    pub auth_failures: u64,
    /// Sessions created (counted once the registry row is committed).
    pub sessions_created: u64,
    /// Joins by replay result: `live` (no afterSeq), `recovered`, `reload`.
    pub replays: BTreeMap<&'static str, u64>,
    /// Writes storage reported failed (the `commands` of every `WriteFailed`).
    pub storage_write_failures: u64,
    /// New work refused because storage could not write or its queue was congested.
    pub storage_refusals: u64,
    /// Bytes in the storage queue (set by the adapter from storage's statistics).
    pub storage_queue_bytes: u64,
    /// Agent processes the core asked the agent host to start.
    pub agents_started: u64,
    /// Agents that failed to start or broke the protocol.
    pub agent_failures: u64,
    /// Turns started (`turn_started` published).
    pub turns_started: u64,
    /// Turns that ended with `turn_complete`.
    pub turns_completed: u64,
    /// Turns that ended with `turn_error`.
    pub turns_failed: u64,
}

/// Gauges computed from the gateway's state when `/metrics` is rendered.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Sessions by status.
    pub sessions: BTreeMap<&'static str, u64>,
    /// WebSocket connections by state: `unauthenticated`, `authenticated`, `closing`, `echo`.
    pub websocket_by_state: BTreeMap<&'static str, u64>,
    /// Storage can write (shown as 1) or not (0).
    pub storage_writable: bool,
    /// The storage queue is congested and new work is refused (1) or not (0).
    pub storage_congested: bool,
}

impl Metrics {
    /// Counts one HTTP answer (upgrades as `101`); `None` (an unknown path) counts as `other`.
    pub fn count_request(&mut self, route: Option<Route>, status: u16) {
        let label = route.map_or("other", Route::label);
        *self.http_requests.entry((label, status)).or_default() += 1;
    }

    /// Counts one WebSocket close the server initiated, by its close code.
    pub fn count_close(&mut self, code: u16) {
        *self.websocket_closes.entry(code).or_default() += 1;
    }

    /// Counts one join by its replay result: `live`, `recovered` or `reload`.
    pub fn count_replay(&mut self, result: &'static str) {
        *self.replays.entry(result).or_default() += 1;
    }

    /// The `/metrics` body in Prometheus text format 0.0.4: these counters, `gauges`, the build
    /// version and the uptime (`uptime_ms`, shown in seconds).
    pub fn render(&self, uptime_ms: u64, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP diminuendo_build_info Build information; the value is always 1."
        );
        let _ = writeln!(out, "# TYPE diminuendo_build_info gauge");
        let _ = writeln!(
            out,
            "diminuendo_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP diminuendo_uptime_seconds Seconds since the gateway started."
        );
        let _ = writeln!(out, "# TYPE diminuendo_uptime_seconds gauge");
        let _ = writeln!(
            out,
            "diminuendo_uptime_seconds {}",
            uptime_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP diminuendo_connections_open Connections open now, by protocol."
        );
        let _ = writeln!(out, "# TYPE diminuendo_connections_open gauge");
        let _ = writeln!(
            out,
            "diminuendo_connections_open{{protocol=\"http\"}} {}",
            self.http_connections_open
        );
        let _ = writeln!(
            out,
            "diminuendo_connections_open{{protocol=\"websocket\"}} {}",
            self.websocket_connections_open
        );
        let _ = writeln!(
            out,
            "# HELP diminuendo_connections_accepted_total TCP connections accepted."
        );
        let _ = writeln!(out, "# TYPE diminuendo_connections_accepted_total counter");
        let _ = writeln!(
            out,
            "diminuendo_connections_accepted_total {}",
            self.connections_accepted
        );
        let _ = writeln!(
            out,
            "# HELP diminuendo_http_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE diminuendo_http_requests_total counter");
        for ((route, status), count) in &self.http_requests {
            let _ = writeln!(
                out,
                "diminuendo_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP diminuendo_websocket_messages_received_total WebSocket messages received (data and control).");
        let _ = writeln!(
            out,
            "# TYPE diminuendo_websocket_messages_received_total counter"
        );
        let _ = writeln!(
            out,
            "diminuendo_websocket_messages_received_total {}",
            self.websocket_messages_received
        );
        let _ = writeln!(out, "# HELP diminuendo_websocket_messages_sent_total WebSocket messages queued to clients (data and control).");
        let _ = writeln!(
            out,
            "# TYPE diminuendo_websocket_messages_sent_total counter"
        );
        let _ = writeln!(
            out,
            "diminuendo_websocket_messages_sent_total {}",
            self.websocket_messages_sent
        );
        let _ = writeln!(out, "# HELP diminuendo_websocket_server_closes_total WebSocket connections the server closed, by close code.");
        let _ = writeln!(
            out,
            "# TYPE diminuendo_websocket_server_closes_total counter"
        );
        for (code, count) in &self.websocket_closes {
            let _ = writeln!(
                out,
                "diminuendo_websocket_server_closes_total{{code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP diminuendo_websocket_connections WebSocket connections by state."
        );
        let _ = writeln!(out, "# TYPE diminuendo_websocket_connections gauge");
        for (state, count) in &gauges.websocket_by_state {
            let _ = writeln!(
                out,
                "diminuendo_websocket_connections{{state=\"{state}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP diminuendo_sessions Sessions by status.");
        let _ = writeln!(out, "# TYPE diminuendo_sessions gauge");
        for (status, count) in &gauges.sessions {
            let _ = writeln!(out, "diminuendo_sessions{{status=\"{status}\"}} {count}");
        }
        let storage_gauges = [
            (
                "storage_writable",
                "Whether storage can write (0 while the disk refuses writes).",
                u64::from(gauges.storage_writable),
            ),
            (
                "storage_congested",
                "Whether the storage queue is congested (new work is refused).",
                u64::from(gauges.storage_congested),
            ),
            (
                "storage_queue_bytes",
                "Bytes waiting in the storage queue.",
                self.storage_queue_bytes,
            ),
        ];
        for (name, help, value) in storage_gauges {
            let _ = writeln!(out, "# HELP diminuendo_{name} {help}");
            let _ = writeln!(out, "# TYPE diminuendo_{name} gauge");
            let _ = writeln!(out, "diminuendo_{name} {value}");
        }
        let counters: [(&str, &str, u64); 18] = [
            (
                "events_published_total",
                "Session events published.",
                self.events_published,
            ),
            (
                "cluster_forwarded_total",
                "Commands forwarded to a session's owner on another instance.",
                self.cluster_forwarded,
            ),
            (
                "cluster_lease_renewals_total",
                "Owner lease renewals that succeeded.",
                self.cluster_lease_renewals,
            ),
            (
                "cluster_leases_lost_total",
                "Sessions whose ownership was lost on this instance.",
                self.cluster_leases_lost,
            ),
            (
                "cluster_catchup_fetches_total",
                "Fetches that filled a gap in a session's live events.",
                self.cluster_catchup_fetches,
            ),
            (
                "events_persisted_total",
                "Session events storage committed.",
                self.events_persisted,
            ),
            (
                "rate_limited_total",
                "Messages refused with RATE_LIMITED.",
                self.rate_limited,
            ),
            (
                "rate_limit_closes_total",
                "Connections closed with 4101.",
                self.rate_limit_closes,
            ),
            (
                "slow_consumer_closes_total",
                "Connections closed with 4100.",
                self.slow_consumer_closes,
            ),
            (
                "auth_failures_total",
                "Failed authentications.",
                self.auth_failures,
            ),
            (
                "sessions_created_total",
                "Sessions created.",
                self.sessions_created,
            ),
            (
                "storage_write_failures_total",
                "Writes storage reported failed.",
                self.storage_write_failures,
            ),
            (
                "storage_refusals_total",
                "New work refused because storage could not write or was congested.",
                self.storage_refusals,
            ),
            (
                "agents_started_total",
                "Agent processes requested.",
                self.agents_started,
            ),
            (
                "agent_failures_total",
                "Agents that failed to start or broke the protocol.",
                self.agent_failures,
            ),
            ("turns_started_total", "Turns started.", self.turns_started),
            (
                "turns_completed_total",
                "Turns that ended with turn_complete.",
                self.turns_completed,
            ),
            (
                "turns_failed_total",
                "Turns that ended with turn_error.",
                self.turns_failed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP diminuendo_{name} {help}");
            let _ = writeln!(out, "# TYPE diminuendo_{name} counter");
            let _ = writeln!(out, "diminuendo_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP diminuendo_replays_total Joins by replay result."
        );
        let _ = writeln!(out, "# TYPE diminuendo_replays_total counter");
        for (result, count) in &self.replays {
            let _ = writeln!(
                out,
                "diminuendo_replays_total{{result=\"{result}\"}} {count}"
            );
        }
        out
    }
}
