//! The agent host against real processes (small `sh` scripts). No sleeps: every wait is a bounded
//! wait for a wake-up or a report, and every test ends with its children reaped.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_agent_host::{AgentReport, WorkspacePolicy};
use diminuendo_core::{AgentCommand, AgentId};
use support::{exited, lines, reaped, sh, Harness};

fn write(harness: &mut Harness, agent: u64, line: &str) -> Option<AgentReport> {
    harness.host.execute(AgentCommand::Write {
        agent: AgentId(agent),
        line: Bytes::from(format!("{line}\n")),
    })
}

fn stop(harness: &mut Harness, agent: u64) {
    assert_eq!(
        harness.host.execute(AgentCommand::Stop {
            agent: AgentId(agent)
        }),
        None
    );
}

#[test]
fn spawn_creates_the_session_workspace_and_runs_the_agent_in_it() {
    let mut h = Harness::new(|_| {});
    let report = h.spawn(1, "session-1", "pwd");
    let expected = h.data_dir.path().join("sessions/session-1/workspace");
    assert_eq!(
        report,
        AgentReport::Spawned {
            agent: AgentId(1),
            workspace: expected.to_string_lossy().into_owned()
        }
    );
    assert!(expected.is_dir());
    let pid = h.host.pid(AgentId(1)).unwrap();
    let reports = h.until_exit(1);
    let printed = lines(&reports, 1);
    assert_eq!(printed.len(), 1);
    assert_eq!(
        std::fs::canonicalize(&printed[0]).unwrap(),
        std::fs::canonicalize(&expected).unwrap()
    );
    assert_eq!(exited(&reports, 1), Some(Some(0)));
    assert_eq!(h.host.running(), 0);
    assert!(reaped(pid));
}

#[test]
fn a_fixed_workspace_is_used_as_is_and_env_is_added() {
    let fixed = tempfile::tempdir().unwrap();
    let dir = fixed.path().to_path_buf();
    let mut h = Harness::new(|config| {
        let mut spec = sh(r#"pwd; printf '%s\n' "$GREETING""#);
        spec.cwd = WorkspacePolicy::Fixed(dir);
        spec.env = vec![("GREETING".into(), "hello agent".into())];
        config.agents.insert("fixed".into(), spec);
    });
    let report = h.spawn(1, "s", "fixed");
    assert!(matches!(report, AgentReport::Spawned { ref workspace, .. }
        if *workspace == fixed.path().to_string_lossy()));
    assert!(!h.data_dir.path().join("sessions").exists());
    let reports = h.until_exit(1);
    let printed = lines(&reports, 1);
    assert_eq!(
        std::fs::canonicalize(&printed[0]).unwrap(),
        std::fs::canonicalize(fixed.path()).unwrap()
    );
    assert_eq!(printed[1], "hello agent");
}

#[test]
fn written_lines_come_back_in_order() {
    let mut h = Harness::new(|_| {});
    assert!(matches!(
        h.spawn(7, "s", "echo"),
        AgentReport::Spawned { .. }
    ));
    let sent: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i}}}"#))
        .collect();
    for line in &sent {
        assert_eq!(write(&mut h, 7, line), None);
    }
    let reports = h.collect_until(usize::MAX, |reports| lines(reports, 7).len() == sent.len());
    assert_eq!(lines(&reports, 7), sent);
    let pid = h.host.pid(AgentId(7)).unwrap();
    stop(&mut h, 7);
    let reports = h.until_exit(7);
    // After the stop, stdin is closed: the echo loop ends (0) or SIGTERM ends it (None).
    assert!(matches!(exited(&reports, 7), Some(Some(0) | None)));
    assert!(reaped(pid));
    // The id is forgotten: later commands for it are ignored.
    assert_eq!(write(&mut h, 7, "late"), None);
    stop(&mut h, 7);
    assert_eq!(h.host.running(), 0);
}

#[test]
fn the_exit_code_is_reported_after_every_line() {
    let mut h = Harness::new(|_| {});
    h.spawn(3, "s", "exit3");
    h.spawn(4, "s", "unterminated");
    let reports = h.collect_until(usize::MAX, |reports| {
        exited(reports, 3).is_some() && exited(reports, 4).is_some()
    });
    assert_eq!(lines(&reports, 3), ["one", "two"]);
    assert_eq!(exited(&reports, 3), Some(Some(3)));
    // A last line without '\n' is still delivered.
    assert_eq!(lines(&reports, 4), ["a", "b"]);
    for agent in [3, 4] {
        let last = reports
            .iter()
            .rposition(
                |r| matches!(r, AgentReport::Line { agent: id, .. } if *id == AgentId(agent)),
            )
            .unwrap();
        let exit = reports
            .iter()
            .position(
                |r| matches!(r, AgentReport::Exited { agent: id, .. } if *id == AgentId(agent)),
            )
            .unwrap();
        assert!(last < exit);
        // Exactly one Exited per agent.
        assert_eq!(
            reports
                .iter()
                .filter(
                    |r| matches!(r, AgentReport::Exited { agent: id, .. } if *id == AgentId(agent))
                )
                .count(),
            1
        );
    }
}

#[test]
fn the_agents_process_group_does_not_outlive_it() {
    let mut h = Harness::new(|_| {});
    h.spawn(1, "s", "forks");
    let pid = h.host.pid(AgentId(1)).unwrap();
    // The background sleep holds the agent's stdout open: without the group kill at exit the
    // end of file (and so Exited) would only come after 30 s, past the test's patience.
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["started"]);
    assert_eq!(exited(&reports, 1), Some(Some(0)));
    assert!(reaped(pid));
}

fn spawn_failure(report: AgentReport) -> String {
    match report {
        AgentReport::SpawnFailed { reason, .. } => reason,
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
}

#[test]
fn spawn_failures_are_reported_synchronously() {
    let mut h = Harness::new(|config| config.max_processes = 1);
    assert_eq!(spawn_failure(h.spawn(1, "s", "nope")), "unknown agent type");
    assert_eq!(
        spawn_failure(h.spawn(1, "../escape", "echo")),
        "invalid session id"
    );
    assert!(!h.data_dir.path().join("escape").exists());
    let reason = spawn_failure(h.spawn(1, "s", "missing"));
    assert!(reason.starts_with("cannot start the agent"), "{reason}");
    assert_eq!(h.host.running(), 0);

    assert!(matches!(
        h.spawn(2, "s", "echo"),
        AgentReport::Spawned { .. }
    ));
    assert_eq!(
        spawn_failure(h.spawn(2, "s", "echo")),
        "agent id already in use"
    );
    assert_eq!(
        spawn_failure(h.spawn(3, "s", "echo")),
        "too many agent processes"
    );
    assert_eq!(h.host.running(), 1);
    let pid = h.host.pid(AgentId(2)).unwrap();
    stop(&mut h, 2);
    h.until_exit(2);
    assert!(reaped(pid));
    // A failed spawn produces no later report: only agent 2's Exited ever arrived, and the
    // slot is free again.
    assert!(matches!(
        h.spawn(3, "s", "echo"),
        AgentReport::Spawned { .. }
    ));
    assert!(h.host.shutdown(Duration::from_secs(5)));
}

#[test]
fn an_agent_ignoring_sigterm_is_killed_after_the_grace() {
    let mut h = Harness::new(|config| config.stop_grace = Duration::from_millis(200));
    h.spawn(1, "s", "stubborn");
    // Wait until the trap is installed.
    h.collect_until(usize::MAX, |reports| lines(reports, 1) == ["ready"]);
    let pid = h.host.pid(AgentId(1)).unwrap();
    let stopped_at = Instant::now();
    stop(&mut h, 1);
    stop(&mut h, 1); // a second stop is harmless
    let reports = h.until_exit(1);
    assert_eq!(exited(&reports, 1), Some(None), "killed by a signal");
    // Only SIGKILL can have ended it, and that comes after the grace.
    assert!(stopped_at.elapsed() >= Duration::from_millis(200));
    assert!(reaped(pid));
}

#[test]
fn a_line_over_the_limit_fails_and_stops_the_agent() {
    let mut h = Harness::new(|config| config.max_line_bytes = 1024);
    h.spawn(1, "s", "long");
    let pid = h.host.pid(AgentId(1)).unwrap();
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["short"], "nothing after the long line");
    let failed = reports
        .iter()
        .position(|r| matches!(r, AgentReport::Failed { reason, .. } if reason.contains("1024")))
        .expect("a Failed report");
    let exit = reports
        .iter()
        .position(|r| matches!(r, AgentReport::Exited { .. }))
        .unwrap();
    assert!(failed < exit);
    // The agent was still sleeping: the stop's SIGTERM ended it.
    assert_eq!(exited(&reports, 1), Some(None));
    assert!(reaped(pid));
}

#[test]
fn an_agent_not_reading_stdin_fails_when_its_backlog_overflows() {
    let mut h = Harness::new(|config| config.max_pending_write_bytes = 4096);
    h.spawn(1, "s", "deaf");
    h.collect_until(usize::MAX, |reports| lines(reports, 1) == ["ready"]);
    let pid = h.host.pid(AgentId(1)).unwrap();
    let line = Bytes::from(
        vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>(),
    );
    // The pipe holds at most 1 MiB, the queue 4 KiB: well before 64 MiB the queue overflows.
    let mut failed = None;
    for _ in 0..64 * 1024 {
        let report = h.host.execute(AgentCommand::Write {
            agent: AgentId(1),
            line: line.clone(),
        });
        if report.is_some() {
            failed = report;
            break;
        }
    }
    assert_eq!(
        failed,
        Some(AgentReport::Failed {
            agent: AgentId(1),
            reason: "stdin backlog over its limit".into()
        })
    );
    // Later writes are dropped quietly while the stop runs.
    assert_eq!(
        h.host.execute(AgentCommand::Write {
            agent: AgentId(1),
            line
        }),
        None
    );
    let reports = h.until_exit(1);
    assert_eq!(exited(&reports, 1), Some(None));
    assert!(reaped(pid));
}

#[test]
fn drain_respects_the_budget_and_rewakes_for_the_rest() {
    let mut h = Harness::new(|_| {});
    h.spawn(1, "s", "chatty");
    // collect_until drains only after a wake: if the host did not re-wake after a drain that hit
    // the budget, this would stall and fail.
    let reports = h.collect_until(3, |reports| exited(reports, 1).is_some());
    assert_eq!(lines(&reports, 1).len(), 2000);
    assert!(h.drains >= 2001 / 3);
    // Budget 0 takes nothing.
    let mut out = Vec::new();
    assert_eq!(h.host.drain(&mut out, 0), 0);
}

#[test]
fn a_full_report_channel_slows_agents_down_without_losing_lines() {
    // Two reports fit: the readers block on the channel (and the agents on their pipes) most of
    // the time, and every line still arrives, in order.
    let mut h = Harness::new(|config| config.report_capacity = 2);
    h.spawn(1, "s", "chatty");
    h.spawn(2, "s", "chatty");
    let reports = h.collect_until(5, |reports| {
        exited(reports, 1).is_some() && exited(reports, 2).is_some()
    });
    let expected: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
    assert_eq!(lines(&reports, 1), expected);
    assert_eq!(lines(&reports, 2), expected);
    assert_eq!(exited(&reports, 1), Some(Some(0)));
}

#[test]
fn wakes_are_coalesced() {
    let mut h = Harness::new(|_| {});
    h.spawn(1, "s", "chatty");
    h.spawn(2, "s", "chatty");
    let reports = h.collect_until(usize::MAX, |reports| {
        exited(reports, 1).is_some() && exited(reports, 2).is_some()
    });
    assert_eq!(reports.len(), 4002);
    // A wake only happens when the "pending" flag goes from clear to set, and only a drain clears
    // it (no drain here ever hit its budget, so the host never re-woke itself).
    let wakes = h.wake.count();
    assert!(wakes >= 1);
    assert!(
        wakes <= h.drains + 1,
        "{wakes} wakes for {} drains",
        h.drains
    );
}

#[test]
fn unknown_agents_are_ignored() {
    let mut h = Harness::new(|_| {});
    assert_eq!(write(&mut h, 99, "hello"), None);
    stop(&mut h, 99);
    assert_eq!(h.host.running(), 0);
    let mut out = Vec::new();
    assert_eq!(h.host.drain(&mut out, 10), 0);
}

#[test]
fn shutdown_stops_and_reaps_every_agent() {
    let mut h = Harness::new(|config| config.stop_grace = Duration::from_secs(30));
    h.spawn(1, "a", "echo");
    h.spawn(2, "b", "stubborn");
    h.spawn(3, "c", "deaf");
    h.spawn(4, "d", "chatty"); // never drained: its reader blocks on the full channel at worst
    h.collect_until(usize::MAX, |reports| {
        lines(reports, 2) == ["ready"] && lines(reports, 3) == ["ready"]
    });
    let pids: Vec<u32> = (1..=4)
        .filter_map(|agent| h.host.pid(AgentId(agent)))
        .collect();
    assert_eq!(h.host.running(), pids.len());
    // The stubborn agent ignores SIGTERM and the configured grace is 30 s: the shutdown's own
    // bound (half of 4 s) decides when SIGKILL comes.
    let started = Instant::now();
    assert!(h.host.shutdown(Duration::from_secs(4)));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(h.host.running(), 0);
    for pid in pids {
        assert!(reaped(pid), "pid {pid} not reaped");
    }
}

#[test]
fn dropping_the_host_stops_and_reaps_its_agents() {
    let mut h = Harness::new(|_| {});
    h.spawn(1, "a", "echo");
    h.spawn(2, "b", "deaf");
    h.collect_until(usize::MAX, |reports| lines(reports, 2) == ["ready"]);
    let pids = [
        h.host.pid(AgentId(1)).unwrap(),
        h.host.pid(AgentId(2)).unwrap(),
    ];
    drop(h);
    for pid in pids {
        assert!(reaped(pid), "pid {pid} not reaped");
    }
}

#[test]
fn many_agents_share_a_full_report_channel_without_losing_lines() {
    // 50 agents, room for two batches: the poller holds at most one batch per agent and stops
    // reading the others' stdout until the host makes room; every line still arrives in order.
    let mut h = Harness::new(|config| {
        config.report_capacity = 2;
        config.max_processes = 50;
    });
    for agent in 1..=50 {
        assert!(matches!(
            h.spawn(agent, &format!("s{agent}"), "chatty"),
            AgentReport::Spawned { .. }
        ));
    }
    let reports = h.collect_until(7, |reports| {
        (1..=50).all(|agent| exited(reports, agent).is_some())
    });
    let expected: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
    for agent in 1..=50 {
        assert_eq!(lines(&reports, agent), expected, "agent {agent}");
        assert_eq!(exited(&reports, agent), Some(Some(0)));
    }
    assert_eq!(h.host.running(), 0);
}

/// The kernel function a process sleeps in (`/proc/PID/wchan`).
fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// True once the process has exited (a zombie, or gone).
fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? == "Z"))
        .unwrap_or(true)
}

/// Bytes a process has written (`wchar` of `/proc/PID/io`).
fn bytes_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn output_nobody_drains_blocks_the_agents_not_the_gateways_memory() {
    // 20 agents each write 16 MiB of lines and the host never drains: each must end up blocked
    // writing its stdout for good, having written no more than its share of the queue, one
    // held batch, one read and its pipe. (Without backpressure they would finish and exit.)
    const AGENTS: u64 = 20;
    const OUTPUT: usize = 16 * 1024 * 1024;
    // The agents read their output from outside the data directory (the sandbox never grants a
    // path inside it), through `read_paths`.
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("output.txt");
    let line = "a line of output that some agent wrote\n";
    std::fs::write(&file, line.repeat(OUTPUT / line.len())).unwrap();
    let mut h = Harness::new(|config| {
        config.report_capacity = 4;
        config.max_processes = AGENTS as usize;
        let mut flood = sh(&format!("exec cat '{}'", file.display()));
        flood.read_paths.push(file.clone());
        config.agents.insert("flood".into(), flood);
    });
    let pids: Vec<u32> = (1..=AGENTS)
        .map(|agent| {
            h.spawn(agent, &format!("s{agent}"), "flood");
            h.host.pid(AgentId(agent)).unwrap()
        })
        .collect();
    // Wait until every agent is blocked on its stdout and nothing has been written for a while
    // (with the queue full, nothing more can be).
    let deadline = Instant::now() + support::PATIENCE;
    let (mut total, mut since) = (u64::MAX, Instant::now());
    loop {
        for &pid in &pids {
            assert!(!has_exited(pid), "agent {pid} wrote all its output");
        }
        let now_total: u64 = pids.iter().map(|&pid| bytes_written(pid)).sum();
        let blocked = pids.iter().all(|&pid| wchan(pid).ends_with("pipe_write"));
        if now_total != total || !blocked {
            (total, since) = (now_total, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(300) {
            break;
        }
        assert!(Instant::now() < deadline, "agents never settled");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The queue (4 batches of at most one 64 KiB read) is shared; each agent adds at most one
    // held batch and its pipe (at most 1 MiB).
    let bound = (4 + 1) * 64 * 1024 + 1024 * 1024;
    for &pid in &pids {
        let written = bytes_written(pid);
        assert!(written > 0);
        assert!(written <= bound, "agent {pid} wrote {written} bytes");
    }
    assert!(h.host.shutdown(Duration::from_secs(5)));
    for pid in pids {
        assert!(reaped(pid), "pid {pid} not reaped");
    }
}

/// The workspace quota is checked off the caller's thread: a prompt to an agent whose workspace
/// is over its quota is accepted by `execute` (which does not scan) and held back from the agent;
/// the verdict, `Failed`, comes through `drain`. Within the quota the prompt, and the line queued
/// after it, reach the agent once scanned, in order.
#[test]
fn the_workspace_quota_is_scanned_off_the_callers_thread_and_holds_the_prompt() {
    let mut h = Harness::new(|config| {
        if let Some(echo) = config.agents.get_mut("echo") {
            echo.limits.workspace_bytes = Some(64 * 1024);
        }
    });
    let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{}}"#;

    assert!(matches!(
        h.spawn(1, "over", "echo"),
        AgentReport::Spawned { .. }
    ));
    let workspace = h.data_dir.path().join("sessions/over/workspace");
    std::fs::write(workspace.join("big"), vec![1u8; 128 * 1024]).unwrap();
    assert_eq!(write(&mut h, 1, prompt), None, "execute does not scan");
    assert_eq!(write(&mut h, 1, "after"), None);
    let reports = h.until_exit(1);
    assert!(
        lines(&reports, 1).is_empty(),
        "the prompt never reached the agent: {reports:?}"
    );
    let failed = reports
        .iter()
        .position(|r| {
            matches!(r, AgentReport::Failed { agent, reason }
                if *agent == AgentId(1) && reason.contains("over its quota"))
        })
        .unwrap_or_else(|| panic!("no Failed: {reports:?}"));
    let exit = reports
        .iter()
        .position(|r| matches!(r, AgentReport::Exited { .. }))
        .unwrap();
    assert!(failed < exit);

    assert!(matches!(
        h.spawn(2, "within", "echo"),
        AgentReport::Spawned { .. }
    ));
    assert_eq!(write(&mut h, 2, prompt), None);
    assert_eq!(write(&mut h, 2, "after"), None);
    let reports = h.collect_until(usize::MAX, |reports| lines(reports, 2).len() == 2);
    assert_eq!(lines(&reports, 2), [prompt, "after"]);
    assert!(!reports
        .iter()
        .any(|r| matches!(r, AgentReport::Failed { .. })));
    stop(&mut h, 2);
    h.until_exit(2);
}
