//! The agent process host: runs the agent processes the core asks for (`AgentCommand`) and hands
//! their output back (`AgentReport`). Runtime-agnostic: one std thread of its own (the poller)
//! drives every agent, and it tells the adapter's event loop that reports are waiting through
//! the core's [`Wake`] hook, so the tokio, smol and mio adapters share it unchanged.
//!
//! # Contract
//!
//! * [`AgentHost::execute`] never blocks on an agent. `Spawn` runs synchronously (fork/exec is
//!   fast) and answers `Spawned` or `SpawnFailed` right away; `Write` queues the line for the
//!   agent's stdin (a full backlog fails the agent, answered synchronously as `Failed`; a prompt,
//!   and the lines after it, wait on the host for the scan of the agent's workspace quota,
//!   whose verdict comes through `drain`: see [`quota`]); `ReadTextFile`/`WriteTextFile` go to
//!   the file thread and are answered through `drain` ([`files`]); `Stop`
//!   hands the stop sequence to the poller. Commands for an unknown agent (never spawned, or
//!   already reported `Exited`) are ignored.
//! * Everything else arrives through [`AgentHost::drain`]: `Line`s in the order the agent wrote
//!   them, `Failed` when the host gives up on an agent, and `Exited` exactly once per spawned
//!   agent, after all its lines, once the process has been reaped and its stdout and stderr
//!   have reached end of file. After `Exited` the agent id is forgotten.
//! * `Line` carries the bytes between two `'\n'`s, without the `'\n'` (a `'\r'` before it is
//!   kept, blank lines are delivered): the core decides what is valid JSON-RPC. A last line the
//!   agent did not terminate is delivered at end of file. A line longer than
//!   `max_line_bytes` is an agent error: `Failed`, then the agent is stopped (its remaining
//!   output is discarded: its stdout is closed), then `Exited`.
//!
//! # One poller thread
//!
//! The host starts one thread, the poller, with its first agent, one more, the quota
//! scanner ([`quota`]), with the first workspace scan, and one for the client file system
//! ([`files`]) with the first `fs/*` request, and never another: a gateway with a thousand
//! agents has the same threads as one with a single agent. Every agent's stdin,
//! stdout and stderr pipe (the gateway's ends set non-blocking) and a pidfd of the process
//! (`pidfd_open`, Linux 5.3; without it the agent does not start) are registered on one
//! edge-triggered `epoll` instance (mio). The host talks to the poller through a command inbox
//! and a `mio::Waker` (coalesced like the adapter's wake). Per agent the poller keeps a few
//! hundred bytes: flags, the start of a line whose `'\n'` has not come yet, the stdin lines not
//! yet written, at most one held batch. It reads into one 64 KiB buffer shared by all agents.
//!
//! * **stdout** — each read (at most 64 KiB) is split into lines (slices of one copy of what was
//!   read), and every line it completes goes to the host as one batch. At most 4 reads per agent
//!   per turn of the loop, so a fast agent does not starve the others.
//! * **stderr** — lines go to `tracing` (target `agent`, fields `agent` and `session`), at most
//!   `stderr_lines_per_second` per second, then one "N lines suppressed" note per second
//!   window. Lines are cut at 4 KiB for the log.
//! * **stdin** — queued lines are written with `writev` as far as the pipe takes them; the rest
//!   waits for the pipe to become writable. A write error (the agent closed stdin or died)
//!   closes stdin; later lines are dropped.
//! * **exit** — when the pidfd becomes readable the process has exited but is not reaped (a
//!   zombie keeps its pid and process-group id reserved): the poller sends SIGKILL to what is
//!   left of the agent's process group, then reaps the process, closes stdin and, once stdout
//!   and stderr are at end of file, sends `Exited`.
//! * **stop** — close stdin, SIGTERM to the process group, SIGKILL when the grace has passed
//!   (a deadline in the poller, no thread).
//!
//! Only the poller signals and reaps, and it never signals an agent it has reaped: a signal can
//! never reach a recycled pid.
//!
//! # Backpressure and wake-ups
//!
//! All agents share one bounded report queue (`report_capacity` batches, default 1024). When it
//! is full the poller keeps the agent's batch (later reports of that agent join it, in order)
//! and stops reading that agent's stdout; the agent then blocks writing to its stdout pipe: a
//! fast agent is slowed down instead of growing the gateway's memory (bounded by the queue plus
//! one held batch of at most 64 KiB per agent). When a drain has emptied half the queue the
//! host tells the poller, which hands over the held batches and reads again. Stdin has a byte
//! budget per agent (`max_pending_write_bytes`, default 16 MiB, counting bytes not yet in the
//! pipe); an agent that does not read its stdin fast enough is failed and stopped rather than
//! buffered without bound.
//!
//! The poller calls `wake.wake()` only when it flips the shared "wake pending" flag from false
//! to true; [`AgentHost::drain`] clears the flag before it looks at the queue. So a burst of
//! reports costs one wake, and a report sent during or after a drain is never left without a
//! wake. `drain` takes at most `budget` reports so one chatty agent cannot starve the rest of
//! the loop turn; when it stops because of the budget it re-arms the wake itself, so the adapter
//! only ever drains "once per wake" and is woken again if anything is left.
//!
//! # Shutdown
//!
//! [`AgentHost::shutdown`] stops every agent, escalates to SIGKILL at half its timeout, and
//! waits (draining and discarding reports) until every agent has exited or the timeout passes.
//! `Drop` runs `shutdown` with a short timeout (250 ms; call `shutdown` first for a longer
//! grace), then ends the poller: at once when no agent is left, otherwise the poller kills
//! the rest, keeps reaping them without reporting, and ends when the last one is gone.
//!
//! # Processes
//!
//! Each agent runs in its own process group (`process_group(0)`), so signals reach the tools it
//! started too, and when the agent exits the rest of its group is killed (the agent's
//! subprocesses do not outlive it, and they cannot keep its pipes open). A tool that leaves the
//! group (`setsid`) escapes this. The environment is built from nothing ([`environment`]), and the
//! child confines itself before `exec` ([`sandbox`]: Landlock, no capabilities, limits, the network
//! filter, a parent-death signal); [`launch`] builds the `Command`, [`quota`] checks the workspace
//! size before each prompt and every few seconds of output, on a thread of its own.
//! The working directory is `DATA_DIR/sessions/{sessionId}/workspace`, or
//! `WORKSPACE_ROOT/{sessionId}/workspace` with `AgentHostConfig::workspace_root` (created if
//! missing; the session id must pass `storage::is_valid_identifier`), or a fixed directory.
//!
//! `Exited { status }` carries the exit code, or `None` when the process was ended by a signal.
//!
//! The host reaps its children itself (by pid): the adapter must not set SIGCHLD to `SIG_IGN` or
//! reap with `waitpid(-1)`, or the host could signal a pid that was already reused.

mod cgroup;
pub mod environment;
pub mod files;
pub mod launch;
mod poller;
mod process;
pub mod quota;
mod reports;
pub mod sandbox;
mod stderr;

pub use launch::{check_spec, substitute, Placeholders};
pub use sandbox::{Limits, NetworkPolicy, SandboxMode};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_core::{AgentCommand, AgentId, FileError, Wake};

use poller::{Command, Inbox, NewAgent, StdinBudget};
use process::Process;
use reports::Reports;

/// Where an agent process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WorkspacePolicy {
    /// `DATA_DIR/sessions/{sessionId}/workspace` (or under `AgentHostConfig::workspace_root`),
    /// created if missing.
    #[default]
    PerSession,
    /// The same directory for every session (must exist).
    Fixed(PathBuf),
}

/// How to start one agent type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSpec {
    /// The program; `{workspace}`, `{session_id}` and `{tenant_id}` are substituted in it and
    /// in `args` (see [`substitute`]).
    pub command: String,
    pub args: Vec<String>,
    /// Set in the agent's clean environment (see [`environment`]).
    pub env: Vec<(String, String)>,
    pub cwd: WorkspacePolicy,
    /// Gateway variables passed on (never `DIMINUENDO_*`).
    pub inherit_env: Vec<String>,
    pub sandbox: SandboxMode,
    pub network: NetworkPolicy,
    /// Read and execute, besides the system and the agent's install directory.
    pub read_paths: Vec<PathBuf>,
    /// Read and write, besides the workspace (never in the data directory).
    pub write_paths: Vec<PathBuf>,
    pub limits: Limits,
}

/// The agent host's settings.
#[derive(Debug, Clone)]
pub struct AgentHostConfig {
    /// Agent types by name (`AgentCommand::Spawn::agent_type`).
    pub agents: BTreeMap<String, AgentSpec>,
    pub data_dir: PathBuf,
    /// Where per-session workspaces are: `<root>/<sessionId>/workspace`. `None` (the default):
    /// `DATA_DIR/sessions/<sessionId>/workspace`. Cluster mode points every instance at the same
    /// shared directory (`--workspace-root`), so a session's agent finds its files on any of them.
    pub workspace_root: Option<PathBuf>,
    /// Agents alive at once (counted until their `Exited` is drained). Default 64.
    pub max_processes: usize,
    /// Longest stdout line accepted, without its `'\n'`. Default 8 MiB.
    pub max_line_bytes: usize,
    /// Time between SIGTERM and SIGKILL. Default 5 s.
    pub stop_grace: Duration,
    /// Stderr lines logged per agent per second. Default 20.
    pub stderr_lines_per_second: u32,
    /// Bytes queued for one agent's stdin before the agent is failed. Default 16 MiB.
    pub max_pending_write_bytes: usize,
    /// Batches of reports the shared queue holds before the poller holds them back (and stops
    /// reading the agents' stdout). Default 1024.
    pub report_capacity: usize,
    /// The largest file an agent reads or writes through `fs/*` (see [`files`]). Default 4 MiB.
    pub max_file_bytes: u64,
}

impl AgentHostConfig {
    /// The defaults, with no agent types.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AgentHostConfig {
            agents: BTreeMap::new(),
            data_dir: data_dir.into(),
            workspace_root: None,
            max_processes: 64,
            max_line_bytes: 8 * 1024 * 1024,
            stop_grace: Duration::from_secs(5),
            stderr_lines_per_second: 20,
            max_pending_write_bytes: 16 * 1024 * 1024,
            report_capacity: 1024,
            max_file_bytes: files::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// What the host tells the core about its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReport {
    /// The process started in `workspace`.
    Spawned { agent: AgentId, workspace: String },
    /// The process could not be started; no other report follows for this id.
    SpawnFailed { agent: AgentId, reason: String },
    /// One stdout line, without its `'\n'`.
    Line { agent: AgentId, line: Bytes },
    /// The host gave up on the agent (line too long, stdin backlog over its limit) and is
    /// stopping it; `Exited` follows.
    Failed { agent: AgentId, reason: String },
    /// The answer to `AgentCommand::ReadTextFile`: the text, or why not (see [`files`]).
    FileRead {
        agent: AgentId,
        request: u64,
        result: Result<String, FileError>,
    },
    /// The answer to `AgentCommand::WriteTextFile`: the path written relative to the
    /// workspace, or why not.
    FileWritten {
        agent: AgentId,
        request: u64,
        result: Result<String, FileError>,
    },
    /// The process was reaped; the last report for this id. `status` is the exit code, `None`
    /// when a signal ended it.
    Exited { agent: AgentId, status: Option<i32> },
}

/// How long `Drop` waits for the agents it stops.
const DROP_TIMEOUT: Duration = Duration::from_millis(250);

/// The host's record of one agent (the poller thread has the rest).
struct Handle {
    pid: u32,
    session_id: String,
    /// Its working directory, the root of what `fs/*` may touch.
    workspace: PathBuf,
    /// Its workspace quota in bytes, if any.
    workspace_bytes: Option<u64>,
    budget: Arc<StdinBudget>,
}

/// The poller thread, started with the first agent.
struct PollerThread {
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
}

/// Runs agent processes for the core. See the module documentation.
pub struct AgentHost {
    config: AgentHostConfig,
    agents: HashMap<AgentId, Handle>,
    reports: Arc<Reports>,
    poller: Option<PollerThread>,
    /// Reports of a batch that a drain's budget left for the next drain.
    pending: VecDeque<AgentReport>,
    /// The agents' workspace quotas.
    quotas: quota::Quotas,
    /// The agents' `fs/*` requests, served on a thread of their own.
    files: files::Files,
    /// This host's number among the process's hosts (names its agents' cgroups).
    host_id: u64,
}

impl AgentHost {
    pub fn new(config: AgentHostConfig, wake: Arc<dyn Wake>) -> AgentHost {
        let reports = Arc::new(Reports::new(config.report_capacity, wake));
        let max_file_bytes = config.max_file_bytes;
        AgentHost {
            config,
            agents: HashMap::new(),
            reports: Arc::clone(&reports),
            poller: None,
            pending: VecDeque::new(),
            quotas: quota::Quotas::new(Arc::clone(&reports)),
            files: files::Files::new(Arc::clone(&reports), max_file_bytes),
            host_id: cgroup::next_host_id(),
        }
    }

    /// Carries out one command; see the module documentation. Never blocks on an agent.
    pub fn execute(&mut self, command: AgentCommand) -> Option<AgentReport> {
        match command {
            AgentCommand::Spawn {
                agent,
                session_id,
                tenant_id,
                agent_type,
            } => Some(self.spawn(agent, session_id, &tenant_id, &agent_type)),
            AgentCommand::Write { agent, line } => {
                let handle = self.agents.get(&agent)?;
                let budget = &handle.budget;
                if budget.closed.load(Ordering::SeqCst) {
                    return None;
                }
                let pending = budget.pending.load(Ordering::SeqCst);
                if pending.saturating_add(line.len()) > self.config.max_pending_write_bytes {
                    tracing::warn!(target: "agent", agent = agent.0, session = %handle.session_id,
                        "stdin backlog over its limit; stopping the agent");
                    budget.closed.store(true, Ordering::SeqCst);
                    self.send(Command::Stop(agent, self.config.stop_grace));
                    return Some(AgentReport::Failed {
                        agent,
                        reason: "stdin backlog over its limit".to_owned(),
                    });
                }
                budget.pending.fetch_add(line.len(), Ordering::SeqCst);
                // A prompt waits for its workspace scan (see [`quota`]); so do the lines after it.
                if let Some(line) = self.quotas.before_write(agent, line) {
                    self.send(Command::Write(agent, line));
                }
                None
            }
            AgentCommand::ReadTextFile {
                agent,
                request,
                path,
                line,
                limit,
            } => {
                self.file_job(agent, request, path, files::JobKind::Read { line, limit });
                None
            }
            AgentCommand::WriteTextFile {
                agent,
                request,
                path,
                content,
            } => {
                let quota = self.agents.get(&agent).and_then(|h| h.workspace_bytes);
                self.file_job(
                    agent,
                    request,
                    path,
                    files::JobKind::Write { content, quota },
                );
                None
            }
            AgentCommand::Stop { agent } => {
                if let Some(handle) = self.agents.get(&agent) {
                    handle.budget.closed.store(true, Ordering::SeqCst);
                    self.send(Command::Stop(agent, self.config.stop_grace));
                }
                None
            }
            AgentCommand::Kill { agent } => {
                if let Some(handle) = self.agents.get(&agent) {
                    handle.budget.closed.store(true, Ordering::SeqCst);
                    self.send(Command::Kill(agent));
                }
                None
            }
        }
    }

    /// Hands an `fs/*` request of a running agent to the file thread; its answer comes
    /// through `drain`. A request for an unknown agent is ignored, like every command.
    fn file_job(&mut self, agent: AgentId, request: u64, path: PathBuf, kind: files::JobKind) {
        let Some(handle) = self.agents.get(&agent) else {
            return;
        };
        self.files.submit(files::Job {
            agent,
            request,
            workspace: handle.workspace.clone(),
            path,
            kind,
        });
    }

    fn send(&self, command: Command) {
        if let Some(poller) = &self.poller {
            poller.inbox.send(command);
        }
    }

    /// Starts the poller thread unless it runs.
    fn start_poller(&mut self) -> Result<(), String> {
        if self.poller.is_none() {
            let settings = poller::Settings {
                max_line_bytes: self.config.max_line_bytes,
                stop_grace: self.config.stop_grace,
                stderr_lines_per_second: self.config.stderr_lines_per_second,
            };
            let (inbox, thread) = poller::start(settings, Arc::clone(&self.reports))
                .map_err(|error| format!("cannot start the agent poller: {error}"))?;
            self.poller = Some(PollerThread {
                inbox,
                thread: Some(thread),
            });
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        agent: AgentId,
        session_id: String,
        tenant_id: &str,
        agent_type: &str,
    ) -> AgentReport {
        let failed = |reason: &str| {
            tracing::warn!(target: "agent", agent = agent.0, session = %session_id, agent_type,
                reason, "agent spawn failed");
            AgentReport::SpawnFailed {
                agent,
                reason: reason.to_owned(),
            }
        };
        if !diminuendo_core::storage::is_valid_identifier(&session_id) {
            return failed("invalid session id");
        }
        if !diminuendo_core::storage::is_valid_identifier(tenant_id) {
            return failed("invalid tenant id");
        }
        if self.agents.contains_key(&agent) {
            return failed("agent id already in use");
        }
        if let Err(reason) = self.start_poller() {
            return failed(&reason);
        }
        let Some(spec) = self.config.agents.get(agent_type) else {
            return failed("unknown agent type");
        };
        if self.agents.len() >= self.config.max_processes {
            return failed("too many agent processes");
        }
        let workspace = match &spec.cwd {
            WorkspacePolicy::Fixed(dir) => dir.clone(),
            WorkspacePolicy::PerSession => {
                let dir = match &self.config.workspace_root {
                    Some(root) => root.join(&session_id).join("workspace"),
                    None => self.config.data_dir.join("sessions").join(&session_id),
                }
                .join("workspace");
                if let Err(error) = std::fs::create_dir_all(&dir) {
                    return failed(&format!("cannot create the workspace: {}", error.kind()));
                }
                dir
            }
        };
        let command = match launch::command(&launch::Request {
            host_id: self.host_id,
            agent,
            session_id: &session_id,
            tenant_id,
            spec,
            data_dir: &self.config.data_dir,
            workspace: &workspace,
        }) {
            Ok(command) => command,
            Err(reason) => return failed(&reason),
        };
        let process = match Process::start(command) {
            Ok(process) => process,
            Err(reason) => return failed(&reason),
        };
        self.quotas
            .watch(agent, &workspace, spec.limits.workspace_bytes);
        let pid = process.pid.unsigned_abs();
        let budget = Arc::new(StdinBudget::default());
        self.send(Command::Add(Box::new(NewAgent {
            id: agent,
            session_id: session_id.clone(),
            process,
            budget: Arc::clone(&budget),
        })));
        let workspace_text = workspace.to_string_lossy().into_owned();
        tracing::info!(target: "agent", agent = agent.0, session = %session_id, agent_type,
            pid, workspace = %workspace_text, "agent started");
        self.agents.insert(
            agent,
            Handle {
                pid,
                session_id,
                workspace,
                workspace_bytes: spec.limits.workspace_bytes,
                budget,
            },
        );
        AgentReport::Spawned {
            agent,
            workspace: workspace_text,
        }
    }

    /// Moves at most `budget` waiting reports into `out` without blocking and returns how many.
    /// Call it whenever the wake hook fired. If it stopped because of the budget, the host has
    /// already re-armed the wake, so the adapter is woken again for the rest; a budget of 0
    /// takes nothing and leaves the wake state alone.
    pub fn drain(&mut self, out: &mut Vec<AgentReport>, budget: usize) -> usize {
        if budget == 0 {
            return 0;
        }
        // Clear before looking: a report sent from here on wakes the adapter again.
        self.reports.wake_pending.store(false, Ordering::SeqCst);
        self.quota_verdicts();
        // File answers of agents still known (a late one for an exited agent goes nowhere).
        for report in self.files.finished() {
            if let AgentReport::FileRead { agent, .. } | AgentReport::FileWritten { agent, .. } =
                &report
            {
                if self.agents.contains_key(agent) {
                    self.pending.push_back(report);
                }
            }
        }
        let mut taken = 0;
        while taken < budget {
            if self.pending.is_empty() && !self.take_batch(None) {
                break;
            }
            let Some(report) = self.pending.pop_front() else {
                continue;
            };
            self.forget_if_exited(&report);
            self.check_quota(&report);
            out.push(report);
            taken += 1;
        }
        if taken == budget {
            self.reports.wake_adapter();
        }
        taken
    }

    /// Moves one batch into `pending` (waiting until `deadline` if given); false if none came.
    fn take_batch(&mut self, deadline: Option<Instant>) -> bool {
        let taken = self.reports.take(deadline);
        if taken.room {
            if let Some(poller) = &self.poller {
                poller.inbox.room();
            }
        }
        match taken.batch {
            Some(batch) => {
                self.pending.extend(batch);
                true
            }
            None => false,
        }
    }

    /// During a turn (the agent writes output), a scan of the workspace is requested every few
    /// seconds; its verdict comes back through [`Self::quota_verdicts`].
    fn check_quota(&mut self, report: &AgentReport) {
        if let AgentReport::Line { agent, .. } = report {
            self.quotas.on_output(*agent, Instant::now());
        }
    }

    /// Acts on the finished workspace scans: held lines go to the agent, or (over the quota) the
    /// agent is stopped and `Failed` is the next report.
    fn quota_verdicts(&mut self) {
        for verdict in self.quotas.finished() {
            match verdict {
                quota::Verdict::Release(agent, lines) => {
                    let open = self
                        .agents
                        .get(&agent)
                        .is_some_and(|handle| !handle.budget.closed.load(Ordering::SeqCst));
                    // A stopped agent's stdin is closed: its held lines are dropped.
                    for line in lines.into_iter().filter(|_| open) {
                        self.send(Command::Write(agent, line));
                    }
                }
                quota::Verdict::Over(agent, reason) => {
                    if let Some(handle) = self.agents.get(&agent) {
                        tracing::warn!(target: "agent", agent = agent.0,
                            session = %handle.session_id, %reason, "stopping the agent");
                        handle.budget.closed.store(true, Ordering::SeqCst);
                        self.send(Command::Stop(agent, self.config.stop_grace));
                    }
                    self.pending
                        .push_front(AgentReport::Failed { agent, reason });
                }
            }
        }
    }

    fn forget_if_exited(&mut self, report: &AgentReport) {
        if let AgentReport::Exited { agent, status } = report {
            self.quotas.forget(*agent);
            cgroup::release_cgroup(&cgroup::cgroup_name(self.host_id, *agent));
            if let Some(handle) = self.agents.remove(agent) {
                tracing::info!(target: "agent", agent = agent.0, session = %handle.session_id,
                    status = ?status, "agent exited");
            }
        }
    }

    /// Agents spawned whose `Exited` has not been drained yet.
    pub fn running(&self) -> usize {
        self.agents.len()
    }

    /// The process id of a running agent (diagnostics and tests).
    pub fn pid(&self, agent: AgentId) -> Option<u32> {
        self.agents.get(&agent).map(|handle| handle.pid)
    }

    /// Stops every agent (stdin closed, SIGTERM, SIGKILL after `min(stop_grace, timeout / 2)`,
    /// and at `timeout / 2` at the latest) and waits, bounded by `timeout`, until every one has
    /// been reaped and its pipes have closed. Reports that arrive meanwhile are discarded.
    /// True when every agent is gone; otherwise the rest have been sent SIGKILL and the poller
    /// reaps them once the kernel lets the processes go.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        let half = timeout / 2;
        let grace = self.config.stop_grace.min(half);
        let ids: Vec<AgentId> = self.agents.keys().copied().collect();
        for &agent in &ids {
            self.send(Command::Stop(agent, grace));
        }
        self.wait_for_exits(start + half);
        let ids: Vec<AgentId> = self.agents.keys().copied().collect();
        for agent in ids {
            self.send(Command::Kill(agent));
        }
        self.wait_for_exits(start + timeout);
        if !self.agents.is_empty() {
            tracing::warn!(target: "agent", left = self.agents.len(),
                "agent processes still running at the end of the shutdown");
        }
        cgroup::sweep_cgroups();
        self.agents.is_empty()
    }

    fn wait_for_exits(&mut self, deadline: Instant) {
        while !self.agents.is_empty() {
            if let Some(report) = self.pending.pop_front() {
                self.forget_if_exited(&report);
                continue;
            }
            if Instant::now() >= deadline || !self.take_batch(Some(deadline)) {
                return;
            }
        }
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        if !self.agents.is_empty() {
            self.shutdown(DROP_TIMEOUT);
        }
        if let Some(mut poller) = self.poller.take() {
            // The poller kills what is left, reaps it, and ends once every agent is gone.
            poller.inbox.send(Command::Quit);
            if self.agents.is_empty() {
                if let Some(thread) = poller.thread.take() {
                    let _ = thread.join();
                }
            }
        }
        cgroup::sweep_cgroups();
    }
}
