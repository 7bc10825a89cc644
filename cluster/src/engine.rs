//! The async side: one current-thread tokio runtime on the engine's own thread, the NATS client,
//! and a task per operation (appends run in order per session on one writer task each).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use crossbeam_channel::Sender;
use diminuendo_core::Wake;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::encode::{decode, encode};
use crate::types::*;
use crate::{layout, ClusterConfig};

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

pub(crate) enum Msg {
    Cmd(ClusterCommand),
    Shutdown,
}

enum WriterJob {
    Open {
        token: u64,
        tenant_id: String,
        session_id: String,
    },
    Append {
        session_id: String,
        seq: u64,
        epoch: String,
        payload: Bytes,
    },
}

/// Holds the engine's per-session state; lives on the engine thread.
pub(crate) struct Engine {
    pub cfg: Arc<ClusterConfig>,
    pub nats: Nats,
    pub out: Completer,
    pub shared: Arc<Shared>,
    /// session → (our lease value, its revision).
    leases: Arc<Mutex<HashMap<String, (LeaseValue, u64)>>>,
    writers: HashMap<String, mpsc::UnboundedSender<WriterJob>>,
    subscriptions: HashMap<String, AbortHandle>,
    replies: Arc<Mutex<HashMap<u64, Subject>>>,
    next_request: Arc<AtomicU64>,
    /// session → (seq → stream sequence): positions learned from appends and fetches, so a
    /// fetch starts near its first event instead of at the subject's first message.
    marks: Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>,
}

const SEQ_HEADER: &str = "Dim-Seq";
const EPOCH_HEADER: &str = "Dim-Epoch";
/// A position is remembered for every event whose seq is a multiple of this (and the latest).
const MARK_EVERY: u64 = 64;

/// See README (Layout).
pub fn registry_key(tenant_id: &str, session_id: &str) -> String {
    format!("{}.{}", encode(tenant_id), encode(session_id))
}
/// See README (Layout).
pub fn event_subject(tenant_id: &str, session_id: &str) -> String {
    format!("dim.ev.{}.{}", encode(tenant_id), encode(session_id))
}
/// See README (Layout).
pub fn command_subject(session_id: &str) -> String {
    format!("dim.cmd.{}", encode(session_id))
}
/// See README (Layout).
pub fn tenant_subject(tenant_id: &str) -> String {
    format!("dim.tenant.{}", encode(tenant_id))
}

fn nats_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

async fn bounded<T>(
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

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

fn parse_event(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stream_seq: Option<u64>,
) -> Result<LogEvent, ClusterError> {
    let seq = header(headers, SEQ_HEADER)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ClusterError::Corrupt("an event without a Dim-Seq header".into()))?;
    let epoch = header(headers, EPOCH_HEADER)
        .ok_or_else(|| ClusterError::Corrupt("an event without a Dim-Epoch header".into()))?
        .to_string();
    Ok(LogEvent {
        seq,
        epoch,
        stream_seq,
        payload,
    })
}

fn is_kv_removal(headers: Option<&HeaderMap>) -> bool {
    matches!(header(headers, "KV-Operation"), Some("DEL") | Some("PURGE"))
}

/// Reads up to `limit` messages of `filter` from `stream` with an ordered pull consumer; the
/// bool says more were pending. Reads only the filtered subjects (the server's per-subject
/// index), never the whole stream.
async fn read_ordered(
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

/// Latest value of every key under `prefix` (KV subjects), deletes left out.
async fn kv_latest(
    stream: &stream::Stream,
    filter: String,
) -> Result<Vec<(String, Bytes, u64)>, ClusterError> {
    let (messages, _) = read_ordered(
        stream,
        filter,
        DeliverPolicy::LastPerSubject,
        usize::MAX,
        |_| true,
    )
    .await?;
    let mut out = Vec::new();
    for m in messages {
        if is_kv_removal(m.headers.as_ref()) {
            continue;
        }
        let revision = m.info().map_err(nats_err)?.stream_sequence;
        out.push((m.subject.to_string(), m.payload.clone(), revision));
    }
    Ok(out)
}

fn parse_meta(value: &[u8]) -> Result<SessionMeta, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt(format!("registry value: {e}")))
}

fn cache_put(shared: &Shared, entry: RegistryEntry) {
    if let Ok(mut cache) = shared.cache.write() {
        let key = (entry.meta.tenant_id.clone(), entry.meta.id.clone());
        match cache.get(&key) {
            Some(old) if old.revision >= entry.revision => {}
            _ => {
                cache.insert(key, entry);
            }
        }
    }
}

fn cache_remove(shared: &Shared, tenant_id: &str, session_id: &str) {
    if let Ok(mut cache) = shared.cache.write() {
        cache.remove(&(tenant_id.to_string(), session_id.to_string()));
    }
}

impl Engine {
    pub fn new(cfg: Arc<ClusterConfig>, nats: Nats, out: Completer, shared: Arc<Shared>) -> Engine {
        Engine {
            cfg,
            nats,
            out,
            shared,
            leases: Arc::default(),
            writers: HashMap::new(),
            subscriptions: HashMap::new(),
            replies: Arc::default(),
            next_request: Arc::new(AtomicU64::new(1)),
            marks: Arc::default(),
        }
    }

    /// Starts the background tasks: the registry watch feeding the cache, the liveness entry.
    pub fn start_background(&self) {
        let registry = self.nats.registry.clone();
        let shared = self.shared.clone();
        tokio::spawn(watch_registry(registry, shared));
        let instances = self.nats.instances.clone();
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
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
            ClusterCommand::RegistryCreate { token, meta } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        let value = serde_json::to_vec(&meta).map_err(nats_err)?;
                        let key = registry_key(&meta.tenant_id, &meta.id);
                        kv.create(key, value.into())
                            .await
                            .map_err(|e| match e.kind() {
                                kv::CreateErrorKind::AlreadyExists => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if let Ok(revision) = result {
                        cache_put(&shared, RegistryEntry { meta, revision });
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryUpdate {
                token,
                meta,
                revision,
            } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        let value = serde_json::to_vec(&meta).map_err(nats_err)?;
                        let key = registry_key(&meta.tenant_id, &meta.id);
                        kv.update(key, value.into(), revision)
                            .await
                            .map_err(|e| match e.kind() {
                                kv::UpdateErrorKind::WrongLastRevision => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if let Ok(revision) = result {
                        cache_put(&shared, RegistryEntry { meta, revision });
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryDelete {
                token,
                tenant_id,
                session_id,
                revision,
            } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let key = registry_key(&tenant_id, &session_id);
                    let result = bounded(t, async {
                        kv.delete_expect_revision(key, revision)
                            .await
                            .map(|()| 0)
                            .map_err(|e| match e.kind() {
                                kv::UpdateErrorKind::WrongLastRevision => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if result.is_ok() {
                        cache_remove(&shared, &tenant_id, &session_id);
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryGet {
                token,
                tenant_id,
                session_id,
            } => {
                let kv = self.nats.registry.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        match kv
                            .entry(registry_key(&tenant_id, &session_id))
                            .await
                            .map_err(nats_err)?
                        {
                            Some(e) if e.operation == Operation::Put => Ok(Some(RegistryEntry {
                                meta: parse_meta(&e.value)?,
                                revision: e.revision,
                            })),
                            _ => Ok(None),
                        }
                    })
                    .await;
                    out.send(ClusterCompletion::RegistryEntry { token, result });
                });
            }
            ClusterCommand::RegistryList { token, tenant_id } => {
                let stream = self.nats.registry_stream.clone();
                tokio::spawn(async move {
                    let filter = format!("$KV.{}.{}.>", layout::REGISTRY, encode(&tenant_id));
                    let result = bounded(t, async {
                        let mut entries = Vec::new();
                        for (_, value, revision) in kv_latest(&stream, filter).await? {
                            entries.push(RegistryEntry {
                                meta: parse_meta(&value)?,
                                revision,
                            });
                        }
                        entries.sort_by(|a, b| {
                            (a.meta.created_at_ms, &a.meta.id)
                                .cmp(&(b.meta.created_at_ms, &b.meta.id))
                        });
                        Ok(entries)
                    })
                    .await;
                    out.send(ClusterCompletion::RegistryList { token, result });
                });
            }
            ClusterCommand::AcquireLease {
                token,
                session_id,
                fence,
            } => {
                let kv = self.nats.owners.clone();
                let leases = self.leases.clone();
                let value = LeaseValue {
                    instance: self.cfg.instance_id.clone(),
                    fence,
                };
                tokio::spawn(async move {
                    let key = encode(&session_id);
                    let result = bounded(t, async {
                        let bytes: Bytes = serde_json::to_vec(&value).map_err(nats_err)?.into();
                        // Two rounds: the holder's entry may expire between the refused create
                        // and the read that names it.
                        for _ in 0..2 {
                            match kv.create(key.as_str(), bytes.clone()).await {
                                Ok(revision) => return Ok(revision),
                                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                                    if let Some(held) = read_lease(&kv, &key).await? {
                                        return Err(ClusterError::LeaseHeld(held));
                                    }
                                }
                                Err(e) => return Err(nats_err(e)),
                            }
                        }
                        Err(ClusterError::Conflict)
                    })
                    .await;
                    if let (Ok(revision), Ok(mut map)) = (&result, leases.lock()) {
                        map.insert(session_id.clone(), (value, *revision));
                    }
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::RenewLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                let leases = self.leases.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let held = leases.lock().ok().and_then(|m| m.get(&session_id).cloned());
                    let result = match held {
                        None => Err(ClusterError::LeaseLost),
                        Some((value, revision)) => {
                            bounded(t, async {
                                let bytes = serde_json::to_vec(&value).map_err(nats_err)?;
                                kv.update(encode(&session_id), bytes.into(), revision)
                                    .await
                                    .map_err(|e| match e.kind() {
                                        kv::UpdateErrorKind::WrongLastRevision => {
                                            ClusterError::LeaseLost
                                        }
                                        _ => nats_err(e),
                                    })
                            })
                            .await
                        }
                    };
                    if let Ok(mut map) = leases.lock() {
                        match &result {
                            Ok(revision) => {
                                if let Some(entry) = map.get_mut(&session_id) {
                                    entry.1 = *revision;
                                }
                                shared.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ClusterError::LeaseLost) => {
                                map.remove(&session_id);
                                shared.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {}
                        }
                    }
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::ReleaseLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                let held = self
                    .leases
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&session_id));
                tokio::spawn(async move {
                    let result = match held {
                        None => Err(ClusterError::LeaseLost),
                        Some((_, revision)) => {
                            bounded(t, async {
                                kv.delete_expect_revision(encode(&session_id), Some(revision))
                                    .await
                                    .map(|()| 0)
                                    .map_err(|e| match e.kind() {
                                        kv::UpdateErrorKind::WrongLastRevision => {
                                            ClusterError::LeaseLost
                                        }
                                        _ => nats_err(e),
                                    })
                            })
                            .await
                        }
                    };
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::GetLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                tokio::spawn(async move {
                    let result = bounded(t, read_lease(&kv, &encode(&session_id))).await;
                    out.send(ClusterCompletion::LeaseHolder { token, result });
                });
            }
            ClusterCommand::OpenLog {
                token,
                tenant_id,
                session_id,
            } => self.writer(&session_id).send_job(
                WriterJob::Open {
                    token,
                    tenant_id,
                    session_id: session_id.clone(),
                },
                &out,
            ),
            ClusterCommand::CloseLog { session_id } => {
                self.writers.remove(&session_id);
            }
            ClusterCommand::Append {
                tenant_id: _,
                session_id,
                seq,
                epoch,
                payload,
            } => match self.writers.get(&session_id) {
                Some(w) => w.send_job(
                    WriterJob::Append {
                        session_id: session_id.clone(),
                        seq,
                        epoch,
                        payload,
                    },
                    &out,
                ),
                None => out.send(ClusterCompletion::Appended {
                    session_id,
                    seq,
                    result: Err(ClusterError::LogNotOpen),
                }),
            },
            ClusterCommand::Fetch {
                token,
                tenant_id,
                session_id,
                after_seq,
                from_stream_seq,
                limit,
            } => {
                let stream = self.nats.events.clone();
                let marks = self.marks.clone();
                let shared = self.shared.clone();
                let limit = limit.min(self.cfg.max_fetch) as usize;
                tokio::spawn(async move {
                    shared.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    let start = from_stream_seq.or_else(|| {
                        marks.lock().ok().and_then(|m| {
                            m.get(&session_id)
                                .and_then(|b| b.range(..=after_seq.saturating_add(1)).next_back())
                                .map(|(_, s)| *s)
                        })
                    });
                    let subject = event_subject(&tenant_id, &session_id);
                    let result = bounded(t, fetch(&stream, subject, after_seq, start, limit)).await;
                    if let (Ok((events, _)), Ok(mut m)) = (&result, marks.lock()) {
                        let b = m.entry(session_id.clone()).or_default();
                        for e in events {
                            if let Some(s) = e.stream_seq {
                                if e.seq % MARK_EVERY == 0 {
                                    b.insert(e.seq, s);
                                }
                            }
                        }
                    }
                    out.send(ClusterCompletion::Fetched { token, result });
                });
            }
            ClusterCommand::Subscribe {
                tenant_id,
                session_id,
            } => {
                let subject = event_subject(&tenant_id, &session_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Subscribed {
                        tenant_id,
                        session_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let mut sub = match sub {
                        Ok(sub) => {
                            out.send(ClusterCompletion::Subscribed {
                                tenant_id: tenant_id.clone(),
                                session_id: session_id.clone(),
                                result: Ok(()),
                            });
                            sub
                        }
                        Err(e) => {
                            out.send(ClusterCompletion::Subscribed {
                                tenant_id,
                                session_id,
                                result: Err(e),
                            });
                            return;
                        }
                    };
                    while let Some(m) = sub.next().await {
                        match parse_event(m.headers.as_ref(), m.payload, None) {
                            Ok(event) => out.send(ClusterCompletion::LiveEvent {
                                tenant_id: tenant_id.clone(),
                                session_id: session_id.clone(),
                                event,
                            }),
                            Err(error) => out.send(ClusterCompletion::Failed {
                                what: format!("live event of session {session_id}"),
                                error,
                            }),
                        }
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::Unsubscribe {
                tenant_id,
                session_id,
            } => self.untrack(&event_subject(&tenant_id, &session_id)),
            ClusterCommand::ServeCommands { session_id } => {
                let subject = command_subject(&session_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Serving {
                        session_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let replies = self.replies.clone();
                let next = self.next_request.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let ok = sub.as_ref().map(|_| ()).map_err(Clone::clone);
                    out.send(ClusterCompletion::Serving {
                        session_id: session_id.clone(),
                        result: ok,
                    });
                    let Ok(mut sub) = sub else { return };
                    while let Some(m) = sub.next().await {
                        let Some(reply) = m.reply else { continue };
                        let request = next.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut r) = replies.lock() {
                            r.insert(request, reply);
                        }
                        out.send(ClusterCompletion::CommandRequest {
                            session_id: session_id.clone(),
                            request,
                            payload: m.payload,
                        });
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::StopServing { session_id } => {
                self.untrack(&command_subject(&session_id))
            }
            ClusterCommand::Reply { request, payload } => {
                let reply = self
                    .replies
                    .lock()
                    .ok()
                    .and_then(|mut r| r.remove(&request));
                let client = self.nats.client.clone();
                tokio::spawn(async move {
                    let result = match reply {
                        None => Err(ClusterError::NotFound),
                        Some(subject) => {
                            bounded(t, async {
                                client.publish(subject, payload).await.map_err(nats_err)?;
                                client.flush().await.map_err(nats_err)
                            })
                            .await
                        }
                    };
                    if let Err(error) = result {
                        out.send(ClusterCompletion::Failed {
                            what: format!("reply to request {request}"),
                            error,
                        });
                    }
                });
            }
            ClusterCommand::Forward {
                token,
                session_id,
                payload,
            } => {
                let client = self.nats.client.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    let result = bounded(t, async {
                        client
                            .request(command_subject(&session_id), payload)
                            .await
                            .map(|m| m.payload)
                            .map_err(|e| match e.kind() {
                                async_nats::RequestErrorKind::NoResponders => {
                                    ClusterError::NoResponders
                                }
                                async_nats::RequestErrorKind::TimedOut => ClusterError::Timeout,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    out.send(ClusterCompletion::Forwarded { token, result });
                });
            }
            ClusterCommand::WatchTenant { tenant_id } => {
                let subject = tenant_subject(&tenant_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Watching {
                        tenant_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let ok = sub.as_ref().map(|_| ()).map_err(Clone::clone);
                    out.send(ClusterCompletion::Watching {
                        tenant_id: tenant_id.clone(),
                        result: ok,
                    });
                    let Ok(mut sub) = sub else { return };
                    while let Some(m) = sub.next().await {
                        out.send(ClusterCompletion::TenantNotice {
                            tenant_id: tenant_id.clone(),
                            payload: m.payload,
                        });
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::UnwatchTenant { tenant_id } => {
                self.untrack(&tenant_subject(&tenant_id))
            }
            ClusterCommand::Notify { tenant_id, payload } => {
                let client = self.nats.client.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        client
                            .publish(tenant_subject(&tenant_id), payload)
                            .await
                            .map_err(nats_err)?;
                        client.flush().await.map_err(nats_err)
                    })
                    .await;
                    if let Err(error) = result {
                        out.send(ClusterCompletion::Failed {
                            what: format!("notification to tenant {tenant_id}"),
                            error,
                        });
                    }
                });
            }
            ClusterCommand::ListInstances { token } => {
                let stream = self.nats.instances_stream.clone();
                tokio::spawn(async move {
                    let filter = format!("$KV.{}.>", layout::INSTANCES);
                    let result = bounded(t, async {
                        let mut list = Vec::new();
                        for (_, value, _) in kv_latest(&stream, filter).await? {
                            list.push(serde_json::from_slice::<InstanceInfo>(&value).map_err(
                                |e| ClusterError::Corrupt(format!("instance entry: {e}")),
                            )?);
                        }
                        Ok(list)
                    })
                    .await;
                    out.send(ClusterCompletion::Instances { token, result });
                });
            }
            ClusterCommand::PurgeLog {
                token,
                tenant_id,
                session_id,
            } => {
                let stream = self.nats.events.clone();
                if let Ok(mut m) = self.marks.lock() {
                    m.remove(&session_id);
                }
                self.writers.remove(&session_id);
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        stream
                            .purge()
                            .filter(event_subject(&tenant_id, &session_id))
                            .await
                            .map(|r| r.purged)
                            .map_err(nats_err)
                    })
                    .await;
                    out.send(ClusterCompletion::Purged { token, result });
                });
            }
        }
    }

    fn track(&mut self, key: String, task: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.subscriptions.insert(key, task.abort_handle()) {
            old.abort();
        }
    }

    fn untrack(&mut self, key: &str) {
        if let Some(task) = self.subscriptions.remove(key) {
            task.abort();
        }
    }

    /// The session's writer task (started on first use).
    fn writer(&mut self, session_id: &str) -> &mpsc::UnboundedSender<WriterJob> {
        if self.writers.get(session_id).is_none_or(|w| w.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            let w = Writer {
                nats: self.nats.clone(),
                out: self.out.clone(),
                shared: self.shared.clone(),
                marks: self.marks.clone(),
                timeout: self.cfg.op_timeout,
                subject: None,
                anchor: None,
                fenced: false,
            };
            tokio::spawn(w.run(rx));
            self.writers.insert(session_id.to_string(), tx);
        }
        // Inserted just above when missing.
        &self.writers[session_id]
    }
}

trait SendJob {
    fn send_job(&self, job: WriterJob, out: &Completer);
}

impl SendJob for mpsc::UnboundedSender<WriterJob> {
    fn send_job(&self, job: WriterJob, out: &Completer) {
        if let Err(mpsc::error::SendError(job)) = self.send(job) {
            match job {
                WriterJob::Open {
                    token, session_id, ..
                } => out.send(ClusterCompletion::LogOpened {
                    token,
                    session_id,
                    result: Err(ClusterError::Closed),
                }),
                WriterJob::Append {
                    session_id, seq, ..
                } => out.send(ClusterCompletion::Appended {
                    session_id,
                    seq,
                    result: Err(ClusterError::Closed),
                }),
            }
        }
    }
}

/// Returns once the server has processed everything this client sent before (a subscription is
/// then active for every other client): a message to a fresh inbox of our own, received back.
/// (`Client::flush` only writes the socket.)
async fn round_trip(client: &Client) -> Result<(), ClusterError> {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.map_err(nats_err)?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(nats_err)?;
    client.flush().await.map_err(nats_err)?;
    match probe.next().await {
        Some(_) => Ok(()),
        None => Err(ClusterError::Nats("the connection closed".into())),
    }
}

async fn read_lease(kv: &kv::Store, key: &str) -> Result<Option<LeaseInfo>, ClusterError> {
    match kv.entry(key).await.map_err(nats_err)? {
        Some(e) if e.operation == Operation::Put => Ok(Some(LeaseInfo {
            value: serde_json::from_slice(&e.value)
                .map_err(|e| ClusterError::Corrupt(format!("lease value: {e}")))?,
            revision: e.revision,
        })),
        _ => Ok(None),
    }
}

async fn last_event(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<LogEvent>, ClusterError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => parse_event(Some(&m.headers), m.payload, Some(m.sequence)).map(Some),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats_err(e)),
    }
}

async fn fetch(
    stream: &stream::Stream,
    subject: String,
    after_seq: u64,
    start: Option<u64>,
    limit: usize,
) -> Result<(Vec<LogEvent>, bool), ClusterError> {
    let read = |policy: DeliverPolicy| {
        let subject = subject.clone();
        async move {
            let (messages, more) = read_ordered(stream, subject, policy, limit, |m| {
                // A message without a readable seq is kept, and reported as corrupt below.
                header(m.headers.as_ref(), SEQ_HEADER)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_none_or(|seq| seq > after_seq)
            })
            .await?;
            let mut events = Vec::with_capacity(messages.len());
            for m in messages {
                let stream_seq = m.info().map_err(nats_err)?.stream_sequence;
                events.push(parse_event(
                    m.headers.as_ref(),
                    m.payload.clone(),
                    Some(stream_seq),
                )?);
            }
            Ok::<_, ClusterError>((events, more))
        }
    };
    if let Some(start_sequence) = start {
        let (events, more) = read(DeliverPolicy::ByStartSequence { start_sequence }).await?;
        // A hint is trusted only when it provably skipped nothing wanted: the first event read
        // is the one after `after_seq`, or nothing was read and the log ends at `after_seq`.
        match events.first() {
            Some(first) if first.seq == after_seq + 1 => return Ok((events, more)),
            None => {
                let last = last_event(stream, &subject).await?;
                if last.is_none_or(|l| l.seq <= after_seq) {
                    return Ok((events, more));
                }
            }
            _ => {}
        }
    }
    read(DeliverPolicy::All).await
}

/// Appends one session's events in order, each anchored on the previous one's stream sequence.
struct Writer {
    nats: Nats,
    out: Completer,
    shared: Arc<Shared>,
    marks: Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>,
    timeout: Duration,
    subject: Option<String>,
    /// Stream sequence of the subject's last message as this owner knows it (0: none); `None`
    /// when the log is not open (never opened, or an append's outcome is unknown).
    anchor: Option<u64>,
    /// The last append was refused: later ones are refused without publishing until reopened.
    fenced: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriterJob>) {
        while let Some(job) = rx.recv().await {
            match job {
                WriterJob::Open {
                    token,
                    tenant_id,
                    session_id,
                } => {
                    let subject = event_subject(&tenant_id, &session_id);
                    let result =
                        bounded(self.timeout, last_event(&self.nats.events, &subject)).await;
                    match &result {
                        Ok(last) => {
                            self.anchor =
                                Some(last.as_ref().and_then(|e| e.stream_seq).unwrap_or(0));
                            self.fenced = false;
                            self.subject = Some(subject);
                        }
                        Err(_) => self.anchor = None,
                    }
                    self.out.send(ClusterCompletion::LogOpened {
                        token,
                        session_id,
                        result,
                    });
                }
                WriterJob::Append {
                    session_id,
                    seq,
                    epoch,
                    payload,
                } => {
                    let result = self.append(seq, epoch, payload).await;
                    if let (Ok(stream_seq), Ok(mut m)) = (&result, self.marks.lock()) {
                        let b = m.entry(session_id.clone()).or_default();
                        if seq % MARK_EVERY == 0 || b.is_empty() {
                            b.insert(seq, *stream_seq);
                        }
                    }
                    self.out.send(ClusterCompletion::Appended {
                        session_id,
                        seq,
                        result,
                    });
                }
            }
        }
    }

    async fn append(
        &mut self,
        seq: u64,
        epoch: String,
        payload: Bytes,
    ) -> Result<u64, ClusterError> {
        let (Some(anchor), Some(subject)) = (self.anchor, self.subject.clone()) else {
            return Err(if self.fenced {
                ClusterError::Fenced { last: None }
            } else {
                ClusterError::LogNotOpen
            });
        };
        if state_from(self.shared.state.load(Ordering::Acquire)) != ConnectionState::Connected {
            return Err(ClusterError::Unavailable);
        }
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(SEQ_HEADER, seq.to_string());
        headers.insert(EPOCH_HEADER, epoch);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .expected_last_subject_sequence(anchor);
        let js = self.nats.js.clone();
        let sent = bounded(self.timeout, async {
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| (e.kind(), nats_err(e)));
            match ack {
                Ok(ack) => ack.await.map_err(|e| {
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                        ClusterError::Fenced { last: None }
                    } else {
                        nats_err(e)
                    }
                }),
                Err((_, e)) => Err(e),
            }
        })
        .await;
        match sent {
            Ok(ack) => {
                self.anchor = Some(ack.sequence);
                let stats = &self.shared.stats;
                let nanos = started.elapsed().as_nanos() as u64;
                stats.appends.fetch_add(1, Ordering::Relaxed);
                stats.append_nanos_total.fetch_add(nanos, Ordering::Relaxed);
                stats.append_nanos_max.fetch_max(nanos, Ordering::Relaxed);
                Ok(ack.sequence)
            }
            Err(ClusterError::Fenced { .. }) => {
                self.anchor = None;
                self.fenced = true;
                self.shared
                    .stats
                    .appends_fenced
                    .fetch_add(1, Ordering::Relaxed);
                let last = bounded(self.timeout, last_event(&self.nats.events, &subject))
                    .await
                    .ok()
                    .flatten()
                    .map(Box::new);
                warn!(subject, seq, "append refused: fenced");
                Err(ClusterError::Fenced { last })
            }
            Err(e) => {
                // Whether it landed is unknown: the next append must not guess an anchor.
                self.anchor = None;
                Err(e)
            }
        }
    }
}

/// Keeps the registry cache current; restarts the watch (from the last revision seen) when it
/// ends, e.g. after the server restarted.
async fn watch_registry(kv: kv::Store, shared: Arc<Shared>) {
    let mut last_revision = 0u64;
    loop {
        // First the latest value of every key, then every change; after a restart of the watch,
        // every change since the last one seen.
        let watch = if last_revision == 0 {
            kv.watch_with_history(">").await
        } else {
            kv.watch_all_from_revision(last_revision + 1).await
        };
        match watch {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(e) => apply_watch_entry(&shared, &e, &mut last_revision),
                        Err(e) => {
                            debug!(error = %e, "registry watch error");
                            break;
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "registry watch could not start"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn apply_watch_entry(shared: &Shared, e: &kv::Entry, last_revision: &mut u64) {
    *last_revision = (*last_revision).max(e.revision);
    let Some((t, s)) = e.key.split_once('.') else {
        return;
    };
    let (Some(tenant_id), Some(session_id)) = (decode(t), decode(s)) else {
        return;
    };
    if e.operation == Operation::Put {
        match parse_meta(&e.value) {
            Ok(meta) => cache_put(
                shared,
                RegistryEntry {
                    meta,
                    revision: e.revision,
                },
            ),
            Err(err) => debug!(error = %err, key = %e.key, "unreadable registry entry"),
        }
    } else if let Ok(mut cache) = shared.cache.write() {
        if cache
            .get(&(tenant_id.clone(), session_id.clone()))
            .is_some_and(|c| c.revision < e.revision)
        {
            cache.remove(&(tenant_id, session_id));
        }
    }
}
