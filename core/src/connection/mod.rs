//! One connection's machine: HTTP keep-alive, the upgrade, the WebSocket codec, authentication,
//! the rate limit, the outbound queue, heartbeats and the close.

pub mod outbound;
pub mod rate_limit;
