//! Sessions, turns, resume and shutdown on the simulated store and agent (PROTOCOL sections 5-8).

mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::sim::{client, AgentMode, Sim};
use diminuendo_core::CoreConfig;
use serde_json::{json, Value};

fn config() -> CoreConfig {
    CoreConfig {
        coalesce_deltas: false,
        ..dev()
    }
}

fn send(sim: &mut Sim, id: diminuendo_core::ConnectionId, message: Value) {
    sim.send(id, &client::text(&message.to_string()));
}

thread_local! {
    /// Messages that arrived alongside a reply, kept for `drain`.
    static BACKLOG: std::cell::RefCell<std::collections::HashMap<u64, Vec<Value>>> = Default::default();
}

/// Sends a request and returns the reply carrying its requestId; everything else that arrived
/// stays for `drain`.
fn call(sim: &mut Sim, id: diminuendo_core::ConnectionId, mut message: Value) -> Value {
    message["requestId"] = json!("r");
    send(sim, id, message);
    let mut reply = Value::Null;
    for received in sim.take_messages(id) {
        if reply.is_null() && received["requestId"] == "r" {
            reply = received;
        } else {
            BACKLOG.with(|b| b.borrow_mut().entry(id.0).or_default().push(received));
        }
    }
    reply
}

/// Every message received on `id` since the last drain, in order.
fn drain(sim: &mut Sim, id: diminuendo_core::ConnectionId) -> Vec<Value> {
    let mut messages = BACKLOG
        .with(|b| b.borrow_mut().remove(&id.0))
        .unwrap_or_default();
    messages.extend(sim.take_messages(id));
    messages
}

fn create(sim: &mut Sim, id: diminuendo_core::ConnectionId) -> String {
    let reply = call(
        sim,
        id,
        json!({"type": "create_session", "agentType": "echo", "name": "first"}),
    );
    assert_eq!(reply["type"], "session_created", "{reply}");
    reply["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn events(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m.get("seq").is_some())
        .cloned()
        .collect()
}

fn kinds(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_registry_lifecycle_with_tenant_notifications() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let alice = open_ws(&mut sim);
    let bob = open_ws(&mut sim);
    let session_id = create(&mut sim, alice);
    // The requester gets the reply and the broadcast; the rest of the tenant the broadcast.
    let seen_by_bob = drain(&mut sim, bob);
    assert_eq!(kinds(&seen_by_bob), ["session_created"]);
    assert_eq!(seen_by_bob[0]["session"]["status"], "inactive");
    assert_eq!(seen_by_bob[0]["session"]["lastSeq"], 0);

    let renamed = call(
        &mut sim,
        alice,
        json!({"type": "rename_session", "sessionId": session_id, "name": "second"}),
    );
    assert_eq!(renamed["type"], "session_updated");
    assert_eq!(renamed["session"]["name"], "second");
    let archived = call(
        &mut sim,
        alice,
        json!({"type": "archive_session", "sessionId": session_id}),
    );
    assert_eq!(archived["session"]["archived"], true);
    let list = call(&mut sim, alice, json!({"type": "list_sessions"}));
    assert_eq!(list["sessions"], json!([]));
    let list = call(
        &mut sim,
        alice,
        json!({"type": "list_sessions", "includeArchived": true}),
    );
    assert_eq!(list["sessions"][0]["id"], session_id.as_str());
    assert_eq!(sim.store.sessions[&session_id].name, "second");

    let deleted = call(
        &mut sim,
        alice,
        json!({"type": "delete_session", "sessionId": session_id}),
    );
    assert_eq!(
        deleted,
        json!({"type": "session_deleted", "requestId": "r", "sessionId": session_id})
    );
    assert!(sim.store.sessions.is_empty());
    let gone = call(
        &mut sim,
        alice,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    assert_eq!(gone["code"], "SESSION_NOT_FOUND");
    assert_eq!(
        kinds(&drain(&mut sim, bob)),
        ["session_updated", "session_updated", "session_deleted"]
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let reply = call(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "nope"}),
    );
    assert_eq!(reply["code"], "AGENT_UNAVAILABLE");
    let reply = call(&mut sim, id, json!({"type": "create_session"}));
    assert_eq!(reply["code"], "INVALID_MESSAGE");
    let reply = call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": 7}),
    );
    assert_eq!(reply["code"], "INVALID_MESSAGE");
    let reply = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": "missing", "text": "hi"}),
    );
    assert_eq!(reply["code"], "SESSION_NOT_FOUND");
    let session_id = create(&mut sim, id);
    let reply = call(
        &mut sim,
        id,
        json!({"type": "stop_turn", "sessionId": session_id}),
    );
    assert_eq!(reply["code"], "INVALID_STATE");
    let reply = call(
        &mut sim,
        id,
        json!({"type": "rename_session", "sessionId": session_id, "name": ""}),
    );
    assert_eq!(reply["code"], "INVALID_MESSAGE");
}

#[test]
fn a_turn_publishes_its_events_in_order_with_gap_free_seq() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    let joined = call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    assert_eq!(joined["type"], "session_joined");
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["events"], json!([]));
    let accepted = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "hello"}),
    );
    assert_eq!(accepted["type"], "turn_accepted");
    let turn_id = accepted["turnId"].clone();
    let stream = events(&drain(&mut sim, id));
    let summary: Vec<String> = stream
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("session_state") => format!("state:{}", e["status"].as_str().unwrap_or_default()),
            other => other.unwrap_or_default().to_owned(),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "state:activating",
            "state:ready",
            "state:running",
            "turn_started",
            "text_delta",
            "turn_complete",
            "state:ready"
        ]
    );
    for (index, event) in stream.iter().enumerate() {
        assert_eq!(event["seq"], index as u64 + 1);
        assert_eq!(event["sessionId"], session_id.as_str());
    }
    assert_eq!(stream[3]["turnId"], turn_id);
    assert_eq!(stream[4]["text"], "hello");
    assert_eq!(stream[5]["finalText"], "hello");
    assert_eq!(stream[5]["stopReason"], "end_turn");
    // Every published event is stored, byte for byte.
    let stored = &sim.store.events[&session_id];
    assert_eq!(stored.len(), stream.len());
    let history = call(
        &mut sim,
        id,
        json!({"type": "get_history", "sessionId": session_id}),
    );
    assert_eq!(history["turns"][0]["userText"], "hello");
    assert_eq!(history["turns"][0]["finalText"], "hello");
    // A second turn needs no activation.
    let accepted = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "again"}),
    );
    assert_eq!(accepted["type"], "turn_accepted");
    let second = events(&drain(&mut sim, id));
    assert_eq!(second[0]["status"], "running");
    assert_eq!(second[0]["seq"], 8);
}

#[test]
fn resume_replays_exactly_what_was_missed_or_says_reload() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream 5"}),
    );
    let last_seq = sim.store.events[&session_id].len() as u64;
    let epoch = sim.store.sessions[&session_id].epoch.clone();

    let reader = open_ws(&mut sim);
    let joined = call(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": 3, "epoch": epoch}),
    );
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["lastSeq"], last_seq);
    let replayed = joined["events"].as_array().cloned().unwrap_or_default();
    let seqs: Vec<u64> = replayed.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (4..=last_seq).collect::<Vec<_>>());
    // Byte-identical to what was stored (and published).
    let stored: Vec<Value> = sim.store.events[&session_id][3..]
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.payload).ok())
        .collect();
    assert_eq!(replayed, stored);

    for (after, epoch, why) in [
        (json!(0), json!("another-epoch"), "another epoch"),
        (json!(last_seq + 1), json!(null), "ahead of the log"),
    ] {
        let other = open_ws(&mut sim);
        let joined = call(
            &mut sim,
            other,
            json!({"type": "join_session", "sessionId": session_id, "afterSeq": after, "epoch": epoch}),
        );
        assert_eq!(joined["recovered"], false, "{why}");
        assert_eq!(joined["events"], json!([]), "{why}");
    }
    let mut small = config();
    small.replay_limit = 2;
    let mut sim2 = Sim::new(small, 1, Instant::now());
    let id2 = open_ws(&mut sim2);
    let session2 = create(&mut sim2, id2);
    call(
        &mut sim2,
        id2,
        json!({"type": "run_turn", "sessionId": session2, "text": "x"}),
    );
    let joined = call(
        &mut sim2,
        id2,
        json!({"type": "join_session", "sessionId": session2, "afterSeq": 0}),
    );
    assert_eq!(
        joined["recovered"], false,
        "over the replay limit: never a partial fill"
    );
}

#[test]
fn live_events_published_during_a_replay_follow_it_without_gap_or_duplicate() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let writer = open_ws(&mut sim);
    let session_id = create(&mut sim, writer);
    call(
        &mut sim,
        writer,
        json!({"type": "run_turn", "sessionId": session_id, "text": "first"}),
    );
    let reader = open_ws(&mut sim);
    sim.hold_storage = true;
    send(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": 2, "requestId": "j"}),
    );
    // While the replay is read, another turn publishes.
    send(
        &mut sim,
        writer,
        json!({"type": "run_turn", "sessionId": session_id, "text": "second"}),
    );
    let early = drain(&mut sim, reader);
    assert!(
        events(&early).is_empty() && early.iter().all(|m| m["type"] != "session_joined"),
        "no session event reaches the reader before its replay: {early:?}"
    );
    sim.hold_storage = false;
    sim.deliver_storage(usize::MAX);
    let received = drain(&mut sim, reader);
    assert_eq!(received[0]["type"], "session_joined");
    assert_eq!(received[0]["recovered"], true);
    let mut seqs: Vec<u64> = received[0]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    seqs.extend(received[1..].iter().filter_map(|e| e["seq"].as_u64()));
    let last = sim.store.events[&session_id].len() as u64;
    assert_eq!(seqs, (3..=last).collect::<Vec<_>>());
}

#[test]
fn get_events_reads_everything_published_with_limits() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream 10"}),
    );
    let all = call(
        &mut sim,
        id,
        json!({"type": "get_events", "sessionId": session_id, "afterSeq": 0}),
    );
    let last = all["lastSeq"].as_u64().unwrap_or(0);
    assert_eq!(all["events"].as_array().map(Vec::len), Some(last as usize));
    assert_eq!(all["hasMore"], false);
    let page = call(
        &mut sim,
        id,
        json!({"type": "get_events", "sessionId": session_id, "afterSeq": 2, "limit": 3}),
    );
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(page["hasMore"], true);
    assert_eq!(
        page["epoch"],
        sim.store.sessions[&session_id].epoch.as_str()
    );
    let missing = call(
        &mut sim,
        id,
        json!({"type": "get_events", "sessionId": session_id}),
    );
    assert_eq!(missing["code"], "INVALID_MESSAGE");
}

#[test]
fn coalesced_deltas_concatenate_to_the_agent_text() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream 50"}),
    );
    sim.advance(Duration::from_millis(20));
    let stream = events(&drain(&mut sim, id));
    let deltas: Vec<&Value> = stream
        .iter()
        .filter(|e| e["type"] == "text_delta")
        .collect();
    assert!(deltas.len() < 50, "{} deltas for 50 chunks", deltas.len());
    let text: String = deltas.iter().filter_map(|e| e["text"].as_str()).collect();
    let expected: String = (0..50).map(|i| format!("c{i} ")).collect();
    assert_eq!(text, expected);
    let complete = stream
        .iter()
        .find(|e| e["type"] == "turn_complete")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(complete["finalText"], expected.as_str());
    for (index, event) in stream.iter().enumerate() {
        assert_eq!(
            event["seq"],
            stream[0]["seq"].as_u64().unwrap_or(0) + index as u64
        );
    }
}

#[test]
fn stop_turn_cancels_and_the_turn_completes_cancelled() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    send(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "work", "requestId": "t"}),
    );
    let agent = sim.agent_of(&session_id).expect("an agent was started");
    handshake(&mut sim, agent);
    let prompt_id = sim.agents[&agent]
        .written
        .last()
        .and_then(|m| m.get("id").cloned())
        .unwrap_or(Value::Null);
    drain(&mut sim, id);
    let stopping = call(
        &mut sim,
        id,
        json!({"type": "stop_turn", "sessionId": session_id}),
    );
    assert_eq!(stopping["type"], "turn_stopping");
    assert_eq!(
        sim.agents[&agent]
            .written
            .last()
            .map(|m| m["method"].clone()),
        Some(json!("session/cancel"))
    );
    // Like the TypeScript SDK's example agent, this one answers the cancel with `end_turn`.
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": prompt_id, "result": {"stopReason": "end_turn"}}),
    );
    let stream = events(&drain(&mut sim, id));
    assert_eq!(stream[0]["type"], "turn_complete");
    assert_eq!(stream[0]["stopReason"], "cancelled");
    assert_eq!(stream[1]["status"], "ready");
}

/// Answers the ACP handshake as an agent would.
fn handshake(sim: &mut Sim, agent: diminuendo_core::AgentId) {
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
}

#[test]
fn the_first_answer_resolves_a_permission_and_every_client_sees_it() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let (a, b) = (open_ws(&mut sim), open_ws(&mut sim));
    let session_id = create(&mut sim, a);
    for id in [a, b] {
        call(
            &mut sim,
            id,
            json!({"type": "join_session", "sessionId": session_id}),
        );
    }
    call(
        &mut sim,
        a,
        json!({"type": "run_turn", "sessionId": session_id, "text": "do it"}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    handshake(&mut sim, agent);
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "method": "session/request_permission", "params": {
        "sessionId": "s", "toolCall": {"toolCallId": "t1", "title": "Write file"},
        "options": [{"optionId": "allow", "name": "Allow", "kind": "allow_once"}, {"optionId": "reject", "name": "Reject", "kind": "reject_once"}]}}));
    let seen = events(&drain(&mut sim, b));
    let request = seen
        .iter()
        .find(|e| e["type"] == "permission_requested")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(request["toolCallId"], "t1");
    assert!(seen
        .iter()
        .any(|e| e["type"] == "session_state" && e["status"] == "waiting"));
    let question = request["questionId"].clone();
    drain(&mut sim, a);
    // Both answer in the same instant; the first wins.
    send(
        &mut sim,
        a,
        json!({"type": "answer_question", "sessionId": session_id, "questionId": question, "optionId": "allow", "requestId": "qa"}),
    );
    send(
        &mut sim,
        b,
        json!({"type": "answer_question", "sessionId": session_id, "questionId": question, "cancelled": true, "requestId": "qb"}),
    );
    let to_a = drain(&mut sim, a);
    let to_b = drain(&mut sim, b);
    assert!(to_a
        .iter()
        .any(|m| m["type"] == "question_answered" && m["requestId"] == "qa"));
    assert!(to_b
        .iter()
        .any(|m| m["type"] == "error" && m["code"] == "INVALID_STATE" && m["requestId"] == "qb"));
    for seen in [&to_a, &to_b] {
        let resolved: Vec<&Value> = seen
            .iter()
            .filter(|m| m["type"] == "permission_resolved")
            .collect();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0]["optionId"], "allow");
    }
    let answer = sim.agents[&agent]
        .written
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(answer["id"], 0);
    assert_eq!(
        answer["result"]["outcome"],
        json!({"outcome": "selected", "optionId": "allow"})
    );
}

#[test]
fn an_agent_that_dies_mid_turn_errors_the_session_and_the_next_turn_restarts_it() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "work"}),
    );
    let first = sim.agent_of(&session_id).expect("agent");
    handshake(&mut sim, first);
    drain(&mut sim, id);
    sim.agent_exit(first);
    let stream = events(&drain(&mut sim, id));
    assert_eq!(kinds(&stream), ["turn_error", "session_state"]);
    assert_eq!(stream[1]["status"], "error");
    sim.agent_mode = AgentMode::Echo;
    let accepted = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "again"}),
    );
    assert_eq!(accepted["type"], "turn_accepted");
    let second = sim.agent_of(&session_id).expect("a fresh agent");
    assert_ne!(first, second);
    // The simulated echo agent can neither resume nor load its ACP session: the fresh one is
    // told the earlier turns (the default `context_replay = "transcript"`), and echoes them.
    let stream = events(&drain(&mut sim, id));
    let header = diminuendo_core::session::memory::TRANSCRIPT_HEADER;
    let expected = format!(
        "{header}User: work\nAgent: (no answer: error)\n\n{}again",
        diminuendo_core::session::memory::TRANSCRIPT_FOOTER
    );
    assert!(
        stream
            .iter()
            .any(|e| e["type"] == "turn_complete" && e["finalText"] == expected.as_str()),
        "{stream:?}"
    );
}

#[test]
fn invalid_agent_output_fails_the_turn_without_hurting_other_sessions() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let broken = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": broken}),
    );
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": broken, "text": "x"}),
    );
    let agent = sim.agent_of(&broken).expect("agent");
    handshake(&mut sim, agent);
    drain(&mut sim, id);
    sim.agent_send_raw(agent, b"this is not json");
    let stream = events(&drain(&mut sim, id));
    assert_eq!(stream[0]["type"], "turn_error");
    assert_eq!(stream[1]["status"], "error");
    assert!(!sim.agents[&agent].alive, "the broken agent is stopped");
    let pong = call(&mut sim, id, json!({"type": "ping"}));
    assert_eq!(pong["type"], "pong");
}

#[test]
fn an_agent_that_cannot_start_answers_agent_unavailable() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::FailToStart;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    let reply = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "x"}),
    );
    assert_eq!(reply["code"], "AGENT_UNAVAILABLE");
    assert_eq!(sim.store.sessions[&session_id].status.as_str(), "error");
}

#[test]
fn one_turn_at_a_time() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "x"}),
    );
    let reply = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "y"}),
    );
    assert_eq!(reply["code"], "INVALID_STATE");
}

#[test]
fn steer_cancels_the_running_turn_then_prompts_with_its_text() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "first"}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    handshake(&mut sim, agent);
    let steer = call(
        &mut sim,
        id,
        json!({"type": "steer", "sessionId": session_id, "text": "go left"}),
    );
    assert_eq!(steer["type"], "turn_accepted");
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 2, "result": {"stopReason": "cancelled"}}),
    );
    let last = sim.agents[&agent]
        .written
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(last["method"], "session/prompt");
    assert_eq!(last["params"]["prompt"][0]["text"], "go left");
    let stream = events(&drain(&mut sim, id));
    let started: Vec<&Value> = stream
        .iter()
        .filter(|e| e["type"] == "turn_started")
        .collect();
    assert_eq!(
        started.last().map(|e| e["turnId"].clone()),
        Some(steer["turnId"].clone())
    );
}

#[test]
fn rate_limit_then_close_4101() {
    let mut sim = Sim::new(
        CoreConfig {
            rate_limit_messages: 5,
            ..config()
        },
        1,
        Instant::now(),
    );
    let id = open_ws(&mut sim);
    for _ in 0..5 {
        send(&mut sim, id, json!({"type": "list_sessions"}));
    }
    // Pings never count.
    send(&mut sim, id, json!({"type": "ping"}));
    send(
        &mut sim,
        id,
        json!({"type": "list_sessions", "requestId": "over"}),
    );
    let replies = drain(&mut sim, id);
    let limited = replies
        .iter()
        .find(|m| m["code"] == "RATE_LIMITED")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(limited["requestId"], "over");
    assert!(limited["retryAfterMs"]
        .as_u64()
        .is_some_and(|ms| ms > 0 && ms <= 10_000));
    assert!(replies.iter().any(|m| m["type"] == "pong"));
    for _ in 0..10 {
        send(&mut sim, id, json!({"type": "list_sessions"}));
    }
    let frames = sim.take_frames(id);
    assert!(frames.iter().any(|f| f.close_code() == Some(4101)));
}

#[test]
fn a_slow_subscriber_is_closed_4100_and_the_others_get_everything() {
    let mut sim = Sim::new(
        CoreConfig {
            outbound_queue_limit: 16 * 1024,
            ..config()
        },
        1,
        Instant::now(),
    );
    sim.agent_mode = AgentMode::Manual;
    let fast = open_ws(&mut sim);
    let slow = open_ws(&mut sim);
    let session_id = create(&mut sim, fast);
    for id in [fast, slow] {
        call(
            &mut sim,
            id,
            json!({"type": "join_session", "sessionId": session_id}),
        );
    }
    call(
        &mut sim,
        fast,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream"}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    handshake(&mut sim, agent);
    sim.set_write_limit(slow, Some(0));
    // The agent streams one line per loop turn; the fast client reads everything in between.
    for index in 0..2000 {
        sim.agent_send(agent, &json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s",
            "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": format!("c{index} ")}}}}));
    }
    sim.set_write_limit(slow, None);
    sim.unblock(slow);
    let frames = sim.take_frames(slow);
    assert_eq!(frames.last().and_then(|f| f.close_code()), Some(4100));
    assert!(sim.is_closed(slow));
    assert!(!sim.is_closed(fast));
    let stream = events(&drain(&mut sim, fast));
    let text: String = stream
        .iter()
        .filter(|e| e["type"] == "text_delta")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(
        text,
        (0..2000).map(|i| format!("c{i} ")).collect::<String>()
    );
}

#[test]
fn restarts_deactivate_sessions_and_an_unclean_one_changes_the_epoch() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "x"}),
    );
    let epoch = sim.store.sessions[&session_id].epoch.clone();
    let last_seq = sim.store.events[&session_id].len() as u64;

    sim.restart(true);
    let id = open_ws(&mut sim);
    let joined = call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": last_seq - 1, "epoch": epoch}),
    );
    assert_eq!(joined["session"]["status"], "inactive");
    assert_eq!(joined["recovered"], true, "a clean restart keeps the epoch");
    assert_eq!(joined["lastSeq"], last_seq);

    sim.restart(false);
    let id = open_ws(&mut sim);
    let joined = call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": last_seq - 1, "epoch": epoch}),
    );
    assert_eq!(
        joined["recovered"], false,
        "after a crash the old epoch cannot resume"
    );
    assert_ne!(joined["epoch"], epoch.as_str());
    // New events continue the sequence.
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "y"}),
    );
    let stream = events(&drain(&mut sim, id));
    assert_eq!(
        stream.first().map(|e| e["seq"].clone()),
        Some(json!(last_seq + 1))
    );
}

#[test]
fn shutdown_gives_running_turns_a_grace_period_then_closes_everyone() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "long"}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    handshake(&mut sim, agent);
    drain(&mut sim, id);
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    let refused = call(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "echo"}),
    );
    assert_eq!(refused["code"], "SHUTTING_DOWN");
    assert!(!sim.is_closed(id), "still open during the grace period");
    sim.advance(Duration::from_secs(10));
    let frames = sim.take_frames(id);
    let texts: Vec<Value> = frames
        .iter()
        .filter(|f| f.opcode == 1)
        .filter_map(|f| serde_json::from_slice(&f.payload).ok())
        .collect();
    let error = texts
        .iter()
        .find(|m| m["type"] == "turn_error")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(error["code"], "SHUTTING_DOWN");
    assert!(texts.iter().any(|m| m["type"] == "server_shutdown"));
    assert_eq!(frames.last().and_then(|f| f.close_code()), Some(1001));
    sim.send(id, &client::close(1001));
    assert!(sim.is_closed(id));
    assert!(!sim.agents[&agent].alive, "agents are stopped");
}

#[test]
fn an_idle_session_is_deactivated() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "x"}),
    );
    assert_eq!(sim.store.sessions[&session_id].status.as_str(), "ready");
    sim.advance(Duration::from_secs(601));
    assert_eq!(sim.store.sessions[&session_id].status.as_str(), "inactive");
}

#[test]
fn a_replay_too_big_for_the_outbound_budget_reloads_instead_of_closing_a_fast_reader() {
    let mut sim = Sim::new(
        CoreConfig {
            outbound_queue_limit: 16 * 1024,
            ..config()
        },
        1,
        Instant::now(),
    );
    let writer = open_ws(&mut sim);
    let session_id = create(&mut sim, writer);
    call(
        &mut sim,
        writer,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream 100"}),
    );
    let last_seq = sim.store.events[&session_id].len() as u64;
    assert!(last_seq > 100);
    let stored: usize = sim.store.events[&session_id]
        .iter()
        .map(|e| e.payload.len())
        .sum();
    assert!(
        stored > 8 * 1024,
        "the whole log ({stored} bytes) exceeds half the budget"
    );

    // Everything since seq 0: over half the budget, so `recovered: false`, never a 4100.
    let reader = open_ws(&mut sim);
    let joined = call(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": 0}),
    );
    assert_eq!(joined["type"], "session_joined", "{joined}");
    assert_eq!(joined["recovered"], false);
    assert!(!sim.is_closed(reader));
    // The last few events fit: recovered.
    let joined = call(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": last_seq - 3}),
    );
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["events"].as_array().map(Vec::len), Some(3));
    // A page of get_events stops at the budget and says there is more.
    let page = call(
        &mut sim,
        reader,
        json!({"type": "get_events", "sessionId": session_id, "afterSeq": 0}),
    );
    let count = page["events"].as_array().map_or(0, Vec::len) as u64;
    assert!(count > 0 && count < last_seq, "{count} of {last_seq}");
    assert_eq!(page["hasMore"], true);
    assert!(!sim.is_closed(reader));
}

// ------------------------------------------------------------ durable replies (issue 10)

#[test]
fn registry_replies_wait_for_the_commit() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let alice = open_ws(&mut sim);
    let bob = open_ws(&mut sim);
    sim.hold_storage = true;
    send(
        &mut sim,
        alice,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    // The row is written, but not acknowledged: no reply, no broadcast, not listed.
    assert_eq!(sim.store.sessions.len(), 1);
    assert!(sim.take_messages(alice).is_empty());
    assert!(sim.take_messages(bob).is_empty());
    send(
        &mut sim,
        bob,
        json!({"type": "list_sessions", "requestId": "l"}),
    );
    assert_eq!(sim.take_messages(bob)[0]["sessions"], json!([]));
    assert_eq!(sim.held_storage(), 1);
    sim.deliver_storage(1);
    let got = sim.take_messages(alice);
    assert_eq!(kinds(&got), ["session_created", "session_created"]);
    assert_eq!(got[0]["requestId"], "c");
    let session_id = got[0]["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(kinds(&sim.take_messages(bob)), ["session_created"]);

    for (message, kind) in [
        (
            json!({"type": "rename_session", "sessionId": session_id, "name": "n2", "requestId": "u"}),
            "session_updated",
        ),
        (
            json!({"type": "archive_session", "sessionId": session_id, "requestId": "u"}),
            "session_updated",
        ),
        (
            json!({"type": "delete_session", "sessionId": session_id, "requestId": "u"}),
            "session_deleted",
        ),
    ] {
        send(&mut sim, alice, message);
        assert!(
            sim.take_messages(alice).is_empty(),
            "{kind} before its commit"
        );
        assert!(
            sim.take_messages(bob).is_empty(),
            "{kind} broadcast before its commit"
        );
        sim.deliver_storage(1);
        let got = sim.take_messages(alice);
        assert_eq!(got[0]["type"], kind);
        assert_eq!(got[0]["requestId"], "u");
        assert_eq!(kinds(&sim.take_messages(bob)), [kind]);
    }
    assert!(sim.store.sessions.is_empty());
}

#[test]
fn a_failed_commit_answers_internal_and_memory_matches_the_disk() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let alice = open_ws(&mut sim);
    let bob = open_ws(&mut sim);
    let kept = create(&mut sim, alice);
    drain(&mut sim, alice);
    drain(&mut sim, bob);
    sim.store.fail_registry = true;
    let reply = call(
        &mut sim,
        alice,
        json!({"type": "create_session", "agentType": "echo", "name": "lost"}),
    );
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "INTERNAL");
    assert!(reply["message"]
        .as_str()
        .unwrap_or_default()
        .contains("not created"));
    let reply = call(
        &mut sim,
        alice,
        json!({"type": "rename_session", "sessionId": kept, "name": "renamed"}),
    );
    assert_eq!(reply["code"], "INTERNAL", "{reply}");
    let reply = call(
        &mut sim,
        alice,
        json!({"type": "delete_session", "sessionId": kept}),
    );
    assert_eq!(reply["code"], "INTERNAL", "{reply}");
    // Nobody was told of a change that is not on disk.
    assert!(drain(&mut sim, bob).is_empty());
    sim.store.fail_registry = false;
    // The failed create is not listed; the failed rename was undone; the failed delete left
    // the session in place.
    let list = call(&mut sim, alice, json!({"type": "list_sessions"}));
    let sessions = list["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["id"], kept.as_str());
    assert_eq!(sessions[0]["name"], "first");
    assert_eq!(sim.store.sessions.len(), 1);
    let joined = call(
        &mut sim,
        alice,
        json!({"type": "join_session", "sessionId": kept}),
    );
    assert_eq!(joined["type"], "session_joined", "{joined}");
}

#[test]
fn a_durable_reply_never_reaches_a_recycled_connection_id() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let alice = open_ws(&mut sim);
    let bob = open_ws(&mut sim);
    sim.hold_storage = true;
    send(
        &mut sim,
        alice,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    sim.disconnect(alice);
    let again = sim.connect_reusing(alice);
    sim.send(again, &client::upgrade("/ws"));
    let response = sim.take_response(again).expect("a response to the upgrade");
    assert_eq!(response.status, 101);
    assert!(!sim.take_messages(again).is_empty());
    sim.hold_storage = false;
    sim.deliver_storage(1);
    sim.pump();
    // The newcomer (same tenant in dev mode) gets the broadcast only, never the reply owed to
    // the closed connection; the session exists all the same.
    let got = sim.take_messages(again);
    assert!(got.iter().all(|m| m.get("requestId").is_none()), "{got:?}");
    assert!(
        kinds(&got).contains(&"session_created".to_owned()),
        "{got:?}"
    );
    assert_eq!(kinds(&sim.take_messages(bob)), ["session_created"]);
    assert_eq!(sim.store.sessions.len(), 1);
}
