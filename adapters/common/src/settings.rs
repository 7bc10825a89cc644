//! The settings every adapter binary takes. Each flag has a `DIMINUENDO_*` environment fallback
//! and a key in the TOML file named by `--config`; a flag (or its variable) wins over the file,
//! and the file over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use diminuendo_core::CoreConfig;
use serde::Deserialize;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// Command-line flags. Every one is optional here so that the config file can fill what a flag
/// leaves unset; the defaults are in the help text and in `Settings::resolve`.
#[derive(Debug, Default, Parser)]
#[command(
    version,
    about = "Diminuendo: a real-time gateway for AI coding agents over one WebSocket port."
)]
pub struct Flags {
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "DIMINUENDO_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory for the SQLite databases [default: ./data]
    #[arg(long, env = "DIMINUENDO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Dev mode: no authentication (everyone is dev-user-001 of tenant `dev`), any origin,
    /// human-readable logs
    #[arg(long, env = "DIMINUENDO_DEV", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dev: Option<bool>,

    /// Serve /echo, which echoes every WebSocket message (for the conformance suite)
    #[arg(long, env = "DIMINUENDO_CONFORMANCE_ECHO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub conformance_echo: Option<bool>,

    /// Most WebSocket connections at once; upgrades beyond it get 503 [default: 10000]
    #[arg(long, env = "DIMINUENDO_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// TOML file with any of these settings (keys in snake_case, e.g. `max_connections = 100`)
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
    pub max_connections: Option<usize>,
    pub max_message_size: Option<usize>,
    pub outbound_queue_limit: Option<usize>,
    pub heartbeat_interval_ms: Option<u64>,
    pub request_head_timeout_ms: Option<u64>,
    pub allowed_origins: Option<Vec<String>>,
}

/// Everything an adapter needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub core: CoreConfig,
}

impl Settings {
    /// Parses the process's flags and environment, reads the config file, and resolves them.
    /// Prints a clear message and exits with status 2 when they are invalid.
    pub fn from_env() -> Settings {
        let flags = Flags::parse();
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
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(format!("{name} must be greater than 0"))
            } else {
                Ok(value)
            }
        };
        let core = CoreConfig {
            dev_mode: flags.dev.or(file.dev).unwrap_or(false),
            conformance_echo: flags
                .conformance_echo
                .or(file.conformance_echo)
                .unwrap_or(false),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_message_size: positive(
                "max_message_size",
                flags
                    .max_message_size
                    .or(file.max_message_size)
                    .unwrap_or(defaults.max_message_size),
            )?,
            outbound_queue_limit: positive(
                "outbound_queue_limit",
                flags
                    .outbound_queue_limit
                    .or(file.outbound_queue_limit)
                    .unwrap_or(defaults.outbound_queue_limit),
            )?,
            heartbeat_interval: flags
                .heartbeat_interval_ms
                .or(file.heartbeat_interval_ms)
                .map(|ms| {
                    positive("heartbeat_interval_ms", ms as usize)
                        .map(|ms| Duration::from_millis(ms as u64))
                })
                .transpose()?
                .unwrap_or(defaults.heartbeat_interval),
            request_head_timeout: flags
                .request_head_timeout_ms
                .or(file.request_head_timeout_ms)
                .map(|ms| {
                    positive("request_head_timeout_ms", ms as usize)
                        .map(|ms| Duration::from_millis(ms as u64))
                })
                .transpose()?
                .unwrap_or(defaults.request_head_timeout),
            allowed_origins: flags
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default(),
            ..defaults
        };
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        Ok(Settings {
            listen,
            data_dir,
            core,
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    toml::from_str(&text)
        .map_err(|error| format!("invalid config file {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("diminuendo-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            "max_connections = 7\nlisten = \"127.0.0.1:9000\"\ndev = true\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..Flags::default()
        };
        let settings = Settings::resolve(flags).expect("valid");
        assert_eq!(settings.listen.port(), 9100);
        assert_eq!(settings.core.max_connections, 7);
        assert!(settings.core.dev_mode);
        assert_eq!(
            settings.core.max_message_size,
            CoreConfig::default().max_message_size
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_keys_and_zero_limits_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("diminuendo-settings-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "max_conections = 7\n").expect("write");
        let error = Settings::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err("typo refused");
        assert!(error.contains("max_conections"), "{error}");
        let error = Settings::resolve(Flags {
            max_message_size: Some(0),
            ..Flags::default()
        })
        .expect_err("zero refused");
        assert!(error.contains("max_message_size"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
