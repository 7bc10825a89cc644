//! A model of the cluster engine (NATS JetStream as `diminuendo-cluster` uses it) and several
//! simulated gateways in cluster mode against it: a KV registry with revisions and
//! compare-and-set, leases that expire with simulated time, a log per session whose appends
//! are fenced by the appender's anchor (the expected last subject sequence), live delivery with
//! random delays (reordering, also within a session) and optional losses, request/reply, and
//! tenant notifications. Each gateway's command completions come back in order, after a delay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::cluster::{
    ClusterCommand, ClusterCompletion, ClusterError, ClusterMode, ConnectionState, LogEvent,
    SessionMeta,
};
use crate::sim::Sim;

mod kv;
use crate::CoreConfig;

/// The engine's state, shared by every instance.
#[derive(Default)]
pub struct SimEngine {
    /// The registry: session id → (value, revision).
    pub registry: BTreeMap<String, (SessionMeta, u64)>,
    revision: u64,
    /// Leases: session id → (instance index, revision, expiry).
    pub leases: BTreeMap<String, (usize, u64, Instant)>,
    /// Each session's log, in order.
    pub log: BTreeMap<String, Vec<LogEvent>>,
    stream_seq: u64,
    /// Each instance's append anchor per session (the stream sequence it expects last).
    anchors: BTreeMap<(usize, String), u64>,
    subscribers: BTreeSet<(usize, String)>,
    serving: BTreeMap<String, usize>,
    watching: BTreeSet<(usize, String)>,
    requests: BTreeMap<u64, (usize, u64)>,
    next_request: u64,
    /// Appends refused by the fence.
    pub fenced: u64,
}

/// Several gateways (`nodes`) in cluster mode against one `SimEngine`.
pub struct SimCluster {
    /// The instances (a killed one is replaced by a fresh gateway by `restart`).
    pub nodes: Vec<Sim>,
    /// The engine.
    pub engine: SimEngine,
    /// Per instance: its command completions, in order, with the step they are due at.
    queues: Vec<VecDeque<(u64, ClusterCompletion)>>,
    /// Live events and notifications: (due step, insertion, instance, completion).
    live: BTreeMap<(u64, u64), (usize, ClusterCompletion)>,
    inserted: u64,
    step: u64,
    rng: u64,
    /// Most steps a message waits.
    pub max_delay: u64,
    /// One live event in this many is lost (0: none).
    pub lose_one_in: u64,
    lease_ttl: Duration,
    /// Instances frozen (SIGSTOP): they get nothing and their clocks stand still; a command
    /// forwarded to one times out.
    frozen: BTreeSet<usize>,
    config: CoreConfig,
    renewal: Duration,
}

impl SimCluster {
    /// `n` instances named `gw-0`, `gw-1`, ..., renewing leases every `renewal` (leases expire
    /// after 3 × `renewal` without one).
    pub fn new(n: usize, config: CoreConfig, seed: u64, start: Instant, renewal: Duration) -> Self {
        let mut cluster = SimCluster {
            nodes: Vec::new(),
            engine: SimEngine::default(),
            queues: Vec::new(),
            live: BTreeMap::new(),
            inserted: 0,
            step: 0,
            rng: seed | 1,
            max_delay: 3,
            lose_one_in: 0,
            lease_ttl: renewal * 3,
            frozen: BTreeSet::new(),
            config,
            renewal,
        };
        for index in 0..n {
            let node = cluster.fresh(index, seed + index as u64, start);
            cluster.nodes.push(node);
            cluster.queues.push(VecDeque::new());
        }
        cluster
    }

    fn fresh(&self, index: usize, seed: u64, now: Instant) -> Sim {
        let mut sim = Sim::new(self.config.clone(), seed, now);
        let mut mode = ClusterMode::new(format!("gw-{index}"));
        mode.lease_renewal = self.renewal;
        sim.gateway.enable_cluster(mode);
        sim.cluster_input(ClusterCompletion::Connection {
            state: ConnectionState::Connected,
        });
        sim
    }

    fn random(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if below == 0 {
            0
        } else {
            self.rng % below
        }
    }

    /// The instance was killed (SIGKILL): its connections and agents are gone, its lease stays
    /// until it expires; a fresh gateway takes its place.
    pub fn restart(&mut self, index: usize) {
        let now = self.nodes[index].now();
        self.frozen.remove(&index);
        self.queues[index].clear();
        self.live.retain(|_, (node, _)| *node != index);
        self.engine.subscribers.retain(|(node, _)| *node != index);
        self.engine.watching.retain(|(node, _)| *node != index);
        self.engine.serving.retain(|_, node| *node != index);
        self.engine.anchors.retain(|(node, _), _| *node != index);
        // The dead process's reply inbox is gone: its forwarded requests are never answered.
        self.engine
            .requests
            .retain(|_, (origin, _)| *origin != index);
        let seed = 1000 + self.step + index as u64;
        self.nodes[index] = self.fresh(index, seed, now);
    }

    /// A partition: the instance's lease of `session_id` expires and its command subscription
    /// is gone, while the instance itself does not know yet (its renewal has not run).
    pub fn cut_off(&mut self, index: usize, session_id: &str) {
        if self
            .engine
            .leases
            .get(session_id)
            .is_some_and(|(holder, _, _)| *holder == index)
        {
            self.engine.leases.remove(session_id);
        }
        if self.engine.serving.get(session_id) == Some(&index) {
            self.engine.serving.remove(session_id);
        }
    }

    /// Moves every instance's clock (leases expire, timers fire); a frozen instance's clock
    /// stands still and catches up at once when it is thawed.
    pub fn advance(&mut self, by: Duration) {
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if !self.frozen.contains(&index) {
                node.advance(by);
            }
        }
        self.collect();
    }

    /// Whether the instance is frozen.
    pub fn is_frozen(&self, index: usize) -> bool {
        self.frozen.contains(&index)
    }

    /// The instance stops (SIGSTOP): it takes no input, and what is forwarded to it times out.
    pub fn freeze(&mut self, index: usize) {
        self.frozen.insert(index);
    }

    /// The instance continues (SIGCONT): its clock jumps to the others', its timers fire, what
    /// waited for it is delivered.
    pub fn thaw(&mut self, index: usize) {
        self.frozen.remove(&index);
        let Some(now) = (0..self.nodes.len())
            .filter(|other| !self.frozen.contains(other))
            .map(|other| self.nodes[other].now())
            .max()
        else {
            return;
        };
        let behind = now.saturating_duration_since(self.nodes[index].now());
        self.nodes[index].advance(behind);
        self.collect();
    }

    /// Takes every instance's commands into the engine.
    pub fn collect(&mut self) {
        for index in 0..self.nodes.len() {
            for command in self.nodes[index].take_cluster_commands() {
                self.execute(index, command);
            }
        }
    }

    /// One step: the messages due are delivered (the commands they cause are executed).
    /// Returns whether anything was delivered or is still on its way.
    pub fn step(&mut self) -> bool {
        self.collect();
        self.step += 1;
        let mut moved = false;
        for index in 0..self.nodes.len() {
            if self.frozen.contains(&index) {
                continue;
            }
            while self.queues[index]
                .front()
                .is_some_and(|(due, _)| *due <= self.step)
            {
                let Some((_, completion)) = self.queues[index].pop_front() else {
                    break;
                };
                if dump(index) {
                    eprintln!(
                        "done {index}: {}",
                        format!("{completion:?}")
                            .chars()
                            .take(160)
                            .collect::<String>()
                    );
                }
                self.nodes[index].cluster_input(completion);
                moved = true;
                self.collect();
            }
        }
        let due: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter(|(key, (index, _))| key.0 <= self.step && !self.frozen.contains(index))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            let Some((index, completion)) = self.live.remove(&key) else {
                continue;
            };
            self.nodes[index].cluster_input(completion);
            moved = true;
            self.collect();
        }
        moved || self.queues.iter().any(|q| !q.is_empty()) || !self.live.is_empty()
    }

    /// Steps until nothing is on its way (at most `limit` steps).
    pub fn settle(&mut self, limit: usize) {
        for _ in 0..limit {
            if !self.step() {
                self.collect();
                if self.queues.iter().all(VecDeque::is_empty) && self.live.is_empty() {
                    return;
                }
            }
        }
    }

    fn reply(&mut self, index: usize, completion: ClusterCompletion) {
        let delay = 1 + self.random(self.max_delay + 1);
        let due = self.queues[index]
            .back()
            .map_or(self.step + delay, |(last, _)| {
                (*last).max(self.step + delay)
            });
        self.queues[index].push_back((due, completion));
    }

    fn send_live(&mut self, index: usize, completion: ClusterCompletion) {
        let delay = 1 + self.random(self.max_delay * 2 + 1);
        self.inserted += 1;
        self.live
            .insert((self.step + delay, self.inserted), (index, completion));
    }

    fn now(&self, index: usize) -> Instant {
        self.nodes[index].now()
    }

    fn execute(&mut self, from: usize, command: ClusterCommand) {
        use ClusterCommand as C;
        use ClusterCompletion as D;
        let now = self.now(from);
        if dump(from) {
            eprintln!(
                "cmd {from}: {}",
                format!("{command:?}").chars().take(160).collect::<String>()
            );
        }
        let engine = &mut self.engine;
        match command {
            C::OpenLog {
                token, session_id, ..
            } => {
                let tail = engine
                    .log
                    .get(&session_id)
                    .and_then(|log| log.last().cloned());
                let anchor = tail.as_ref().and_then(|e| e.stream_seq).unwrap_or(0);
                engine.anchors.insert((from, session_id.clone()), anchor);
                self.reply(
                    from,
                    D::LogOpened {
                        token,
                        session_id,
                        result: Ok(tail),
                    },
                );
            }
            C::CloseLog { session_id } => {
                engine.anchors.remove(&(from, session_id));
            }
            C::Append {
                tenant_id,
                session_id,
                seq,
                epoch,
                payload,
            } => {
                let last = engine
                    .log
                    .get(&session_id)
                    .and_then(|log| log.last())
                    .and_then(|e| e.stream_seq)
                    .unwrap_or(0);
                let key = (from, session_id.clone());
                let result = match engine.anchors.get(&key) {
                    Some(anchor) if *anchor == last => {
                        engine.stream_seq += 1;
                        let event = LogEvent {
                            seq,
                            epoch,
                            stream_seq: Some(engine.stream_seq),
                            payload,
                        };
                        engine
                            .log
                            .entry(session_id.clone())
                            .or_default()
                            .push(event.clone());
                        engine.anchors.insert(key, engine.stream_seq);
                        let subscribers: Vec<usize> = engine
                            .subscribers
                            .iter()
                            .filter(|(_, s)| *s == session_id)
                            .map(|(node, _)| *node)
                            .collect();
                        let stored = engine.stream_seq;
                        for node in subscribers {
                            if self.lose_one_in > 0 && self.random(self.lose_one_in) == 0 {
                                // NATS loses live messages only across a reconnection: the
                                // instance is told, after the loss.
                                let due = self.step + 1 + self.random(self.max_delay * 2 + 1);
                                for state in
                                    [ConnectionState::Reconnecting, ConnectionState::Connected]
                                {
                                    self.inserted += 1;
                                    self.live.insert(
                                        (due, self.inserted),
                                        (node, D::Connection { state }),
                                    );
                                }
                                continue;
                            }
                            self.send_live(
                                node,
                                D::LiveEvent {
                                    tenant_id: tenant_id.clone(),
                                    session_id: session_id.clone(),
                                    event: event.clone(),
                                },
                            );
                        }
                        Ok(stored)
                    }
                    Some(_) => {
                        engine.fenced += 1;
                        engine.anchors.remove(&key);
                        Err(ClusterError::Fenced { last: None })
                    }
                    None => Err(ClusterError::LogNotOpen),
                };
                self.reply(
                    from,
                    D::Appended {
                        session_id,
                        seq,
                        result,
                    },
                );
            }
            C::Fetch {
                token,
                session_id,
                after_seq,
                limit,
                ..
            } => {
                let all: Vec<LogEvent> = engine
                    .log
                    .get(&session_id)
                    .map(|log| log.iter().filter(|e| e.seq > after_seq).cloned().collect())
                    .unwrap_or_default();
                let has_more = all.len() > limit as usize;
                let events = all.into_iter().take(limit as usize).collect();
                self.reply(
                    from,
                    D::Fetched {
                        token,
                        result: Ok((events, has_more)),
                    },
                );
            }
            C::Subscribe {
                tenant_id,
                session_id,
            } => {
                engine.subscribers.insert((from, session_id.clone()));
                self.reply(
                    from,
                    D::Subscribed {
                        tenant_id,
                        session_id,
                        result: Ok(()),
                    },
                );
            }
            C::Unsubscribe { session_id, .. } => {
                engine.subscribers.remove(&(from, session_id));
            }
            C::ServeCommands { session_id } => {
                engine.serving.insert(session_id.clone(), from);
                self.reply(
                    from,
                    D::Serving {
                        session_id,
                        result: Ok(()),
                    },
                );
            }
            C::StopServing { session_id } => {
                if engine.serving.get(&session_id) == Some(&from) {
                    engine.serving.remove(&session_id);
                }
            }
            C::Reply { request, payload } => {
                if let Some((origin, token)) = engine.requests.remove(&request) {
                    self.reply(
                        origin,
                        D::Forwarded {
                            token,
                            result: Ok(payload),
                        },
                    );
                }
            }
            C::Forward {
                token,
                session_id,
                payload,
            } => match engine.serving.get(&session_id).copied() {
                Some(owner) if self.frozen.contains(&owner) => self.reply(
                    from,
                    D::Forwarded {
                        token,
                        result: Err(ClusterError::Timeout),
                    },
                ),
                Some(owner) => {
                    engine.next_request += 1;
                    let request = engine.next_request;
                    engine.requests.insert(request, (from, token));
                    self.reply(
                        owner,
                        D::CommandRequest {
                            session_id,
                            request,
                            payload,
                        },
                    );
                }
                None => self.reply(
                    from,
                    D::Forwarded {
                        token,
                        result: Err(ClusterError::NoResponders),
                    },
                ),
            },
            C::WatchTenant { tenant_id } => {
                engine.watching.insert((from, tenant_id.clone()));
                self.reply(
                    from,
                    D::Watching {
                        tenant_id,
                        result: Ok(()),
                    },
                );
            }
            C::UnwatchTenant { tenant_id } => {
                engine.watching.remove(&(from, tenant_id));
            }
            C::Notify { tenant_id, payload } => {
                let watchers: Vec<usize> = engine
                    .watching
                    .iter()
                    .filter(|(_, t)| *t == tenant_id)
                    .map(|(node, _)| *node)
                    .collect();
                for node in watchers {
                    self.send_live(
                        node,
                        D::TenantNotice {
                            tenant_id: tenant_id.clone(),
                            payload: payload.clone(),
                        },
                    );
                }
            }
            C::ListInstances { token } => self.reply(
                from,
                D::Instances {
                    token,
                    result: Ok(Vec::new()),
                },
            ),
            C::PurgeLog {
                token, session_id, ..
            } => {
                let removed = engine.log.remove(&session_id).map_or(0, |l| l.len() as u64);
                self.reply(
                    from,
                    D::Purged {
                        token,
                        result: Ok(removed),
                    },
                );
            }
            command => self.kv(from, command, now),
        }
    }
}

/// Debugging: `DIMINUENDO_SIM_TRACE=N` prints instance N's commands and completions.
fn dump(index: usize) -> bool {
    std::env::var("DIMINUENDO_SIM_TRACE").is_ok_and(|v| v.parse() == Ok(index))
}
