//! What cluster mode asks of a session (`gateway::cluster`): events published by the owner on
//! another instance delivered here, a take-over (the log reopened by a new owner), and the loss
//! of ownership (the agent killed at once, nothing published any more).

use bytes::Bytes;

use crate::ids::ConnectionId;
use crate::protocol::event::{EventBody, TurnError};
use crate::session::state::SessionStatus;
use crate::session::{Counter, Session, SessionContext, SessionOutput, INTERRUPTED};

impl Session {
    /// An event another instance published (its `seq` is the next one here): held for the
    /// joins waiting for their replay and published to the subscribers. `status` is the
    /// session's new state when the event is a `session_state`.
    pub(crate) fn deliver_remote(
        &mut self,
        seq: u64,
        epoch: &str,
        frame: Bytes,
        status: Option<SessionStatus>,
        out: &mut Vec<SessionOutput>,
    ) {
        self.record.last_seq = seq;
        if self.record.epoch != epoch {
            self.record.epoch = epoch.to_owned();
        }
        if let Some(status) = status {
            self.record.status = status;
        }
        for slot in &mut self.replaying {
            slot.hold(frame.clone());
        }
        out.push(SessionOutput::Publish(frame));
    }

    /// This instance becomes the session's owner with the log at `last_seq` under `epoch`: the
    /// session starts `inactive` here (whatever the previous owner last recorded).
    pub(crate) fn take_over(&mut self, last_seq: u64, epoch: String) {
        self.record.last_seq = last_seq;
        self.record.epoch = epoch;
        self.record.status = SessionStatus::Inactive;
        self.turn = None;
        self.next_turn = None;
        self.coalescer = None;
        self.idle_since = None;
        self.stop_deadline = None;
        self.questions.clear();
    }

    /// Ends the turn a dead owner was running: `turn_error` `INTERRUPTED` (published and
    /// appended by this new owner).
    pub(crate) fn interrupt_cut_turn(
        &mut self,
        ctx: &SessionContext<'_>,
        turn_id: &str,
        out: &mut Vec<SessionOutput>,
    ) {
        let body = EventBody::TurnError(TurnError {
            code: INTERRUPTED,
            message: "the instance running the turn stopped",
            agent_code: None,
        });
        self.publish(ctx, Some(turn_id), body, out);
        out.push(SessionOutput::Count(Counter::TurnFailed));
    }

    /// Ownership is lost (the lease is gone or an append was fenced): the agent is killed at
    /// once and nothing more is published. The session is `inactive` here; the requester of a
    /// turn still waiting for its activation is returned, to be answered.
    pub(crate) fn lose_ownership(
        &mut self,
        out: &mut Vec<SessionOutput>,
    ) -> Option<(ConnectionId, Option<String>)> {
        if let Some(agent) = self.agent.take() {
            agent.kill(out);
        }
        let requester = self.take_pending_requester();
        self.turn = None;
        self.next_turn = None;
        self.coalescer = None;
        self.idle_since = None;
        self.stop_deadline = None;
        self.pending_controls.clear();
        self.questions.clear();
        self.record.status = SessionStatus::Inactive;
        requester
    }
}

impl Session {
    /// The registry says `record`: take its name, archived flag and update time; with
    /// `registry_fields` also its status and the agent's ACP session id (the owner's); with
    /// `log_fields` also its `lastSeq` and epoch (when no feed here delivers them).
    pub(crate) fn apply_registry(
        &mut self,
        record: &crate::storage::SessionRecord,
        registry_fields: bool,
        log_fields: bool,
    ) {
        self.record.name = record.name.clone();
        self.record.archived = record.archived;
        self.record.updated_at_ms = record.updated_at_ms;
        if registry_fields {
            self.record.status = record.status;
            self.record.acp_session_id = record.acp_session_id.clone();
        }
        if log_fields && record.last_seq >= self.record.last_seq {
            self.record.last_seq = record.last_seq;
            self.record.epoch = record.epoch.clone();
        }
    }

    /// Back to the last event the log has (after a loss of ownership).
    pub(crate) fn rewind(&mut self, last_seq: u64) {
        self.record.last_seq = last_seq;
    }
}
