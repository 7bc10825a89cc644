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

/// Creates an echo-agent session on `ws` and returns its id.
pub fn create_session(ws: &mut BlockingWs, tag: &str) -> io::Result<String> {
    let id = format!("{tag}-c");
    let created = ws.request(
        &id,
        &format!(
            r#"{{"type":"create_session","requestId":"{id}","agentType":"echo","name":"bench"}}"#
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
/// times.
pub fn agents(target: &Target, binary: &str, count: usize) -> io::Result<Report> {
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
    report.figure(
        "activationMs",
        "all activations, sequential",
        crate::report::round3(activation.as_secs_f64() * 1e3),
        "ms",
    );
    Ok(report)
}
