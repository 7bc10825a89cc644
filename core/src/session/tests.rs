//! Unit tests that drive one Session alone: no gateway, a virtual clock, a scripted agent
//! (ACP lines fed as the agent process would write them), and every output checked.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::protocol::refusal::Handled;
use crate::protocol::request::ConfigValue;
use crate::protocol::session_reply::JoinSnapshot as JoinSnapshotOf;
use crate::protocol::ErrorCode;
use crate::storage::SessionStatus;

const CONNECTION: ConnectionId = ConnectionId(7);

struct Harness {
    session: Session,
    config: CoreConfig,
    now: Instant,
    unix_ms: i64,
    draining: bool,
    next_agent: u64,
}

impl Harness {
    fn new() -> Self {
        let record = SessionRecord {
            id: "s-1".into(),
            tenant_id: "acme".into(),
            name: "one".into(),
            agent_type: "mock".into(),
            status: SessionStatus::Inactive,
            archived: false,
            created_by: "u-1".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            last_seq: 0,
            epoch: "00ff".into(),
            acp_session_id: None,
        };
        Harness {
            session: Session::new(record),
            config: CoreConfig::default(),
            now: Instant::now(),
            unix_ms: 1_700_000_000_000,
            draining: false,
            next_agent: 0,
        }
    }

    /// One input: returns its result and its outputs (the gateway's part of an agent link is
    /// played here: the agent counter).
    fn run<R>(
        &mut self,
        input: impl FnOnce(&mut Session, &SessionContext<'_>, &mut Vec<SessionOutput>) -> R,
    ) -> (R, Vec<SessionOutput>) {
        let ctx = SessionContext {
            config: &self.config,
            now: self.now,
            unix_ms: self.unix_ms,
            draining: self.draining,
            next_agent: AgentId(self.next_agent + 1),
        };
        let mut out = Vec::new();
        let result = input(&mut self.session, &ctx, &mut out);
        for output in &out {
            if let SessionOutput::AgentLinked(agent) = output {
                self.next_agent = agent.0;
            }
        }
        self.session.update_idle(self.now);
        (result, out)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.unix_ms += by.as_millis() as i64;
    }

    /// The agent writes one JSON-RPC line.
    fn agent_says(&mut self, message: Value) -> Vec<SessionOutput> {
        let agent = self.session.agent_id().unwrap_or(AgentId(0));
        let line = message.to_string();
        self.run(|session, ctx, out| session.agent_line(ctx, agent, line.as_bytes(), out))
            .1
    }

    fn update(&mut self, update: Value) -> Vec<SessionOutput> {
        self.agent_says(json!({"jsonrpc":"2.0","method":"session/update",
            "params":{"sessionId":"acp-1","update":update}}))
    }

    fn text_chunk(&mut self, text: &str) -> Vec<SessionOutput> {
        self.update(
            json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":text}}),
        )
    }

    fn run_turn(&mut self, text: &str, steer: bool) -> (Handled, Vec<SessionOutput>) {
        self.run_turn_with(text, Vec::new(), steer)
    }

    /// `run_turn` (or `steer`) with content blocks after the text.
    fn run_turn_with(
        &mut self,
        text: &str,
        content: Vec<crate::protocol::request::PromptBlock>,
        steer: bool,
    ) -> (Handled, Vec<SessionOutput>) {
        let next = NextTurn {
            id: format!("turn-{text}"),
            user_id: "u-1".into(),
            text: text.into(),
            content,
            reply_to: Some((CONNECTION, Some("r-1".into()))),
        };
        self.run(|session, ctx, out| session.run_turn(ctx, next, steer, out))
    }

    /// From `inactive` to a running turn `text`: spawn, handshake, prompt.
    fn start_running(&mut self, text: &str) -> Vec<SessionOutput> {
        let (accepted, mut all) = self.run_turn(text, false);
        assert!(accepted.is_ok());
        let agent = self.session.agent_id().unwrap_or(AgentId(0));
        all.extend(
            self.run(|session, ctx, out| session.agent_spawned(ctx, agent, "/w", out))
                .1,
        );
        all.extend(self.agent_says(
            json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{}}}),
        ));
        all.extend(self.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}})));
        all
    }
}

/// The payload of a frame (a text frame's JSON object).
fn json_of(frame: &Bytes) -> Value {
    let start = frame.iter().position(|&b| b == b'{').unwrap_or(0);
    serde_json::from_slice(&frame[start..]).unwrap_or(Value::Null)
}

fn published(out: &[SessionOutput]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Publish(frame) => Some(json_of(frame)),
            _ => None,
        })
        .collect()
}

fn kinds(out: &[SessionOutput]) -> Vec<String> {
    published(out)
        .iter()
        .map(
            |event| match (event["type"].as_str(), event["status"].as_str()) {
                (Some("session_state"), Some(status)) => format!("state:{status}"),
                (Some(kind), _) => kind.to_owned(),
                _ => String::new(),
            },
        )
        .collect()
}

fn replies(out: &[SessionOutput]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Reply { to, frame } if *to == CONNECTION => Some(json_of(frame)),
            _ => None,
        })
        .collect()
}

fn agent_lines(out: &[SessionOutput]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Agent(AgentCommand::Write { line, .. }) => {
                serde_json::from_slice(line).ok()
            }
            _ => None,
        })
        .collect()
}

fn methods(out: &[SessionOutput]) -> Vec<String> {
    agent_lines(out)
        .iter()
        .filter_map(|line| line["method"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_turn_goes_from_spawn_to_complete() {
    let mut h = Harness::new();
    let (accepted, out) = h.run_turn("hello", false);
    assert!(accepted.is_ok());
    assert_eq!(kinds(&out), ["state:activating"]);
    assert!(out.contains(&SessionOutput::AgentLinked(AgentId(1))));
    assert!(out.iter().any(|o| matches!(o,
        SessionOutput::Agent(AgentCommand::Spawn { agent: AgentId(1), session_id, .. }) if session_id == "s-1")));
    // Every transition is persisted and told to the tenant.
    assert!(out
        .iter()
        .any(|o| matches!(o, SessionOutput::NotifyTenant(_))));
    assert!(
        replies(&out).is_empty(),
        "turn_accepted waits for the process"
    );

    let (_, out) = h.run(|s, ctx, out| s.agent_spawned(ctx, AgentId(1), "/w", out));
    assert_eq!(
        replies(&out),
        [json!({"type":"turn_accepted","requestId":"r-1","sessionId":"s-1","turnId":"turn-hello"})]
    );
    assert_eq!(methods(&out), ["initialize"]);
    let out = h.agent_says(
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{}}}),
    );
    assert_eq!(methods(&out), ["session/new"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}}));
    assert_eq!(
        kinds(&out),
        ["state:ready", "state:running", "turn_started"]
    );
    assert_eq!(methods(&out), ["session/prompt"]);

    let out = h.text_chunk("Hi");
    assert!(kinds(&out).is_empty(), "the delta is coalesced");
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    assert_eq!(kinds(&out), ["text_delta", "turn_complete", "state:ready"]);
    let events = published(&out);
    assert_eq!(events[1]["finalText"], "Hi");
    assert_eq!(events[1]["turnId"], "turn-hello");
    // seq continues without a gap: activating, ready, running, turn_started, then these.
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [5, 6, 7]);
    assert_eq!(h.session.record().last_seq, 7);
    // Storage gets the very bytes subscribers get, before them.
    let stored: Vec<&Bytes> = out
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Storage(StorageCommand::AppendEvent { event, .. }) => {
                Some(&event.payload)
            }
            _ => None,
        })
        .collect();
    let frames: Vec<&Bytes> = out
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Publish(frame) => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), frames.len());
    for (payload, frame) in stored.iter().zip(&frames) {
        assert!(frame.ends_with(payload));
    }
    assert!(out.iter().any(|o| matches!(o,
        SessionOutput::Storage(StorageCommand::UpsertTurn { turn, .. })
            if turn.stop_reason.as_deref() == Some("end_turn") && turn.final_text.as_deref() == Some("Hi"))));
    assert!(out.contains(&SessionOutput::Count(Counter::TurnCompleted)));
    assert!(!h.session.has_turn());
}

#[test]
fn deltas_are_coalesced_until_their_deadline() {
    let mut h = Harness::new();
    h.start_running("c");
    assert!(kinds(&h.text_chunk("a")).is_empty());
    assert!(kinds(&h.text_chunk("b")).is_empty());
    let deadline = h.session.poll_timeout(&h.config);
    assert_eq!(deadline, Some(h.now + h.config.coalesce_interval));
    h.advance(h.config.coalesce_interval);
    let (_, out) = h.run(|s, ctx, out| s.handle_timeout(ctx, out));
    let events = published(&out);
    assert_eq!(kinds(&out), ["text_delta"]);
    assert_eq!(events[0]["text"], "ab");
    // A thinking delta flushes pending text first; another event flushes everything.
    assert!(kinds(&h.text_chunk("x")).is_empty());
    let out = h.update(
        json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"hm"}}),
    );
    assert_eq!(kinds(&out), ["text_delta"]);
    let out = h.update(json!({"sessionUpdate":"plan","entries":[]}));
    assert_eq!(kinds(&out), ["thinking_delta", "plan"]);
    // Over the size threshold, a delta goes out at once.
    let big = "z".repeat(h.config.coalesce_bytes);
    assert_eq!(kinds(&h.text_chunk(&big)), ["text_delta"]);
}

#[test]
fn a_replay_slot_holds_live_frames_until_its_replay_is_sent() {
    let mut h = Harness::new();
    h.session.subscribe(ConnectionId(1));
    h.session.open_replay(ConnectionId(2), 42);
    assert_eq!(h.session.subscribers(), [ConnectionId(1)]);
    assert_eq!(
        h.session.watchers().collect::<Vec<_>>(),
        [ConnectionId(1), ConnectionId(2)]
    );
    let out = h.start_running("r");
    let frames: Vec<Bytes> = out
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Publish(frame) => Some(frame.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 4);
    // Another token is not this slot's.
    assert_eq!(h.session.close_replay(41), None);
    let (connection, waiting) = h
        .session
        .close_replay(42)
        .unwrap_or((ConnectionId(0), Vec::new()));
    assert_eq!(connection, ConnectionId(2));
    assert_eq!(waiting, frames, "the held frames, in order");
    assert_eq!(h.session.subscribers(), [ConnectionId(1), ConnectionId(2)]);
    assert_eq!(h.session.close_replay(42), None, "answered once");
    // Leaving while a replay is read abandons it.
    h.session.open_replay(ConnectionId(3), 43);
    assert_eq!(h.session.unsubscribe(ConnectionId(3)), Some(43));
    assert_eq!(h.session.unsubscribe(ConnectionId(1)), None);
    assert_eq!(h.session.subscribers(), [ConnectionId(2)]);
}

#[test]
fn a_steer_cancels_the_turn_then_prompts_its_text() {
    let mut h = Harness::new();
    h.start_running("first");
    let (accepted, out) = h.run_turn("second", true);
    assert!(accepted.is_ok());
    assert_eq!(
        replies(&out),
        [
            json!({"type":"turn_accepted","requestId":"r-1","sessionId":"s-1","turnId":"turn-second"})
        ]
    );
    assert_eq!(methods(&out), ["session/cancel"]);
    // A second run_turn is refused while the steer waits.
    let (refused, _) = h.run_turn("third", false);
    assert!(refused.is_err());
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    assert_eq!(
        kinds(&out),
        [
            "turn_complete",
            "state:ready",
            "state:running",
            "turn_started"
        ]
    );
    let events = published(&out);
    assert_eq!(
        events[0]["stopReason"], "cancelled",
        "a stopped turn ends cancelled"
    );
    assert_eq!(events[3]["text"], "second");
    assert_eq!(events[3]["turnId"], "turn-second");
    assert_eq!(methods(&out), ["session/prompt"]);
}

#[test]
fn stop_turn_answers_turn_stopping_and_the_turn_ends_cancelled() {
    let mut h = Harness::new();
    let (refused, _) = h.run(|s, ctx, out| s.stop_turn(ctx, CONNECTION, None, out));
    assert!(refused.is_err_and(|r| r.code == ErrorCode::InvalidState));
    h.start_running("s");
    let (stopped, out) = h.run(|s, ctx, out| s.stop_turn(ctx, CONNECTION, Some("r-2"), out));
    assert!(stopped.is_ok());
    assert_eq!(
        replies(&out),
        [json!({"type":"turn_stopping","requestId":"r-2","sessionId":"s-1","turnId":"turn-s"})]
    );
    assert_eq!(methods(&out), ["session/cancel"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"cancelled"}}));
    assert_eq!(kinds(&out), ["turn_complete", "state:ready"]);
    assert_eq!(h.session.status(), SessionStatus::Ready);
}

#[test]
fn an_agent_crash_mid_turn_fails_the_turn_and_errors_the_session() {
    let mut h = Harness::new();
    h.start_running("crash");
    h.text_chunk("partial");
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    h.run(|s, _, _| s.agent_failed(agent, "the workspace is over its quota"));
    let (_, out) = h.run(|s, ctx, out| s.agent_gone(ctx, agent, out));
    assert_eq!(kinds(&out), ["text_delta", "turn_error", "state:error"]);
    let error = &published(&out)[1];
    assert_eq!(error["code"], "AGENT_UNAVAILABLE");
    assert_eq!(
        error["message"],
        "the agent was stopped: the workspace is over its quota"
    );
    assert_eq!(h.session.agent_id(), None);
    assert!(!h.session.has_turn());
    assert!(out.contains(&SessionOutput::Count(Counter::TurnFailed)));
    // The next turn starts a fresh process.
    let (accepted, out) = h.run_turn("again", false);
    assert!(accepted.is_ok());
    assert_eq!(kinds(&out), ["state:activating"]);
    assert!(out.contains(&SessionOutput::AgentLinked(AgentId(2))));
}

#[test]
fn an_idle_session_stops_its_agent_and_a_silent_one_is_given_up_on() {
    let mut h = Harness::new();
    h.start_running("idle");
    h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    let idle_at = h.now + h.config.idle_session_timeout;
    assert_eq!(h.session.poll_timeout(&h.config), Some(idle_at));
    // A subscriber keeps it active.
    h.session.subscribe(CONNECTION);
    h.session.update_idle(h.now);
    assert_eq!(h.session.poll_timeout(&h.config), None);
    h.session.unsubscribe(CONNECTION);
    h.session.update_idle(h.now);
    h.advance(h.config.idle_session_timeout);
    let (_, out) = h.run(|s, ctx, out| s.handle_timeout(ctx, out));
    assert_eq!(kinds(&out), ["state:deactivating"]);
    assert!(out.contains(&SessionOutput::Agent(AgentCommand::Stop {
        agent: AgentId(1)
    })));
    // The host never confirms the exit: after agent_stop_timeout the process counts as gone.
    h.advance(h.config.agent_stop_timeout);
    let (_, out) = h.run(|s, ctx, out| s.handle_timeout(ctx, out));
    assert!(out.contains(&SessionOutput::AgentUnlinked(AgentId(1))));
    assert_eq!(kinds(&out), ["state:inactive"]);
    assert_eq!(h.session.poll_timeout(&h.config), None);
}

#[test]
fn a_draining_gateway_hears_of_every_ended_turn() {
    let mut h = Harness::new();
    h.start_running("d");
    h.draining = true;
    let (_, out) = h.run(|s, ctx, out| s.end_for_shutdown(ctx, out));
    assert_eq!(kinds(&out), ["turn_error", "state:ready"]);
    assert_eq!(published(&out)[0]["code"], "SHUTTING_DOWN");
    assert_eq!(out.last(), Some(&SessionOutput::TurnEnded));
}

#[path = "memory_tests.rs"]
mod memory_tests;

#[path = "prompt_tests.rs"]
mod prompt_tests;
fn stored_tool_calls(out: &[SessionOutput]) -> Option<Value> {
    out.iter().find_map(|o| match o {
        SessionOutput::Storage(StorageCommand::UpsertTurn { turn, .. }) => turn
            .tool_calls_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok()),
        _ => None,
    })
}

#[test]
fn history_keeps_every_tool_call_at_its_latest_state() {
    let mut h = Harness::new();
    h.start_running("tools");
    let out = h.update(json!({"sessionUpdate":"tool_call","toolCallId":"c1","title":"Edit a.rs",
        "kind":"edit","status":"pending","locations":[{"path":"/w/a.rs"}],"rawInput":{"path":"a.rs"}}));
    assert_eq!(kinds(&out), ["tool_call"]);
    h.update(json!({"sessionUpdate":"tool_call","toolCallId":"c2","title":"Read","kind":"read"}));
    let out = h.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c1","status":"completed",
        "content":[{"type":"diff","path":"/w/a.rs","oldText":"a","newText":"b"}],"rawOutput":{"ok":true}}));
    let events = published(&out);
    assert_eq!(events[0]["type"], "tool_call_update");
    assert_eq!(events[0]["content"][0]["newText"], "b");
    assert_eq!(events[0]["rawOutput"], json!({"ok": true}));
    h.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c1","title":"Edited a.rs"}));
    h.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c2","status":"failed"}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    let calls = stored_tool_calls(&out).unwrap_or(Value::Null);
    assert_eq!(
        calls,
        json!([
            {"content":[{"newText":"b","oldText":"a","path":"/w/a.rs","type":"diff"}],
             "input":{"path":"a.rs"},"kind":"edit","locations":[{"path":"/w/a.rs"}],
             "rawOutput":{"ok":true},"status":"completed","title":"Edited a.rs","toolCallId":"c1"},
            {"kind":"read","status":"failed","title":"Read","toolCallId":"c2"}
        ])
    );
}

/// A running turn whose agent offered modes `ask`/`code` and a `speed` option.
fn running_with_controls(h: &mut Harness) {
    let (accepted, _) = h.run_turn("p", false);
    assert!(accepted.is_ok());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    h.run(|session, ctx, out| session.agent_spawned(ctx, agent, "/w", out));
    h.agent_says(
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{}}}),
    );
    h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1",
        "modes":{"currentModeId":"ask","availableModes":[{"id":"ask","name":"Ask"},{"id":"code","name":"Code"}]},
        "configOptions":[{"id":"speed","name":"Speed","type":"select","currentValue":"normal",
            "options":[{"value":"normal","name":"Normal"},{"value":"fast","name":"Fast"}]}]}}));
}

#[test]
fn the_agents_state_updates_are_typed_events() {
    let mut h = Harness::new();
    running_with_controls(&mut h);
    let out = h.update(json!({"sessionUpdate":"available_commands_update",
        "availableCommands":[{"name":"web","description":"Search","input":{"hint":"query"}}]}));
    let events = published(&out);
    assert_eq!(kinds(&out), ["available_commands_update"]);
    assert_eq!(
        events[0]["availableCommands"],
        json!([{"description":"Search","input":{"hint":"query"},"name":"web"}])
    );
    assert_eq!(events[0]["turnId"], "turn-p");
    let out = h.update(json!({"sessionUpdate":"current_mode_update","currentModeId":"code"}));
    assert_eq!(published(&out)[0]["type"], "current_mode_update");
    assert_eq!(published(&out)[0]["currentModeId"], "code");
    let out = h.update(
        json!({"sessionUpdate":"config_option_update","configOptions":[
        {"id":"speed","name":"Speed","type":"select","currentValue":"fast","options":[]}]}),
    );
    assert_eq!(kinds(&out), ["config_option_update"]);
    assert_eq!(
        published(&out)[0]["configOptions"][0]["currentValue"],
        "fast"
    );
    // A malformed one stays an agent_update.
    let out = h.update(json!({"sessionUpdate":"current_mode_update"}));
    assert_eq!(kinds(&out), ["agent_update"]);
}

#[test]
fn set_mode_and_set_config_option_answer_with_the_agents_result() {
    let mut h = Harness::new();
    // No agent: refused at once.
    let (refused, _) = h.run(|s, ctx, out| s.set_mode(ctx, CONNECTION, Some("m-0"), "code", out));
    assert!(matches!(refused, Err(r) if r.code == ErrorCode::InvalidState));
    running_with_controls(&mut h);

    let (sent, out) = h.run(|s, ctx, out| s.set_mode(ctx, CONNECTION, Some("m-1"), "code", out));
    assert!(sent.is_ok());
    let lines = agent_lines(&out);
    assert_eq!(lines[0]["method"], "session/set_mode");
    assert_eq!(lines[0]["params"]["modeId"], "code");
    assert!(replies(&out).is_empty(), "answered when the agent answers");
    let id = lines[0]["id"].clone();
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":id,"result":{}}));
    assert_eq!(
        replies(&out),
        [json!({"type":"mode_set","requestId":"m-1","sessionId":"s-1","modeId":"code"})]
    );
    assert_eq!(kinds(&out), ["current_mode_update"]);

    // The agent refuses: AGENT_REFUSED with its message.
    let (_, out) = h.run(|s, ctx, out| s.set_mode(ctx, CONNECTION, Some("m-2"), "yolo", out));
    let id = agent_lines(&out)[0]["id"].clone();
    let out = h.agent_says(
        json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"no mode yolo"}}),
    );
    let reply = &replies(&out)[0];
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "AGENT_REFUSED");
    assert_eq!(reply["requestId"], "m-2");
    assert!(reply["message"]
        .as_str()
        .is_some_and(|m| m.contains("no mode yolo")));
    assert!(kinds(&out).is_empty());

    // A config option: answered with every option, and published.
    let value = ConfigValue::Id("fast".into());
    let (_, out) = h
        .run(|s, ctx, out| s.set_config_option(ctx, CONNECTION, Some("c-1"), "speed", &value, out));
    let line = &agent_lines(&out)[0];
    assert_eq!(line["method"], "session/set_config_option");
    assert_eq!(line["params"]["value"], "fast");
    let id = line["id"].clone();
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":id,"result":{"configOptions":[
        {"id":"speed","name":"Speed","type":"select","currentValue":"fast","options":[]}]}}));
    let reply = &replies(&out)[0];
    assert_eq!(reply["type"], "config_option_set");
    assert_eq!(reply["configOptions"][0]["currentValue"], "fast");
    assert_eq!(kinds(&out), ["config_option_update"]);

    // The agent exits with a request pending: AGENT_UNAVAILABLE, exactly once.
    let value = ConfigValue::Bool(true);
    let (sent, _) =
        h.run(|s, ctx, out| s.set_config_option(ctx, CONNECTION, Some("c-2"), "x", &value, out));
    assert!(sent.is_ok());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    let (_, out) = h.run(|s, ctx, out| s.agent_gone(ctx, agent, out));
    let answers: Vec<Value> = replies(&out)
        .into_iter()
        .filter(|r| r["requestId"] == "c-2")
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["code"], "AGENT_UNAVAILABLE");
}

#[test]
fn the_snapshot_shows_the_running_turn_its_open_questions_and_the_agents_controls() {
    let mut h = Harness::new();
    assert_eq!(h.session.snapshot(), JoinSnapshotOf::default());
    running_with_controls(&mut h);
    h.text_chunk("Hello ");
    h.text_chunk("world");
    h.update(json!({"sessionUpdate":"available_commands_update",
        "availableCommands":[{"name":"web","description":"Search"}]}));
    h.agent_says(
        json!({"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{
        "sessionId":"acp-1","toolCall":{"toolCallId":"t1","title":"Write x"},
        "options":[{"optionId":"yes","name":"Yes","kind":"allow_once"}]}}),
    );
    let snapshot = h.session.snapshot();
    let turn = snapshot
        .turn
        .clone()
        .unwrap_or_else(|| panic!("a turn runs"));
    assert_eq!(turn.turn_id, "turn-p");
    assert_eq!(turn.text, "p");
    assert_eq!(turn.user_id, "u-1");
    assert_eq!(turn.agent_text, "Hello world");
    assert_eq!(snapshot.questions.len(), 1);
    assert_eq!(snapshot.questions[0].question_id, "q1");
    assert_eq!(snapshot.questions[0].title, "Write x");
    assert_eq!(snapshot.questions[0].options[0].option_id, "yes");
    let agent = snapshot
        .agent
        .clone()
        .unwrap_or_else(|| panic!("the agent runs"));
    assert_eq!(agent.current_mode_id.as_deref(), Some("ask"));
    assert_eq!(agent.available_modes[1]["id"], "code");
    assert_eq!(
        agent
            .config_options
            .as_ref()
            .map(|o| o[0]["currentValue"].clone()),
        Some(json!("normal"))
    );
    assert_eq!(
        agent.available_commands,
        Some(json!([{"description":"Search","name":"web"}]))
    );

    // Answered: no longer open.
    let (answered, _) = h
        .run(|s, ctx, out| s.answer_question(ctx, CONNECTION, None, "u-1", "q1", Some("yes"), out));
    assert!(answered.is_ok());
    assert!(h.session.snapshot().questions.is_empty());
    // The turn ends: no turn in the snapshot; the controls stay.
    h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    let snapshot = h.session.snapshot();
    assert!(snapshot.turn.is_none());
    assert!(snapshot.agent.is_some());
}
