//! The Session machine: one session's state (PROTOCOL sections 5, 6 and 9), owned privately.
//!
//! A `Session` holds its registry row, its subscribers and the joins still waiting for their
//! replay, its agent process's ACP client, the running turn and the next one, the delta
//! coalescer and its deadlines. Every input takes a `SessionContext` (the configuration, `now`
//! and the wall-clock time of `now`, whether the gateway drains) and pushes what it wants done
//! elsewhere as `SessionOutput`s, in order; the gateway routes them (frames to the session's
//! subscribers or one connection, storage and agent commands, tenant notifications). After each
//! input the gateway asks `Session::poll_timeout` for the session's next deadline and feeds it
//! back as `handle_timeout` (the quinn-proto shape). The session never sees another session, a
//! connection or the gateway: it does not import `gateway/`.
//!
//! - `publish.rs`: `seq`, publishing, coalescing, the state transitions, deadlines;
//! - `replay.rs`: subscribers and replay slots (live frames held for a join until its replay);
//! - `turns.rs`: turns;
//! - `agent.rs`: the agent process's reports, through the ACP client;
//! - `memory.rs`: the agent's memory across activations (the ACP session reopened, or a
//!   transcript of the earlier turns);
//! - `state.rs`: the transition table.

mod agent;
mod cluster;
mod controls;
pub mod memory;
pub mod publish;
pub mod replay;
pub mod state;
pub mod turns;

#[cfg(test)]
mod tests;

use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::acp::AcpClient;
use crate::config::CoreConfig;
use crate::ids::{AgentId, ConnectionId};
use crate::protocol::encode_frame_with_payload;
use crate::protocol::event::{EventBody, SessionEvent, TurnError};
pub use crate::protocol::session_reply::SessionMeta;
use crate::storage::{SessionRecord, StorageCommand};
use crate::topic::Topic;
use crate::AgentCommand;

use replay::ReplaySlot;

/// What a session needs from outside for one input.
pub(crate) struct SessionContext<'a> {
    pub(crate) config: &'a CoreConfig,
    pub(crate) now: Instant,
    /// `now` on the wall clock, in Unix milliseconds (event `ts`, `updatedAt`, turn times).
    pub(crate) unix_ms: i64,
    /// The gateway is shutting down: a turn that ends says so, a queued one does not start.
    pub(crate) draining: bool,
    /// The id an agent process started by this input gets (the gateway counts them).
    pub(crate) next_agent: AgentId,
}

/// What a session wants done elsewhere, in the order it wants it.
#[derive(Debug, PartialEq)]
pub(crate) enum SessionOutput {
    /// A session event for every subscriber of the session (the joins waiting for their replay
    /// hold it already; its payload went to storage in the `Storage` output before).
    Publish(Bytes),
    /// A frame for one connection (a reply, or an error answering a request).
    Reply {
        to: ConnectionId,
        frame: Bytes,
    },
    Storage(StorageCommand),
    Agent(AgentCommand),
    /// A frame for every connection of the session's tenant (`session_updated`).
    NotifyTenant(Bytes),
    /// Reports of this agent process go to this session from now on.
    AgentLinked(AgentId),
    /// Reports of this agent process go nowhere any more.
    AgentUnlinked(AgentId),
    Count(Counter),
    /// A turn ended while the gateway drains (it may now close).
    TurnEnded,
    /// Read the session's latest `limit` turns (`StorageQuery::History`) and hand them to
    /// `Session::transcript_loaded`.
    QueryTranscript {
        limit: u32,
    },
}

/// The metrics a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    TurnStarted,
    TurnCompleted,
    TurnFailed,
    AgentStarted,
    AgentFailure,
}

/// One session. Its fields are its own: the gateway asks through the methods.
pub(crate) struct Session {
    record: SessionRecord,
    /// Joined connections that receive live events (`session:{id}`).
    topic: Topic,
    /// Joined connections still waiting for their replay: live frames wait here for them, so
    /// they follow the replay with no gap and no duplicate.
    replaying: Vec<ReplaySlot>,
    agent: Option<AgentLink>,
    turn: Option<Turn>,
    /// A turn to start as soon as the session can: a `run_turn` waiting for activation, or the
    /// text of a `steer` waiting for the cancelled turn to end.
    next_turn: Option<NextTurn>,
    coalescer: Option<publish::Coalescer>,
    /// Since when the session is active with no joined connection and no turn.
    idle_since: Option<Instant>,
    /// When a stopping agent is given up on.
    stop_deadline: Option<Instant>,
    /// The deadline this session is scheduled at in the gateway's timers.
    scheduled: Option<Instant>,
    /// The session had events before its current activation (`memory.rs`).
    had_history: bool,
    /// The activation waits for the session's earlier turns from storage (`memory.rs`).
    awaiting_transcript: bool,
    /// The transcript that prefixes the next prompt (`memory.rs`).
    transcript: Option<String>,
    /// `set_mode` / `set_config_option` requests waiting for the agent's answer.
    pending_controls: Vec<controls::PendingControl>,
    /// The agent's questions as asked (those its client still has pending are unanswered).
    questions: Vec<crate::protocol::session_reply::OpenQuestion>,
    /// Cluster mode, owned by another instance: what its events say (`cluster.rs`).
    remote: Option<Box<cluster::RemoteView>>,
}

struct AgentLink {
    id: AgentId,
    acp: AcpClient,
    /// Why the host gave up on the process (`agent_failed`), told in the turn's error once it
    /// exits.
    failure: Option<String>,
}

struct Turn {
    id: String,
    user_id: String,
    text: String,
    /// The prompt's content blocks after the text.
    content: Vec<crate::protocol::request::PromptBlock>,
    final_text: String,
    final_text_truncated: bool,
    tool_calls: Vec<Value>,
    usage: Option<Value>,
    started_at_ms: i64,
    /// `stop_turn`, `steer`, a timeout or shutdown asked the agent to cancel.
    cancelling: bool,
    /// When the turn is cancelled for running too long (its agent type's `turn_timeout`).
    deadline: Option<std::time::Instant>,
    /// The turn ran past `deadline`: it ends `TURN_TIMEOUT` however the agent answers.
    timed_out: bool,
    /// Once cancelling: when the agent is killed if the turn has not ended (`cancel_grace`).
    cancel_deadline: Option<std::time::Instant>,
}

/// A turn the gateway accepted (its id drawn by the gateway), not started yet.
pub(crate) struct NextTurn {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) text: String,
    /// The prompt's content blocks after the text (`run_turn`'s `content`).
    pub(crate) content: Vec<crate::protocol::request::PromptBlock>,
    /// Whom to answer `turn_accepted` once the agent process has started (activation only).
    pub(crate) reply_to: Option<(ConnectionId, Option<String>)>,
}

impl Session {
    pub(crate) fn new(record: SessionRecord) -> Self {
        Session {
            record,
            topic: Topic::default(),
            replaying: Vec::new(),
            agent: None,
            turn: None,
            next_turn: None,
            coalescer: None,
            idle_since: None,
            stop_deadline: None,
            scheduled: None,
            had_history: false,
            awaiting_transcript: false,
            transcript: None,
            pending_controls: Vec::new(),
            questions: Vec::new(),
            remote: None,
        }
    }

    /// The registry row as it is now.
    pub(crate) fn record(&self) -> &SessionRecord {
        &self.record
    }

    pub(crate) fn meta(&self) -> SessionMeta<'_> {
        SessionMeta::from(&self.record)
    }

    pub(crate) fn status(&self) -> state::SessionStatus {
        self.record.status
    }

    /// The registry row without the session (a deleted session's).
    pub(crate) fn into_record(self) -> SessionRecord {
        self.record
    }

    // ------------------------------------------------------------ registry changes

    /// Renames the session; returns the name it replaced.
    pub(crate) fn rename(&mut self, name: String, unix_ms: i64) -> String {
        self.record.updated_at_ms = unix_ms;
        std::mem::replace(&mut self.record.name, name)
    }

    /// (Un)archives the session; returns the flag it replaced.
    pub(crate) fn set_archived(&mut self, archived: bool, unix_ms: i64) -> bool {
        self.record.updated_at_ms = unix_ms;
        std::mem::replace(&mut self.record.archived, archived)
    }

    /// Puts a name back (a rename storage could not keep), unless a later rename replaced it.
    pub(crate) fn undo_rename(&mut self, renamed_to: &str, previous: String) {
        if self.record.name == renamed_to {
            self.record.name = previous;
        }
    }

    /// Puts the archived flag back, unless a later change replaced it.
    pub(crate) fn undo_archive(&mut self, set_to: bool, previous: bool) {
        if self.record.archived == set_to {
            self.record.archived = previous;
        }
    }

    /// A new epoch: the log may miss events clients saw, so resumes with the old one reload.
    pub(crate) fn set_epoch(&mut self, epoch: String) {
        self.record.epoch = epoch;
    }

    // ------------------------------------------------------------ what the gateway asks

    pub(crate) fn has_turn(&self) -> bool {
        self.turn.is_some()
    }

    pub(crate) fn agent_id(&self) -> Option<AgentId> {
        self.agent.as_ref().map(|agent| agent.id)
    }

    /// What the running agent's `initialize` said it supports (none before it answered).
    pub(crate) fn agent_features(&self) -> Option<crate::acp::AgentFeatures> {
        self.agent
            .as_ref()
            .and_then(|agent| agent.acp.agent_features())
    }

    /// The gateway's timer slot for this session.
    pub(crate) fn scheduled_mut(&mut self) -> &mut Option<Instant> {
        &mut self.scheduled
    }

    /// A `run_turn` still waiting for the activation to answer it (`delete_session` answers it).
    pub(crate) fn take_pending_requester(&mut self) -> Option<(ConnectionId, Option<String>)> {
        self.next_turn
            .as_mut()
            .and_then(|next| next.reply_to.take())
    }

    /// The connection is gone: a queued turn no longer answers it.
    pub(crate) fn forget_requester(&mut self, connection: ConnectionId) {
        if let Some(next) = self.next_turn.as_mut() {
            if next
                .reply_to
                .as_ref()
                .is_some_and(|(to, _)| *to == connection)
            {
                next.reply_to = None;
            }
        }
    }
}

pub(crate) use crate::protocol::reply::error_frame;

/// The code of the `turn_error` that closes a turn a crash cut off (PROTOCOL section 6).
pub const INTERRUPTED: &str = "INTERRUPTED";

/// The payload of a `turn_error` event exactly as the core publishes and stores one (the same
/// type, the same encoder), for storage recovery, which closes a turn a crash cut off.
pub fn turn_error_payload(
    session_id: &str,
    seq: u64,
    ts_ms: i64,
    turn_id: &str,
    code: &str,
    message: &str,
) -> Bytes {
    let event = SessionEvent::new(
        session_id,
        seq,
        ts_ms,
        Some(turn_id),
        EventBody::TurnError(TurnError {
            code,
            message,
            agent_code: None,
        }),
    );
    encode_frame_with_payload(&event).1
}

impl AgentLink {
    fn new(id: AgentId, config: &CoreConfig, agent_type: &str) -> Self {
        let mut acp = config.acp.clone();
        // `[agents.NAME] fs = true`: the client file system, served by the agent host.
        acp.fs_capability = config.agent_options(agent_type).fs;
        AgentLink {
            id,
            acp: AcpClient::new(acp),
            failure: None,
        }
    }

    fn stop(&self, out: &mut Vec<SessionOutput>) {
        out.push(SessionOutput::AgentUnlinked(self.id));
        out.push(SessionOutput::Agent(AgentCommand::Stop { agent: self.id }));
    }

    /// Kills the process at once (it ignored `session/cancel`); its reports go nowhere.
    fn kill(&self, out: &mut Vec<SessionOutput>) {
        out.push(SessionOutput::AgentUnlinked(self.id));
        out.push(SessionOutput::Agent(AgentCommand::Kill { agent: self.id }));
    }
}
