//! The gateway as an ACP *agent* toward remote ACP clients on `/acp` (docs/ACP.md): the edge
//! that turns JSON-RPC 2.0 messages into the gateway's own typed requests and the gateway's
//! replies and session events back into ACP responses and `session/update` notifications.
//!
//! An `/acp` client is a `/ws` client of the same `Connection` machine (the upgrade, origin
//! rules, limits, the rate window, heartbeats, close codes, its identity and its joins); only
//! its text messages differ. This module holds what is ACP's alone and touches no gateway
//! state: the JSON-RPC framing (`jsonrpc`), the translation of events and replies
//! (`translate`), and one client's bookkeeping (`AcpEdge`: requests waiting for the gateway's
//! reply, prompts waiting for their turn's end, permission requests sent to the client). The
//! methods themselves are handled by the gateway (`gateway/acp.rs`), which maps each one onto a
//! request of the gateway protocol and dispatches it exactly as a `/ws` request.

pub(crate) mod jsonrpc;
pub(crate) mod translate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use agent_client_protocol_schema::v1::RequestId;

/// The prefix of the `requestId` the edge gives the gateway requests it makes for a client.
const REQUEST_PREFIX: &str = "acp:";

/// Sessions listed per `session/list` page.
pub(crate) const LIST_PAGE: usize = 50;

/// One `/acp` client's JSON-RPC state.
#[derive(Debug, Default)]
pub(crate) struct AcpEdge {
    /// `initialize` was answered.
    pub(crate) initialized: bool,
    next_request: u64,
    /// Gateway requests made for this client, by the number in their `requestId`.
    pending: HashMap<u64, Pending>,
    /// `session/prompt` requests whose turn was accepted, by turn id: answered at its end.
    prompts: HashMap<String, (RequestId, String)>,
    next_outgoing: i64,
    /// `session/request_permission` requests sent to the client whose question is not resolved
    /// yet, by their id, and whether the client answered.
    questions: HashMap<i64, (Question, bool)>,
    /// A `session/load` whose next page of events waits for the client to read the previous
    /// one: its id, the session, the last `seq` sent.
    deferred_load: Option<(Option<RequestId>, String, u64)>,
}

/// A gateway request made for one client request (or notification, with no `id`).
#[derive(Debug)]
pub(crate) struct Pending {
    /// The client's request id (none for a notification or an internal step).
    pub(crate) id: Option<RequestId>,
    /// What the reply means.
    pub(crate) stage: Stage,
}

/// Which step of which method a gateway reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `session/new`: `create_session` sent; `join_session` follows.
    NewCreate,
    /// `session/new`: the new session is being joined.
    NewJoin,
    /// `session/list` from this offset of the tenant's list.
    List {
        /// Index of the first session of the page.
        offset: usize,
    },
    /// `session/load`: a page of the stored events.
    LoadEvents {
        /// The session being loaded.
        session_id: String,
    },
    /// `session/load`: the join after the last page (its replay, then live).
    LoadJoin,
    /// `session/resume`: a live join.
    Resume,
    /// `session/prompt`: `run_turn` sent.
    Prompt,
    /// `session/cancel`: `stop_turn` sent (a notification: nothing to answer).
    Cancel,
    /// `session/set_mode`.
    SetMode,
    /// `session/set_config_option`.
    SetConfigOption,
    /// The client's answer to a permission request: `answer_question` sent (nothing to answer:
    /// a losing answer is dropped).
    Answer,
}

/// A permission request forwarded to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    /// The gateway session.
    pub(crate) session_id: String,
    /// The gateway's question id (`permission_requested.questionId`).
    pub(crate) question_id: String,
    /// The tool call it is about.
    pub(crate) tool_call_id: String,
    /// The ids of the options it offered.
    pub(crate) options: Vec<String>,
}

impl AcpEdge {
    /// Remembers a gateway request made for the client; returns its `requestId`.
    pub(crate) fn open(&mut self, id: Option<RequestId>, stage: Stage) -> String {
        self.next_request += 1;
        self.pending
            .insert(self.next_request, Pending { id, stage });
        format!("{REQUEST_PREFIX}{}", self.next_request)
    }

    /// The request a gateway reply with this `requestId` answers (taken: one reply each).
    pub(crate) fn take(&mut self, request_id: &str) -> Option<Pending> {
        let number = request_id.strip_prefix(REQUEST_PREFIX)?.parse().ok()?;
        self.pending.remove(&number)
    }

    /// A `session/load`'s next page waits until the client has read the previous one.
    pub(crate) fn defer_load(&mut self, id: Option<RequestId>, session_id: String, after: u64) {
        self.deferred_load = Some((id, session_id, after));
    }

    /// The load waiting for the client to read, if any (taken).
    pub(crate) fn take_deferred_load(&mut self) -> Option<(Option<RequestId>, String, u64)> {
        self.deferred_load.take()
    }

    /// A prompt whose turn `turn_id` (of `session_id`) was accepted: answered when the turn
    /// ends.
    pub(crate) fn await_turn(&mut self, turn_id: String, session_id: String, id: RequestId) {
        self.prompts.insert(turn_id, (id, session_id));
    }

    /// The prompt waiting for the end of `turn_id`, if this client sent it.
    pub(crate) fn turn_ended(&mut self, turn_id: &str) -> Option<RequestId> {
        self.prompts.remove(turn_id).map(|(id, _)| id)
    }

    /// The session was deleted: the prompts waiting for its turns (to be answered with an
    /// error), taken, and its questions forgotten.
    pub(crate) fn session_gone(&mut self, session_id: &str) -> Vec<RequestId> {
        self.questions
            .retain(|_, (question, _)| question.session_id != session_id);
        let turns: Vec<String> = self
            .prompts
            .iter()
            .filter(|(_, (_, session))| session == session_id)
            .map(|(turn, _)| turn.clone())
            .collect();
        turns
            .iter()
            .filter_map(|turn| self.turn_ended(turn))
            .collect()
    }

    /// A permission request sent to the client: its JSON-RPC id.
    pub(crate) fn ask(&mut self, question: Question) -> i64 {
        self.next_outgoing += 1;
        self.questions.insert(self.next_outgoing, (question, false));
        self.next_outgoing
    }

    /// Whether the question is already asked of this client (a join's snapshot repeats it).
    pub(crate) fn asked(&self, question_id: &str) -> bool {
        self.questions
            .values()
            .any(|(question, _)| question.question_id == question_id)
    }

    /// The client answered our request `id`: the question, the first time only (a second
    /// answer, or one after the question was resolved, is nothing).
    pub(crate) fn answered(&mut self, id: &RequestId) -> Option<Question> {
        let RequestId::Number(number) = id else {
            return None;
        };
        let (question, answered) = self.questions.get_mut(number)?;
        if std::mem::replace(answered, true) {
            return None;
        }
        Some(question.clone())
    }

    /// The question was resolved (by anyone): the request this client was sent, answered or
    /// not, taken; it is told how the question was resolved.
    pub(crate) fn resolved(&mut self, question_id: &str) -> Option<Question> {
        let id = self
            .questions
            .iter()
            .find(|(_, (question, _))| question.question_id == question_id)
            .map(|(id, _)| *id)?;
        self.questions.remove(&id).map(|(question, _)| question)
    }
}
