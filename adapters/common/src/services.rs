//! The services behind the core, shared by every adapter: storage (the writer and reader threads)
//! and the agent host. They report through the adapter's wake-up hook; the adapter then calls
//! `Services::poll`, which feeds what they finished back into the core with a bounded budget.
//!
//! An adapter's loop, whatever its runtime:
//! 1. feed an input to the `Gateway` (bytes, a timer, a wake-up);
//! 2. `while let Some(event) = gateway.poll_event()`: `Services::dispatch` it; what comes back is
//!    a connection to close, which only the adapter can do;
//! 3. write what `poll_transmit` names; arm a timer at `poll_timeout`;
//! 4. if `Services::has_queued`, `Services::feed_queued` and go back to 2 (a bounded number of
//!    times; past the bound, `Services::wake_again` brings the loop back on its next turn).
//!
//! **The rule:** no gateway input is called while its outputs are drained. `dispatch` takes no
//! `Gateway`: what a command gives back at once (the agent host's synchronous reports, the
//! failure of a storage command `submit` refused, a change of the storage backlog) is queued here
//! in the order it happened and fed to the core as ordinary inputs by `feed_queued` (or `poll`),
//! once the drain is over.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_core::auth::Authenticator;
use diminuendo_core::cluster::{ClusterCompletion, ClusterError, ClusterMode};
use diminuendo_core::rng::Entropy;
use diminuendo_core::storage::{RecoveryReport, StorageCommand, StorageCompletion};
use diminuendo_core::{ConnectionId, Event, Gateway, Wake};
use diminuendo_storage::{Storage, StorageConfig};
use tracing::{info, warn};

use crate::cluster::{ClusterService, CLUSTER_COMPLETIONS_PER_POLL};
use crate::settings::Settings;
use diminuendo_agent_host::{AgentHost, AgentHostConfig, AgentReport};

/// Agent reports taken per `poll` (and agent output bytes, whichever limit comes first), so one
/// agent streaming as fast as it can never starves other connections, timers or sessions, and
/// what one poll publishes is written before the next poll adds more; the host wakes the adapter
/// again for the rest.
pub const AGENT_REPORTS_PER_POLL: usize = 256;
pub const AGENT_BYTES_PER_POLL: usize = 64 * 1024;
/// Reports taken from the host at once, between checks of the byte budget.
const AGENT_REPORTS_PER_DRAIN: usize = 16;

/// What the services layer does as the storage queue (`Storage::queued_bytes`) fills, in
/// fractions of its hard limit (`--storage-queue-limit`, where `submit` refuses a write):
/// - from half of it the core is told the queue is congested and refuses new work
///   (`create_session`, `run_turn`, `steer`: `RATE_LIMITED`), until it is under a quarter again;
/// - from three quarters agents' output is no longer read: every agent waits on its own stdout
///   pipe (the host's channel is bounded) until the writer has caught up, so running turns go on
///   at the disk's speed instead of growing memory;
/// - a write refused at the limit (only what one poll already took from the agents can get that
///   far) is reported to the core as a failed write: the session gets a new epoch, never a
///   silent gap.
pub struct BacklogPolicy {
    pub congested_at: u64,
    pub clear_below: u64,
    pub pause_agents_at: u64,
}

impl BacklogPolicy {
    pub fn for_limit(limit: u64) -> BacklogPolicy {
        BacklogPolicy {
            congested_at: limit / 2,
            clear_below: limit / 4,
            pause_agents_at: limit / 4 * 3,
        }
    }
}

pub struct Services {
    storage: Storage,
    agents: AgentHost,
    /// Cluster mode's engine (`--cluster`); `None` on a single node.
    cluster: Option<ClusterService>,
    cluster_completions: Vec<ClusterCompletion>,
    completions: Vec<StorageCompletion>,
    reports: Vec<AgentReport>,
    backlog: BacklogPolicy,
    /// What the core was last told (`StorageCompletion::Backlog`).
    congested: bool,
    /// Inputs for the core that arose while its outputs were drained (see the module's rule), in
    /// the order they arose.
    queued: VecDeque<Queued>,
    /// The adapter's wake-up hook, for a drain that stops at its bound with inputs still queued.
    wake: Arc<dyn Wake>,
}

/// An input for the core, held until the drain that produced it is over.
#[derive(Debug)]
enum Queued {
    Storage(StorageCompletion),
    Agent(AgentReport),
    Cluster(ClusterCompletion),
}

impl Services {
    /// Opens storage (running recovery), builds the gateway with the recovered registry and the
    /// token verifier, and starts the agent host. `now`/`unix_ms`/`entropy` as for
    /// `Gateway::with_entropy`.
    pub fn start(
        settings: &Settings,
        wake: Arc<dyn Wake>,
        now: Instant,
        unix_ms: u64,
        entropy: Box<dyn Entropy>,
    ) -> Result<(Gateway, Services), String> {
        let mut storage_config = StorageConfig::new(&settings.data_dir);
        storage_config.synchronous = settings.storage.synchronous;
        storage_config.flush_interval = settings.storage.flush_interval;
        storage_config.batch_size = settings.storage.batch_size;
        storage_config.queue_limit = settings.storage.queue_limit;
        let delay = settings.storage.commit_delay;
        if !delay.is_zero() {
            warn!(
                ?delay,
                "storage commits are slowed down (--storage-commit-delay-ms)"
            );
            storage_config.commit_hook = Some(Arc::new(move |_| {
                std::thread::sleep(delay);
                Ok(())
            }));
        }
        let (storage, report) = Storage::open(storage_config, wake.clone()).map_err(|error| {
            format!(
                "cannot open storage in {}: {error}",
                settings.data_dir.display()
            )
        })?;
        log_recovery(&report);

        let mut gateway = Gateway::with_entropy(settings.core.clone(), entropy, now, unix_ms);
        // Cluster mode: the registry and the event log are in NATS (the core reads them through
        // the engine), and SQLite holds nothing of them; the core is told before any input.
        let cluster = match &settings.cluster {
            Some(config) => {
                let mut mode = ClusterMode::new(config.instance_id.clone());
                mode.lease_renewal = config.lease_renewal;
                mode.max_fetch = config.max_fetch;
                gateway.enable_cluster(mode);
                Some(ClusterService::start(config, wake.clone())?)
            }
            None => {
                gateway.restore_sessions(report.records);
                None
            }
        };
        if let Some(auth) = &settings.auth {
            let authenticator = Authenticator::new(auth.clone())
                .map_err(|error| format!("invalid token settings: {error}"))?;
            for skipped in authenticator.skipped_keys() {
                warn!(key = %skipped, "a JWKS key is not usable and was skipped");
            }
            gateway.set_authenticator(authenticator);
        }

        warn_about_sandboxes(&settings.agents);
        let mut host_config = AgentHostConfig::new(&settings.data_dir);
        host_config.workspace_root = settings.workspace_root.clone();
        host_config.agents = settings.agents.clone();
        host_config.max_processes = settings.max_agents;
        let agents = AgentHost::new(host_config, wake.clone());
        Ok((
            gateway,
            Services {
                storage,
                agents,
                cluster,
                cluster_completions: Vec::new(),
                completions: Vec::new(),
                reports: Vec::new(),
                backlog: BacklogPolicy::for_limit(settings.storage.queue_limit),
                congested: false,
                queued: VecDeque::new(),
                wake,
            },
        ))
    }

    /// Carries out one of the core's events. A connection to close is handed back. It takes no
    /// `Gateway`: what the command gives back at once is queued for `feed_queued`.
    pub fn dispatch(&mut self, event: Event) -> Option<ConnectionId> {
        match event {
            Event::CloseConnection(id) => return Some(id),
            Event::Storage(command) => self.submit(command),
            Event::Agent(command) => {
                if let Some(report) = self.agents.execute(command) {
                    self.queued.push_back(Queued::Agent(report));
                }
            }
            Event::Cluster(command) => {
                let refusal = match &self.cluster {
                    Some(cluster) => cluster.submit(command),
                    // A core in single-node mode emits none; answer rather than lose one.
                    None => command.refusal(ClusterError::Unavailable),
                };
                if let Some(refusal) = refusal {
                    self.queued.push_back(Queued::Cluster(refusal));
                }
            }
            other => warn!(?other, "an event this build does not know"),
        }
        None
    }

    /// Inputs wait for `feed_queued` (after a drain that dispatched commands).
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Feeds the core, in order, every input that arose while its outputs were drained: agent
    /// reports the host gave back at once, the failures of commands storage refused, backlog
    /// changes. Call it once the drain is over (never from inside one), then drain again.
    pub fn feed_queued(&mut self, gateway: &mut Gateway, now: Instant) {
        // What the core does with these emits outputs only: nothing is queued meanwhile.
        while let Some(input) = self.queued.pop_front() {
            match input {
                Queued::Storage(completion) => gateway.handle_storage(completion, now),
                Queued::Agent(report) => apply_report(gateway, report, now),
                Queued::Cluster(completion) => gateway.handle_cluster(completion, now),
            }
        }
    }

    /// Calls the adapter's wake-up hook: a drain stopped at its bound with work left brings the
    /// loop back (`poll` feeds what is queued) on its next turn instead of spinning.
    pub fn wake_again(&self) {
        self.wake.wake();
    }

    fn submit(&mut self, command: StorageCommand) {
        let token = match &command {
            StorageCommand::Query { token, .. } => Some((*token, false)),
            StorageCommand::CommitNow { token, .. } => Some((*token, true)),
            _ => None,
        };
        let target = diminuendo_storage::write_target(&command);
        if let Err(error) = self.storage.submit(command) {
            warn!(%error, "storage refused a command");
            // The core waits for every query's and commit's answer: give it the failure.
            let failure = match token {
                Some((token, false)) => Some(StorageCompletion::QueryResult {
                    token,
                    result: Err(error),
                }),
                Some((token, true)) => Some(StorageCompletion::Committed {
                    token,
                    result: Err(error),
                }),
                // A write that is not queued is lost: the core treats it as a failed write (a
                // session whose log misses it gets a new epoch).
                None => target.map(|database| StorageCompletion::WriteFailed {
                    database,
                    commands: 1,
                    error,
                }),
            };
            if let Some(failure) = failure {
                self.queued.push_back(Queued::Storage(failure));
            }
        }
        self.update_backlog();
    }

    /// Queues a `Backlog` input when the storage queue becomes congested or stops being so.
    fn update_backlog(&mut self) {
        let queued = self.storage.queued_bytes();
        let congested = if self.congested {
            queued >= self.backlog.clear_below
        } else {
            queued >= self.backlog.congested_at
        };
        if congested != self.congested {
            self.congested = congested;
            if congested {
                warn!(
                    queued,
                    "the storage queue is congested: new work is refused"
                );
            } else {
                info!(queued, "the storage queue has caught up");
            }
            self.queued
                .push_back(Queued::Storage(StorageCompletion::Backlog { congested }));
        }
    }

    /// Feeds finished storage work and (at most `AGENT_REPORTS_PER_POLL`) agent output into the
    /// gateway, after what `feed_queued` would feed. Call after every wake-up (an input phase,
    /// never inside a drain), then drain the gateway's outputs.
    pub fn poll(&mut self, gateway: &mut Gateway, now: Instant) {
        self.feed_queued(gateway, now);
        self.completions.clear();
        self.storage.drain_completions(&mut self.completions);
        for completion in self.completions.drain(..) {
            gateway.handle_storage(completion, now);
        }
        self.update_backlog();
        self.feed_queued(gateway, now);
        if let Some(cluster) = &self.cluster {
            self.cluster_completions.clear();
            let more = cluster.drain(&mut self.cluster_completions, CLUSTER_COMPLETIONS_PER_POLL);
            for completion in self.cluster_completions.drain(..) {
                gateway.handle_cluster(completion, now);
            }
            if more {
                self.wake.wake();
            }
        }
        // Over the pause mark agents wait on their pipes; the writer wakes the loop after every
        // flush, and the next poll reads them again.
        let queued = self.storage.queued_bytes();
        gateway.record_storage_queue(queued);
        if queued >= self.backlog.pause_agents_at {
            gateway.record_events_persisted(self.storage.stats().events);
            return;
        }
        let (mut reports, mut bytes) = (0, 0);
        while reports < AGENT_REPORTS_PER_POLL && bytes < AGENT_BYTES_PER_POLL {
            self.reports.clear();
            // A drain that fills its budget has the host wake the adapter again, so stopping
            // here early leaves nothing stranded.
            let taken = self
                .agents
                .drain(&mut self.reports, AGENT_REPORTS_PER_DRAIN);
            for report in self.reports.drain(..) {
                if let AgentReport::Line { line, .. } = &report {
                    bytes += line.len();
                }
                apply_report(gateway, report, now);
            }
            reports += taken;
            if taken < AGENT_REPORTS_PER_DRAIN {
                break;
            }
        }
        gateway.record_events_persisted(self.storage.stats().events);
    }

    /// Stops every agent and flushes and closes storage: nothing acknowledged is lost.
    pub fn shutdown(&mut self, agent_timeout: Duration) {
        if !self.agents.shutdown(agent_timeout) {
            warn!("some agent processes did not stop in time");
        }
        match self.storage.shutdown_blocking() {
            Ok(()) => info!("storage flushed and closed"),
            Err(error) => warn!(%error, "storage did not close cleanly"),
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.shutdown();
        }
    }
}

fn apply_report(gateway: &mut Gateway, report: AgentReport, now: Instant) {
    match report {
        AgentReport::Spawned { agent, workspace } => {
            gateway.handle_agent_spawned(agent, &workspace, now)
        }
        AgentReport::SpawnFailed { agent, reason } => {
            gateway.handle_agent_spawn_failed(agent, &reason, now)
        }
        AgentReport::Line { agent, line } => gateway.handle_agent_line(agent, &line, now),
        // Answers of the agent's fs/* requests (from the host's file thread, through `drain`).
        AgentReport::FileRead {
            agent,
            request,
            result,
        } => gateway.handle_agent_file_read(agent, request, result, now),
        AgentReport::FileWritten {
            agent,
            request,
            result,
        } => gateway.handle_agent_file_written(agent, request, result, now),
        // The host stops the process; its exit report follows.
        AgentReport::Failed { agent, reason } => {
            warn!(agent = agent.0, %reason, "agent failed");
            gateway.handle_agent_failed(agent, &reason, now);
        }
        AgentReport::Exited { agent, status } => {
            info!(agent = agent.0, ?status, "agent exited");
            gateway.handle_agent_exited(agent, now);
        }
    }
}

fn log_recovery(report: &RecoveryReport) {
    info!(
        clean = report.clean_shutdown,
        sessions = report.sessions,
        deactivated = report.sessions_deactivated,
        new_epochs = report.sessions_new_epoch,
        orphan_dirs_removed = report.orphan_session_dirs_removed,
        turns_interrupted = report.turns_interrupted,
        "storage recovered"
    );
    for error in &report.failed {
        warn!(%error, "a database could not be recovered");
    }
}

/// At start: an agent type without a sandbox is worth a warning, and so is a kernel that
/// cannot confine the agents that ask for Landlock (they will answer AGENT_UNAVAILABLE).
fn warn_about_sandboxes(
    agents: &std::collections::BTreeMap<String, diminuendo_agent_host::AgentSpec>,
) {
    use diminuendo_agent_host::SandboxMode;
    let support = diminuendo_agent_host::sandbox::landlock_support();
    for (name, spec) in agents {
        match spec.sandbox {
            SandboxMode::Off => warn!(agent_type = %name,
                "sandbox = \"off\": agents of this type can read and write everything the gateway can"),
            SandboxMode::Launcher => {}
            SandboxMode::Landlock => {
                if let Err(reason) = &support {
                    warn!(agent_type = %name, %reason,
                        "agents of this type will not start: the kernel cannot enforce their sandbox");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rule of the module: what a command gives back at once reaches the gateway after the
    //! drain of its outputs, as an ordinary input, never during it. A dev-mode `Gateway` with the
    //! real storage and agent host, driven directly.
    use super::*;
    use crate::settings::Flags;
    use crate::OsEntropy;
    use diminuendo_core::sim::client;
    use diminuendo_core::storage::{SessionRecord, SessionStatus};
    use serde_json::{json, Value};

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    const CLIENT: ConnectionId = ConnectionId(7);
    const SESSION: &str = "session-1";

    /// A dev-mode gateway and its services on a fresh data directory, with one inactive session
    /// of tenant `dev` whose agent type does not exist.
    fn start(dir: &tempfile::TempDir, queue_limit: usize) -> (Gateway, Services) {
        let settings = Settings::resolve(Flags {
            dev: Some(true),
            data_dir: Some(dir.path().to_path_buf()),
            storage_queue_limit: Some(queue_limit),
            ..Flags::default()
        })
        .expect("valid settings");
        let entropy = Box::new(OsEntropy::new().expect("the OS random source"));
        let (mut gateway, services) = Services::start(
            &settings,
            Arc::new(NoWake),
            Instant::now(),
            1_767_225_600_000,
            entropy,
        )
        .expect("services start");
        gateway.restore_sessions(vec![SessionRecord {
            id: SESSION.to_owned(),
            tenant_id: "dev".to_owned(),
            name: "New session".to_owned(),
            agent_type: "no-such-agent".to_owned(),
            status: SessionStatus::Inactive,
            archived: false,
            created_by: "dev-user-001".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_seq: 0,
            epoch: "0123456789abcdef".to_owned(),
            acp_session_id: None,
        }]);
        (gateway, services)
    }

    /// One drain of the gateway's events, as `Driver::dispatch` runs it: `Services::dispatch`
    /// has no way to reach the gateway.
    fn drain_events(gateway: &mut Gateway, services: &mut Services) {
        while let Some(event) = gateway.poll_event() {
            assert_eq!(services.dispatch(event), None, "nothing closes here");
        }
    }

    /// Every message written to the client so far (the socket takes everything).
    fn written(gateway: &mut Gateway, now: Instant) -> Vec<Value> {
        let mut bytes = Vec::new();
        while let Some(id) = gateway.poll_transmit() {
            assert_eq!(id, CLIENT);
            let mut slices = [std::io::IoSlice::new(&[]); crate::write::MAX_SLICES];
            let filled = gateway.outbound(id, &mut slices);
            let before = bytes.len();
            for slice in &slices[..filled] {
                bytes.extend_from_slice(slice);
            }
            gateway.handle_sent(id, bytes.len() - before, now);
        }
        let mut offset = 0;
        if let Some((response, len)) = client::parse_response(&bytes) {
            assert_eq!(response.status, 101);
            offset = len;
        }
        let mut messages = Vec::new();
        while let Some((frame, len)) = client::parse_frame(&bytes[offset..]) {
            messages.push(serde_json::from_slice(&frame.payload).expect("JSON"));
            offset += len;
        }
        messages
    }

    /// A connected, authenticated `/ws` client (dev mode), its greeting taken, every input the
    /// handshake queued fed.
    fn connect(gateway: &mut Gateway, services: &mut Services, now: Instant) {
        gateway.handle_accept(CLIENT, "127.0.0.1:5000".parse().expect("an address"), now);
        gateway.handle_data(CLIENT, &mut client::upgrade("/ws"), now);
        drain_events(gateway, services);
        services.feed_queued(gateway, now);
        drain_events(gateway, services);
        assert!(!services.has_queued());
        assert!(!written(gateway, now).is_empty(), "a greeting");
    }

    fn request(gateway: &mut Gateway, now: Instant, message: Value) {
        gateway.handle_data(CLIENT, &mut client::text(&message.to_string()), now);
    }

    fn replies_to<'a>(messages: &'a [Value], request_id: &str) -> Vec<&'a Value> {
        messages
            .iter()
            .filter(|message| message["requestId"] == request_id)
            .collect()
    }

    #[test]
    fn a_refused_storage_command_reaches_the_gateway_after_the_drain() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A queue of one byte refuses every command (and is congested from the start).
        let (mut gateway, mut services) = start(&dir, 1);
        let now = Instant::now();
        connect(&mut gateway, &mut services, now);

        request(
            &mut gateway,
            now,
            json!({"type": "get_history", "sessionId": SESSION, "requestId": "h1"}),
        );
        drain_events(&mut gateway, &mut services);
        // Storage refused the query during the drain: its failure waits in the services, and
        // the client has no answer yet.
        assert!(services.has_queued());
        assert!(replies_to(&written(&mut gateway, now), "h1").is_empty());

        services.feed_queued(&mut gateway, now);
        assert!(!services.has_queued());
        drain_events(&mut gateway, &mut services);
        let messages = written(&mut gateway, now);
        let replies = replies_to(&messages, "h1");
        assert_eq!(replies.len(), 1, "{messages:?}");
        assert_eq!(replies[0]["type"], "error", "{messages:?}");
        assert_eq!(replies[0]["code"], "INTERNAL", "{messages:?}");
        assert_eq!(replies[0]["message"], "the history could not be read");
    }

    #[test]
    fn a_synchronous_agent_report_reaches_the_gateway_after_the_drain() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut gateway, mut services) = start(&dir, 64 * 1024 * 1024);
        let now = Instant::now();
        connect(&mut gateway, &mut services, now);

        request(
            &mut gateway,
            now,
            json!({"type": "run_turn", "sessionId": SESSION, "text": "hello", "requestId": "t1"}),
        );
        drain_events(&mut gateway, &mut services);
        // The host answered the spawn at once (an unknown agent type): the report waits in the
        // services, and the turn is neither accepted nor refused yet.
        assert!(services.has_queued());
        assert!(replies_to(&written(&mut gateway, now), "t1").is_empty());

        services.feed_queued(&mut gateway, now);
        assert!(!services.has_queued());
        drain_events(&mut gateway, &mut services);
        let messages = written(&mut gateway, now);
        let replies = replies_to(&messages, "t1");
        assert_eq!(replies.len(), 1, "{messages:?}");
        assert_eq!(replies[0]["type"], "error", "{messages:?}");
        assert_eq!(replies[0]["code"], "AGENT_UNAVAILABLE", "{messages:?}");
        assert!(
            replies[0]["message"]
                .as_str()
                .is_some_and(|text| text.contains("unknown agent type")),
            "{messages:?}"
        );
    }
}
