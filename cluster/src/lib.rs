//! Diminuendo's cluster engine: the state CLUSTER.md puts in NATS JetStream (the session
//! registry, owner leases, the event log, command forwarding, tenant notifications, instance
//! liveness), run by the NATS project's client (`async-nats`) on a thread of its own with a
//! small current-thread tokio runtime. The rest of the gateway sees a synchronous API, like the
//! storage crate's: [`Cluster::submit`] queues a [`ClusterCommand`] and never waits on the
//! network; [`ClusterCompletion`]s are queued and announced through the core's [`Wake`] hook.
//! See `README.md` for the layout in NATS and what each operation guarantees.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use diminuendo_cluster::*;
//! # struct W; impl diminuendo_core::Wake for W { fn wake(&self) {} }
//! let cluster = Cluster::start(ClusterConfig::new("nats://127.0.0.1:4222", "gw-a"), Arc::new(W))?;
//! cluster.submit(ClusterCommand::ListInstances { token: 1 })?;
//! // ... in the event loop, when woken:
//! let mut done = Vec::new();
//! cluster.drain_completions(&mut done);
//! # Ok::<(), ClusterError>(())
//! ```

#![forbid(unsafe_code)]

mod buckets;
mod config;
pub mod encode;
mod engine;
mod log;
mod messaging;
mod types;

pub use config::ClusterConfig;
pub use diminuendo_core::Wake;
pub use types::*;

use crossbeam_channel::Receiver;
use engine::{Completer, Engine, Msg, Nats, Shared, StateReporter};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Names of the stream and buckets (see README).
pub mod layout {
    /// KV bucket of the session registry.
    pub const REGISTRY: &str = "dim_registry";
    /// KV bucket of the owner leases.
    pub const OWNERS: &str = "dim_owners";
    /// KV bucket of instance liveness.
    pub const INSTANCES: &str = "dim_instances";
    /// The event log stream.
    pub const EVENTS: &str = "DIM_EVENTS";
    /// Its subjects.
    pub const EVENT_SUBJECTS: &str = "dim.ev.>";
    /// Where the stream republishes every stored event (`dim.live.<tenant>.<session>`), for
    /// live delivery.
    pub const LIVE_SUBJECTS: &str = "dim.live.>";
}

pub use engine::{command_subject, event_subject, live_subject, registry_key, tenant_subject};

/// Counters for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Appends acknowledged by JetStream.
    pub appends: u64,
    /// Publish-to-ack time of those appends, summed and at most, in ns.
    pub append_nanos_total: u64,
    pub append_nanos_max: u64,
    /// Appends refused by the expected-sequence check.
    pub appends_fenced: u64,
    /// Catch-up fetches.
    pub fetches: u64,
    /// Commands forwarded to an owner.
    pub forwarded: u64,
    /// Lease renewals that succeeded, and renewals that found the lease gone.
    pub lease_renewals: u64,
    pub leases_lost: u64,
    /// Reconnections after a lost connection.
    pub reconnects: u64,
}

/// A running cluster engine. Dropping it shuts the engine down and joins its thread.
pub struct Cluster {
    tx: mpsc::UnboundedSender<Msg>,
    completions: Receiver<ClusterCompletion>,
    wake_pending: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    instance_id: String,
}

impl Cluster {
    /// Validates the settings (server URLs, credential and certificate files), starts the
    /// engine's thread and returns at once: the connection is made in the background (retried
    /// until it succeeds), then the stream and buckets are created or updated, then the state
    /// becomes [`ConnectionState::Connected`] (reported as a completion). Commands submitted
    /// before then wait for it (each bounded by `op_timeout` once started).
    pub fn start(config: ClusterConfig, wake: Arc<dyn Wake>) -> Result<Cluster, ClusterError> {
        config
            .validate()
            .map_err(|m| ClusterError::Nats(format!("cluster settings: {m}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctx, crx) = crossbeam_channel::unbounded();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let out = Completer {
            tx: ctx,
            wake,
            wake_pending: wake_pending.clone(),
        };
        let shared = Arc::new(Shared {
            state: AtomicU8::new(0),
            cache: Default::default(),
            stats: Default::default(),
        });
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let instance_id = config.instance_id.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || run(config, rx, out, thread_shared, started_tx))
            .map_err(|e| ClusterError::Nats(format!("could not start the cluster thread: {e}")))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Cluster {
                tx,
                completions: crx,
                wake_pending,
                shared,
                thread: Some(thread),
                instance_id,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ClusterError::Closed)
            }
        }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Queues a command; never waits on the network.
    pub fn submit(&self, cmd: ClusterCommand) -> Result<(), ClusterError> {
        self.tx
            .send(Msg::Cmd(cmd))
            .map_err(|_| ClusterError::Closed)
    }

    /// Queues a command like [`Cluster::submit`]; when the engine has stopped, the command comes
    /// back (so its caller can answer it with [`ClusterCommand::refusal`] without a clone).
    pub fn try_submit(&self, cmd: ClusterCommand) -> Result<(), Box<ClusterCommand>> {
        self.tx.send(Msg::Cmd(cmd)).map_err(|error| match error.0 {
            Msg::Cmd(cmd) => Box::new(cmd),
            // Only commands are sent here.
            Msg::Shutdown => Box::new(ClusterCommand::ListInstances { token: 0 }),
        })
    }

    /// One queued completion, if any.
    pub fn try_recv(&self) -> Option<ClusterCompletion> {
        self.wake_pending.store(false, Ordering::Release);
        self.completions.try_recv().ok()
    }

    /// Moves every queued completion into `out`; returns how many.
    pub fn drain_completions(&self, out: &mut Vec<ClusterCompletion>) -> usize {
        self.wake_pending.store(false, Ordering::Release);
        let before = out.len();
        out.extend(self.completions.try_iter());
        out.len() - before
    }

    /// The connection's state now (for `/health` and `/readyz`).
    pub fn connection_state(&self) -> ConnectionState {
        engine::state_from(self.shared.state.load(Ordering::Acquire))
    }

    /// The registry cache's entries of a tenant (fed by a watch of `dim_registry`; eventually
    /// consistent, and this instance's own acknowledged writes are in it at once), oldest first.
    pub fn cached_sessions(&self, tenant_id: &str) -> Vec<RegistryEntry> {
        let mut out: Vec<RegistryEntry> = match self.shared.cache.read() {
            Ok(cache) => cache
                .iter()
                .filter(|((t, _), _)| t == tenant_id)
                .map(|(_, e)| e.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| {
            (a.meta.created_at_ms, &a.meta.id).cmp(&(b.meta.created_at_ms, &b.meta.id))
        });
        out
    }

    /// One cached registry entry.
    pub fn cached_session(&self, tenant_id: &str, session_id: &str) -> Option<RegistryEntry> {
        self.shared.cache.read().ok().and_then(|c| {
            c.get(&(tenant_id.to_string(), session_id.to_string()))
                .cloned()
        })
    }

    /// Counters.
    pub fn stats(&self) -> ClusterStats {
        let s = &self.shared.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        ClusterStats {
            appends: l(&s.appends),
            append_nanos_total: l(&s.append_nanos_total),
            append_nanos_max: l(&s.append_nanos_max),
            appends_fenced: l(&s.appends_fenced),
            fetches: l(&s.fetches),
            forwarded: l(&s.forwarded),
            lease_renewals: l(&s.lease_renewals),
            leases_lost: l(&s.leases_lost),
            reconnects: l(&s.reconnects),
        }
    }

    /// Flushes what the client has buffered, closes the connection and joins the thread
    /// (blocking). Idempotent.
    pub fn shutdown_blocking(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.tx.send(Msg::Shutdown);
        if thread.join().is_err() {
            warn!("the cluster thread panicked");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown_blocking();
    }
}

/// The options the settings ask for; errors name the setting.
async fn connect_options(
    config: &ClusterConfig,
    reporter: Arc<StateReporter>,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let bad = |what: &str, e: std::io::Error| ClusterError::Nats(format!("{what}: {e}"));
    let mut opts = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| bad(&format!("--cluster-creds {}", path.display()), e))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(path) = &config.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| bad(&format!("--cluster-nkey {}", path.display()), e))?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if let Some((user, password)) = &config.user_password {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        opts = opts.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        if !ca.is_file() {
            return Err(ClusterError::Nats(format!(
                "--cluster-tls-ca {}: not a readable file",
                ca.display()
            )));
        }
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls_client_cert {
        for f in [cert, key] {
            if !f.is_file() {
                return Err(ClusterError::Nats(format!(
                    "--cluster-tls-cert/--cluster-tls-key {}: not a readable file",
                    f.display()
                )));
            }
        }
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required {
        opts = opts.require_tls(true);
    }
    if config.tls_first {
        opts = opts.tls_first();
    }
    Ok(opts
        .name(format!("diminuendo {}", config.instance_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(config.op_timeout)
        // Reconnect quickly at first, then every 2 s at most.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(50, 2000))
        })
        .event_callback(move |event| {
            let reporter = reporter.clone();
            async move { reporter.on_event(event) }
        }))
}

fn parse_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
    let servers: Result<Vec<_>, _> = url
        .split(',')
        .map(|u| {
            u.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| ClusterError::Nats(format!("--cluster {u:?}: {e}")))
        })
        .collect();
    let servers = servers?;
    if servers.is_empty() {
        return Err(ClusterError::Nats("--cluster: no server URL".into()));
    }
    Ok(servers)
}

/// Creates (or updates to this configuration) the stream and the buckets. Idempotent.
async fn ensure_layout(
    js: &async_nats::jetstream::Context,
    config: &ClusterConfig,
) -> Result<Nats, ClusterError> {
    use async_nats::jetstream::{kv, stream};
    let e = |what: &str, err: &dyn std::fmt::Display| ClusterError::Nats(format!("{what}: {err}"));
    let bucket = |name: &str, max_age: Duration| kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    };
    let registry = js
        .create_or_update_key_value(bucket(layout::REGISTRY, Duration::ZERO))
        .await
        .map_err(|err| e(layout::REGISTRY, &err))?;
    let owners = js
        .create_or_update_key_value(bucket(layout::OWNERS, config.lease_max_age()))
        .await
        .map_err(|err| e(layout::OWNERS, &err))?;
    let instances = js
        .create_or_update_key_value(bucket(layout::INSTANCES, config.instance_heartbeat * 3))
        .await
        .map_err(|err| e(layout::INSTANCES, &err))?;
    js.create_or_update_stream(stream::Config {
        name: layout::EVENTS.to_string(),
        subjects: vec![layout::EVENT_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        allow_direct: true,
        // Live delivery comes from here, not from the publishes: JetStream republishes only
        // what it stored, so a refused (fenced) append never reaches a live subscriber.
        republish: Some(stream::Republish {
            source: layout::EVENT_SUBJECTS.to_string(),
            destination: layout::LIVE_SUBJECTS.to_string(),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await
    .map_err(|err| e(layout::EVENTS, &err))?;
    let events = js
        .get_stream(layout::EVENTS)
        .await
        .map_err(|err| e(layout::EVENTS, &err))?;
    let registry_stream = js
        .get_stream(format!("KV_{}", layout::REGISTRY))
        .await
        .map_err(|err| e(layout::REGISTRY, &err))?;
    let instances_stream = js
        .get_stream(format!("KV_{}", layout::INSTANCES))
        .await
        .map_err(|err| e(layout::INSTANCES, &err))?;
    Ok(Nats {
        client: js.client(),
        js: js.clone(),
        registry,
        owners,
        instances,
        events,
        registry_stream,
        instances_stream,
    })
}

fn run(
    config: ClusterConfig,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    out: Completer,
    shared: Arc<Shared>,
    started: crossbeam_channel::Sender<Result<(), ClusterError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = started.send(Err(ClusterError::Nats(format!(
                "could not start the cluster runtime: {e}"
            ))));
            return;
        }
    };
    let reporter = Arc::new(StateReporter {
        shared: shared.clone(),
        out: out.clone(),
        layout_ready: AtomicBool::new(false),
        socket_up: AtomicBool::new(false),
        reconnected: Default::default(),
    });
    let thread_shared = shared.clone();
    runtime.block_on(async move {
        let shared = thread_shared;
        let servers = match parse_servers(&config.url) {
            Ok(s) => s,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let opts = match connect_options(&config, reporter.clone()).await {
            Ok(o) => o,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let client = match opts.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                let _ = started.send(Err(ClusterError::Nats(format!("--cluster: {e}"))));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(config.op_timeout)
            .build(client.clone());
        let config = Arc::new(config);

        // The layout, retried until it exists (NATS may be down at start). Commands wait for
        // it, in order; a shutdown ends the wait.
        let mut queued = Vec::new();
        let mut attempt = 0u32;
        let nats = loop {
            let attempt_layout = ensure_layout(&js, &config);
            tokio::pin!(attempt_layout);
            let result = loop {
                tokio::select! {
                    r = &mut attempt_layout => break r,
                    msg = rx.recv() => match msg {
                        None | Some(Msg::Shutdown) => return,
                        Some(Msg::Cmd(cmd)) => queued.push(cmd),
                    },
                }
            };
            match result {
                Ok(n) => break n,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        warn!(error = %e, "cluster: the stream and buckets are not ready yet");
                    }
                }
            }
            let delay = tokio::time::sleep(Duration::from_millis((attempt as u64 * 100).min(2000)));
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    _ = &mut delay => break,
                    msg = rx.recv() => match msg {
                        None | Some(Msg::Shutdown) => return,
                        Some(Msg::Cmd(cmd)) => queued.push(cmd),
                    },
                }
            }
        };
        reporter.layout_done();
        let mut engine = Engine::new(config.clone(), nats, out.clone(), shared.clone());
        engine.start_background();
        for cmd in queued {
            engine.handle(cmd);
        }
        serve(engine, rx, reporter, js).await;
    });
    // Dropping the runtime cancels every task and closes the connection.
    shared.state.store(0, Ordering::Release);
}

async fn serve(
    mut engine: Engine,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    reporter: Arc<StateReporter>,
    js: async_nats::jetstream::Context,
) {
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None | Some(Msg::Shutdown) => break,
                Some(Msg::Cmd(cmd)) => engine.handle(cmd),
            },
            _ = reporter.reconnected.notified() => {
                // A server that lost its state (a new, empty one) gets the layout again.
                let config = engine.cfg.clone();
                let js = js.clone();
                tokio::spawn(async move {
                    if let Err(e) = ensure_layout(&js, &config).await {
                        warn!(error = %e, "cluster: could not check the stream and buckets after reconnecting");
                    }
                });
            }
        }
    }
    engine.stop().await;
}
