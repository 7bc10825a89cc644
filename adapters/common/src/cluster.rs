//! Cluster mode's service (`--cluster`): the NATS engine (`diminuendo-cluster`) on its own thread,
//! fed the core's `Event::Cluster` commands and giving its completions back as core inputs, the
//! same way storage's work goes (see `services`). It runs no tokio in the adapter's loop: the
//! engine has its own thread and current-thread runtime, and announces completions through the
//! adapter's wake-up hook.

use std::sync::Arc;

use diminuendo_cluster::{
    Cluster, ClusterCommand, ClusterCompletion, ClusterConfig, ClusterError, ClusterStats,
    ConnectionState,
};
use diminuendo_core::Wake;
use tracing::{info, warn};

/// Completions fed to the core per `Services::poll`: a burst of live events from a busy session
/// never starves connections, timers or the agents' output; past it the loop is woken again.
pub const CLUSTER_COMPLETIONS_PER_POLL: usize = 1024;

pub struct ClusterService {
    engine: Cluster,
}

impl ClusterService {
    /// Starts the engine (it connects in the background, retrying until NATS answers).
    pub fn start(config: &ClusterConfig, wake: Arc<dyn Wake>) -> Result<ClusterService, String> {
        info!(
            instance = %config.instance_id,
            servers = %config.url,
            replicas = config.replicas,
            lease_renewal_ms = config.lease_renewal.as_millis() as u64,
            "cluster mode: connecting to NATS"
        );
        let engine = Cluster::start(config.clone(), wake)
            .map_err(|error| format!("cannot start cluster mode: {error}"))?;
        Ok(ClusterService { engine })
    }

    pub fn instance_id(&self) -> &str {
        self.engine.instance_id()
    }

    /// Queues a command for the engine; never waits on the network. A command the engine can no
    /// longer take (it stopped) is answered at once with its refusal, which the caller feeds to
    /// the core after the drain.
    pub fn submit(&self, command: ClusterCommand) -> Option<ClusterCompletion> {
        match self.engine.try_submit(command) {
            Ok(()) => None,
            Err(command) => {
                warn!("the cluster engine has stopped: a command is refused");
                command.refusal(ClusterError::Closed)
            }
        }
    }

    /// Moves at most `budget` completions into `out`; `true` when more may be waiting (the
    /// caller wakes its loop again, since the engine wakes it only for new completions).
    pub fn drain(&self, out: &mut Vec<ClusterCompletion>, budget: usize) -> bool {
        for _ in 0..budget {
            match self.engine.try_recv() {
                Some(completion) => {
                    if let ClusterCompletion::Connection { state } = &completion {
                        log_state(*state);
                    }
                    out.push(completion);
                }
                None => return false,
            }
        }
        true
    }

    pub fn connection_state(&self) -> ConnectionState {
        self.engine.connection_state()
    }

    pub fn stats(&self) -> ClusterStats {
        self.engine.stats()
    }

    /// Flushes what the client holds, closes the connection and joins the engine's thread.
    pub fn shutdown(&mut self) {
        self.engine.shutdown_blocking();
        info!("cluster engine stopped");
    }
}

fn log_state(state: ConnectionState) {
    match state {
        ConnectionState::Connected => info!("cluster: connected to NATS, stream and buckets ready"),
        ConnectionState::Reconnecting => {
            warn!("cluster: the NATS connection is lost; reconnecting")
        }
        ConnectionState::Disconnected => warn!("cluster: disconnected from NATS"),
    }
}
