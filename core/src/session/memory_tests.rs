//! Memory across activations, driven on one Session: the stored ACP session id reopened with
//! `session/resume` or `session/load` (its replay never published), else the transcript of the
//! earlier turns prefixed to the next prompt (or nothing, with `context_replay = "none"`).

use super::*;
use crate::config::{AgentOptions, ContextReplay};
use crate::session::memory::{
    transcript, TRANSCRIPT_FOOTER, TRANSCRIPT_HEADER, TRANSCRIPT_LIMIT, TRANSCRIPT_TURNS,
};
use crate::storage::{QueryResult, StorageCommand, TurnRecord};

/// A session that ran before: its registry row has the agent's ACP session id `acp-old`.
fn reactivated() -> Harness {
    let mut h = Harness::new();
    h.session.record.acp_session_id = Some("acp-old".into());
    h.session.record.last_seq = 9;
    h
}

/// `run_turn "hello"`, the process spawned, `initialize` answered with `capabilities`: the
/// outputs of the last step (the session's first ACP request after `initialize`).
fn activate(h: &mut Harness, capabilities: Value) -> Vec<SessionOutput> {
    let (accepted, _) = h.run_turn("hello", false);
    assert!(accepted.is_ok());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    let (_, out) = h.run(|s, ctx, out| s.agent_spawned(ctx, agent, "/w", out));
    assert_eq!(methods(&out), ["initialize"]);
    h.agent_says(json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,
        "agentCapabilities":capabilities}}))
}

fn prompt_text(out: &[SessionOutput]) -> Option<String> {
    agent_lines(out)
        .iter()
        .find(|line| line["method"] == "session/prompt")
        .and_then(|line| line.pointer("/params/prompt/0/text"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn stored_acp_ids(out: &[SessionOutput]) -> Vec<Option<String>> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Storage(StorageCommand::UpsertSession { session }) => {
                Some(session.acp_session_id.clone())
            }
            _ => None,
        })
        .collect()
}

fn asks_transcript(out: &[SessionOutput]) -> bool {
    out.iter()
        .any(|o| matches!(o, SessionOutput::QueryTranscript { .. }))
}

fn turn(user: &str, answer: Option<&str>, stop_reason: &str) -> TurnRecord {
    TurnRecord {
        turn_id: format!("t-{user}"),
        user_id: Some("u-1".into()),
        user_text: user.into(),
        final_text: answer.map(str::to_owned),
        final_text_truncated: false,
        stop_reason: Some(stop_reason.into()),
        usage_json: None,
        tool_calls_json: None,
        started_at_ms: 1,
        completed_at_ms: Some(2),
        content_json: None,
    }
}

#[test]
fn the_first_activation_stores_the_new_acp_session_id_and_asks_for_no_transcript() {
    let mut h = Harness::new();
    let out = activate(&mut h, json!({"loadSession": true}));
    assert_eq!(methods(&out), ["session/new"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}}));
    assert!(!asks_transcript(&out));
    // Written through before the session becomes ready (the `ready` transition writes it too).
    let ids = stored_acp_ids(&out);
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|id| id.as_deref() == Some("acp-1")),
        "{ids:?}"
    );
    assert_eq!(h.session.record().acp_session_id.as_deref(), Some("acp-1"));
    assert_eq!(
        kinds(&out),
        ["state:ready", "state:running", "turn_started"]
    );
    assert_eq!(prompt_text(&out).as_deref(), Some("hello"));
}

#[test]
fn an_agent_that_resumes_gets_session_resume_with_the_stored_id_and_a_plain_prompt() {
    let mut h = reactivated();
    let out = activate(
        &mut h,
        json!({"loadSession": true, "sessionCapabilities": {"resume": {}}}),
    );
    let lines = agent_lines(&out);
    assert_eq!(methods(&out), ["session/resume"]);
    assert_eq!(lines[0]["params"]["sessionId"], "acp-old");
    assert_eq!(lines[0]["params"]["cwd"], "/w");
    assert!(kinds(&out).is_empty(), "still activating");
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{}}));
    assert!(!asks_transcript(&out));
    assert_eq!(
        kinds(&out),
        ["state:ready", "state:running", "turn_started"]
    );
    assert_eq!(prompt_text(&out).as_deref(), Some("hello"));
    assert_eq!(
        h.session.record().acp_session_id.as_deref(),
        Some("acp-old")
    );
}

#[test]
fn an_agent_that_loads_replays_into_the_client_and_nothing_is_published() {
    let mut h = reactivated();
    let out = activate(&mut h, json!({"loadSession": true}));
    let lines = agent_lines(&out);
    assert_eq!(methods(&out), ["session/load"]);
    assert_eq!(lines[0]["params"]["sessionId"], "acp-old");
    // The replay: the earlier conversation, before the answer. None of it is published.
    let mut replay = h.update(json!({"sessionUpdate":"user_message_chunk",
        "content":{"type":"text","text":"an old prompt"}}));
    replay.extend(h.text_chunk("an old answer"));
    replay.extend(
        h.update(json!({"sessionUpdate":"tool_call","toolCallId":"old-1",
        "title":"an old tool call","status":"completed"})),
    );
    assert!(published(&replay).is_empty(), "{:?}", published(&replay));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{}}));
    assert!(!asks_transcript(&out));
    assert_eq!(
        kinds(&out),
        ["state:ready", "state:running", "turn_started"]
    );
    assert_eq!(prompt_text(&out).as_deref(), Some("hello"));
    // The turn's own text is the agent's new answer only.
    h.text_chunk("new");
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    let end = published(&out)
        .into_iter()
        .find(|event| event["type"] == "turn_complete")
        .unwrap_or(Value::Null);
    assert_eq!(end["finalText"], "new");
}

#[test]
fn an_agent_that_can_neither_resume_nor_load_gets_the_transcript_once() {
    let mut h = reactivated();
    let out = activate(&mut h, json!({}));
    assert_eq!(methods(&out), ["session/new"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-new"}}));
    // The new id is written through; the session stays activating until the turns are read.
    assert_eq!(stored_acp_ids(&out), [Some("acp-new".to_owned())]);
    assert!(out.contains(&SessionOutput::QueryTranscript {
        limit: TRANSCRIPT_TURNS
    }));
    assert!(kinds(&out).is_empty());
    assert!(agent_lines(&out).is_empty());
    assert_eq!(h.session.status(), SessionStatus::Activating);

    let turns = vec![
        turn("first", Some("one"), "end_turn"),
        turn("second", None, "cancelled"),
    ];
    let (_, out) = h.run(|s, ctx, out| {
        s.transcript_loaded(
            ctx,
            Ok(QueryResult::History {
                turns,
                has_more: false,
            }),
            out,
        )
    });
    assert_eq!(
        kinds(&out),
        ["state:ready", "state:running", "turn_started"]
    );
    let expected = format!(
        "{TRANSCRIPT_HEADER}User: first\nAgent: one\n\nUser: second\nAgent: (no answer: cancelled)\n\n{TRANSCRIPT_FOOTER}hello"
    );
    assert_eq!(prompt_text(&out), Some(expected));
    // The turn shows (and stores) the user's own text.
    let started = published(&out)
        .into_iter()
        .find(|event| event["type"] == "turn_started")
        .unwrap_or(Value::Null);
    assert_eq!(started["text"], "hello");
    // A late second answer changes nothing; the next prompt is not prefixed.
    let (_, out) = h.run(|s, ctx, out| {
        s.transcript_loaded(
            ctx,
            Ok(QueryResult::History {
                turns: Vec::new(),
                has_more: false,
            }),
            out,
        )
    });
    assert!(out.is_empty());
    h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    let (_, out) = h.run_turn("again", false);
    assert_eq!(prompt_text(&out).as_deref(), Some("again"));
}

#[test]
fn a_refused_resume_falls_back_to_a_new_session_and_the_transcript() {
    let mut h = reactivated();
    let out = activate(&mut h, json!({"sessionCapabilities": {"resume": {}}}));
    assert_eq!(methods(&out), ["session/resume"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,
        "error":{"code":-32002,"message":"Resource not found"}}));
    assert_eq!(methods(&out), ["session/new"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"sessionId":"acp-2"}}));
    assert!(asks_transcript(&out));
    // Unreadable turns: the agent starts afresh rather than never.
    let (_, out) = h.run(|s, ctx, out| {
        s.transcript_loaded(ctx, Err(crate::storage::StorageError::Closed), out)
    });
    assert_eq!(prompt_text(&out).as_deref(), Some("hello"));
}

#[test]
fn context_replay_none_starts_afresh() {
    let mut h = reactivated();
    h.config.agent_options.insert(
        "mock".into(),
        AgentOptions {
            context_replay: ContextReplay::None,
            ..AgentOptions::default()
        },
    );
    activate(&mut h, json!({}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-new"}}));
    assert!(!asks_transcript(&out));
    assert_eq!(stored_acp_ids(&out)[0].as_deref(), Some("acp-new"));
    assert_eq!(prompt_text(&out).as_deref(), Some("hello"));
}

#[test]
fn an_agent_that_exits_while_the_transcript_is_read_fails_the_turn_and_the_answer_is_dropped() {
    let mut h = reactivated();
    activate(&mut h, json!({}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-new"}}));
    assert!(asks_transcript(&out));
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    let (_, out) = h.run(|s, ctx, out| s.agent_gone(ctx, agent, out));
    assert!(
        kinds(&out).contains(&"state:error".to_owned()),
        "{:?}",
        kinds(&out)
    );
    let (_, out) = h.run(|s, ctx, out| {
        s.transcript_loaded(
            ctx,
            Ok(QueryResult::History {
                turns: vec![turn("first", Some("one"), "end_turn")],
                has_more: false,
            }),
            out,
        )
    });
    assert!(published(&out).is_empty());
    assert_eq!(h.session.status(), SessionStatus::Error);
}

#[test]
fn the_transcript_keeps_the_most_recent_turns_within_its_bound() {
    assert_eq!(transcript(&[]), None);
    let answer = "a".repeat(1000);
    let turns: Vec<TurnRecord> = (0..100)
        .map(|index| turn(&format!("prompt {index}"), Some(&answer), "end_turn"))
        .collect();
    let text = transcript(&turns).unwrap_or_default();
    let body = text.len() - TRANSCRIPT_HEADER.len() - TRANSCRIPT_FOOTER.len();
    assert!(body <= TRANSCRIPT_LIMIT, "{body}");
    assert!(body > TRANSCRIPT_LIMIT - 1100, "{body}");
    assert!(text.starts_with(TRANSCRIPT_HEADER) && text.ends_with(TRANSCRIPT_FOOTER));
    // The newest is last and whole; the oldest kept follows a turn that was left out.
    assert!(text.contains("User: prompt 99\n"));
    assert!(!text.contains("User: prompt 60\n"));
    let first = text.find("User: prompt ").unwrap_or(0);
    let second = text[first + 1..].find("User: prompt ").unwrap_or(0) + first + 1;
    assert!(
        text[first..].starts_with("User: prompt 6") || text[first..].starts_with("User: prompt 7")
    );
    assert!(first < second);

    // A newest turn larger than the bound is given alone, cut (on a character boundary).
    let huge = "é".repeat(TRANSCRIPT_LIMIT);
    let text = transcript(&[
        turn("old", Some("x"), "end_turn"),
        turn("big", Some(&huge), "end_turn"),
    ])
    .unwrap_or_default();
    assert!(!text.contains("User: old"));
    assert!(text.contains("User: big\nAgent: éé"));
    assert!(text.contains(" [...]\n\n"));
    let body = text.len() - TRANSCRIPT_HEADER.len() - TRANSCRIPT_FOOTER.len();
    assert!(body <= TRANSCRIPT_LIMIT, "{body}");
}
