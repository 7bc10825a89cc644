//! The services behind the core, shared by every adapter: storage (the writer and reader threads)
//! and the agent host. They report through the adapter's wake-up hook; the adapter then calls
//! `Services::poll`, which feeds what they finished back into the core with a bounded budget.
//!
//! An adapter's loop, whatever its runtime:
//! 1. feed an input to the `Gateway` (bytes, a timer, a wake-up);
//! 2. `while let Some(event) = gateway.poll_event()`: `Services::dispatch` it; what comes back is
//!    a connection to close, which only the adapter can do;
//! 3. write what `poll_transmit` names; arm a timer at `poll_timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_core::auth::Authenticator;
use diminuendo_core::rng::Entropy;
use diminuendo_core::storage::{RecoveryReport, StorageCommand, StorageCompletion};
use diminuendo_core::{ConnectionId, Event, Gateway, Wake};
use diminuendo_storage::{Storage, StorageConfig};
use tracing::{info, warn};

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
    completions: Vec<StorageCompletion>,
    reports: Vec<AgentReport>,
    backlog: BacklogPolicy,
    /// What the core was last told (`StorageCompletion::Backlog`).
    congested: bool,
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
        gateway.restore_sessions(report.records);
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
        host_config.agents = settings.agents.clone();
        host_config.max_processes = settings.max_agents;
        let agents = AgentHost::new(host_config, wake);
        Ok((
            gateway,
            Services {
                storage,
                agents,
                completions: Vec::new(),
                reports: Vec::new(),
                backlog: BacklogPolicy::for_limit(settings.storage.queue_limit),
                congested: false,
            },
        ))
    }

    /// Carries out one of the core's events. A connection to close is handed back.
    pub fn dispatch(
        &mut self,
        gateway: &mut Gateway,
        event: Event,
        now: Instant,
    ) -> Option<ConnectionId> {
        match event {
            Event::CloseConnection(id) => return Some(id),
            Event::Storage(command) => self.submit(gateway, command, now),
            Event::Agent(command) => {
                if let Some(report) = self.agents.execute(command) {
                    apply_report(gateway, report, now);
                }
            }
            other => warn!(?other, "an event this build does not know"),
        }
        None
    }

    fn submit(&mut self, gateway: &mut Gateway, command: StorageCommand, now: Instant) {
        let token = match &command {
            StorageCommand::Query { token, .. } => Some((*token, false)),
            StorageCommand::CommitNow { token, .. } => Some((*token, true)),
            _ => None,
        };
        let target = diminuendo_storage::write_target(&command);
        if let Err(error) = self.storage.submit(command) {
            warn!(%error, "storage refused a command");
            // The core waits for every query's and commit's answer: give it the failure.
            match token {
                Some((token, false)) => gateway.handle_storage(
                    StorageCompletion::QueryResult {
                        token,
                        result: Err(error),
                    },
                    now,
                ),
                Some((token, true)) => gateway.handle_storage(
                    StorageCompletion::Committed {
                        token,
                        result: Err(error),
                    },
                    now,
                ),
                // A write that is not queued is lost: the core treats it as a failed write (a
                // session whose log misses it gets a new epoch).
                None => {
                    if let Some(database) = target {
                        gateway.handle_storage(
                            StorageCompletion::WriteFailed {
                                database,
                                commands: 1,
                                error,
                            },
                            now,
                        );
                    }
                }
            }
        }
        self.update_backlog(gateway, now);
    }

    /// Tells the core when the storage queue becomes congested or stops being so.
    fn update_backlog(&mut self, gateway: &mut Gateway, now: Instant) {
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
            gateway.handle_storage(StorageCompletion::Backlog { congested }, now);
        }
    }

    /// Feeds finished storage work and (at most `AGENT_REPORTS_PER_POLL`) agent output into the
    /// gateway. Call after every wake-up, then drain the gateway's events.
    pub fn poll(&mut self, gateway: &mut Gateway, now: Instant) {
        self.completions.clear();
        self.storage.drain_completions(&mut self.completions);
        for completion in self.completions.drain(..) {
            gateway.handle_storage(completion, now);
        }
        self.update_backlog(gateway, now);
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
