//! The shutdown phases (PROTOCOL section 8): running turns get a grace period, then every
//! connection is told and closed and every agent stopped. Also the gateway's own timer (the
//! end of the grace period, and the sweep of the authentication caches).

use std::time::{Duration, Instant};

use crate::ids::{AgentId, ConnectionId, SessionId, TimerKey};
use crate::protocol::ErrorCode;
use crate::{AgentCommand, Gateway};

/// How often stale entries of the failure limiter and the token cache are dropped.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownPhase {
    Running,
    /// Running turns may finish until then.
    Grace {
        until: Instant,
    },
    /// Every connection has been told; agents are stopping.
    Closing,
}

impl Gateway {
    /// Running turns get `turn_grace`; with none running, everything closes now.
    pub(crate) fn start_drain(&mut self, now: Instant) {
        let turns_running = self.sessions.values().any(|session| session.has_turn());
        if turns_running {
            let until = now + self.config.turn_grace;
            self.shutdown = ShutdownPhase::Grace { until };
            self.schedule_gateway_timer();
        } else {
            self.close_everything(now);
        }
    }

    /// The gateway's own deadlines: the end of the shutdown grace period, and the sweep that
    /// keeps the failure limiter and the token cache from holding stale entries (armed only
    /// while they hold any, so an idle gateway has no timer at all).
    pub(crate) fn gateway_timers(&mut self, now: Instant) {
        if let ShutdownPhase::Grace { until } = self.shutdown {
            if until <= now {
                self.end_grace(now);
            }
        }
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.auth_failures.sweep(now);
            let unix_ms = self.clock.unix_ms(now);
            let cached = self.auth.as_mut().map_or(0, |auth| {
                auth.purge_expired(unix_ms);
                auth.cached_tokens()
            });
            let holding = cached > 0 || self.auth_failures.tracked() > 0;
            self.next_sweep = holding.then_some(now + SWEEP_INTERVAL);
        }
        self.cluster_tick(now);
        self.schedule_gateway_timer();
    }

    /// Arms the sweep (after an authentication attempt added an entry somewhere).
    pub(crate) fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
            self.schedule_gateway_timer();
        }
    }

    pub(crate) fn schedule_gateway_timer(&mut self) {
        let grace = match self.shutdown {
            ShutdownPhase::Grace { until } => Some(until),
            _ => None,
        };
        let tick = self.cluster_tick_at();
        let Some(at) = [self.next_sweep, grace, tick].into_iter().flatten().min() else {
            return;
        };
        self.timers
            .schedule(TimerKey::Gateway, &mut self.gateway_scheduled, at);
    }

    /// The grace period is over: cancel the turns still running, then close everything.
    fn end_grace(&mut self, now: Instant) {
        for session_id in self.sessions_where(|session| session.has_turn()) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.end_for_shutdown(ctx, out)
            });
        }
        if self.shutdown != ShutdownPhase::Closing {
            self.close_everything(now);
        }
    }

    /// A turn ended during the grace period: close once none is left.
    pub(crate) fn turn_ended_while_draining(&mut self, now: Instant) {
        if matches!(self.shutdown, ShutdownPhase::Grace { .. })
            && self.sessions.values().all(|session| !session.has_turn())
        {
            self.close_everything(now);
        }
    }

    fn close_everything(&mut self, now: Instant) {
        self.shutdown = ShutdownPhase::Closing;
        // Agents are stopped on purpose: their sessions go through `deactivating` to `inactive`,
        // which clients see before `server_shutdown`.
        for session_id in self.sessions_where(|session| session.agent_id().is_some()) {
            self.drive(&session_id, now, |session, ctx, out| {
                session.begin_closing(ctx, out)
            });
        }
        let agents: Vec<AgentId> = self.agents.keys().copied().collect();
        for agent in agents {
            self.agent_command(AgentCommand::Stop { agent });
        }
        self.close_all_connections(now);
    }

    fn sessions_where(&self, keep: impl Fn(&crate::session::Session) -> bool) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, session)| keep(session))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every session is flushed and every connection gone: the adapter may stop storage and exit.
    pub fn is_drained(&self) -> bool {
        self.shutdown == ShutdownPhase::Closing && self.connections.is_empty()
    }

    /// A new piece of work is refused while draining.
    pub(crate) fn refuse_while_draining(
        &mut self,
        connection: ConnectionId,
        request_id: Option<&str>,
        now: Instant,
    ) -> bool {
        if self.draining {
            self.send_error(
                connection,
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
                request_id,
                now,
            );
        }
        self.draining
    }
}
