//! Cluster mode, the gateway's side (`/work/shared/CLUSTER.md`, issue 16): what the gateway
//! decides with the cluster engine's commands and completions (`crate::cluster`). Time comes in
//! as `now`; nothing here does I/O.
//!
//! - `registry.rs`: the registry in `dim_registry` (durable replies on the acknowledged KV write,
//!   compare-and-set on revisions, storage's commands mapped);
//! - `notices.rs`: tenant notifications between instances;
//! - `feed.rs`: sessions owned by another instance, delivered here in `seq` order from the live
//!   subscription, with gap fetches;
//! - `owner.rs`: ownership (lease acquire, renew, loss, release), the log opened and appended,
//!   take-over with the epoch rule;
//! - `forward.rs`: client requests routed (forwarded to the owner, or held for a registry read,
//!   a lease, a feed), and the owner's side (replies relayed by request).

mod feed;
mod forward;
mod history;
mod notices;
mod owner;
mod registry;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::{ClusterCommand, ClusterCompletion, ClusterMode, ConnectionState};
use crate::ids::{ConnectionId, SessionId};
use crate::protocol::request::RequestContext;
use crate::storage::StorageCompletion;
use crate::{Event, Gateway};

pub(crate) use forward::RELAY_BASE;

/// Cluster mode's state in the gateway.
pub(crate) struct ClusterState {
    pub(crate) mode: ClusterMode,
    pub(crate) connection: ConnectionState,
    /// Sessions this instance holds the lease of.
    pub(crate) owned: HashMap<SessionId, owner::Owned>,
    /// Sessions whose lease is being acquired, with the requests waiting for it.
    pub(crate) acquiring: HashMap<SessionId, owner::Acquiring>,
    /// Sessions owned elsewhere with watchers here.
    pub(crate) feeds: HashMap<SessionId, feed::Feed>,
    /// Each session's registry entry as known here, and its writes.
    pub(crate) registry: HashMap<String, registry::Reg>,
    /// The session whose registry write the next `CommitNow` waits for.
    pub(crate) last_write: Option<String>,
    /// Commands in flight, by token.
    pub(crate) pending: HashMap<u64, Pending>,
    /// Tenants whose notifications this instance receives.
    pub(crate) watching: HashSet<String>,
    /// Pseudo connections of forwarded requests, and the engine's request each one answers.
    pub(crate) relays: HashMap<ConnectionId, (u64, Instant)>,
    pub(crate) next_relay: u64,
    /// Storage completions the core answers itself (there is no storage for them here).
    pub(crate) deferred: VecDeque<StorageCompletion>,
    /// When the lease timers next run.
    pub(crate) tick_at: Option<Instant>,
    /// The latest `now` an input carried (for the completions answered in `poll_event`).
    pub(crate) last_now: Option<Instant>,
}

/// A client request held until the cluster answers something.
#[derive(Clone)]
pub(crate) struct Deferred {
    pub(crate) ctx: RequestContext,
    pub(crate) text: Arc<str>,
    pub(crate) stage: Stage,
}

/// What was already done for a held request (so it is not done twice).
#[derive(Clone, Copy, Default)]
pub(crate) struct Stage {
    /// The registry was read for the session it names.
    pub(crate) looked_up: bool,
    /// The tenant's registry was listed.
    pub(crate) listed: bool,
    /// It was forwarded once (and found no owner, or the owner answered it).
    pub(crate) forwarded: bool,
    /// The lease was tried once.
    pub(crate) acquired: bool,
}

/// A command in flight and what to do with its answer.
pub(crate) enum Pending {
    Registry {
        session_id: String,
    },
    Get {
        session_id: String,
        then: Option<Deferred>,
    },
    List {
        then: Deferred,
    },
    Acquire(SessionId),
    Renew(SessionId),
    Release,
    OpenLog(SessionId),
    Fetch(SessionId),
    /// A storage query answered from the log (`EventsAfter`).
    Query,
    /// `get_history` rebuilt from the log.
    History(Box<history::HistoryRead>),
    Forward {
        session_id: String,
        then: Deferred,
    },
    Purge,
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
            owned: HashMap::new(),
            acquiring: HashMap::new(),
            feeds: HashMap::new(),
            registry: HashMap::new(),
            last_write: None,
            pending: HashMap::new(),
            watching: HashSet::new(),
            relays: HashMap::new(),
            next_relay: 0,
            deferred: VecDeque::new(),
            tick_at: None,
            last_now: None,
        }));
    }

    /// A completion from the cluster engine.
    pub fn handle_cluster(&mut self, completion: ClusterCompletion, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.last_now = Some(now);
        use ClusterCompletion as C;
        match completion {
            C::Connection { state } => {
                let back = state == ConnectionState::Connected
                    && cluster.connection != ConnectionState::Connected;
                cluster.connection = state;
                if back {
                    // Live events may have been lost while the connection was down: every
                    // feed reads the log from what it delivered.
                    let feeds: Vec<SessionId> = cluster.feeds.keys().cloned().collect();
                    for session_id in feeds {
                        self.feed_resync(&session_id);
                    }
                }
            }
            C::Registry { token, result } => self.registry_written(token, result, now),
            C::RegistryEntry { token, result } => self.registry_read(token, result, now),
            C::RegistryList { token, result } => self.registry_listed(token, result, now),
            C::Lease { token, result, .. } => self.lease_answered(token, result, now),
            C::Purged { token, .. } => {
                self.take_pending(token, |p| matches!(p, Pending::Purge));
            }
            C::LeaseHolder { .. } | C::Instances { .. } => {}
            C::LogOpened { token, result, .. } => self.log_opened(token, result, now),
            C::Appended {
                session_id,
                seq,
                result,
            } => self.appended(&session_id, seq, result, now),
            C::Fetched { token, result } => self.fetched(token, result, now),
            C::LiveEvent {
                session_id, event, ..
            } => self.live_event(&session_id, event, now),
            C::Subscribed { session_id, .. } => self.feed_subscribed(&session_id, now),
            C::CommandRequest {
                session_id,
                request,
                payload,
            } => self.command_request(&session_id, request, &payload, now),
            C::Serving { .. } | C::Watching { .. } | C::Failed { .. } => {}
            C::Forwarded { token, result } => self.forwarded(token, result, now),
            C::TenantNotice { payload, .. } => self.tenant_notice(&payload, now),
        }
        self.schedule_gateway_timer();
    }

    /// Cluster mode's state for `/health`; `None` in single-node mode.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        let cluster = self.cluster.as_ref()?;
        let mut owned: Vec<String> = cluster.owned.keys().map(|id| id.to_string()).collect();
        owned.sort();
        Some(ClusterStatus {
            instance_id: cluster.mode.instance_id.clone(),
            connection: cluster.connection,
            owned,
        })
    }

    pub(crate) fn cluster_command(&mut self, command: ClusterCommand) {
        self.events.push_back(Event::Cluster(command));
    }

    pub(crate) fn cluster_pending(&mut self, pending: Pending) -> u64 {
        let token = self.next_token();
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.pending.insert(token, pending);
        }
        token
    }

    /// The command in flight under `token`, if it is of the kind `of` accepts (a completion of
    /// another kind under the same token is not its answer and leaves it waiting).
    pub(crate) fn take_pending(&mut self, token: u64, of: fn(&Pending) -> bool) -> Option<Pending> {
        let pending = &mut self.cluster.as_mut()?.pending;
        if !pending.get(&token).is_some_and(of) {
            return None;
        }
        pending.remove(&token)
    }

    /// The instance's id (empty in single-node mode).
    pub(crate) fn instance_id(&self) -> &str {
        self.cluster
            .as_ref()
            .map_or("", |cluster| cluster.mode.instance_id.as_str())
    }

    /// Whether NATS is reachable (always, in single-node mode).
    pub(crate) fn cluster_connected(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.connection == ConnectionState::Connected)
    }

    /// The next storage completion the core answers itself in cluster mode, handled now
    /// (`poll_event` calls it when its queue is empty).
    pub(crate) fn run_deferred(&mut self) -> bool {
        let Some((completion, now)) = self.cluster.as_mut().and_then(|cluster| {
            let now = cluster.last_now?;
            Some((cluster.deferred.pop_front()?, now))
        }) else {
            return false;
        };
        self.handle_storage(completion, now);
        true
    }

    /// The connection is gone: requests of it still waiting for the cluster are forgotten, so
    /// no answer ever reaches the next connection given its id.
    pub(crate) fn connection_gone_cluster(&mut self, id: ConnectionId) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let mine = |deferred: &Deferred| deferred.ctx.connection == id;
        cluster.pending.retain(|_, pending| match pending {
            Pending::List { then } | Pending::Forward { then, .. } => !mine(then),
            Pending::Get { then, .. } => {
                if then.as_ref().is_some_and(mine) {
                    *then = None;
                }
                true
            }
            _ => true,
        });
        for acquiring in cluster.acquiring.values_mut() {
            acquiring.waiting.retain(|deferred| !mine(deferred));
        }
        for feed in cluster.feeds.values_mut() {
            feed.forget(id);
        }
    }

    pub(crate) fn is_owned(&self, session_id: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|cluster| cluster.owned.contains_key(session_id))
    }
}
