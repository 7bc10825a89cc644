//! Every turn ends and every request is answered once (issue 13, items 2 and 3), on the
//! simulated agent and clock: a turn past its timeout is cancelled, an agent that ignores the
//! cancel for the grace is killed, `stop_turn` always ends the turn within the grace, and the
//! holes of the review (a second steer, `stop_turn` during activation, a stopped turn the agent
//! answers with an error, the agent's own error code).

mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::config::AgentOptions;
use diminuendo_core::sim::{client, AgentMode, Sim};
use diminuendo_core::{AgentId, ConnectionId, CoreConfig};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(2);

fn config() -> CoreConfig {
    let mut config = CoreConfig {
        coalesce_deltas: false,
        ..dev()
    };
    config.agent_options.insert(
        "echo".into(),
        AgentOptions {
            turn_timeout: TIMEOUT,
            cancel_grace: GRACE,
            ..AgentOptions::default()
        },
    );
    config
}

fn send(sim: &mut Sim, id: ConnectionId, message: Value) -> Vec<Value> {
    sim.send(id, &client::text(&message.to_string()));
    sim.take_messages(id)
}

struct Setup {
    sim: Sim,
    id: ConnectionId,
    session_id: String,
}

/// A joined session of a manual agent.
fn setup() -> Setup {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let created = send(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    let session_id = created
        .iter()
        .find(|m| m["requestId"] == "c")
        .and_then(|m| m["session"]["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(!session_id.is_empty(), "{created:?}");
    send(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id, "requestId": "j"}),
    );
    Setup {
        sim,
        id,
        session_id,
    }
}

impl Setup {
    fn send(&mut self, mut message: Value) -> Vec<Value> {
        message["sessionId"] = json!(self.session_id);
        send(&mut self.sim, self.id, message)
    }

    fn agent(&self) -> AgentId {
        self.sim
            .agent_of(&self.session_id)
            .expect("an agent is alive")
    }

    fn handshake(&mut self) {
        let agent = self.agent();
        self.sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
        self.sim.agent_send(
            agent,
            &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
        );
    }

    /// A running turn; returns its id.
    fn running(&mut self, text: &str) -> String {
        let replies = self.send(json!({"type": "run_turn", "text": text, "requestId": "t"}));
        let accepted = reply(&replies, "t");
        assert_eq!(accepted["type"], "turn_accepted", "{replies:?}");
        self.handshake();
        self.sim.take_messages(self.id);
        accepted["turnId"].as_str().unwrap_or_default().to_owned()
    }

    /// The last method the gateway wrote to the agent.
    fn last_method(&self, agent: AgentId) -> Value {
        self.sim.agents[&agent]
            .written
            .last()
            .map(|m| m["method"].clone())
            .unwrap_or(Value::Null)
    }

    fn prompt_id(&self, agent: AgentId) -> Value {
        self.sim.agents[&agent]
            .written
            .iter()
            .rev()
            .find(|m| m["method"] == "session/prompt")
            .map(|m| m["id"].clone())
            .unwrap_or(Value::Null)
    }
}

fn reply<'a>(messages: &'a [Value], request_id: &str) -> &'a Value {
    let mut found = messages.iter().filter(|m| m["requestId"] == request_id);
    let first = found.next().unwrap_or(&Value::Null);
    assert!(found.next().is_none(), "two replies to {request_id}");
    first
}

/// The turn ends (`turn_complete` / `turn_error`) among `messages`.
fn ends(messages: &[Value]) -> Vec<&Value> {
    messages
        .iter()
        .filter(|m| m["type"] == "turn_complete" || m["type"] == "turn_error")
        .collect()
}

fn statuses(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m["type"] == "session_state")
        .filter_map(|m| m["status"].as_str())
        .collect()
}

#[test]
fn a_hung_turn_is_cancelled_at_its_timeout_and_the_agent_killed_after_the_grace() {
    let mut s = setup();
    let turn_id = s.running("hang");
    let agent = s.agent();
    s.sim.advance(TIMEOUT - Duration::from_millis(1));
    assert_eq!(s.last_method(agent), json!("session/prompt"));
    assert!(ends(&s.sim.take_messages(s.id)).is_empty());
    s.sim.advance(Duration::from_millis(1));
    assert_eq!(s.last_method(agent), json!("session/cancel"));
    assert!(ends(&s.sim.take_messages(s.id)).is_empty());
    s.sim.advance(GRACE);
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1, "{messages:?}");
    assert_eq!(ended[0]["type"], "turn_error");
    assert_eq!(ended[0]["code"], "AGENT_UNRESPONSIVE");
    assert_eq!(ended[0]["turnId"], json!(turn_id));
    assert_eq!(statuses(&messages), ["error"]);
    assert!(!s.sim.agents[&agent].alive, "the agent was killed");
    // Its late answer is ignored; the next run_turn starts a fresh process.
    s.sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 2, "result": {"stopReason": "cancelled"}}),
    );
    assert!(ends(&s.sim.take_messages(s.id)).is_empty());
    s.running("again");
    assert_ne!(s.agent(), agent);
}

#[test]
fn a_timed_out_turn_whose_agent_honours_the_cancel_ends_turn_timeout() {
    let mut s = setup();
    s.running("slow");
    let agent = s.agent();
    s.sim.advance(TIMEOUT);
    assert_eq!(s.last_method(agent), json!("session/cancel"));
    let prompt = s.prompt_id(agent);
    s.sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": prompt, "result": {"stopReason": "cancelled"}}),
    );
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1, "{messages:?}");
    assert_eq!(ended[0]["code"], "TURN_TIMEOUT");
    assert_eq!(statuses(&messages), ["error"]);
    assert!(!s.sim.agents[&agent].alive, "the agent was stopped");
    // Nothing more happens at the grace.
    s.sim.advance(GRACE);
    assert!(ends(&s.sim.take_messages(s.id)).is_empty());
}

#[test]
fn stop_turn_on_an_agent_that_ignores_the_cancel_ends_within_the_grace() {
    let mut s = setup();
    s.running("hang");
    let agent = s.agent();
    let replies = s.send(json!({"type": "stop_turn", "requestId": "s"}));
    assert_eq!(reply(&replies, "s")["type"], "turn_stopping");
    s.sim.advance(GRACE - Duration::from_millis(1));
    assert!(ends(&s.sim.take_messages(s.id)).is_empty());
    s.sim.advance(Duration::from_millis(1));
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["code"], "AGENT_UNRESPONSIVE");
    assert!(!s.sim.agents[&agent].alive);
    // A second stop_turn has no turn to stop.
    let replies = s.send(json!({"type": "stop_turn", "requestId": "s2"}));
    assert_eq!(reply(&replies, "s2")["code"], "INVALID_STATE");
}

#[test]
fn a_stopped_turn_the_agent_answers_with_an_error_ends_cancelled() {
    let mut s = setup();
    s.running("work");
    let agent = s.agent();
    s.send(json!({"type": "stop_turn", "requestId": "s"}));
    let prompt = s.prompt_id(agent);
    s.sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": prompt, "error": {"code": -32603, "message": "aborted"}}),
    );
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1, "{messages:?}");
    assert_eq!(ended[0]["type"], "turn_complete");
    assert_eq!(ended[0]["stopReason"], "cancelled");
    assert_eq!(statuses(&messages), ["ready"]);
}

#[test]
fn an_agent_error_keeps_its_code_and_message() {
    let mut s = setup();
    s.running("work");
    let agent = s.agent();
    let prompt = s.prompt_id(agent);
    s.sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": prompt, "error": {"code": -32603, "message": "model overloaded"}}));
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1, "{messages:?}");
    assert_eq!(ended[0]["code"], "AGENT_ERROR");
    assert_eq!(ended[0]["message"], "model overloaded");
    assert_eq!(statuses(&messages), ["ready"]);
}

#[test]
fn stop_turn_during_activation_cancels_the_pending_turn() {
    let mut s = setup();
    let replies = s.send(json!({"type": "run_turn", "text": "x", "requestId": "t"}));
    let turn_id = reply(&replies, "t")["turnId"].clone();
    assert!(turn_id.is_string(), "{replies:?}");
    let messages = s.send(json!({"type": "stop_turn", "requestId": "s"}));
    let stopping = reply(&messages, "s");
    assert_eq!(stopping["type"], "turn_stopping", "{messages:?}");
    assert_eq!(stopping["turnId"], turn_id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["stopReason"], "cancelled");
    assert_eq!(ended[0]["turnId"], turn_id);
    // The process still starts; no prompt is sent and the session is ready.
    s.handshake();
    let agent = s.agent();
    assert_ne!(s.last_method(agent), json!("session/prompt"));
    assert_eq!(statuses(&s.sim.take_messages(s.id)), ["ready"]);
}

#[test]
fn a_second_steer_while_one_is_queued_is_refused() {
    let mut s = setup();
    s.running("work");
    let first = s.send(json!({"type": "steer", "text": "a", "requestId": "a"}));
    assert_eq!(reply(&first, "a")["type"], "turn_accepted");
    let second = s.send(json!({"type": "steer", "text": "b", "requestId": "b"}));
    assert_eq!(reply(&second, "b")["code"], "INVALID_STATE", "{second:?}");
    // The queued steer still runs once the stopped turn ends.
    let agent = s.agent();
    let prompt = s.prompt_id(agent);
    s.sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": prompt, "result": {"stopReason": "cancelled"}}),
    );
    let messages = s.sim.take_messages(s.id);
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "turn_started" && m["text"] == "a"),
        "{messages:?}"
    );
}

#[test]
fn a_steer_queued_behind_a_turn_that_fails_ends_too() {
    let mut s = setup();
    s.running("hang");
    let accepted = s.send(json!({"type": "steer", "text": "a", "requestId": "a"}));
    let steer_id = reply(&accepted, "a")["turnId"].clone();
    s.sim.advance(GRACE);
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 2, "{messages:?}");
    assert_eq!(ended[0]["code"], "AGENT_UNRESPONSIVE");
    assert_eq!(ended[1]["turnId"], steer_id);
    assert_eq!(ended[1]["type"], "turn_error");
}
