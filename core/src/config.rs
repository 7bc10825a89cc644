//! The core's settings. Adapters build this from flags, environment and the config file.

use std::time::Duration;

/// Everything the core is configured with; `Default` gives the documented defaults (PROTOCOL and
/// docs/PROTOCOL.md), dev mode off.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Dev mode: no authentication (every connection is the dev identity), any origin.
    pub dev_mode: bool,
    /// Serve `/echo`, which echoes every message (for the conformance suite).
    pub conformance_echo: bool,
    /// The web console's assets, served at their paths (`/` and `/assets/*`) with `ETag`s and
    /// a strict Content-Security-Policy; `None` (the default) serves no console, so `/` is 404.
    pub console: Option<crate::http::Assets>,
    /// Most connections at once, HTTP and WebSocket alike; a connection beyond it is answered 503
    /// (with `Connection: close`) to its first request.
    pub max_connections: usize,
    /// Most connections at once from one TCP peer address (IPv6: one /64); beyond it, 503 the
    /// same way.
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` headers name the client address used for the
    /// authentication limits (see `net::client_address`).
    pub trusted_proxies: Vec<crate::net::IpNet>,
    /// Largest inbound WebSocket message (PROTOCOL section 2).
    pub max_message_size: usize,
    /// Largest message on `/echo`. The conformance suite sends messages of up to 16 MiB there; the
    /// endpoint is off unless enabled, so a test fixture's limit never applies to `/ws`.
    pub echo_max_message_size: usize,
    /// Largest HTTP request head; a larger one is answered 431.
    pub max_request_head: usize,
    /// Most bytes waiting to be written to one connection before it is closed as a slow consumer.
    pub outbound_queue_limit: usize,
    /// A heartbeat goes to a WebSocket that was sent nothing for this long.
    pub heartbeat_interval: Duration,
    /// A request head must be complete this long after its first byte (slowloris guard).
    pub request_head_timeout: Duration,
    /// An HTTP connection with no request in progress, after its first request, is closed after
    /// this long (a connection that never sent a byte gets `request_head_timeout` instead).
    pub keep_alive_timeout: Duration,
    /// How long the close handshake (and the flush of the final bytes) may take.
    pub close_timeout: Duration,
    /// Time a connection has to authenticate when authentication is required.
    pub auth_timeout: Duration,
    /// Origins allowed to open a WebSocket; empty means any. Dev mode accepts any origin.
    pub allowed_origins: Vec<String>,
    /// Messages a connection may send per `rate_limit_window` (every message but `ping`
    /// counts, refused ones too); 0 disables the limit.
    pub rate_limit_messages: u32,
    /// The sliding window of `rate_limit_messages`. Default 10 s.
    pub rate_limit_window: Duration,
    /// Failed authentications an IP may make per minute.
    pub auth_failures_per_minute: u32,
    /// Most IPs the failure limiter tracks at once (its memory bound).
    pub auth_limiter_capacity: usize,
    /// Fresh token verifications per second an IP over its failure budget still gets (so a valid
    /// token is slowed, never locked out, by others' failures). At least 1.
    pub auth_verifications_per_second: u32,
    /// Most events a resume may replay; more answers `recovered: false`.
    pub replay_limit: u64,
    /// An active session with no joined connection and no turn is deactivated after this long.
    pub idle_session_timeout: Duration,
    /// Running turns may finish for this long after a shutdown signal.
    pub turn_grace: Duration,
    /// How long a stopping agent may take before it is considered gone.
    pub agent_stop_timeout: Duration,
    /// Coalesce text and thinking deltas (flush at `coalesce_interval` or `coalesce_bytes`).
    pub coalesce_deltas: bool,
    /// Coalesced deltas are published at most this long after the first one. Default 10 ms.
    pub coalesce_interval: Duration,
    /// Coalesced deltas are published once their text reaches this many bytes. Default 4096.
    pub coalesce_bytes: usize,
    /// The agent types `create_session` accepts (their command lines live with the agent host).
    pub agent_types: Vec<String>,
    /// The sandbox mode of each agent type (`landlock`, `off`, `launcher`), reported by
    /// `/health`; a type missing here is reported as `unknown`.
    pub agent_sandbox: std::collections::BTreeMap<String, String>,
    /// The ACP client's settings (timeouts, capabilities).
    pub acp: crate::acp::AcpConfig,
    /// What each agent type may take and is given (turn timeout, cancel grace, context replay,
    /// the client file system); a type missing here has `default_agent_options`.
    pub agent_options: std::collections::BTreeMap<String, AgentOptions>,
    /// The options of an agent type not in `agent_options` (and the defaults the flags set).
    pub default_agent_options: AgentOptions,
}

/// How a session of an agent type that can neither resume nor load its ACP session (no
/// `sessionCapabilities.resume`, no `loadSession`) gets its earlier conversation back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextReplay {
    /// The first prompt after a reactivation is prefixed with the session's earlier turns,
    /// bounded in bytes (the default).
    #[default]
    Transcript,
    /// Nothing: the agent starts afresh.
    None,
}

/// Per agent type options (`[agents.NAME]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// A turn running longer is cancelled and ends `turn_error` `TURN_TIMEOUT`. Default 30 min.
    pub turn_timeout: Duration,
    /// How long an agent may ignore `session/cancel` before it is killed (the turn ends
    /// `AGENT_UNRESPONSIVE`). Default 10 s.
    pub cancel_grace: Duration,
    /// See `ContextReplay`. Default `Transcript`.
    pub context_replay: ContextReplay,
    /// Advertise `fs.readTextFile`/`fs.writeTextFile` and serve them from the session's
    /// workspace. Default false.
    pub fs: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            turn_timeout: Duration::from_secs(30 * 60),
            cancel_grace: Duration::from_secs(10),
            context_replay: ContextReplay::Transcript,
            fs: false,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            dev_mode: false,
            conformance_echo: false,
            console: None,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            max_message_size: 1024 * 1024,
            echo_max_message_size: 32 * 1024 * 1024,
            max_request_head: 16 * 1024,
            outbound_queue_limit: 4 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(30),
            request_head_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            rate_limit_messages: 60,
            rate_limit_window: Duration::from_secs(10),
            auth_failures_per_minute: 10,
            auth_limiter_capacity: 100_000,
            auth_verifications_per_second: crate::auth::DEFAULT_VERIFICATIONS_PER_SECOND,
            replay_limit: 1000,
            idle_session_timeout: Duration::from_secs(600),
            turn_grace: Duration::from_secs(10),
            agent_stop_timeout: Duration::from_secs(10),
            coalesce_deltas: true,
            coalesce_interval: Duration::from_millis(10),
            coalesce_bytes: 4096,
            agent_types: vec!["echo".to_owned()],
            agent_sandbox: [("echo".to_owned(), "landlock".to_owned())].into(),
            acp: crate::acp::AcpConfig::default(),
            agent_options: std::collections::BTreeMap::new(),
            default_agent_options: AgentOptions::default(),
        }
    }
}

impl CoreConfig {
    /// The options of `agent_type` (the defaults for a type with none of its own).
    pub fn agent_options(&self, agent_type: &str) -> &AgentOptions {
        self.agent_options
            .get(agent_type)
            .unwrap_or(&self.default_agent_options)
    }

    /// A connection that sent no frame for this long is closed with 4103.
    pub fn liveness_timeout(&self) -> Duration {
        self.heartbeat_interval * 5 / 2
    }
}
