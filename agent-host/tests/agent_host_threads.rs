//! One poller thread drives every agent and one scanner thread checks their workspace quotas:
//! the host's thread count does not grow with its agents.
//! In its own test binary (one test) so that no other test's threads are counted.

mod support;

use bytes::Bytes;
use diminuendo_agent_host::AgentReport;
use diminuendo_core::{AgentCommand, AgentId};
use support::{exited, lines, reaped, Harness};

/// A prompt (each one waits for a scan of the agent's workspace, default quota 1 GiB).
fn prompt(agent: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{agent},"method":"session/prompt","params":{{}}}}"#)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_hundred_agents_cost_one_thread() {
    const AGENTS: u64 = 100;
    let mut h = Harness::new(|config| config.max_processes = AGENTS as usize);
    let before = threads();
    for agent in 1..=AGENTS {
        assert!(matches!(
            h.spawn(agent, &format!("s{agent}"), "echo"),
            AgentReport::Spawned { .. }
        ));
        assert_eq!(
            h.host.execute(AgentCommand::Write {
                agent: AgentId(agent),
                line: Bytes::from(format!("{}\n", prompt(agent))),
            }),
            None
        );
    }
    // Every agent is alive and has answered.
    let reports = h.collect_until(usize::MAX, |reports| {
        (1..=AGENTS).all(|agent| lines(reports, agent).len() == 1)
    });
    for agent in 1..=AGENTS {
        assert_eq!(lines(&reports, agent), [prompt(agent)]);
    }
    assert_eq!(h.host.running(), AGENTS as usize);
    assert_eq!(
        threads(),
        before + 2,
        "the poller and the quota scanner are the only new threads"
    );

    let pids: Vec<u32> = (1..=AGENTS)
        .map(|agent| h.host.pid(AgentId(agent)).unwrap())
        .collect();
    for agent in 1..=AGENTS {
        h.host.execute(AgentCommand::Stop {
            agent: AgentId(agent),
        });
    }
    let reports = h.collect_until(usize::MAX, |reports| {
        (1..=AGENTS).all(|agent| exited(reports, agent).is_some())
    });
    for agent in 1..=AGENTS {
        let count = reports
            .iter()
            .filter(|r| matches!(r, AgentReport::Exited { agent: id, .. } if *id == AgentId(agent)))
            .count();
        assert_eq!(count, 1, "agent {agent}");
    }
    assert_eq!(h.host.running(), 0);
    for pid in pids {
        assert!(reaped(pid), "pid {pid} not reaped");
    }
    assert_eq!(threads(), before + 2);
    drop(h);
    assert_eq!(
        threads(),
        before,
        "dropping the host ends the poller and the scanner"
    );
}
