//! What cluster mode asks of a session (`gateway::cluster`): events published by the owner on
//! another instance delivered here, a take-over (the log reopened by a new owner), and the loss
//! of ownership (the agent killed at once, nothing published any more).

use bytes::Bytes;
use serde::Deserialize;

use crate::protocol::session_reply::{OpenQuestion, OpenQuestionOption, RunningTurn};
use crate::session::turns::{truncate, FINAL_TEXT_LIMIT};

use crate::ids::ConnectionId;
use crate::protocol::event::{EventBody, TurnError};
use crate::session::state::SessionStatus;
use crate::session::{Counter, Session, SessionContext, SessionOutput, INTERRUPTED};

impl Session {
    /// An event another instance published (its `seq` is the next one here): held for the
    /// joins waiting for their replay and published to the subscribers. What it says of the
    /// session's state, its running turn and its open questions is kept for the joins here.
    pub(crate) fn deliver_remote(
        &mut self,
        seq: u64,
        epoch: &str,
        payload: &[u8],
        frame: Bytes,
        out: &mut Vec<SessionOutput>,
    ) {
        self.record.last_seq = seq;
        if self.record.epoch != epoch {
            self.record.epoch = epoch.to_owned();
        }
        if let Ok(event) = serde_json::from_slice::<RemoteEvent>(payload) {
            self.follow_remote(event);
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
        self.remote = None;
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

    /// The name and archived flag the registry now holds.
    pub(crate) fn apply_names(&mut self, name: &str, archived: bool) {
        if self.record.name != name {
            self.record.name = name.to_owned();
        }
        self.record.archived = archived;
    }

    /// Back to the last event the log has (after a loss of ownership).
    pub(crate) fn rewind(&mut self, last_seq: u64) {
        self.record.last_seq = last_seq;
    }
}

/// What a session's events say of it, on an instance that does not own it: its running turn
/// and open questions, for `session_joined` here.
#[derive(Default)]
pub(crate) struct RemoteView {
    pub(crate) turn: Option<RunningTurn>,
    pub(crate) questions: Vec<OpenQuestion>,
}

/// The fields of an event the view follows.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemoteEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    turn_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    ts: i64,
    #[serde(default)]
    question_id: Option<String>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    options: Vec<RemoteOption>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemoteOption {
    kind: String,
    name: String,
    option_id: String,
}

impl Session {
    fn follow_remote(&mut self, event: RemoteEvent) {
        let view = self.remote.get_or_insert_with(Box::default);
        match event.kind.as_str() {
            "session_state" => {
                if let Some(status) = event.status.as_deref().and_then(SessionStatus::parse) {
                    self.record.status = status;
                }
            }
            "turn_started" => {
                view.turn = Some(RunningTurn {
                    turn_id: event.turn_id.unwrap_or_default(),
                    text: event.text.unwrap_or_default(),
                    user_id: event.user_id.unwrap_or_default(),
                    started_at: event.ts,
                    agent_text: String::new(),
                    agent_text_truncated: false,
                });
                view.questions.clear();
            }
            "text_delta" => {
                if let (Some(turn), Some(text)) = (view.turn.as_mut(), event.text) {
                    if event.turn_id.as_deref() == Some(turn.turn_id.as_str()) {
                        let room = FINAL_TEXT_LIMIT.saturating_sub(turn.agent_text.len());
                        let kept = truncate(&text, room);
                        turn.agent_text_truncated |= kept.len() < text.len();
                        turn.agent_text.push_str(kept);
                    }
                }
            }
            "turn_complete" | "turn_error" => {
                view.turn = None;
                view.questions.clear();
            }
            "permission_requested" => view.questions.push(OpenQuestion {
                question_id: event.question_id.unwrap_or_default(),
                tool_call_id: event.tool_call_id.unwrap_or_default(),
                title: event.title.unwrap_or_default(),
                options: event
                    .options
                    .into_iter()
                    .map(|option| OpenQuestionOption {
                        kind: option.kind,
                        name: option.name,
                        option_id: option.option_id,
                    })
                    .collect(),
            }),
            "permission_resolved" => {
                let id = event.question_id.unwrap_or_default();
                view.questions.retain(|question| question.question_id != id);
            }
            _ => {}
        }
    }

    /// The running turn and open questions as another instance's events told them.
    pub(crate) fn remote_view(&self) -> Option<&RemoteView> {
        self.remote.as_deref()
    }
}
