//! Counters kept by the core and their Prometheus text exposition (format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::http::Route;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub http_connections_open: u64,
    pub websocket_connections_open: u64,
    /// Requests by (route label, status).
    pub http_requests: BTreeMap<(&'static str, u16), u64>,
    pub websocket_messages_received: u64,
    pub websocket_messages_sent: u64,
    /// WebSocket closes the server initiated, by close code.
    pub websocket_closes: BTreeMap<u16, u64>,
}

impl Metrics {
    pub fn count_request(&mut self, route: Option<Route>, status: u16) {
        let label = route.map_or("other", Route::label);
        *self.http_requests.entry((label, status)).or_default() += 1;
    }

    pub fn count_close(&mut self, code: u16) {
        *self.websocket_closes.entry(code).or_default() += 1;
    }

    pub fn render(&self, uptime_ms: u64) -> String {
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
        out
    }
}
