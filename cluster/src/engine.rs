//! The async side: one current-thread tokio runtime on the engine's own thread, the NATS client,
//! and a task per operation (appends run in order per session on one writer task each).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv::{self};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Subject};
use crossbeam_channel::Sender;
use diminuendo_core::Wake;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, info};

use crate::buckets::watch_registry;
use crate::encode::encode;
use crate::log::WriterJob;
use crate::types::*;
use crate::ClusterConfig;

/// Queues a completion and wakes the gateway's loop unless a wake is pending (the loop clears the
/// flag before it drains, so no completion is left without a wake), as the storage crate does.
#[derive(Clone)]
pub(crate) struct Completer {
    pub tx: Sender<ClusterCompletion>,
    pub wake: Arc<dyn Wake>,
    pub wake_pending: Arc<AtomicBool>,
}

impl Completer {
    pub fn send(&self, c: ClusterCompletion) {
        if self.tx.send(c).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake.wake();
        }
    }
}

/// What the engine thread and the `Cluster` handle share.
pub(crate) struct Shared {
    pub state: AtomicU8,
    /// Registry cache fed by the watch: (tenant, session) → entry.
    pub cache: RwLock<HashMap<(String, String), RegistryEntry>>,
    pub stats: Stats,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub appends: AtomicU64,
    pub append_nanos_total: AtomicU64,
    pub append_nanos_max: AtomicU64,
    pub appends_fenced: AtomicU64,
    pub fetches: AtomicU64,
    pub forwarded: AtomicU64,
    pub lease_renewals: AtomicU64,
    pub leases_lost: AtomicU64,
    pub reconnects: AtomicU64,
}

pub(crate) fn state_from(v: u8) -> ConnectionState {
    match v {
        1 => ConnectionState::Connected,
        2 => ConnectionState::Reconnecting,
        _ => ConnectionState::Disconnected,
    }
}

fn state_code(s: ConnectionState) -> u8 {
    match s {
        ConnectionState::Disconnected => 0,
        ConnectionState::Connected => 1,
        ConnectionState::Reconnecting => 2,
    }
}

/// Tracks the connection's state from the client's events and the layout's readiness.
pub(crate) struct StateReporter {
    pub shared: Arc<Shared>,
    pub out: Completer,
    pub layout_ready: AtomicBool,
    pub socket_up: AtomicBool,
    /// Signalled on every reconnection, so the layout is checked again (a new, empty server).
    pub reconnected: Notify,
}

impl StateReporter {
    fn set(&self, state: ConnectionState) {
        let code = state_code(state);
        if self.shared.state.swap(code, Ordering::AcqRel) != code {
            info!(state = state.as_str(), "cluster connection");
            self.out.send(ClusterCompletion::Connection { state });
        }
    }

    pub fn on_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                let was_up = self.socket_up.swap(true, Ordering::AcqRel);
                if self.layout_ready.load(Ordering::Acquire) {
                    if !was_up {
                        self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.set(ConnectionState::Connected);
                    self.reconnected.notify_one();
                }
            }
            async_nats::Event::Disconnected => {
                self.socket_up.store(false, Ordering::Release);
                self.set(ConnectionState::Reconnecting);
            }
            async_nats::Event::Closed => {
                self.socket_up.store(false, Ordering::Release);
                self.set(ConnectionState::Disconnected);
            }
            other => debug!(event = %other, "nats client event"),
        }
    }

    pub fn layout_done(&self) {
        self.layout_ready.store(true, Ordering::Release);
        if self.socket_up.load(Ordering::Acquire) {
            self.set(ConnectionState::Connected);
        }
    }
}

/// The NATS objects every task uses.
#[derive(Clone)]
pub(crate) struct Nats {
    pub client: Client,
    pub js: jetstream::Context,
    pub registry: kv::Store,
    pub owners: kv::Store,
    pub instances: kv::Store,
    pub events: stream::Stream,
    pub registry_stream: stream::Stream,
    pub instances_stream: stream::Stream,
}

// `Shutdown` is sent once; boxing every command to shrink it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Cmd(ClusterCommand),
    Shutdown,
}

/// Holds the engine's per-session state; lives on the engine thread.
pub(crate) struct Engine {
    pub cfg: Arc<ClusterConfig>,
    pub nats: Nats,
    pub out: Completer,
    pub shared: Arc<Shared>,
    /// session → (our lease value, its revision).
    pub(crate) leases: Arc<Mutex<HashMap<String, (LeaseValue, u64)>>>,
    /// session → the gate its lease operations pass one at a time.
    pub(crate) lease_gates: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The registry watch and the liveness heartbeat.
    background: Vec<AbortHandle>,
    pub(crate) writers: HashMap<String, mpsc::UnboundedSender<WriterJob>>,
    pub(crate) subscriptions: HashMap<String, AbortHandle>,
    /// Requests awaiting the core's `Reply`: id → (reply subject, when it arrived). Entries
    /// older than twice the operation timeout (the requester has given up) are dropped.
    pub(crate) replies: Arc<Mutex<BTreeMap<u64, (Subject, Instant)>>>,
    pub(crate) next_request: Arc<AtomicU64>,
    /// session → (seq → stream sequence): positions learned from appends and fetches, so a
    /// fetch starts near its first event instead of at the subject's first message.
    pub(crate) marks: Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>,
}

/// See README (Layout).
pub fn registry_key(tenant_id: &str, session_id: &str) -> String {
    format!("{}.{}", encode(tenant_id), encode(session_id))
}
/// See README (Layout).
pub fn event_subject(tenant_id: &str, session_id: &str) -> String {
    format!("dim.ev.{}.{}", encode(tenant_id), encode(session_id))
}
/// See README (Layout).
pub fn live_subject(tenant_id: &str, session_id: &str) -> String {
    format!("dim.live.{}.{}", encode(tenant_id), encode(session_id))
}
/// See README (Layout).
pub fn command_subject(session_id: &str) -> String {
    format!("dim.cmd.{}", encode(session_id))
}
/// See README (Layout).
pub fn tenant_subject(tenant_id: &str) -> String {
    format!("dim.tenant.{}", encode(tenant_id))
}

pub(crate) fn nats_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(ClusterError::Timeout))
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads up to `limit` messages of `filter` from `stream` with an ordered pull consumer; the
/// bool says more were pending. Reads only the filtered subjects (the server's per-subject
/// index), never the whole stream.
pub(crate) async fn read_ordered(
    stream: &stream::Stream,
    filter: String,
    deliver_policy: DeliverPolicy,
    limit: usize,
    mut keep: impl FnMut(&jetstream::Message) -> bool,
) -> Result<(Vec<jetstream::Message>, bool), ClusterError> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    // The consumer is deleted once read (else it lingers on the server for its 30 s inactivity
    // threshold); in the background, after the read's messages stream is dropped.
    let name = consumer.cached_info().name.clone();
    let cleanup = stream.clone();
    let result = async move {
        if consumer.cached_info().num_pending == 0 {
            return Ok((Vec::new(), false));
        }
        let mut messages = consumer.messages().await.map_err(nats_err)?;
        let mut out = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats_err)?;
            let pending = message.info().map_err(nats_err)?.pending;
            if keep(&message) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(message);
            }
            if pending == 0 {
                return Ok((out, false));
            }
        }
        Err(ClusterError::Nats("the consumer ended early".into()))
    }
    .await;
    tokio::spawn(async move {
        let _ = cleanup.delete_consumer(&name).await;
    });
    result
}

impl Engine {
    pub fn new(cfg: Arc<ClusterConfig>, nats: Nats, out: Completer, shared: Arc<Shared>) -> Engine {
        Engine {
            cfg,
            nats,
            out,
            shared,
            leases: Arc::default(),
            lease_gates: Arc::default(),
            background: Vec::new(),
            writers: HashMap::new(),
            subscriptions: HashMap::new(),
            replies: Arc::default(),
            next_request: Arc::new(AtomicU64::new(1)),
            marks: Arc::default(),
        }
    }

    /// Starts the background tasks: the registry watch feeding the cache, the liveness entry.
    pub fn start_background(&mut self) {
        let registry = self.nats.registry.clone();
        let shared = self.shared.clone();
        let watch = tokio::spawn(watch_registry(registry, shared));
        let instances = self.nats.instances.clone();
        let cfg = self.cfg.clone();
        let heartbeat = tokio::spawn(async move {
            let started = unix_ms();
            let key = encode(&cfg.instance_id);
            loop {
                let info = InstanceInfo {
                    instance: cfg.instance_id.clone(),
                    started_at_ms: started,
                    heartbeat_at_ms: unix_ms(),
                };
                if let Ok(value) = serde_json::to_vec(&info) {
                    let put = instances.put(key.as_str(), value.into());
                    if let Ok(Err(e)) = tokio::time::timeout(cfg.op_timeout, put).await {
                        debug!(error = %e, "instance heartbeat failed");
                    }
                }
                tokio::time::sleep(cfg.instance_heartbeat).await;
            }
        });
        self.background = vec![watch.abort_handle(), heartbeat.abort_handle()];
    }

    /// At shutdown: stops the background tasks and removes this instance's liveness entry
    /// (best effort, bounded), so `/health` elsewhere stops listing it at once.
    pub async fn stop(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
        let forget = self.nats.instances.delete(encode(&self.cfg.instance_id));
        let _ = tokio::time::timeout(Duration::from_secs(1), forget).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.nats.client.flush()).await;
    }

    pub fn handle(&mut self, cmd: ClusterCommand) {
        // While NATS is unreachable, requests are refused at once rather than buffered by the
        // client (a buffered write could land long after its caller was told it failed).
        if state_from(self.shared.state.load(Ordering::Acquire)) != ConnectionState::Connected {
            // Appends go through their writer (which checks too), so they stay in order.
            if !matches!(cmd, ClusterCommand::Append { .. }) {
                if let Some(refusal) = cmd.refusal(ClusterError::Unavailable) {
                    self.out.send(refusal);
                    return;
                }
            }
        }
        let t = self.cfg.op_timeout;
        let out = self.out.clone();
        match cmd {
            ClusterCommand::RegistryCreate { .. }
            | ClusterCommand::RegistryUpdate { .. }
            | ClusterCommand::RegistryDelete { .. }
            | ClusterCommand::RegistryGet { .. }
            | ClusterCommand::RegistryList { .. }
            | ClusterCommand::AcquireLease { .. }
            | ClusterCommand::RenewLease { .. }
            | ClusterCommand::ReleaseLease { .. }
            | ClusterCommand::GetLease { .. }
            | ClusterCommand::ListInstances { .. } => self.kv_command(cmd, t, out),
            ClusterCommand::OpenLog { .. }
            | ClusterCommand::CloseLog { .. }
            | ClusterCommand::Append { .. }
            | ClusterCommand::Fetch { .. }
            | ClusterCommand::PurgeLog { .. } => self.log_command(cmd, t, out),
            _ => self.message_command(cmd, t, out),
        }
    }
}
