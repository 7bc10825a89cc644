//! Every turn ends and every request is answered once (issue 13, items 2 and 3), on the
//! simulated agent and clock: a turn past its timeout is cancelled, an agent that ignores the
//! cancel for the grace is killed, `stop_turn` always ends the turn within the grace, and the
//! holes of the review (a second steer, `stop_turn` during activation, a stopped turn the agent
//! answers with an error, the agent's own error code).
//!
//! The property (`property::every_request_is_answered_once_and_every_accepted_turn_ends_once`):
//! under random interleavings of `create_session`, `run_turn`, `steer`, `stop_turn`,
//! `delete_session`, `join_session`, reconnects, agents that answer, answer with an error, exit
//! or hang (time passes), slow process starts (`Sim::hold_spawns`) and clean or unclean
//! restarts, every request with a `requestId` gets at most one reply, and at the end (spawns
//! reported, time past every timeout and grace) exactly one on every connection still open; every
//! `turn_accepted` turn has at most one end (`turn_complete`/`turn_error`) in its session's log,
//! and exactly one at the end, unless its session was deleted or a restart cut it off (real
//! storage recovery closes those `INTERRUPTED`; a later end of such a turn would count twice).

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
    s.sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": prompt, "error": {"code": -32042, "message": "model overloaded"}}));
    let messages = s.sim.take_messages(s.id);
    let ended = ends(&messages);
    assert_eq!(ended.len(), 1, "{messages:?}");
    assert_eq!(ended[0]["code"], "AGENT_ERROR");
    assert_eq!(ended[0]["message"], "model overloaded");
    assert_eq!(
        ended[0]["agentCode"], -32042,
        "the agent's own JSON-RPC code"
    );
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

#[test]
fn delete_session_during_activation_answers_the_pending_run_turn() {
    let mut s = setup();
    s.sim.hold_spawns = true;
    let replies = s.send(json!({"type": "run_turn", "text": "x", "requestId": "t"}));
    assert_eq!(
        reply(&replies, "t"),
        &Value::Null,
        "not answered before the spawn"
    );
    let messages = s.send(json!({"type": "delete_session", "requestId": "d"}));
    let answer = reply(&messages, "t");
    assert_eq!(answer["type"], "error", "{messages:?}");
    assert_eq!(answer["code"], "SESSION_NOT_FOUND");
    assert_eq!(reply(&messages, "d")["type"], "session_deleted");
    // The late spawn goes nowhere and answers nothing again.
    s.sim.release_spawns();
    let after = s.sim.take_messages(s.id);
    assert!(after.iter().all(|m| m["requestId"] != "t"), "{after:?}");
}

// ------------------------------------------------------------------ the exactly-once property

mod property {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const CLIENTS: usize = 2;

    #[derive(Debug, Clone)]
    enum Op {
        Create(usize),
        RunTurn(usize, usize),
        Steer(usize, usize),
        StopTurn(usize, usize),
        Delete(usize, usize),
        Join(usize, usize),
        Reconnect(usize),
        /// The agent of session N answers what it was asked (handshake and prompts).
        AgentAnswers(usize),
        /// The agent of session N answers its prompt with an error.
        AgentErrors(usize),
        AgentExits(usize),
        /// The agent of session N stays silent (it hangs): time passes.
        Advance(u64),
        ReleaseSpawns,
        Restart(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let c = 0..CLIENTS;
        let s = 0usize..2;
        prop_oneof![
            1 => c.clone().prop_map(Op::Create),
            4 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::RunTurn(c, s)),
            3 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::Steer(c, s)),
            2 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::StopTurn(c, s)),
            1 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::Delete(c, s)),
            1 => (c.clone(), s.clone()).prop_map(|(c, s)| Op::Join(c, s)),
            1 => c.prop_map(Op::Reconnect),
            4 => s.clone().prop_map(Op::AgentAnswers),
            1 => s.clone().prop_map(Op::AgentErrors),
            1 => s.prop_map(Op::AgentExits),
            2 => prop_oneof![Just(500u64), Just(2_000), Just(10_000), Just(31_000)].prop_map(Op::Advance),
            2 => Just(Op::ReleaseSpawns),
            1 => (any::<bool>(), 0..4u8).prop_filter("rare", |(_, n)| *n == 0).prop_map(|(clean, _)| Op::Restart(clean)),
        ]
    }

    struct World {
        sim: Sim,
        clients: Vec<ConnectionId>,
        sessions: Vec<String>,
        next_request: u64,
        /// requestId → (connection, replies seen).
        requests: BTreeMap<String, (ConnectionId, usize)>,
        /// Connections closed (disconnected, or by a restart): their open requests are void.
        closed: BTreeSet<ConnectionId>,
        /// turnId → session, for every `turn_accepted`.
        accepted: BTreeMap<String, String>,
        /// Turns a restart cut off (recovery closes them `INTERRUPTED` in real storage).
        interrupted: BTreeSet<String>,
        /// Sessions deleted: their turns need no end.
        deleted: BTreeSet<String>,
        /// (agent, JSON-RPC id) answered already.
        answered: BTreeSet<(AgentId, String)>,
    }

    impl World {
        fn new(seed: u64) -> Self {
            // Clients that never answer a heartbeat stay connected for the whole schedule.
            let config = CoreConfig {
                heartbeat_interval: Duration::from_secs(3600),
                rate_limit_messages: 0,
                ..config()
            };
            let mut sim = Sim::new(config, seed, Instant::now());
            sim.agent_mode = AgentMode::Manual;
            let clients = (0..CLIENTS).map(|_| open_ws(&mut sim)).collect();
            let mut world = World {
                sim,
                clients,
                sessions: Vec::new(),
                next_request: 0,
                requests: BTreeMap::new(),
                closed: BTreeSet::new(),
                accepted: BTreeMap::new(),
                interrupted: BTreeSet::new(),
                deleted: BTreeSet::new(),
                answered: BTreeSet::new(),
            };
            world.create(0);
            world.create(1);
            world
        }

        fn request(&mut self, client: usize, mut message: Value) {
            self.next_request += 1;
            let request_id = format!("r{}", self.next_request);
            message["requestId"] = json!(request_id);
            let connection = self.clients[client];
            self.requests.insert(request_id, (connection, 0));
            self.sim
                .send(connection, &client::text(&message.to_string()));
        }

        fn create(&mut self, client: usize) {
            self.request(
                client,
                json!({"type": "create_session", "agentType": "echo"}),
            );
            self.collect();
        }

        fn session(&self, index: usize) -> Option<String> {
            self.sessions
                .get(index % self.sessions.len().max(1))
                .cloned()
        }

        /// Reads every client's messages and checks each reply is the first for its request.
        fn collect(&mut self) {
            for connection in self.clients.clone() {
                for message in self.sim.take_messages(connection) {
                    if let Some(request_id) = message["requestId"].as_str() {
                        let entry = self
                            .requests
                            .get_mut(request_id)
                            .unwrap_or_else(|| panic!("a reply to an unknown request: {message}"));
                        assert_eq!(entry.0, connection, "a reply on the wrong connection");
                        entry.1 += 1;
                        assert_eq!(entry.1, 1, "a second reply to {request_id}: {message}");
                        match message["type"].as_str() {
                            Some("turn_accepted") => {
                                let turn = message["turnId"].as_str().unwrap_or_default();
                                let session = message["sessionId"].as_str().unwrap_or_default();
                                self.accepted.insert(turn.into(), session.into());
                            }
                            Some("session_created") => {
                                if let Some(id) = message["session"]["id"].as_str() {
                                    self.sessions.push(id.into());
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            self.check_ends(false);
        }

        /// Every accepted turn has at most one end (exactly one when `all`) in its session's log.
        fn check_ends(&self, all: bool) {
            let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
            for log in self.sim.store.events.values() {
                for event in log {
                    if matches!(event.event_type.as_str(), "turn_complete" | "turn_error") {
                        if let Some(turn) = event.turn_id.as_deref() {
                            *ends.entry(turn).or_default() += 1;
                        }
                    }
                }
            }
            for (turn, session) in &self.accepted {
                if self.deleted.contains(session) {
                    continue;
                }
                let count = ends.get(turn.as_str()).copied().unwrap_or(0)
                    + usize::from(self.interrupted.contains(turn));
                assert!(count <= 1, "turn {turn} ended {count} times");
                if all {
                    assert_eq!(count, 1, "turn {turn} of {session} never ended");
                }
            }
        }

        /// Turns without an end so far (a restart cuts them off).
        fn open_turns(&self) -> Vec<String> {
            let ended: BTreeSet<&str> = self
                .sim
                .store
                .events
                .values()
                .flatten()
                .filter(|e| matches!(e.event_type.as_str(), "turn_complete" | "turn_error"))
                .filter_map(|e| e.turn_id.as_deref())
                .collect();
            self.accepted
                .keys()
                .filter(|turn| !ended.contains(turn.as_str()))
                .cloned()
                .collect()
        }

        fn agent_answers(&mut self, index: usize, error: bool) {
            let Some(session) = self.session(index) else {
                return;
            };
            let Some(agent) = self.sim.agent_of(&session) else {
                return;
            };
            let written = self.sim.agents[&agent].written.clone();
            for message in written {
                let Some(id) = message.get("id").filter(|id| !id.is_null()) else {
                    continue;
                };
                if message.get("method").is_none() || !self.answered.insert((agent, id.to_string()))
                {
                    continue;
                }
                let answer = match message["method"].as_str() {
                    Some("initialize") => {
                        json!({"protocolVersion": 1, "agentCapabilities": {}})
                    }
                    Some("session/new") => json!({"sessionId": "s"}),
                    Some("session/prompt") if error => {
                        self.sim.agent_send(
                            agent,
                            &json!({"jsonrpc": "2.0", "id": id,
                            "error": {"code": -32603, "message": "no"}}),
                        );
                        continue;
                    }
                    Some("session/prompt") => json!({"stopReason": "end_turn"}),
                    _ => continue,
                };
                self.sim.agent_send(
                    agent,
                    &json!({"jsonrpc": "2.0", "id": id, "result": answer}),
                );
            }
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Create(c) => self.create(c),
                Op::RunTurn(c, s) | Op::Steer(c, s) => {
                    if let Some(session) = self.session(s) {
                        let kind = if matches!(op, Op::Steer(..)) {
                            "steer"
                        } else {
                            "run_turn"
                        };
                        self.request(c, json!({"type": kind, "sessionId": session, "text": "t"}));
                    }
                }
                Op::StopTurn(c, s) => {
                    if let Some(session) = self.session(s) {
                        self.request(c, json!({"type": "stop_turn", "sessionId": session}));
                    }
                }
                Op::Delete(c, s) => {
                    if let Some(session) = self.session(s) {
                        self.deleted.insert(session.clone());
                        self.request(c, json!({"type": "delete_session", "sessionId": session}));
                    }
                }
                Op::Join(c, s) => {
                    if let Some(session) = self.session(s) {
                        self.request(c, json!({"type": "join_session", "sessionId": session}));
                    }
                }
                Op::Reconnect(c) => {
                    let old = self.clients[c];
                    self.collect();
                    self.sim.disconnect(old);
                    self.closed.insert(old);
                    self.clients[c] = open_ws(&mut self.sim);
                }
                Op::AgentAnswers(s) => self.agent_answers(s, false),
                Op::AgentErrors(s) => self.agent_answers(s, true),
                Op::AgentExits(s) => {
                    if let Some(agent) = self.session(s).and_then(|s| self.sim.agent_of(&s)) {
                        self.sim.agent_exit(agent);
                    }
                }
                Op::Advance(ms) => self.sim.advance(Duration::from_millis(ms)),
                Op::ReleaseSpawns => self.sim.release_spawns(),
                Op::Restart(clean) => {
                    self.collect();
                    let cut_off = self.open_turns();
                    self.interrupted.extend(cut_off);
                    self.closed.extend(self.clients.iter().copied());
                    self.sim.restart(clean);
                    self.answered.clear();
                    self.clients = (0..CLIENTS).map(|_| open_ws(&mut self.sim)).collect();
                }
            }
            self.collect();
        }

        /// Lets everything settle: spawns reported, time past every timeout and grace.
        fn settle(&mut self) {
            for _ in 0..4 {
                self.sim.release_spawns();
                self.sim.advance(Duration::from_secs(31));
                self.collect();
            }
            for (request_id, (connection, replies)) in &self.requests {
                if !self.closed.contains(connection) {
                    assert!(
                        !self.sim.is_closed(*connection),
                        "the gateway closed a client"
                    );
                    assert_eq!(*replies, 1, "request {request_id} was never answered");
                }
            }
            self.check_ends(true);
        }
    }

    #[test]
    fn a_delete_during_activation_in_the_world() {
        let mut world = World::new(1);
        world.sim.hold_spawns = true;
        world.apply(&Op::RunTurn(0, 0));
        world.apply(&Op::Delete(1, 0));
        world.settle();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_request_is_answered_once_and_every_accepted_turn_ends_once(
            seed in 0u64..1000,
            hold_spawns in any::<bool>(),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let mut world = World::new(seed);
            world.sim.hold_spawns = hold_spawns;
            for op in &ops {
                world.apply(op);
            }
            world.settle();
        }
    }
}
