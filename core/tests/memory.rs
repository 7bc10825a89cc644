//! Memory across activations on the simulated store and agents (issue 13 item 1): the agent's
//! ACP session id survives a gateway restart and an idle deactivation and is reopened with
//! `session/load` (its replay never published) or `session/resume`; an agent that can do
//! neither gets the transcript of the earlier turns before its next prompt.

mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::session::memory::{TRANSCRIPT_FOOTER, TRANSCRIPT_HEADER};
use diminuendo_core::sim::{AgentMode, Sim};
use diminuendo_core::{AgentId, ConnectionId, CoreConfig};
use serde_json::{json, Value};

fn config() -> CoreConfig {
    CoreConfig {
        coalesce_deltas: false,
        idle_session_timeout: Duration::from_secs(60),
        ..dev()
    }
}

fn create_and_join(sim: &mut Sim, id: ConnectionId) -> String {
    let (reply, _) = call(
        sim,
        id,
        json!({"type": "create_session", "agentType": "echo", "name": "memory"}),
    );
    assert_eq!(reply["type"], "session_created", "{reply}");
    let session_id = reply["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    join(sim, id, &session_id);
    session_id
}

fn join(sim: &mut Sim, id: ConnectionId, session_id: &str) {
    let (joined, _) = call(
        sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    assert_eq!(joined["type"], "session_joined", "{joined}");
}

/// `run_turn`; returns what arrived with its reply.
fn run_turn(sim: &mut Sim, id: ConnectionId, session_id: &str, text: &str) -> Vec<Value> {
    let (accepted, others) = call(
        sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": text}),
    );
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    others
}

/// The last line the gateway wrote to `agent`.
fn last_written(sim: &Sim, agent: AgentId) -> Value {
    sim.agents
        .get(&agent)
        .and_then(|a| a.written.last().cloned())
        .unwrap_or(Value::Null)
}

fn answer(sim: &mut Sim, agent: AgentId, result: Value) {
    let id = last_written(sim, agent)["id"].clone();
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    );
}

fn chunk(sim: &mut Sim, agent: AgentId, kind: &str, text: &str) {
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "acp-9",
            "update": {"sessionUpdate": kind, "content": {"type": "text", "text": text}}}}),
    );
}

/// The agent `agent` (manual) answers `initialize` with `capabilities`; returns the request
/// that follows (`session/new`, `session/load` or `session/resume`).
fn initialize(sim: &mut Sim, agent: AgentId, capabilities: Value) -> Value {
    assert_eq!(last_written(sim, agent)["method"], "initialize");
    answer(
        sim,
        agent,
        json!({"protocolVersion": 1, "agentCapabilities": capabilities}),
    );
    last_written(sim, agent)
}

/// A whole first turn `first` whose agent (ACP session `acp-9`) answers `one`.
fn first_turn(sim: &mut Sim, id: ConnectionId, session_id: &str, capabilities: Value) {
    let _ = run_turn(sim, id, session_id, "first");
    let agent = sim.agent_of(session_id).expect("an agent");
    let opened = initialize(sim, agent, capabilities);
    assert_eq!(opened["method"], "session/new");
    answer(sim, agent, json!({"sessionId": "acp-9"}));
    let prompt = last_written(sim, agent);
    assert_eq!(prompt["params"]["prompt"][0]["text"], "first");
    chunk(sim, agent, "agent_message_chunk", "one");
    answer(sim, agent, json!({"stopReason": "end_turn"}));
    sim.take_messages(id);
}

fn texts_published(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "text_delta")
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_gateway_restart_reopens_the_acp_session_with_load_and_publishes_no_replay() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create_and_join(&mut sim, id);
    first_turn(&mut sim, id, &session_id, json!({"loadSession": true}));

    sim.restart(true);
    let id = open_ws(&mut sim);
    join(&mut sim, id, &session_id);
    let _ = run_turn(&mut sim, id, &session_id, "second");
    let agent = sim.agent_of(&session_id).expect("a fresh agent");
    let opened = initialize(&mut sim, agent, json!({"loadSession": true}));
    assert_eq!(opened["method"], "session/load");
    assert_eq!(opened["params"]["sessionId"], "acp-9");
    // The replay of the earlier conversation reaches nobody.
    chunk(&mut sim, agent, "user_message_chunk", "first");
    chunk(&mut sim, agent, "agent_message_chunk", "one");
    let during = sim.take_messages(id);
    assert!(during.iter().all(|m| m.get("seq").is_none()), "{during:?}");
    answer(&mut sim, agent, json!({}));
    let prompt = last_written(&sim, agent);
    assert_eq!(prompt["method"], "session/prompt");
    assert_eq!(prompt["params"]["prompt"][0]["text"], "second");
    chunk(&mut sim, agent, "agent_message_chunk", "two");
    answer(&mut sim, agent, json!({"stopReason": "end_turn"}));
    let after = sim.take_messages(id);
    assert_eq!(texts_published(&after), ["two"]);
    assert!(after
        .iter()
        .any(|m| m["type"] == "turn_complete" && m["finalText"] == "two"));
}

#[test]
fn an_idle_deactivation_reopens_the_acp_session_with_resume() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create_and_join(&mut sim, id);
    let capabilities = json!({"loadSession": true, "sessionCapabilities": {"resume": {}}});
    first_turn(&mut sim, id, &session_id, capabilities.clone());
    let first = sim.agent_of(&session_id).expect("the agent");
    // Idle with nobody joined: the agent is stopped.
    let (left, _) = call(
        &mut sim,
        id,
        json!({"type": "leave_session", "sessionId": session_id}),
    );
    assert_eq!(left["type"], "session_left", "{left}");
    sim.advance(Duration::from_secs(61));
    sim.advance(Duration::from_secs(10));
    assert!(
        sim.agent_of(&session_id).is_none(),
        "the idle agent was stopped"
    );
    join(&mut sim, id, &session_id);
    let _ = run_turn(&mut sim, id, &session_id, "second");
    let second = sim.agent_of(&session_id).expect("a fresh agent");
    assert_ne!(first, second);
    let opened = initialize(&mut sim, second, capabilities);
    assert_eq!(opened["method"], "session/resume");
    assert_eq!(opened["params"]["sessionId"], "acp-9");
    answer(&mut sim, second, json!({}));
    let prompt = last_written(&sim, second);
    assert_eq!(prompt["params"]["prompt"][0]["text"], "second");
}

#[test]
fn an_agent_without_load_or_resume_gets_the_transcript_after_a_restart() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Echo;
    let id = open_ws(&mut sim);
    let session_id = create_and_join(&mut sim, id);
    let mut done = run_turn(&mut sim, id, &session_id, "first");
    done.extend(sim.take_messages(id));
    assert!(done
        .iter()
        .any(|m| m["type"] == "turn_complete" && m["finalText"] == "first"));

    // A crash this time: the registry row as written through before it is what remains.
    sim.restart(false);
    let id = open_ws(&mut sim);
    join(&mut sim, id, &session_id);
    let mut after = run_turn(&mut sim, id, &session_id, "second");
    after.extend(sim.take_messages(id));
    // The simulated echo agent echoes its prompt: the transcript, then the new text.
    let expected =
        format!("{TRANSCRIPT_HEADER}User: first\nAgent: first\n\n{TRANSCRIPT_FOOTER}second");
    let end = after
        .iter()
        .find(|m| m["type"] == "turn_complete")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(end["finalText"], expected.as_str(), "{after:?}");
    // The turn is the user's own text, in the event and in history.
    assert!(after
        .iter()
        .any(|m| m["type"] == "turn_started" && m["text"] == "second"));
    let (history, _) = call(
        &mut sim,
        id,
        json!({"type": "get_history", "sessionId": session_id}),
    );
    let turns = history["turns"].as_array().cloned().unwrap_or_default();
    assert_eq!(turns.len(), 2, "{history}");
    assert_eq!(turns[1]["userText"], "second", "{history}");
}
