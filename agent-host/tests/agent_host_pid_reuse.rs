//! A signal never reaches a recycled pid. An agent that ignores SIGTERM is stopped (so its
//! SIGKILL is scheduled for after the grace), then exits on its own; once it has been reaped,
//! its pid is handed to an unrelated process leading its own process group (through
//! `/proc/sys/kernel/ns_last_pid`, which needs root). Neither the scheduled SIGKILL, nor a
//! later stop, nor the shutdown may reach that process. In its own test binary because it
//! steers the pid allocator.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diminuendo_core::{AgentCommand, AgentId};
use support::{exited, lines, reaped, sh, Harness};

/// Starts `sleep` with exactly `pid` (in its own process group), or None when the pid
/// allocator cannot be steered here.
fn process_with_pid(pid: u32) -> Option<Child> {
    for _ in 0..50 {
        // Another process may take the pid first: retry.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        if child.id() == pid {
            return Some(child);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    None
}

#[test]
fn no_signal_reaches_the_process_that_reuses_a_reaped_agents_pid() {
    let grace = Duration::from_millis(500);
    let mut h = Harness::new(|config| {
        config.stop_grace = grace;
        config.agents.insert(
            "polite".into(),
            // Ignores SIGTERM, and leaves when its stdin closes.
            sh(r#"trap "" TERM; echo ready; read line; echo bye"#),
        );
    });
    h.spawn(1, "s", "polite");
    h.collect_until(usize::MAX, |reports| lines(reports, 1) == ["ready"]);
    let pid = h.host.pid(AgentId(1)).unwrap();
    let stopped = Instant::now();
    h.host.execute(AgentCommand::Stop { agent: AgentId(1) });
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["bye"]);
    assert_eq!(exited(&reports, 1), Some(Some(0)));
    assert!(reaped(pid));
    assert!(
        stopped.elapsed() < grace,
        "the agent should have left before its SIGKILL was due"
    );

    let Some(mut victim) = process_with_pid(pid) else {
        panic!("cannot steer the pid allocator (/proc/sys/kernel/ns_last_pid needs root)");
    };
    // Past the agent's SIGKILL deadline, then a stop and a shutdown for the forgotten agent.
    while stopped.elapsed() < grace * 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    h.host.execute(AgentCommand::Stop { agent: AgentId(1) });
    assert!(h.host.shutdown(Duration::from_secs(2)));
    drop(h);
    let alive = victim.try_wait().unwrap().is_none();
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        alive,
        "the process that reused the agent's pid was signalled"
    );
}
