//! The settings every adapter binary takes. Each flag has a `DIMINUENDO_*` environment fallback
//! and a key in the TOML file named by `--config`; a flag (or its variable) wins over the file,
//! and the file over the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use diminuendo_core::auth::AuthConfig;
use diminuendo_core::config::{AgentOptions, ContextReplay};
use diminuendo_core::CoreConfig;
use diminuendo_storage::Synchronous;
use serde::Deserialize;

use diminuendo_cluster::ClusterConfig;

mod cluster;
use cluster::{resolve_cluster, ClusterFlags};

use diminuendo_agent_host::{AgentSpec, Limits, NetworkPolicy, SandboxMode, WorkspacePolicy};

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// The argument that makes a gateway binary run the bundled echo agent instead.
pub const ECHO_AGENT_COMMAND: &str = "echo-agent";

/// Command-line flags. Every one is optional here so that the config file can fill what a flag
/// leaves unset; the defaults are in the help text and in `Settings::resolve`.
#[derive(Debug, Default, Parser)]
#[command(
    version,
    about = "Diminuendo: a real-time gateway for AI coding agents over one WebSocket port.",
    after_help = "`<binary> echo-agent` runs the bundled echo agent on stdin/stdout (the default `echo` agent type)."
)]
pub struct Flags {
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "DIMINUENDO_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory for the SQLite databases and the agents' workspaces [default: ./data]
    #[arg(long, env = "DIMINUENDO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Dev mode: no authentication (everyone is dev-user-001 of tenant `dev`, role owner), any
    /// origin, human-readable logs
    #[arg(long, env = "DIMINUENDO_DEV", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dev: Option<bool>,

    /// Serve the web console at / (embedded in the binary) [default: true with --dev, else false]
    #[arg(long, env = "DIMINUENDO_CONSOLE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub console: Option<bool>,

    /// Serve /echo, which echoes every WebSocket message (for the conformance suite)
    #[arg(long, env = "DIMINUENDO_CONFORMANCE_ECHO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub conformance_echo: Option<bool>,

    /// Most connections at once, HTTP and WebSocket; beyond it a connection's request gets 503
    /// and `Connection: close` [default: 10000]
    #[arg(long, env = "DIMINUENDO_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most connections at once from one TCP peer address (IPv6: one /64); beyond it, 503 and
    /// `Connection: close` [default: 256]
    #[arg(long, env = "DIMINUENDO_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Proxies (IPs or CIDR ranges, comma-separated) whose X-Forwarded-For/Forwarded headers give
    /// the client address used for the authentication limits; unset trusts none
    #[arg(
        long,
        env = "DIMINUENDO_TRUSTED_PROXIES",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<String>>,

    /// TOML file with any of these settings (keys in snake_case, e.g. `max_connections = 100`,
    /// and agent types as `[agents.NAME]` tables)
    #[arg(long, env = "DIMINUENDO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Largest inbound WebSocket message in bytes; larger closes with 1009 [default: 1048576]
    #[arg(long, env = "DIMINUENDO_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Bytes that may wait for one slow client before it is closed with 4100 [default: 4194304]
    #[arg(long, env = "DIMINUENDO_OUTBOUND_QUEUE_LIMIT", value_name = "BYTES")]
    pub outbound_queue_limit: Option<usize>,

    /// Heartbeat interval; a client silent for 2.5 intervals is closed with 4103 [default: 30000]
    #[arg(long, env = "DIMINUENDO_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// Time a request head may take to arrive (slow clients get 408) [default: 10000]
    #[arg(long, env = "DIMINUENDO_REQUEST_HEAD_TIMEOUT_MS", value_name = "MS")]
    pub request_head_timeout_ms: Option<u64>,

    /// Origins allowed to open a WebSocket, comma-separated; unset allows any
    #[arg(
        long,
        env = "DIMINUENDO_ALLOWED_ORIGINS",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,

    /// Messages a connection may send per 10 s (ping excluded); 0 disables [default: 60]
    #[arg(long, env = "DIMINUENDO_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Coalesce text and thinking deltas (flush at 10 ms or 4 KiB) [default: true]
    #[arg(long, env = "DIMINUENDO_COALESCE_DELTAS", value_name = "BOOL")]
    pub coalesce_deltas: Option<bool>,

    /// Shared secret for HS256 tokens (at least 32 bytes)
    #[arg(
        long,
        env = "DIMINUENDO_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret (one trailing newline is ignored); keeps the secret out of
    /// the command line and the environment
    #[arg(long, env = "DIMINUENDO_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Set by `Settings::from_env` when `--jwt-secret` came from the command line (readable by
    /// anyone in /proc/<pid>/cmdline): a warning at start.
    #[arg(skip)]
    pub jwt_secret_on_command_line: bool,

    /// JWKS file with the RS256/ES256 keys tokens are verified with (selected by `kid`)
    #[arg(long, env = "DIMINUENDO_JWKS_FILE", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Required `iss` of tokens
    #[arg(long, env = "DIMINUENDO_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of tokens
    #[arg(long, env = "DIMINUENDO_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// An agent type: NAME=COMMAND [ARGS...] (split on spaces; use the config file for more).
    /// Repeatable; the variable separates entries with `;`. `echo` is built in.
    #[arg(
        long = "agent",
        env = "DIMINUENDO_AGENTS",
        value_name = "NAME=COMMAND",
        value_delimiter = ';'
    )]
    pub agents: Option<Vec<String>>,

    /// Most agent processes at once; more answers AGENT_UNAVAILABLE [default: 64]
    #[arg(long, env = "DIMINUENDO_MAX_AGENTS", value_name = "N")]
    pub max_agents: Option<usize>,

    /// An active session with no client and no turn stops its agent after this long [default: 600000]
    #[arg(long, env = "DIMINUENDO_IDLE_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub idle_session_timeout_ms: Option<u64>,

    /// Time running turns get to finish after a shutdown signal [default: 10000]
    #[arg(long, env = "DIMINUENDO_TURN_GRACE_MS", value_name = "MS")]
    pub turn_grace_ms: Option<u64>,

    /// A turn running longer is cancelled and ends TURN_TIMEOUT, for every agent type without
    /// its own `turn_timeout_ms` [default: 1800000]
    #[arg(long, env = "DIMINUENDO_TURN_TIMEOUT_MS", value_name = "MS")]
    pub turn_timeout_ms: Option<u64>,

    /// An agent that ignores `session/cancel` this long is killed (AGENT_UNRESPONSIVE), for every
    /// agent type without its own `cancel_grace_ms` [default: 10000]
    #[arg(long, env = "DIMINUENDO_CANCEL_GRACE_MS", value_name = "MS")]
    pub cancel_grace_ms: Option<u64>,

    /// SQLite durability: `normal` (a power loss may lose the last commits) or `full` (each
    /// commit survives a power loss) [default: normal]
    #[arg(long, env = "DIMINUENDO_SYNCHRONOUS", value_name = "MODE")]
    pub synchronous: Option<SyncMode>,

    /// The storage writer flushes this long after the first buffered write [default: 50]
    #[arg(long, env = "DIMINUENDO_STORAGE_FLUSH_MS", value_name = "MS")]
    pub storage_flush_ms: Option<u64>,

    /// ... or once this many writes are buffered, whichever comes first [default: 100]
    #[arg(long, env = "DIMINUENDO_STORAGE_BATCH", value_name = "N")]
    pub storage_batch: Option<usize>,

    /// Bound of the storage queue in bytes (writes and queries not yet done). Over half of it new
    /// turns and sessions answer RATE_LIMITED; over three quarters agents' output is no longer
    /// read (they wait on their pipes); a write that would pass it is refused and its session
    /// gets a new epoch [default: 67108864]
    #[arg(long, env = "DIMINUENDO_STORAGE_QUEUE_LIMIT", value_name = "BYTES")]
    pub storage_queue_limit: Option<usize>,

    /// For tests: the storage writer waits this long before every commit, as a slow disk would
    /// [default: 0]
    #[arg(long, env = "DIMINUENDO_STORAGE_COMMIT_DELAY_MS", value_name = "MS")]
    pub storage_commit_delay_ms: Option<u64>,

    /// Cluster mode: NATS server URLs, comma-separated (`nats://host:4222,nats://other:4222`).
    /// The registry, leases and event log then live in JetStream (see CLUSTER.md); unset runs
    /// a single node on SQLite
    #[arg(long, env = "DIMINUENDO_CLUSTER", value_name = "URLS")]
    pub cluster: Option<String>,

    /// This instance's id in the cluster (lease holder, liveness key); unique per running
    /// instance [default: a generated id, logged at start]
    #[arg(long, env = "DIMINUENDO_CLUSTER_INSTANCE", value_name = "ID")]
    pub cluster_instance: Option<String>,

    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it)
    #[arg(long, env = "DIMINUENDO_CLUSTER_CREDS", value_name = "FILE")]
    pub cluster_creds: Option<PathBuf>,

    /// File holding an NKey seed (`SU...`) for NKey authentication
    #[arg(long, env = "DIMINUENDO_CLUSTER_NKEY", value_name = "FILE")]
    pub cluster_nkey: Option<PathBuf>,

    /// NATS user (with --cluster-password)
    #[arg(long, env = "DIMINUENDO_CLUSTER_USER", value_name = "USER")]
    pub cluster_user: Option<String>,

    /// NATS password (with --cluster-user)
    #[arg(
        long,
        env = "DIMINUENDO_CLUSTER_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub cluster_password: Option<String>,

    /// NATS token authentication
    #[arg(
        long,
        env = "DIMINUENDO_CLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub cluster_token: Option<String>,

    /// Root certificates (PEM) to verify the NATS servers with, instead of the system's
    #[arg(long, env = "DIMINUENDO_CLUSTER_TLS_CA", value_name = "FILE")]
    pub cluster_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients (with --cluster-tls-key)
    #[arg(long, env = "DIMINUENDO_CLUSTER_TLS_CERT", value_name = "FILE")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// The client certificate's key (PEM)
    #[arg(long, env = "DIMINUENDO_CLUSTER_TLS_KEY", value_name = "FILE")]
    pub cluster_tls_key: Option<PathBuf>,

    /// Require TLS even for `nats://` URLs
    #[arg(long, env = "DIMINUENDO_CLUSTER_TLS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cluster_tls: Option<bool>,

    /// TLS handshake before the server's INFO (servers configured with `handshake_first`)
    #[arg(long, env = "DIMINUENDO_CLUSTER_TLS_FIRST", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cluster_tls_first: Option<bool>,

    /// Replicas of the event stream and the buckets (3 on a three-node JetStream cluster)
    /// [default: 1]
    #[arg(long, env = "DIMINUENDO_CLUSTER_REPLICAS", value_name = "N")]
    pub cluster_replicas: Option<usize>,

    /// How often an owner renews its session leases; a lease not renewed for 3 intervals
    /// expires and the session can move [default: 2000]
    #[arg(long, env = "DIMINUENDO_CLUSTER_LEASE_RENEW_MS", value_name = "MS")]
    pub cluster_lease_renew_ms: Option<u64>,

    /// Directory of the agents' per-session workspaces (`<DIR>/<sessionId>/workspace`)
    /// [default: <data-dir>/sessions]. In cluster mode every instance must reach the same one (a
    /// shared volume), or a session that moves loses its agent's memory
    #[arg(long, env = "DIMINUENDO_WORKSPACE_ROOT", value_name = "DIR")]
    pub workspace_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Normal,
    Full,
}

/// An agent type in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAgent {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `per-session` (default) or a directory every process of this type runs in.
    pub workspace: Option<String>,
    /// Gateway variables passed on to the agent (never `DIMINUENDO_*`).
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// `landlock` (default), `off`, or `launcher`.
    pub sandbox: Option<String>,
    /// `allow` (default) or `deny`.
    pub network: Option<String>,
    /// More read-and-execute paths for a Landlock-confined agent.
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// More read-and-write paths for a Landlock-confined agent (outside the data directory).
    #[serde(default)]
    pub write_paths: Vec<PathBuf>,
    /// Resource limits; a missing key keeps its default, 0 is unlimited.
    #[serde(default)]
    pub limits: FileLimits,
    /// This type's turn timeout (default: `turn_timeout_ms` of the gateway).
    pub turn_timeout_ms: Option<u64>,
    /// This type's cancel grace (default: `cancel_grace_ms` of the gateway).
    pub cancel_grace_ms: Option<u64>,
    /// `transcript` (default) or `none`: what a reactivated session of an agent that can
    /// neither resume nor load its conversation is given.
    pub context_replay: Option<String>,
    /// Serve the client file system (`fs/read_text_file`, `fs/write_text_file`) from the
    /// session's workspace. Default false.
    pub fs: Option<bool>,
}

impl FileAgent {
    /// This type's options, over the gateway's defaults.
    fn options(&self, name: &str, defaults: &AgentOptions) -> Result<AgentOptions, String> {
        let millis = |key: &str, value: Option<u64>, default: Duration| match value {
            Some(0) => Err(format!("agents.{name}.{key} must be positive")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(default),
        };
        let context_replay = match self.context_replay.as_deref() {
            None => defaults.context_replay,
            Some("transcript") => ContextReplay::Transcript,
            Some("none") => ContextReplay::None,
            Some(other) => {
                return Err(format!(
                    "agents.{name}.context_replay: `{other}` is neither `transcript` nor `none`"
                ))
            }
        };
        Ok(AgentOptions {
            turn_timeout: millis(
                "turn_timeout_ms",
                self.turn_timeout_ms,
                defaults.turn_timeout,
            )?,
            cancel_grace: millis(
                "cancel_grace_ms",
                self.cancel_grace_ms,
                defaults.cancel_grace,
            )?,
            context_replay,
            fs: self.fs.unwrap_or(defaults.fs),
        })
    }
}

/// `[agents.NAME.limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub address_space: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub file_size: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub workspace_bytes: Option<u64>,
}

impl FileLimits {
    fn resolve(&self) -> Limits {
        let defaults = Limits::default();
        let pick = |value: Option<u64>, default: Option<u64>| match value {
            Some(0) => None,
            Some(value) => Some(value),
            None => default,
        };
        Limits {
            address_space: pick(self.address_space, defaults.address_space),
            open_files: pick(self.open_files, defaults.open_files),
            processes: pick(self.processes, defaults.processes),
            file_size: pick(self.file_size, defaults.file_size),
            cpu_seconds: pick(self.cpu_seconds, defaults.cpu_seconds),
            workspace_bytes: pick(self.workspace_bytes, defaults.workspace_bytes),
        }
    }
}

/// The config file: the same settings, snake_case keys. Unknown keys are refused so that a typo
/// does not silently leave a default in force.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub dev: Option<bool>,
    pub conformance_echo: Option<bool>,
    pub console: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_message_size: Option<usize>,
    pub outbound_queue_limit: Option<usize>,
    pub heartbeat_interval_ms: Option<u64>,
    pub request_head_timeout_ms: Option<u64>,
    pub allowed_origins: Option<Vec<String>>,
    pub rate_limit: Option<u32>,
    pub coalesce_deltas: Option<bool>,
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    #[serde(default)]
    pub agents: BTreeMap<String, FileAgent>,
    pub max_agents: Option<usize>,
    pub idle_session_timeout_ms: Option<u64>,
    pub turn_grace_ms: Option<u64>,
    pub turn_timeout_ms: Option<u64>,
    pub cancel_grace_ms: Option<u64>,
    pub synchronous: Option<SyncMode>,
    pub storage_flush_ms: Option<u64>,
    pub storage_batch: Option<usize>,
    pub storage_queue_limit: Option<usize>,
    pub cluster: Option<String>,
    pub cluster_instance: Option<String>,
    pub cluster_creds: Option<PathBuf>,
    pub cluster_nkey: Option<PathBuf>,
    pub cluster_user: Option<String>,
    pub cluster_password: Option<String>,
    pub cluster_token: Option<String>,
    pub cluster_tls_ca: Option<PathBuf>,
    pub cluster_tls_cert: Option<PathBuf>,
    pub cluster_tls_key: Option<PathBuf>,
    pub cluster_tls: Option<bool>,
    pub cluster_tls_first: Option<bool>,
    pub cluster_replicas: Option<usize>,
    pub cluster_lease_renew_ms: Option<u64>,
    pub workspace_root: Option<PathBuf>,
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub synchronous: Synchronous,
    pub flush_interval: Duration,
    pub batch_size: usize,
    /// The storage queue's bound in bytes (`--storage-queue-limit`).
    pub queue_limit: u64,
    /// For tests: a pause before every commit (`--storage-commit-delay-ms`).
    pub commit_delay: Duration,
}

/// Everything an adapter needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub core: CoreConfig,
    /// Token verification; `None` in dev mode (and then only dev mode authenticates).
    pub auth: Option<AuthConfig>,
    pub agents: BTreeMap<String, AgentSpec>,
    pub max_agents: usize,
    pub storage: StorageSettings,
    /// Cluster mode (`--cluster`): how to reach NATS. `None`: a single node.
    pub cluster: Option<ClusterConfig>,
    /// Where the agents' per-session workspaces are (`--workspace-root`); `None`: in the data
    /// directory.
    pub workspace_root: Option<PathBuf>,
    /// Said at start, once logging is up (`driver::main`).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Parses the process's flags and environment, reads the config file, and resolves them.
    /// Prints a clear message and exits with status 2 when they are invalid. `<binary>
    /// echo-agent` runs the bundled echo agent and exits.
    pub fn from_env() -> Settings {
        if std::env::args().nth(1).as_deref() == Some(ECHO_AGENT_COMMAND) {
            diminuendo_echo_agent::run();
            std::process::exit(0);
        }
        use clap::{CommandFactory, FromArgMatches};
        let matches = Flags::command().get_matches();
        let mut flags = match Flags::from_arg_matches(&matches) {
            Ok(flags) => flags,
            Err(error) => error.exit(),
        };
        flags.jwt_secret_on_command_line =
            matches.value_source("jwt_secret") == Some(clap::parser::ValueSource::CommandLine);
        match Settings::resolve(flags) {
            Ok(settings) => settings,
            Err(message) => {
                eprintln!("error: {message}");
                std::process::exit(2);
            }
        }
    }

    pub fn resolve(flags: Flags) -> Result<Settings, String> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let defaults = CoreConfig::default();
        let listen = match flags.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| "the default listen address is invalid".to_string())?,
        };
        let positive = |name: &str, value: u64| {
            if value == 0 {
                Err(format!("{name} must be greater than 0"))
            } else {
                Ok(value)
            }
        };
        let millis =
            |name: &str, value: Option<u64>, default: Duration| -> Result<Duration, String> {
                value
                    .map(|ms| positive(name, ms).map(Duration::from_millis))
                    .transpose()
                    .map(|d| d.unwrap_or(default))
            };
        let size = |name: &str, value: Option<usize>, default: usize| -> Result<usize, String> {
            value
                .map(|n| positive(name, n as u64).map(|n| n as usize))
                .transpose()
                .map(|n| n.unwrap_or(default))
        };

        let mut warnings = Vec::new();
        let agents = resolve_agents(flags.agents.as_deref(), &file.agents)?;
        let default_agent_options = {
            let defaults = AgentOptions::default();
            let millis = |name: &str, value: Option<u64>, default: Duration| {
                value
                    .map(|ms| positive(name, ms).map(Duration::from_millis))
                    .transpose()
                    .map(|d| d.unwrap_or(default))
            };
            AgentOptions {
                turn_timeout: millis(
                    "turn_timeout_ms",
                    flags.turn_timeout_ms.or(file.turn_timeout_ms),
                    defaults.turn_timeout,
                )?,
                cancel_grace: millis(
                    "cancel_grace_ms",
                    flags.cancel_grace_ms.or(file.cancel_grace_ms),
                    defaults.cancel_grace,
                )?,
                ..defaults
            }
        };
        let trusted_proxies = flags
            .trusted_proxies
            .or(file.trusted_proxies)
            .unwrap_or_default()
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                entry
                    .parse::<diminuendo_core::net::IpNet>()
                    .map_err(|error| format!("--trusted-proxies: {error}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dev_mode = flags.dev.or(file.dev).unwrap_or(false);
        let core = CoreConfig {
            dev_mode,
            conformance_echo: flags
                .conformance_echo
                .or(file.conformance_echo)
                .unwrap_or(false),
            console: flags
                .console
                .or(file.console)
                .unwrap_or(dev_mode)
                .then(crate::console::assets),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_connections_per_ip: size(
                "max_connections_per_ip",
                flags.max_connections_per_ip.or(file.max_connections_per_ip),
                defaults.max_connections_per_ip,
            )?,
            trusted_proxies,
            max_message_size: size(
                "max_message_size",
                flags.max_message_size.or(file.max_message_size),
                defaults.max_message_size,
            )?,
            outbound_queue_limit: size(
                "outbound_queue_limit",
                flags.outbound_queue_limit.or(file.outbound_queue_limit),
                defaults.outbound_queue_limit,
            )?,
            heartbeat_interval: millis(
                "heartbeat_interval_ms",
                flags.heartbeat_interval_ms.or(file.heartbeat_interval_ms),
                defaults.heartbeat_interval,
            )?,
            request_head_timeout: millis(
                "request_head_timeout_ms",
                flags
                    .request_head_timeout_ms
                    .or(file.request_head_timeout_ms),
                defaults.request_head_timeout,
            )?,
            allowed_origins: flags
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default(),
            rate_limit_messages: flags
                .rate_limit
                .or(file.rate_limit)
                .unwrap_or(defaults.rate_limit_messages),
            coalesce_deltas: flags
                .coalesce_deltas
                .or(file.coalesce_deltas)
                .unwrap_or(defaults.coalesce_deltas),
            idle_session_timeout: millis(
                "idle_session_timeout_ms",
                flags
                    .idle_session_timeout_ms
                    .or(file.idle_session_timeout_ms),
                defaults.idle_session_timeout,
            )?,
            turn_grace: millis(
                "turn_grace_ms",
                flags.turn_grace_ms.or(file.turn_grace_ms),
                defaults.turn_grace,
            )?,
            default_agent_options: default_agent_options.clone(),
            agent_options: file
                .agents
                .iter()
                .map(|(name, agent)| {
                    agent
                        .options(name, &default_agent_options)
                        .map(|options| (name.clone(), options))
                })
                .collect::<Result<_, String>>()?,
            agent_types: agents.keys().cloned().collect(),
            agent_sandbox: agents
                .iter()
                .map(|(name, spec)| (name.clone(), spec.sandbox.as_str().to_owned()))
                .collect(),
            ..defaults
        };

        let jwks_json = match flags.jwks_file.or(file.jwks_file) {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|error| {
                format!("cannot read the JWKS file {}: {error}", path.display())
            })?),
            None => None,
        };
        let secret_file = flags.jwt_secret_file.or(file.jwt_secret_file);
        let hs256_secret = match (flags.jwt_secret.or(file.jwt_secret), secret_file) {
            (Some(_), Some(_)) => {
                return Err("give either --jwt-secret or --jwt-secret-file, not both".to_owned())
            }
            (Some(secret), None) => {
                if flags.jwt_secret_on_command_line {
                    warnings.push(
                        "--jwt-secret on the command line can be read by any local user in \
                         /proc/<pid>/cmdline; use --jwt-secret-file"
                            .to_owned(),
                    );
                }
                Some(secret)
            }
            (None, Some(path)) => Some(read_secret_file(&path)?),
            (None, None) => None,
        };
        let auth = if hs256_secret.is_none() && jwks_json.is_none() {
            if !dev_mode {
                // Without a key nothing can authenticate; say so at start rather than at the
                // first connection.
                warnings.push(
                    "no --jwt-secret, --jwt-secret-file or --jwks-file: only dev mode can \
                     authenticate clients"
                        .to_owned(),
                );
            }
            None
        } else {
            Some(AuthConfig {
                hs256_secret,
                jwks_json,
                issuer: flags.jwt_issuer.or(file.jwt_issuer),
                audience: flags.jwt_audience.or(file.jwt_audience),
                ..AuthConfig::default()
            })
        };
        let synchronous = match flags
            .synchronous
            .or(file.synchronous)
            .unwrap_or(SyncMode::Normal)
        {
            SyncMode::Normal => Synchronous::Normal,
            SyncMode::Full => Synchronous::Full,
        };
        let storage = StorageSettings {
            synchronous,
            flush_interval: millis(
                "storage_flush_ms",
                flags.storage_flush_ms.or(file.storage_flush_ms),
                Duration::from_millis(50),
            )?,
            batch_size: size(
                "storage_batch",
                flags.storage_batch.or(file.storage_batch),
                100,
            )?,
            queue_limit: size(
                "storage_queue_limit",
                flags.storage_queue_limit.or(file.storage_queue_limit),
                diminuendo_storage::DEFAULT_QUEUE_LIMIT as usize,
            )? as u64,
            commit_delay: Duration::from_millis(flags.storage_commit_delay_ms.unwrap_or(0)),
        };
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let workspace_root = flags.workspace_root.or(file.workspace_root);
        let cluster = resolve_cluster(ClusterFlags {
            url: flags.cluster.or(file.cluster),
            instance: flags.cluster_instance.or(file.cluster_instance),
            creds: flags.cluster_creds.or(file.cluster_creds),
            nkey: flags.cluster_nkey.or(file.cluster_nkey),
            user: flags.cluster_user.or(file.cluster_user),
            password: flags.cluster_password.or(file.cluster_password),
            token: flags.cluster_token.or(file.cluster_token),
            tls_ca: flags.cluster_tls_ca.or(file.cluster_tls_ca),
            tls_cert: flags.cluster_tls_cert.or(file.cluster_tls_cert),
            tls_key: flags.cluster_tls_key.or(file.cluster_tls_key),
            tls: flags.cluster_tls.or(file.cluster_tls),
            tls_first: flags.cluster_tls_first.or(file.cluster_tls_first),
            replicas: flags.cluster_replicas.or(file.cluster_replicas),
            lease_renew_ms: flags.cluster_lease_renew_ms.or(file.cluster_lease_renew_ms),
        })?;
        if cluster.is_some() {
            match &workspace_root {
                None => warnings.push(
                    "cluster mode with the workspaces in the local data directory: a session \
                     that moves to another instance starts its agent without its memory; give \
                     every instance the same shared --workspace-root"
                        .to_owned(),
                ),
                Some(root) if !root.is_absolute() => warnings.push(format!(
                    "cluster mode with a relative --workspace-root {}: every instance must \
                     reach the same shared directory",
                    root.display()
                )),
                Some(_) => {}
            }
        }
        Ok(Settings {
            listen,
            data_dir,
            core,
            auth,
            agents,
            max_agents: size("max_agents", flags.max_agents.or(file.max_agents), 64)?,
            storage,
            cluster,
            workspace_root,
            warnings,
        })
    }
}

/// The agent types: the file's, then the flags' (a flag replaces a file entry of the same name),
/// and the bundled `echo` unless one of them defines it.
fn resolve_agents(
    flags: Option<&[String]>,
    file: &BTreeMap<String, FileAgent>,
) -> Result<BTreeMap<String, AgentSpec>, String> {
    let mut agents = BTreeMap::new();
    for (name, agent) in file {
        check_agent_name(name)?;
        let cwd = match agent.workspace.as_deref() {
            None | Some("per-session") => WorkspacePolicy::PerSession,
            Some(path) => WorkspacePolicy::Fixed(PathBuf::from(path)),
        };
        let env = agent
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sandbox = match agent.sandbox.as_deref() {
            None => SandboxMode::default(),
            Some(text) => SandboxMode::parse(text).ok_or_else(|| {
                format!("agent type {name}: sandbox is landlock, off or launcher, got {text:?}")
            })?,
        };
        let network = match agent.network.as_deref() {
            None => NetworkPolicy::default(),
            Some(text) => NetworkPolicy::parse(text).ok_or_else(|| {
                format!("agent type {name}: network is allow or deny, got {text:?}")
            })?,
        };
        agents.insert(
            name.clone(),
            AgentSpec {
                command: agent.command.clone(),
                args: agent.args.clone(),
                env,
                cwd,
                inherit_env: agent.inherit_env.clone(),
                sandbox,
                network,
                read_paths: agent.read_paths.clone(),
                write_paths: agent.write_paths.clone(),
                limits: agent.limits.resolve(),
            },
        );
    }
    for entry in flags.unwrap_or(&[]) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, command) = entry
            .split_once('=')
            .ok_or_else(|| format!("--agent takes NAME=COMMAND, got {entry:?}"))?;
        check_agent_name(name.trim())?;
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| format!("--agent {name}: the command is empty"))?;
        agents.insert(
            name.trim().to_owned(),
            AgentSpec {
                command: program,
                args: words.collect(),
                ..AgentSpec::default()
            },
        );
    }
    if !agents.contains_key("echo") {
        let exe = std::env::current_exe()
            .map_err(|error| format!("cannot find this program's path: {error}"))?;
        agents.insert(
            "echo".to_owned(),
            AgentSpec {
                command: exe.display().to_string(),
                args: vec![ECHO_AGENT_COMMAND.to_owned()],
                ..AgentSpec::default()
            },
        );
    }
    for (name, spec) in &agents {
        diminuendo_agent_host::check_spec(name, spec)?;
    }
    Ok(agents)
}

fn check_agent_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent type names are 1-64 of A-Z a-z 0-9 - _, got {name:?}"
        ))
    }
}

/// The HS256 secret from a file, without one trailing newline (`\n` or `\r\n`).
fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read the JWT secret file {}: {error}",
            path.display()
        )
    })?;
    let secret = text.strip_suffix('\n').map_or(text.as_str(), |rest| {
        rest.strip_suffix('\r').unwrap_or(rest)
    });
    if secret.is_empty() {
        return Err(format!("the JWT secret file {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    toml::from_str(&text)
        .map_err(|error| format!("invalid config file {}: {error}", path.display()))
}

#[cfg(test)]
mod tests;
