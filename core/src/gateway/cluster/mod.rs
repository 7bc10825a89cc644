//! Cluster mode, the gateway's side (`/work/shared/CLUSTER.md`, issue 16): what the gateway
//! decides with the cluster engine's commands and completions (`crate::cluster`).
//!
//! - `registry.rs`: the registry in `dim_registry` (durable replies on the acknowledged KV write,
//!   compare-and-set on revisions, tenant notifications);
//! - `feed.rs`: sessions owned by another instance, delivered here in `seq` order from the live
//!   subscription, with gap fetches;
//! - `owner.rs`: ownership (lease acquire, renew, loss, release), the log opened and appended,
//!   take-over with the epoch rule;
//! - `forward.rs`: commands for a session owned elsewhere forwarded to its owner, and the
//!   owner's side (replies relayed by request).

use std::time::Instant;

use crate::cluster::{ClusterCommand, ClusterCompletion, ClusterMode, ConnectionState};
use crate::{Event, Gateway};

/// Cluster mode's state in the gateway.
pub(crate) struct ClusterState {
    pub(crate) mode: ClusterMode,
    pub(crate) connection: ConnectionState,
}

/// What `/health` shows of cluster mode (`Gateway::cluster_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This instance's id.
    pub instance_id: String,
    /// The NATS connection as the engine last reported it.
    pub connection: ConnectionState,
    /// The sessions this instance owns now (holds the lease of), sorted.
    pub owned: Vec<String>,
}

impl Gateway {
    /// Runs this gateway in cluster mode: the registry and the event log go through the cluster
    /// engine (`Event::Cluster`, `handle_cluster`) instead of storage. Call once, right after
    /// `new`, before any input.
    pub fn enable_cluster(&mut self, mode: ClusterMode) {
        self.cluster = Some(Box::new(ClusterState {
            mode,
            connection: ConnectionState::Disconnected,
        }));
    }

    /// A completion from the cluster engine.
    pub fn handle_cluster(&mut self, completion: ClusterCompletion, _now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let ClusterCompletion::Connection { state } = completion {
            cluster.connection = state;
        }
    }

    /// Cluster mode's state for `/health`; `None` in single-node mode.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        let cluster = self.cluster.as_ref()?;
        Some(ClusterStatus {
            instance_id: cluster.mode.instance_id.clone(),
            connection: cluster.connection,
            owned: Vec::new(),
        })
    }

    #[allow(dead_code)]
    pub(crate) fn cluster_command(&mut self, command: ClusterCommand) {
        self.events.push_back(Event::Cluster(command));
    }
}
