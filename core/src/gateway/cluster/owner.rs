//! Ownership: the lease acquired, renewed on the gateway's timer, lost or released; the log
//! opened and appended; take-over.
//!
//! Take-over rule (CLUSTER.md, kept simple): the new owner opens the log and compares its last
//! event with the registry entry. An owner that deactivates cleanly writes the entry `inactive`
//! with its last event, acknowledged, before it releases the lease; only then (`inactive` and
//! the same `(seq, epoch)` as the log's last event) does the log continue under that epoch.
//! Anything else (the previous owner died or was cut off, so it may have shown its clients
//! events the log never stored; or the log lost events): a new epoch, continuing from the highest `seq` known, so a seq is never reused on any
//! instance. A turn the log shows started and not ended is closed with `turn_error`
//! `INTERRUPTED` by the new owner.

use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;

use super::{Deferred, Pending};
use crate::cluster::{ClusterCommand, ClusterError, LogEvent};
use crate::ids::SessionId;
use crate::protocol::ErrorCode;
use crate::session::state::SessionStatus;
use crate::Gateway;

/// A session this instance holds the lease of.
pub(crate) struct Owned {
    /// The last event JetStream acknowledged.
    pub(crate) acked: u64,
    last_renewed: Instant,
    renewing: bool,
    /// The session went `inactive`: the lease is released once the registry has its last event.
    releasing: bool,
}

/// A lease being acquired, and the requests waiting for it.
pub(crate) struct Acquiring {
    pub(crate) waiting: Vec<Deferred>,
    /// The log's tail once opened, while the watchers here catch up to it.
    takeover: Option<(u64, String, Option<String>)>,
}

/// What the tail's payload says of the turn it belongs to.
#[derive(Deserialize)]
struct TailEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "turnId")]
    turn_id: Option<String>,
}

impl Gateway {
    /// Acquires the session's lease for `deferred` (a `run_turn` or `steer` that found no
    /// owner); it runs here once the log is open.
    pub(crate) fn acquire(&mut self, session_id: &SessionId, deferred: Deferred) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let Some(acquiring) = cluster.acquiring.get_mut(session_id) {
            acquiring.waiting.push(deferred);
            return;
        }
        cluster.acquiring.insert(
            session_id.clone(),
            Acquiring {
                waiting: vec![deferred],
                takeover: None,
            },
        );
        let fence = self.next_token();
        let token = self.cluster_pending(Pending::Acquire(session_id.clone()));
        self.cluster_command(ClusterCommand::AcquireLease {
            token,
            session_id: session_id.to_string(),
            fence,
        });
    }

    pub(crate) fn lease_answered(
        &mut self,
        token: u64,
        result: Result<u64, ClusterError>,
        now: Instant,
    ) {
        match self.take_pending(token, |p| {
            matches!(
                p,
                Pending::Acquire(_) | Pending::Renew(_) | Pending::Release
            )
        }) {
            Some(Pending::Acquire(session_id)) => match result {
                Ok(_) => {
                    let tenant_id = self
                        .sessions
                        .get(&session_id)
                        .map(|s| s.record().tenant_id.clone())
                        .unwrap_or_default();
                    let token = self.cluster_pending(Pending::OpenLog(session_id.clone()));
                    self.cluster_command(ClusterCommand::OpenLog {
                        token,
                        tenant_id,
                        session_id: session_id.to_string(),
                    });
                }
                Err(error) => {
                    // Held by another instance (it started meanwhile): forward to it once more.
                    let retry = matches!(error, ClusterError::LeaseHeld(_));
                    self.acquire_failed(&session_id, retry, &error.to_string(), now);
                }
            },
            Some(Pending::Renew(session_id)) => {
                let Some(owned) = self
                    .cluster
                    .as_mut()
                    .and_then(|c| c.owned.get_mut(&session_id))
                else {
                    return;
                };
                owned.renewing = false;
                match result {
                    Ok(_) => {
                        owned.last_renewed = now;
                        self.metrics.cluster_lease_renewals += 1;
                    }
                    Err(ClusterError::LeaseLost) => self.lose(&session_id, now),
                    // Unknown outcome or NATS away: tried again at the next tick; the session
                    // is given up when no renewal succeeded for two intervals.
                    Err(_) => {}
                }
            }
            _ => {}
        }
    }

    fn acquire_failed(&mut self, session_id: &SessionId, retry: bool, reason: &str, now: Instant) {
        let Some(acquiring) = self
            .cluster
            .as_mut()
            .and_then(|c| c.acquiring.remove(session_id))
        else {
            return;
        };
        for mut deferred in acquiring.waiting {
            deferred.stage.acquired = true;
            if retry {
                deferred.stage.forwarded = false;
                self.rerun(deferred, now);
            } else {
                let message = format!("the session could not be activated here ({reason})");
                let request_id = deferred.ctx.request_id.as_deref();
                self.send_error(
                    deferred.ctx.connection,
                    ErrorCode::AgentUnavailable,
                    &message,
                    request_id,
                    now,
                );
            }
        }
    }

    /// The log is open: decide the next seq and the epoch, let the watchers here catch up to
    /// the tail, then take over.
    pub(crate) fn log_opened(
        &mut self,
        token: u64,
        result: Result<Option<LogEvent>, ClusterError>,
        now: Instant,
    ) {
        let Some(Pending::OpenLog(session_id)) =
            self.take_pending(token, |p| matches!(p, Pending::OpenLog(_)))
        else {
            return;
        };
        let tail = match result {
            Ok(tail) => tail,
            Err(error) => {
                self.release_lease(&session_id);
                self.acquire_failed(&session_id, false, &error.to_string(), now);
                return;
            }
        };
        let Some(session) = self.sessions.get(&session_id) else {
            self.release_lease(&session_id);
            self.acquire_failed(&session_id, false, "the session was deleted", now);
            return;
        };
        let local_seq = session.record().last_seq;
        let recorded = self
            .cluster
            .as_ref()
            .and_then(|c| c.registry.get(session_id.as_ref()))
            .and_then(|reg| reg.meta.clone())
            .map(|meta| (meta.last_seq, meta.epoch, meta.status == "inactive"))
            .unwrap_or_else(|| (local_seq, session.record().epoch.clone(), false));
        let (tail_seq, same) = match &tail {
            None => (0, recorded.0 == 0),
            Some(event) => (
                event.seq,
                recorded.2 && event.seq == recorded.0 && event.epoch == recorded.1,
            ),
        };
        let epoch = if same { recorded.1 } else { self.new_epoch() };
        let cut_turn = tail.as_ref().and_then(|event| {
            let parsed: TailEvent = serde_json::from_slice(&event.payload).ok()?;
            let ended = matches!(parsed.kind.as_str(), "turn_complete" | "turn_error");
            parsed.turn_id.filter(|_| !ended)
        });
        let last_seq = tail_seq.max(recorded.0).max(local_seq);
        if let Some(acquiring) = self
            .cluster
            .as_mut()
            .and_then(|c| c.acquiring.get_mut(&session_id))
        {
            acquiring.takeover = Some((last_seq, epoch, cut_turn));
        }
        // Watchers here first get every stored event up to the tail, in order.
        if local_seq < tail_seq && self.feed_catch_up(&session_id, tail_seq) {
            return;
        }
        self.finish_takeover(&session_id, now);
    }

    /// The watchers here have every stored event: this instance owns the session now.
    pub(crate) fn finish_takeover(&mut self, session_id: &SessionId, now: Instant) {
        // Only once the log is open (a feed's fetch may end before that).
        let opened = self
            .cluster
            .as_ref()
            .and_then(|c| c.acquiring.get(session_id))
            .and_then(|acquiring| acquiring.takeover.as_ref().map(|t| t.0));
        let Some(opened_at) = opened else {
            return;
        };
        let delivered = self
            .sessions
            .get(session_id)
            .map_or(0, |s| s.record().last_seq);
        if delivered > opened_at {
            // The log moved on since it was opened: the previous owner, cut off without knowing
            // yet, still appends. Open it again (appends anchored on the old tail would be
            // refused); it stops at its next renewal at the latest.
            if let Some(acquiring) = self
                .cluster
                .as_mut()
                .and_then(|c| c.acquiring.get_mut(session_id))
            {
                acquiring.takeover = None;
            }
            let tenant_id = self
                .sessions
                .get(session_id)
                .map(|s| s.record().tenant_id.clone())
                .unwrap_or_default();
            let token = self.cluster_pending(Pending::OpenLog(session_id.clone()));
            self.cluster_command(ClusterCommand::OpenLog {
                token,
                tenant_id,
                session_id: session_id.to_string(),
            });
            return;
        }
        let Some(acquiring) = self
            .cluster
            .as_mut()
            .and_then(|c| c.acquiring.remove(session_id))
        else {
            return;
        };
        let Some((last_seq, epoch, cut_turn)) = acquiring.takeover else {
            return;
        };
        self.drop_feed(session_id);
        let tenant_id = self
            .sessions
            .get(session_id)
            .map(|s| s.record().tenant_id.clone())
            .unwrap_or_default();
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.owned.insert(
                session_id.clone(),
                Owned {
                    acked: last_seq,
                    last_renewed: now,
                    renewing: false,
                    releasing: false,
                },
            );
            let next = now + cluster.mode.lease_renewal / 2;
            if cluster.tick_at.is_none_or(|at| at > next) {
                cluster.tick_at = Some(next);
            }
        }
        let _ = tenant_id;
        self.cluster_command(ClusterCommand::ServeCommands {
            session_id: session_id.to_string(),
        });
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.take_over(last_seq, epoch);
        }
        if let Some(turn_id) = cut_turn {
            self.drive(session_id, now, |session, ctx, out| {
                session.interrupt_cut_turn(ctx, &turn_id, out)
            });
        }
        self.persist_session(session_id);
        for deferred in acquiring.waiting {
            self.rerun(deferred, now);
        }
    }

    /// Appends an event the session published, if this instance owns it.
    pub(crate) fn append(&mut self, session_id: &str, seq: u64, payload: Bytes) {
        if !self.is_owned(session_id) {
            return;
        }
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let record = session.record();
        let command = ClusterCommand::Append {
            tenant_id: record.tenant_id.clone(),
            session_id: session_id.to_owned(),
            seq,
            epoch: record.epoch.clone(),
            payload,
        };
        self.cluster_command(command);
    }

    pub(crate) fn appended(
        &mut self,
        session_id: &str,
        seq: u64,
        result: Result<u64, ClusterError>,
        now: Instant,
    ) {
        let Some((id, _)) = self.sessions.get_key_value(session_id) else {
            return;
        };
        let id = id.clone();
        let Some(owned) = self.cluster.as_mut().and_then(|c| c.owned.get_mut(&id)) else {
            return;
        };
        match result {
            Ok(_) => {
                owned.acked = owned.acked.max(seq);
                self.flush_registry(session_id);
            }
            // Fenced (another owner appended), the lease gone, or an append whose outcome is
            // unknown: the session is no longer this instance's to publish.
            Err(_) => self.lose(&id, now),
        }
    }

    /// The acknowledged seq of a session owned here.
    pub(crate) fn acked_seq(&self, session_id: &str) -> Option<u64> {
        Some(self.cluster.as_ref()?.owned.get(session_id)?.acked)
    }

    /// `Some(acked)` when this instance owns the session and every event it published is
    /// acknowledged.
    pub(crate) fn owner_quiescent(&self, session_id: &str) -> Option<u64> {
        let acked = self.acked_seq(session_id)?;
        let published = self.sessions.get(session_id)?.record().last_seq;
        (acked == published).then_some(acked)
    }

    /// A registry write of the session's status: an owned session that went `inactive` releases
    /// its lease once the registry records its last event.
    pub(crate) fn note_status(&mut self, session_id: &str, status: SessionStatus) {
        if let Some(owned) = self
            .cluster
            .as_mut()
            .and_then(|c| c.owned.get_mut(session_id))
        {
            owned.releasing = status == SessionStatus::Inactive;
        }
    }

    /// A registry write was acknowledged: release the lease of an inactive session whose entry
    /// now records every event.
    pub(crate) fn registry_caught_up(&mut self, session_id: &str, now: Instant) {
        let Some((id, session)) = self.sessions.get_key_value(session_id) else {
            return;
        };
        let id = id.clone();
        let published = session.record().last_seq;
        let inactive = session.status() == SessionStatus::Inactive;
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let recorded = cluster
            .registry
            .get(session_id)
            .and_then(|reg| reg.meta.as_ref())
            .map(|meta| meta.last_seq);
        let Some(owned) = cluster.owned.get(&id) else {
            return;
        };
        if !(owned.releasing && inactive && owned.acked == published && recorded == Some(published))
        {
            return;
        }
        cluster.owned.remove(&id);
        self.release_lease(&id);
        self.cluster_command(ClusterCommand::CloseLog {
            session_id: id.to_string(),
        });
        self.cluster_command(ClusterCommand::StopServing {
            session_id: id.to_string(),
        });
        // Watchers here now follow the session from the log (whoever owns it next).
        self.feed_after_release(&id, now);
    }

    fn release_lease(&mut self, session_id: &SessionId) {
        let token = self.cluster_pending(Pending::Release);
        self.cluster_command(ClusterCommand::ReleaseLease {
            token,
            session_id: session_id.to_string(),
        });
    }

    /// Ownership is lost (lease gone, append fenced or of unknown outcome, renewals failing):
    /// the agent is killed at once and nothing more is published or appended here. Watchers
    /// here who may have seen events the log does not have are told to join again (an
    /// explicit reload); otherwise they follow the session from the log.
    pub(crate) fn lose(&mut self, session_id: &SessionId, now: Instant) {
        let Some(owned) = self
            .cluster
            .as_mut()
            .and_then(|c| c.owned.remove(session_id))
        else {
            return;
        };
        self.metrics.cluster_leases_lost += 1;
        self.cluster_command(ClusterCommand::CloseLog {
            session_id: session_id.to_string(),
        });
        self.cluster_command(ClusterCommand::StopServing {
            session_id: session_id.to_string(),
        });
        self.release_lease(session_id);
        let requester = self
            .drive(session_id, now, |session, _, out| {
                session.lose_ownership(out)
            })
            .flatten();
        if let Some((to, request_id)) = requester {
            self.send_error(
                to,
                ErrorCode::AgentUnavailable,
                "the session moved to another instance; try again",
                request_id.as_deref(),
                now,
            );
        }
        let published = self
            .sessions
            .get(session_id)
            .map_or(0, |s| s.record().last_seq);
        if published > owned.acked {
            self.reload_watchers(session_id, owned.acked, now);
        }
        self.feed_after_release(session_id, now);
    }

    /// The lease timers: renew each owned session's lease every `lease_renewal`; give up a
    /// session whose lease has not been renewed for two intervals (before it can expire, at
    /// three, and be taken).
    pub(crate) fn cluster_tick(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if cluster.tick_at.is_none_or(|at| at > now) {
            return;
        }
        let interval = cluster.mode.lease_renewal;
        let mut renew = Vec::new();
        let mut lost = Vec::new();
        for (id, owned) in cluster.owned.iter_mut() {
            if owned.last_renewed + interval * 2 <= now {
                lost.push(id.clone());
            } else if !owned.renewing && owned.last_renewed + interval <= now {
                owned.renewing = true;
                renew.push(id.clone());
            }
        }
        cluster.tick_at = (!cluster.owned.is_empty()).then(|| now + interval / 2);
        for id in lost {
            self.lose(&id, now);
        }
        for id in renew {
            let token = self.cluster_pending(Pending::Renew(id.clone()));
            self.cluster_command(ClusterCommand::RenewLease {
                token,
                session_id: id.to_string(),
            });
        }
        if let Some(cluster) = self.cluster.as_mut() {
            if cluster.owned.is_empty() {
                cluster.tick_at = None;
            } else if cluster.tick_at.is_none() {
                cluster.tick_at = Some(now + interval / 2);
            }
        }
    }

    /// When the lease timers next run.
    pub(crate) fn cluster_tick_at(&self) -> Option<Instant> {
        self.cluster.as_ref()?.tick_at
    }
}
