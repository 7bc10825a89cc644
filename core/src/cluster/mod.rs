//! Cluster mode (`/work/shared/CLUSTER.md`, issue 16): several gateway instances as one, with
//! the registry, the owner leases and the event log in NATS JetStream.
//!
//! Plain data, like `storage`: the core emits [`ClusterCommand`]s (as `Event::Cluster`), the
//! adapter hands them to the engine (`diminuendo-cluster`, which re-exports these types), and
//! feeds the engine's [`ClusterCompletion`]s back through `Gateway::handle_cluster`. Nothing here
//! does I/O. The gateway's side (what it decides with them) is in `gateway::cluster`.

mod refusal;
pub mod types;

pub use types::*;

use std::time::Duration;

/// How a gateway runs in cluster mode (`Gateway::enable_cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMode {
    /// This instance's id (`--cluster-instance`), unique among running instances; shown in
    /// `/health`.
    pub instance_id: String,
    /// How often the owner renews each lease (`--cluster-lease-renew-ms`; the engine's
    /// `dim_owners` max age is 3×). A lease whose renewal has not succeeded for 2 intervals is
    /// given up (the agent is killed) before it can expire and be taken.
    pub lease_renewal: Duration,
    /// Most events one catch-up `Fetch` asks for.
    pub max_fetch: u32,
}

impl ClusterMode {
    /// The defaults of the engine: renewal every 2 s, fetches of at most 10,000 events.
    pub fn new(instance_id: impl Into<String>) -> Self {
        ClusterMode {
            instance_id: instance_id.into(),
            lease_renewal: Duration::from_secs(2),
            max_fetch: 10_000,
        }
    }
}
