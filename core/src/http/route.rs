//! The gateway's routes.

/// A path the gateway serves (docs/PROTOCOL.md, "HTTP"); each takes `GET` and `HEAD` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// `/ws`: the WebSocket upgrade to the gateway protocol.
    WebSocket,
    /// `/acp`: the WebSocket upgrade to ACP itself (one JSON-RPC 2.0 message per text message;
    /// docs/ACP.md), on the same connection machine as `/ws`.
    Acp,
    /// `/echo`: a WebSocket upgrade to the echo endpoint for the conformance suite (`404` unless
    /// enabled with `--conformance-echo`).
    Echo,
    /// `/livez`: `200` while the process runs; checks no dependency.
    Livez,
    /// `/readyz`: `200` when storage can write and the gateway is not draining, else `503`.
    Readyz,
    /// `/health`: `/readyz`'s status with a small JSON body (uptime, counts, agent types).
    Health,
    /// `/metrics`: the Prometheus text exposition.
    Metrics,
    /// `/` and `/assets/*`: the web console, when it is on (`CoreConfig::console`). Not a
    /// result of [`Route::from_path`]: the paths are the asset table's; this names them in
    /// metrics.
    Console,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 8] = [
        Route::WebSocket,
        Route::Acp,
        Route::Echo,
        Route::Livez,
        Route::Readyz,
        Route::Health,
        Route::Metrics,
        Route::Console,
    ];

    /// The route of a request path (without its query), matched exactly; `None` for any other
    /// path.
    pub fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/ws" => Route::WebSocket,
            "/acp" => Route::Acp,
            "/echo" => Route::Echo,
            "/livez" => Route::Livez,
            "/readyz" => Route::Readyz,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::WebSocket => "/ws",
            Route::Acp => "/acp",
            Route::Echo => "/echo",
            Route::Livez => "/livez",
            Route::Readyz => "/readyz",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::Console => "console",
        }
    }
}
