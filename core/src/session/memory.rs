//! Memory across activations (PROTOCOL section "The agent's memory across activations").
//!
//! The registry row keeps the agent's own ACP session id (`SessionRecord::acp_session_id`),
//! written through as soon as the agent's `session/new` (or a resume or load) answered. An
//! activation with a stored id starts the ACP client with `start_with_session`: the agent gets
//! `session/resume` if it advertises `sessionCapabilities.resume`, else `session/load` if it
//! advertises `loadSession` (the client consumes the replay: it is never published), else
//! `session/new`.
//!
//! When the agent could neither resume nor load (it started a new ACP session although the
//! session had one, or had events before this activation) and the agent type's
//! `context_replay` is `transcript`, the session stays `activating` while it reads its latest
//! turns from storage (`SessionOutput::QueryTranscript`, answered through the gateway's
//! `StorageQuery::History` machinery, `Session::transcript_loaded`); the next prompt is then
//! prefixed with [`transcript`] of them. The core holds no transcript itself.

use std::borrow::Cow;

use crate::acp::SessionOrigin;
use crate::config::ContextReplay;
use crate::session::state::SessionStatus;
use crate::session::{Session, SessionContext, SessionOutput};
use crate::storage::{QueryResult, StorageCommand, StorageError, TurnRecord};

/// The most bytes of earlier turns a transcript carries (its header and footer come on top):
/// the most recent turns that fit, whole; a newest turn larger than this is cut.
pub const TRANSCRIPT_LIMIT: usize = 32 * 1024;

/// The most turns read for a transcript (the latest ones).
pub const TRANSCRIPT_TURNS: u32 = 100;

/// The transcript's first line.
pub const TRANSCRIPT_HEADER: &str = "[Earlier conversation in this session, restored by the \
gateway because the agent could not resume it; oldest turn first]\n";

/// The transcript's last line, before the new prompt's text.
pub const TRANSCRIPT_FOOTER: &str =
    "[End of the earlier conversation. The new message follows.]\n\n";

/// Marks a turn text cut to fit [`TRANSCRIPT_LIMIT`].
const CUT: &str = " [...]";

impl Session {
    /// The agent process started: opens its ACP session, reopening the stored one if any.
    pub(super) fn open_acp_session(&mut self, ctx: &SessionContext<'_>, workspace: &str) {
        let stored = self.record.acp_session_id.clone();
        let Some(link) = self.agent.as_mut() else {
            return;
        };
        match stored.as_deref() {
            Some(acp_session_id) => link
                .acp
                .start_with_session(workspace, acp_session_id, ctx.now),
            None => link.acp.start(workspace, ctx.now),
        }
    }

    /// The agent is ready (`AgentEvent::Ready`): stores its ACP session id, then either asks for
    /// the transcript (the session stays `activating` until it comes) or becomes `ready`.
    pub(super) fn agent_ready(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        if self.record.status != SessionStatus::Activating {
            // Not an activation (a client that reports ready twice): the usual transition.
            return self.become_ready(ctx, out);
        }
        let Some(link) = self.agent.as_ref() else {
            return;
        };
        let origin = link.acp.session_origin();
        let acp_session_id = link.acp.session_id().map(str::to_owned);
        let had_session = self.record.acp_session_id.is_some() || self.had_history;
        if acp_session_id.is_some() && acp_session_id != self.record.acp_session_id {
            self.record.acp_session_id = acp_session_id;
            out.push(SessionOutput::Storage(StorageCommand::UpsertSession {
                session: self.record.clone(),
            }));
        }
        let replay = ctx
            .config
            .agent_options(&self.record.agent_type)
            .context_replay;
        if had_session && origin == Some(SessionOrigin::New) && replay == ContextReplay::Transcript
        {
            self.awaiting_transcript = true;
            out.push(SessionOutput::QueryTranscript {
                limit: TRANSCRIPT_TURNS,
            });
            return;
        }
        self.become_ready(ctx, out);
    }

    /// The storage answer to `QueryTranscript`: the transcript is kept for the next prompt (none
    /// when there are no turns or they could not be read: the agent starts afresh), and the
    /// session becomes `ready`.
    pub(crate) fn transcript_loaded(
        &mut self,
        ctx: &SessionContext<'_>,
        result: Result<QueryResult, StorageError>,
        out: &mut Vec<SessionOutput>,
    ) {
        if !std::mem::take(&mut self.awaiting_transcript) {
            return;
        }
        if let Ok(QueryResult::History { turns, .. }) = result {
            self.transcript = transcript(&turns);
        }
        if self.record.status == SessionStatus::Activating && self.agent.is_some() {
            self.become_ready(ctx, out);
        }
    }

    /// The session is `ready`; the turn that waited for the activation starts.
    fn become_ready(&mut self, ctx: &SessionContext<'_>, out: &mut Vec<SessionOutput>) {
        if self.transition(ctx, SessionStatus::Ready, out) {
            if let Some(next) = self.next_turn.take() {
                self.start_turn(ctx, next, out);
            }
        }
    }

    /// The text prompted for a turn: the transcript waiting for it (once), then the turn's text.
    pub(super) fn prompt_text<'t>(&mut self, text: &'t str) -> Cow<'t, str> {
        match self.transcript.take() {
            Some(mut prefix) => {
                prefix.push_str(text);
                Cow::Owned(prefix)
            }
            None => Cow::Borrowed(text),
        }
    }
}

/// The transcript of `turns` (oldest first, as storage returns them) that prefixes a prompt;
/// `None` when there is nothing to tell. Its format (PROTOCOL, "The agent's memory across
/// activations"):
///
/// ```text
/// [Earlier conversation in this session, restored by the gateway because the agent could not resume it; oldest turn first]
/// User: <the turn's text>
/// Agent: <the agent's final text, or "(no answer: <stop reason>)">
///
/// User: ...
/// Agent: ...
///
/// [End of the earlier conversation. The new message follows.]
///
/// <the new prompt's text>
/// ```
///
/// The turns are the most recent ones whose entries fit [`TRANSCRIPT_LIMIT`] bytes together;
/// when even the newest does not, it alone is given, cut to the limit (` [...]` marks a cut).
pub fn transcript(turns: &[TurnRecord]) -> Option<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut used = 0;
    for turn in turns.iter().rev() {
        let answer = match (&turn.final_text, &turn.stop_reason) {
            (Some(text), _) if !text.is_empty() => Cow::Borrowed(text.as_str()),
            (_, Some(reason)) => Cow::Owned(format!("(no answer: {reason})")),
            (_, None) => Cow::Borrowed("(no answer: the turn did not end)"),
        };
        let entry = format!("User: {}\nAgent: {answer}\n\n", turn.user_text);
        if used + entry.len() > TRANSCRIPT_LIMIT {
            if entries.is_empty() {
                let kept =
                    crate::session::turns::truncate(&entry, TRANSCRIPT_LIMIT - CUT.len() - 2);
                entries.push(format!("{kept}{CUT}\n\n"));
            }
            break;
        }
        used += entry.len();
        entries.push(entry);
    }
    if entries.is_empty() {
        return None;
    }
    let mut text = String::with_capacity(
        TRANSCRIPT_HEADER.len() + used + TRANSCRIPT_FOOTER.len() + CUT.len() + 2,
    );
    text.push_str(TRANSCRIPT_HEADER);
    for entry in entries.iter().rev() {
        text.push_str(entry);
    }
    text.push_str(TRANSCRIPT_FOOTER);
    Some(text)
}
