//! The cluster engine's settings (`--cluster`, `--cluster-creds`, `--cluster-tls-*`, ...; the
//! flags themselves are parsed by the adapters' settings once cluster mode is wired).

use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS and how the state in JetStream is laid out and timed.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `--cluster`: one or more server URLs, comma-separated (`nats://host:4222`,
    /// `tls://host:4222`).
    pub url: String,
    /// `--cluster-instance`: this gateway instance's id (lease holder, liveness key, client
    /// name). Unique per running instance.
    pub instance_id: String,
    /// `--cluster-creds`: a NATS credentials file (user JWT and NKey seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// `--cluster-nkey`: a file holding an NKey seed (`SU...`), for NKey authentication.
    pub nkey_seed_file: Option<PathBuf>,
    /// `--cluster-user` / `--cluster-password`: user and password authentication.
    pub user_password: Option<(String, String)>,
    /// `--cluster-token`: token authentication.
    pub token: Option<String>,
    /// `--cluster-tls-ca`: root certificates (PEM) to verify the server with, instead of the
    /// system's.
    pub tls_ca: Option<PathBuf>,
    /// `--cluster-tls-cert` / `--cluster-tls-key`: a client certificate and its key (PEM), for
    /// servers that verify clients.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// `--cluster-tls`: require TLS even for `nats://` URLs.
    pub tls_required: bool,
    /// `--cluster-tls-first`: TLS handshake before the server's INFO (servers configured with
    /// `handshake_first`).
    pub tls_first: bool,
    /// `--cluster-replicas`: replicas of the stream and buckets (1 for a single server; 3 for a
    /// three-node JetStream cluster). Applied when they are created or updated at start.
    pub replicas: usize,
    /// How often the core renews an owner lease; the `dim_owners` bucket's max age is three
    /// times this, so an owner that stops renewing loses its sessions after that long.
    pub lease_renewal: Duration,
    /// How often this instance refreshes its `dim_instances` entry; the bucket's max age is three
    /// times this.
    pub instance_heartbeat: Duration,
    /// Bound on every JetStream/KV operation and on a forwarded command's reply.
    pub op_timeout: Duration,
    /// Largest event fetch answered at once (`Fetch::limit` is capped to it).
    pub max_fetch: u32,
}

impl ClusterConfig {
    /// Defaults for `url` and `instance_id`: one replica, leases renewed every 2 s (gone 6 s after
    /// the owner stops), instances refreshed every 2 s, 5 s operation timeout.
    pub fn new(url: impl Into<String>, instance_id: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            instance_id: instance_id.into(),
            creds_file: None,
            nkey_seed_file: None,
            user_password: None,
            token: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_required: false,
            tls_first: false,
            replicas: 1,
            lease_renewal: Duration::from_secs(2),
            instance_heartbeat: Duration::from_secs(2),
            op_timeout: Duration::from_secs(5),
            max_fetch: 10_000,
        }
    }

    /// Refuses settings that would break the design: no instance id, a lease that never expires
    /// (a zero max age means "forever" to JetStream), intervals under 100 ms (JetStream's
    /// smallest max age), replicas outside 1..=5.
    pub fn validate(&self) -> Result<(), String> {
        if self.instance_id.is_empty() {
            return Err("--cluster-instance: empty".into());
        }
        let min = Duration::from_millis(100);
        if self.lease_renewal < min {
            return Err(format!(
                "lease renewal {:?}: at least 100 ms",
                self.lease_renewal
            ));
        }
        if self.instance_heartbeat < min {
            return Err(format!(
                "instance heartbeat {:?}: at least 100 ms",
                self.instance_heartbeat
            ));
        }
        if self.op_timeout.is_zero() {
            return Err("operation timeout: zero".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!("--cluster-replicas {}: 1 to 5", self.replicas));
        }
        Ok(())
    }

    /// The `dim_owners` bucket's max age: three renewal intervals.
    pub fn lease_max_age(&self) -> Duration {
        self.lease_renewal * 3
    }
}
