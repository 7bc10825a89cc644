//! Spawn-to-ready time of an agent, with and without the sandbox: from `AgentCommand::Spawn`
//! until the agent's answer to its first line (an ACP `initialize`) has been drained. Prints the
//! median and the 90th percentile per mode.
//!
//! `cargo run --release -p diminuendo-agent-host --example spawn_ready [AGENT_BINARY] [ROUNDS]`
//! (default: `target/release/diminuendo-echo-agent`, 200 rounds; `cat` when the binary is
//! missing).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_agent_host::{AgentHost, AgentHostConfig, AgentReport, AgentSpec, SandboxMode};
use diminuendo_core::{AgentCommand, AgentId, Wake};

#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    condvar: Condvar,
}

impl Wake for Signal {
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.condvar.notify_all();
    }
}

impl Signal {
    fn wait(&self, deadline: Instant) -> bool {
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            woken = self
                .condvar
                .wait_timeout(woken, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *woken = false;
        true
    }
}

const INITIALIZE: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":1}}\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let agent = args
        .next()
        .unwrap_or_else(|| "target/release/diminuendo-echo-agent".to_owned());
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let (command, agent_args) = if std::path::Path::new(&agent).is_file() {
        (
            std::fs::canonicalize(&agent)
                .map(|p| p.display().to_string())
                .unwrap_or(agent),
            Vec::new(),
        )
    } else {
        eprintln!("{agent} not found; measuring `cat`");
        ("cat".to_owned(), Vec::new())
    };
    let data_dir =
        std::env::temp_dir().join(format!("diminuendo-spawn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    println!("agent: {command}; {rounds} spawns per mode, one at a time");
    for mode in [
        SandboxMode::Off,
        SandboxMode::Landlock,
        SandboxMode::Off,
        SandboxMode::Landlock,
    ] {
        let mut config = AgentHostConfig::new(&data_dir);
        config.agents.insert(
            "a".into(),
            AgentSpec {
                command: command.clone(),
                args: agent_args.clone(),
                sandbox: mode,
                ..AgentSpec::default()
            },
        );
        let signal = Arc::new(Signal::default());
        let mut host = AgentHost::new(config, signal.clone());
        let mut times = Vec::with_capacity(rounds);
        let mut out = Vec::new();
        for round in 0..rounds {
            let agent = AgentId(round as u64 + 1);
            let start = Instant::now();
            let report = host.execute(AgentCommand::Spawn {
                agent,
                session_id: format!("s{round}"),
                tenant_id: "bench".into(),
                agent_type: "a".into(),
            });
            match report {
                Some(AgentReport::Spawned { .. }) => {}
                other => panic!("{mode:?}: {other:?}"),
            }
            host.execute(AgentCommand::Write {
                agent,
                line: Bytes::from_static(INITIALIZE),
            });
            let deadline = start + Duration::from_secs(10);
            'ready: loop {
                assert!(signal.wait(deadline), "no answer in time");
                out.clear();
                host.drain(&mut out, usize::MAX);
                for report in &out {
                    if matches!(report, AgentReport::Line { agent: id, .. } if *id == agent) {
                        break 'ready;
                    }
                }
            }
            times.push(start.elapsed());
            host.execute(AgentCommand::Stop { agent });
            while host.running() > 0 {
                if !signal.wait(Instant::now() + Duration::from_secs(10)) {
                    break;
                }
                out.clear();
                host.drain(&mut out, usize::MAX);
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "sandbox {:<8} spawn-to-ready median {:>7.3} ms  p90 {:>7.3} ms",
            mode.as_str(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.9).as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
