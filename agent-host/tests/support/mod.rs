//! Shared by the agent host tests: a counting wake hook, a config with small shell agents, and a
//! bounded report collector that drains only when woken (so a missed wake fails the test).

#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use diminuendo_agent_host::{AgentHost, AgentHostConfig, AgentReport, AgentSpec, WorkspacePolicy};
use diminuendo_core::{AgentCommand, AgentId, Wake};

/// Every test's bound on waiting for reports; generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct CountingWake {
    count: Mutex<usize>,
    woken: Condvar,
}

impl Wake for CountingWake {
    fn wake(&self) {
        *self.count.lock().unwrap() += 1;
        self.woken.notify_all();
    }
}

impl CountingWake {
    pub fn count(&self) -> usize {
        *self.count.lock().unwrap()
    }

    /// Waits until the count exceeds `seen`; false at the deadline.
    pub fn wait_past(&self, seen: usize, deadline: Instant) -> bool {
        let mut count = self.count.lock().unwrap();
        while *count <= seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self.woken.wait_timeout(count, left).unwrap().0;
        }
        true
    }
}

pub fn sh(script: &str) -> AgentSpec {
    AgentSpec {
        command: "sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: Vec::new(),
        cwd: WorkspacePolicy::PerSession,
        ..AgentSpec::default()
    }
}

pub struct Harness {
    pub host: AgentHost,
    pub wake: Arc<CountingWake>,
    pub data_dir: tempfile::TempDir,
    /// Wake count already acted on.
    seen: usize,
    pub drains: usize,
}

pub fn config(data_dir: &std::path::Path) -> AgentHostConfig {
    let mut config = AgentHostConfig::new(data_dir);
    config.stop_grace = Duration::from_millis(200);
    let agents = &mut config.agents;
    agents.insert(
        "echo".into(),
        sh(r#"while IFS= read -r l; do printf '%s\n' "$l"; done"#),
    );
    agents.insert("exit3".into(), sh("echo one; echo two; exit 3"));
    agents.insert("pwd".into(), sh("pwd"));
    agents.insert("forks".into(), sh("sleep 30 & echo started; exit 0"));
    agents.insert("unterminated".into(), sh(r"printf 'a\nb'"));
    agents.insert(
        "stubborn".into(),
        sh(r#"trap "" TERM; echo ready; while :; do sleep 1; done"#),
    );
    agents.insert("deaf".into(), sh("echo ready; exec sleep 30"));
    agents.insert(
        "long".into(),
        sh(r#"echo short; head -c 5000 /dev/zero | tr '\0' a; echo; echo after; exec sleep 30"#),
    );
    agents.insert(
        "chatty".into(),
        sh(r#"i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done"#),
    );
    agents.insert(
        "missing".into(),
        AgentSpec {
            command: "/nonexistent/binary".into(),
            ..AgentSpec::default()
        },
    );
    config
}

impl Harness {
    pub fn new(adjust: impl FnOnce(&mut AgentHostConfig)) -> Harness {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = config(data_dir.path());
        adjust(&mut config);
        let wake = Arc::new(CountingWake::default());
        let host = AgentHost::new(config, wake.clone());
        Harness {
            host,
            wake,
            data_dir,
            seen: 0,
            drains: 0,
        }
    }

    pub fn spawn(&mut self, agent: u64, session: &str, agent_type: &str) -> AgentReport {
        self.host
            .execute(AgentCommand::Spawn {
                agent: AgentId(agent),
                session_id: session.to_owned(),
                tenant_id: "tenant".to_owned(),
                agent_type: agent_type.to_owned(),
            })
            .expect("spawn always answers")
    }

    /// Drains (only after a wake, `budget` at a time) until `done` holds for the reports so far;
    /// panics at the deadline.
    pub fn collect_until(
        &mut self,
        budget: usize,
        mut done: impl FnMut(&[AgentReport]) -> bool,
    ) -> Vec<AgentReport> {
        let deadline = Instant::now() + PATIENCE;
        let mut reports = Vec::new();
        while !done(&reports) {
            assert!(
                self.wake.wait_past(self.seen, deadline),
                "no wake-up in time; reports so far: {reports:?}"
            );
            self.seen = self.wake.count();
            let before = reports.len();
            let taken = self.host.drain(&mut reports, budget);
            self.drains += 1;
            assert_eq!(taken, reports.len() - before);
            assert!(
                taken <= budget,
                "drain took {taken} over the budget {budget}"
            );
        }
        reports
    }

    /// Collects until `agent` has exited.
    pub fn until_exit(&mut self, agent: u64) -> Vec<AgentReport> {
        self.collect_until(usize::MAX, |reports| exited(reports, agent).is_some())
    }
}

pub fn exited(reports: &[AgentReport], agent: u64) -> Option<Option<i32>> {
    reports.iter().find_map(|report| match report {
        AgentReport::Exited { agent: id, status } if *id == AgentId(agent) => Some(*status),
        _ => None,
    })
}

pub fn lines(reports: &[AgentReport], agent: u64) -> Vec<String> {
    reports
        .iter()
        .filter_map(|report| match report {
            AgentReport::Line { agent: id, line } if *id == AgentId(agent) => {
                Some(String::from_utf8_lossy(line).into_owned())
            }
            _ => None,
        })
        .collect()
}

/// True when `pid` is no child of this process any more: it has been reaped (a pid reused since
/// by someone else's process is still no child of ours).
pub fn reaped(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    waitpid(pid, Some(WaitPidFlag::WNOHANG)) == Err(Errno::ECHILD)
}
