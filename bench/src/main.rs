//! diminuendo-bench: the load generator that measures a Diminuendo gateway binary.
//!
//! Each subcommand prints its figures and then one JSON line. By default it starts the gateway
//! itself (`--binary PATH`, in dev mode on a loopback port, with a fresh data directory, no
//! rate limit) so that it can read the gateway's CPU time and memory from `/proc`; `--addr`
//! targets a running gateway instead, for the figures that need no pid. See `bench/README.md`.

mod agents;
mod cluster;
mod fanout;
mod health;
mod report;
mod sequential;
mod server;
mod table;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report::Report;
use crate::server::Target;

#[derive(Parser)]
#[command(
    version,
    about = "Load generator and benchmark for Diminuendo gateway binaries."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// Gateway binary to start (dev mode, 127.0.0.1:0, fresh data dir, `--rate-limit 0`)
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// A running gateway instead (figures needing its pid are left out)
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "binary")]
    addr: Option<SocketAddr>,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// Subscribers joined to the session
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Agent chunks the turn streams
    #[arg(long, default_value_t = 2000)]
    deltas: usize,
    /// Bytes per chunk
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Gateway delta coalescing (`--coalesce-deltas`); `both` runs two gateways
    #[arg(long, value_enum, default_value_t = Coalesce::Off)]
    coalesce: Coalesce,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Coalesce {
    Off,
    On,
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// Keep-alive GET /health over many connections: requests/s and latency
    Health {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 500)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 3000)]
        duration_ms: u64,
    },
    /// Sequential WebSocket connect until `authenticated`
    Connect {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
    },
    /// Sequential create_session round trips on one connection
    Create {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
    },
    /// Subscribers of one session while an echo-agent turn streams deltas
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        fanout: FanoutArgs,
    },
    /// A turn of many events; time until get_events returns them all
    Persist {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Idle authenticated connections: gateway memory per connection (needs --binary)
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Many active sessions, one echo agent each: gateway threads, memory per agent, and
    /// spawn-to-ready time (needs --binary)
    Agents {
        #[command(flatten)]
        target: TargetArgs,
        /// Sessions activated (one agent process each)
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The gateway's `--max-agents` (at least `count`)
        #[arg(long, default_value_t = 1000)]
        max_agents: usize,
    },
    /// Time from spawning the binary to the first 200 on /livez, median of runs
    Startup {
        #[arg(long, value_name = "PATH")]
        binary: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Every subcommand with its defaults (fan-out with coalescing off and on), each against a
    /// fresh gateway
    All {
        #[arg(long, value_name = "PATH")]
        binary: PathBuf,
    },
    /// Cluster mode: three instances of the binary on a local nats-server -js;
    /// create_session p50, cross-instance delivery latency, fan-out over three instances
    Cluster {
        #[arg(long, value_name = "PATH")]
        binary: PathBuf,
        /// The nats-server binary [default: $DIMINUENDO_NATS_SERVER, the test venv's, the PATH]
        #[arg(long, value_name = "PATH")]
        nats_server: Option<PathBuf>,
        /// Sequential create_session round trips on instance A
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// One-delta turns for the unloaded cross-instance latency
        #[arg(long, default_value_t = 200)]
        paced_turns: usize,
        /// Deltas of the cross-instance latency turn (one subscriber on A, one on B)
        #[arg(long, default_value_t = 2000)]
        latency_deltas: usize,
        /// Subscribers of the fan-out, spread over the three instances
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Deltas of the fan-out turn
        #[arg(long, default_value_t = 2000)]
        deltas: usize,
        /// Bytes per delta
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// A markdown table from the JSON lines of `all` runs
    Table {
        /// NAME=FILE, NAME one of tokio, smol, mio (repeatable)
        #[arg(long = "column", value_name = "NAME=FILE")]
        columns: Vec<String>,
    },
}

fn binary_name(target: &TargetArgs) -> String {
    match (&target.binary, &target.addr) {
        (Some(path), _) => name_of(path),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => String::new(),
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn coalesce_flag(coalesce: bool) -> Vec<String> {
    vec!["--coalesce-deltas".into(), coalesce.to_string()]
}

/// Runs one measurement against a fresh target (or the given address).
fn with_target(
    target: &TargetArgs,
    extra: &[String],
    run: impl FnOnce(&Target, &str) -> std::io::Result<Report>,
) -> std::io::Result<serde_json::Value> {
    let gateway = Target::new(target.binary.as_deref(), target.addr, extra)?;
    let report = run(&gateway, &binary_name(target))?;
    drop(gateway);
    Ok(report.print())
}

fn run_fanout(target: &TargetArgs, args: &FanoutArgs) -> std::io::Result<bool> {
    let modes: &[bool] = match args.coalesce {
        Coalesce::Off => &[false],
        Coalesce::On => &[true],
        Coalesce::Both => &[false, true],
    };
    let options = fanout::Options {
        subscribers: args.subscribers,
        deltas: args.deltas,
        size: args.size,
        timeout: Duration::from_secs(args.timeout_s),
        subscriber_addrs: Vec::new(),
        other_pids: Vec::new(),
        name: "fanout",
    };
    let mut ok = true;
    for &coalesce in modes {
        let known = target.binary.is_some().then_some(coalesce);
        let value = with_target(target, &coalesce_flag(coalesce), |gateway, name| {
            fanout::fanout(gateway, name, known, &options)
        })?;
        ok &= value["ok"] == true;
        if target.binary.is_none() {
            break; // an external gateway has one setting, whatever it is
        }
    }
    Ok(ok)
}

fn run(command: Command, nofile: (u64, u64)) -> std::io::Result<bool> {
    match command {
        Command::Health {
            target,
            connections,
            warmup_ms,
            duration_ms,
        } => with_target(&target, &[], |gateway, name| {
            health::health(
                gateway,
                name,
                connections,
                Duration::from_millis(warmup_ms),
                Duration::from_millis(duration_ms),
            )
        })
        .map(|_| true),
        Command::Connect {
            target,
            count,
            warmup,
        } => with_target(&target, &[], |gateway, name| {
            sequential::connect(gateway, name, count, warmup)
        })
        .map(|_| true),
        Command::Create {
            target,
            count,
            warmup,
        } => with_target(&target, &[], |gateway, name| {
            sequential::create(gateway, name, count, warmup)
        })
        .map(|_| true),
        Command::Fanout { target, fanout } => run_fanout(&target, &fanout),
        Command::Persist {
            target,
            events,
            size,
        } => with_target(&target, &coalesce_flag(false), |gateway, name| {
            sequential::persist(gateway, name, events, size)
        })
        .map(|_| true),
        Command::Idle {
            target,
            connections,
        } => with_target(&target, &[], |gateway, name| {
            sequential::idle(gateway, name, connections, nofile)
        })
        .map(|_| true),
        Command::Agents {
            target,
            count,
            max_agents,
        } => {
            // A second agent type, the same echo agent with `sandbox = "off"`, for the
            // spawn-to-ready comparison (only when the bench starts the gateway itself).
            let config = match &target.binary {
                Some(binary) => Some(agents::unconfined_config(binary)?),
                None => None,
            };
            let mut flags = vec![
                "--max-agents".into(),
                (max_agents.max(count) + 2 * agents::SANDBOX_COMPARISON).to_string(),
            ];
            if let Some(config) = &config {
                flags.push("--config".into());
                flags.push(config.path().to_string_lossy().into_owned());
            }
            let compare = config.is_some();
            with_target(&target, &flags, |gateway, name| {
                agents::agents(gateway, name, count, compare)
            })
            .map(|_| true)
        }
        Command::Startup { binary, runs } => sequential::startup(&binary, &name_of(&binary), runs)
            .map(|report| {
                report.print();
                true
            }),
        Command::All { binary } => {
            let mut ok = true;
            let defaults = |command: &str| -> Vec<String> {
                vec![
                    "diminuendo-bench".into(),
                    command.into(),
                    "--binary".into(),
                    binary.to_string_lossy().into_owned(),
                ]
            };
            for command in [
                "health", "connect", "create", "fanout", "persist", "idle", "agents", "startup",
            ] {
                let mut args = defaults(command);
                if command == "fanout" {
                    args.extend(["--coalesce".into(), "both".into()]);
                }
                let parsed = Cli::try_parse_from(&args).map_err(std::io::Error::other)?;
                match run(parsed.command, nofile) {
                    Ok(passed) => ok &= passed,
                    Err(error) => {
                        eprintln!("{command} failed: {error}");
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
        Command::Cluster {
            binary,
            nats_server,
            count,
            paced_turns,
            latency_deltas,
            subscribers,
            deltas,
            size,
            timeout_s,
        } => {
            let options = cluster::Options {
                nats_server,
                paced_turns,
                count,
                latency_deltas,
                subscribers,
                deltas,
                size,
                timeout: Duration::from_secs(timeout_s),
            };
            let mut ok = true;
            for report in cluster::cluster(&binary, &name_of(&binary), &options)? {
                let value = report.print();
                if value.get("ok").is_some_and(|ok| ok != true) {
                    ok = false;
                }
            }
            Ok(ok)
        }
        Command::Table { columns } => {
            let mut parsed = Vec::new();
            for column in columns {
                let (name, path) = column.split_once('=').ok_or_else(|| {
                    std::io::Error::other(format!("--column {column}: want NAME=FILE"))
                })?;
                parsed.push((name.to_owned(), PathBuf::from(path)));
            }
            print!("{}", table::table(&parsed)?);
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Idle connections need a file descriptor each, here and in the gateway (which inherits it).
    let nofile = server::raise_nofile();
    match run(cli.command, nofile) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("diminuendo-bench: a check failed (see the figures above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("diminuendo-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
