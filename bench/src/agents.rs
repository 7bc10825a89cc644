//! `agents`: many active sessions, each with its own echo agent process: the gateway's threads
//! and resident memory per active agent, and the agents' spawn-to-ready time.

use std::io;
use std::time::{Duration, Instant};

use crate::report::{Report, Summary};
use crate::sequential::IO_TIMEOUT;
use crate::server::{self, Target};
use crate::wire::{self, BlockingWs};

/// Threads of a process (`/proc/<pid>/task`).
pub fn thread_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// Sessions of each agent type in the sandbox comparison.
pub const SANDBOX_COMPARISON: usize = 100;

/// The agent type of the comparison that runs without the sandbox.
const UNCONFINED: &str = "echo-unconfined";

/// A config file defining [`UNCONFINED`]: the bundled echo agent (`<binary> echo-agent`, as the
/// built-in `echo` type runs it) with `sandbox = "off"`. Removed when dropped.
pub fn unconfined_config(binary: &std::path::Path) -> io::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let binary = std::fs::canonicalize(binary)?;
    let mut file = tempfile::Builder::new()
        .prefix("diminuendo-bench-")
        .suffix(".toml")
        .tempfile()?;
    let command = toml_string(&binary.to_string_lossy());
    writeln!(
        file,
        "[agents.{UNCONFINED}]\ncommand = {command}\nargs = [\"echo-agent\"]\nsandbox = \"off\""
    )?;
    file.flush()?;
    Ok(file)
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Creates an echo-agent session on `ws` and returns its id.
pub fn create_session(ws: &mut BlockingWs, tag: &str) -> io::Result<String> {
    create_session_of(ws, tag, "echo")
}

/// Creates a session of `agent_type` on `ws` and returns its id.
fn create_session_of(ws: &mut BlockingWs, tag: &str, agent_type: &str) -> io::Result<String> {
    let id = format!("{tag}-c");
    let created = ws.request(
        &id,
        &format!(
            r#"{{"type":"create_session","requestId":"{id}","agentType":"{agent_type}","name":"bench"}}"#
        ),
    )?;
    created["session"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other("session_created without session.id"))
}

/// Activates an inactive session and measures its agent's spawn-to-ready time: from sending
/// `run_turn` until `turn_started`, which the gateway sends once the agent process was spawned
/// and has answered ACP `initialize` and `session/new` (events `activating`, `ready`, `running`
/// come before it). The session is joined for the turn and left afterwards; the turn (a
/// one-chunk echo) is awaited to its end, so the agent stays up and idle. Reusable for any
/// gateway flags (e.g. with and without a sandbox).
pub fn spawn_to_ready(ws: &mut BlockingWs, session: &str, tag: &str) -> io::Result<Duration> {
    ws.request(
        &format!("{tag}-j"),
        &format!(r#"{{"type":"join_session","requestId":"{tag}-j","sessionId":"{session}"}}"#),
    )?;
    let started = Instant::now();
    ws.send_text(
        format!(
            r#"{{"type":"run_turn","requestId":"{tag}-t","sessionId":"{session}","text":"stream 1 1"}}"#
        )
        .as_bytes(),
    )?;
    let reply_key = format!("\"requestId\":\"{tag}-t\"");
    let range = ws.wait_for(|payload| {
        wire::is_type(payload, b"turn_started")
            || (wire::is_type(payload, b"error")
                && wire::find(payload, reply_key.as_bytes()).is_some())
    })?;
    let elapsed = started.elapsed();
    if wire::is_type(ws.payload(range.clone()), b"error") {
        let text = String::from_utf8_lossy(ws.payload(range)).into_owned();
        return Err(io::Error::other(format!("run_turn refused: {text}")));
    }
    let end = ws.wait_for(|payload| {
        wire::is_type(payload, b"turn_complete") || wire::is_type(payload, b"turn_error")
    })?;
    if !wire::is_type(ws.payload(end), b"turn_complete") {
        return Err(io::Error::other(
            "the activation turn ended with turn_error",
        ));
    }
    ws.request(
        &format!("{tag}-l"),
        &format!(r#"{{"type":"leave_session","requestId":"{tag}-l","sessionId":"{session}"}}"#),
    )?;
    Ok(elapsed)
}

/// `agents`: `count` sessions activated one after the other on one connection (each keeps its
/// agent until idle deactivation, minutes later); then the gateway's threads, its resident
/// memory minus the memory before the first session, per active agent, and the spawn-to-ready
/// times. With `compare_sandbox` (the gateway has the [`UNCONFINED`] type), then
/// [`SANDBOX_COMPARISON`] more sessions of each of `echo` (Landlock, the default) and the same
/// agent with `sandbox = "off"`, alternating, for spawn-to-ready with and without the sandbox.
pub fn agents(
    target: &Target,
    binary: &str,
    count: usize,
    compare_sandbox: bool,
) -> io::Result<Report> {
    let pid = target
        .pid()
        .ok_or_else(|| io::Error::other("agents reads /proc of the gateway: give --binary"))?;
    let mut ws = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
    let threads_before = thread_count(pid).unwrap_or(0);
    let rss_before = server::rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    let mut threads_max = threads_before;
    for index in 0..count {
        let tag = format!("a{index}");
        let session = create_session(&mut ws, &tag)?;
        let elapsed = spawn_to_ready(&mut ws, &session, &tag).map_err(|error| {
            io::Error::other(format!("agent {} of {count}: {error}", index + 1))
        })?;
        samples.push(elapsed.as_nanos() as u64);
        if index % 50 == 49 {
            threads_max = threads_max.max(thread_count(pid).unwrap_or(0));
        }
    }
    let activation = started.elapsed();
    let agents_alive = server::children(pid).len();
    let threads_after = thread_count(pid).unwrap_or(0);
    threads_max = threads_max.max(threads_after);
    let rss_after = server::rss_kib(pid).unwrap_or(0);
    let per_agent_kib = rss_after.saturating_sub(rss_before) as f64 / count.max(1) as f64;
    let summary = Summary::of(&mut samples);

    let mut report = Report::new("agents", binary, &target.flags_text());
    report.note(&format!(
        "{count} echo sessions activated one at a time on one connection (create_session, \
         join, run_turn `stream 1 1` to turn_complete, leave); every agent stays up. \
         Spawn-to-ready: run_turn sent until turn_started (agent spawned, ACP initialize and \
         session/new answered)"
    ));
    report.figure("agents", "active agents", count, "");
    report.figure(
        "agentsAlive",
        "gateway child processes after",
        agents_alive,
        "",
    );
    report.figure(
        "threadsBefore",
        "gateway threads before",
        threads_before,
        "",
    );
    report.figure(
        "threadsAfter",
        "gateway threads with every agent up",
        threads_after,
        "",
    );
    report.figure("threadsMax", "gateway threads, most seen", threads_max, "");
    report.figure("rssBeforeKib", "gateway VmRSS before", rss_before, "KiB");
    report.figure(
        "rssAfterKib",
        "gateway VmRSS with every agent up",
        rss_after,
        "KiB",
    );
    report.figure(
        "rssPerAgentKib",
        "gateway VmRSS per active agent",
        crate::report::round3(per_agent_kib),
        "KiB",
    );
    report.latency("spawnToReady", "spawn-to-ready", &summary, false);
    if compare_sandbox {
        let (mut confined, mut unconfined) = (Vec::new(), Vec::new());
        for index in 0..SANDBOX_COMPARISON {
            // Alternating, so both see the same machine and the same number of live agents.
            for (agent_type, samples) in [("echo", &mut confined), (UNCONFINED, &mut unconfined)] {
                let tag = format!("s{index}-{agent_type}");
                let session = create_session_of(&mut ws, &tag, agent_type)?;
                let elapsed = spawn_to_ready(&mut ws, &session, &tag)?;
                samples.push(elapsed.as_nanos() as u64);
            }
        }
        let confined = Summary::of(&mut confined);
        let unconfined = Summary::of(&mut unconfined);
        report.latency(
            "spawnToReadySandboxed",
            "spawn-to-ready, Landlock sandbox (alternating)",
            &confined,
            false,
        );
        report.latency(
            "spawnToReadyUnconfined",
            "spawn-to-ready, sandbox = \"off\" (alternating)",
            &unconfined,
            false,
        );
        report.figure(
            "sandboxCostP50Us",
            "the sandbox's cost, p50 difference",
            crate::report::round3((confined.p50 - unconfined.p50) / 1e3),
            "µs",
        );
    }
    report.figure(
        "activationMs",
        "all activations, sequential",
        crate::report::round3(activation.as_secs_f64() * 1e3),
        "ms",
    );
    Ok(report)
}
