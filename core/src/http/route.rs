//! The gateway's routes.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    WebSocket,
    Echo,
    Livez,
    Readyz,
    Health,
    Metrics,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::WebSocket,
        Route::Echo,
        Route::Livez,
        Route::Readyz,
        Route::Health,
        Route::Metrics,
    ];

    pub fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/ws" => Route::WebSocket,
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
            Route::Echo => "/echo",
            Route::Livez => "/livez",
            Route::Readyz => "/readyz",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
        }
    }
}
