//! Storage health and the storage queue as the core sees them (issue 10, items 4 and 5): a failed
//! write gives the session a new epoch, an unwritable storage turns `/readyz` 503 with its
//! reason on `/health` and refuses new work with `INTERNAL`, a congested queue refuses new work
//! with `RATE_LIMITED` while running turns go on. Storage's reports are fed as the inputs the
//! real storage and services layer produce.

mod common;

use common::*;
use diminuendo_core::sim::{client, AgentMode, Sim};
use diminuendo_core::storage::{DatabaseId, StorageCompletion, StorageError};
use diminuendo_core::{ConnectionId, CoreConfig};
use serde_json::{json, Value};
use std::time::Instant;

fn config() -> CoreConfig {
    CoreConfig {
        coalesce_deltas: false,
        ..dev()
    }
}

fn create(sim: &mut Sim, id: ConnectionId) -> String {
    let (reply, _) = call(
        sim,
        id,
        json!({"type": "create_session", "agentType": "echo"}),
    );
    assert_eq!(reply["type"], "session_created", "{reply}");
    reply["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn get(sim: &mut Sim, path: &str) -> (u16, Vec<u8>) {
    let id = sim.connect();
    sim.send(id, &client::get(path));
    let response = sim.take_response(id).expect("a response");
    (response.status, response.body)
}

fn unwritable(reason: &str) -> StorageCompletion {
    StorageCompletion::Health {
        writable: false,
        reason: Some(reason.to_owned()),
    }
}

#[test]
fn a_failed_write_to_a_session_log_gives_it_a_new_epoch_and_an_old_resume_reloads() {
    let mut sim = Sim::new(config(), 7, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    let (accepted, _) = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "stream 3"}),
    );
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    let old_epoch = sim.store.sessions[&session_id].epoch.clone();
    let last_seq = sim.store.events[&session_id].len() as u64;
    assert!(last_seq > 3);
    // The same resume is trusted before the failure...
    let (joined, _) = call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": 2, "epoch": old_epoch}),
    );
    assert_eq!(joined["recovered"], true, "{joined}");

    sim.gateway.handle_storage(
        StorageCompletion::WriteFailed {
            database: DatabaseId::Session {
                session_id: session_id.clone(),
            },
            commands: 2,
            error: StorageError::Sqlite {
                database: format!("sessions/{session_id}/session.db"),
                message: "database or disk is full".into(),
            },
        },
        sim.now(),
    );
    sim.pump();
    // ... and not after it: the log may miss events clients saw.
    let new_epoch = sim.store.sessions[&session_id].epoch.clone();
    assert_ne!(new_epoch, old_epoch, "the new epoch is persisted");
    let reader = open_ws(&mut sim);
    let (joined, _) = call(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": 2, "epoch": old_epoch}),
    );
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(joined["events"], json!([]));
    assert_eq!(joined["epoch"], new_epoch.as_str(), "{joined}");
    assert_eq!(joined["lastSeq"], last_seq);
    // A resume under the new epoch is trusted again.
    let (joined, _) = call(
        &mut sim,
        reader,
        json!({"type": "join_session", "sessionId": session_id, "afterSeq": last_seq, "epoch": new_epoch}),
    );
    assert_eq!(joined["recovered"], true, "{joined}");
    let (_, body) = get(&mut sim, "/metrics");
    let text = String::from_utf8(body).expect("UTF-8");
    assert!(
        text.contains("diminuendo_storage_write_failures_total 2"),
        "{text}"
    );
}

#[test]
fn while_storage_cannot_write_readyz_is_503_health_says_why_and_new_work_answers_internal() {
    let mut sim = Sim::new(config(), 7, Instant::now());
    let id = open_ws(&mut sim);
    let session_id = create(&mut sim, id);
    assert_eq!(get(&mut sim, "/readyz").0, 200);

    let reason = "storage: disk full (SQLITE_FULL) writing sessions/x/session.db";
    sim.gateway.handle_storage(unwritable(reason), sim.now());
    sim.pump();
    let (status, body) = get(&mut sim, "/readyz");
    assert_eq!(status, 503);
    assert_eq!(body, b"not ready\n");
    let (status, body) = get(&mut sim, "/health");
    assert_eq!(status, 503);
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["reason"], reason);
    let (_, body) = get(&mut sim, "/metrics");
    let text = String::from_utf8(body).expect("UTF-8");
    assert!(text.contains("\ndiminuendo_storage_writable 0\n"), "{text}");

    let agents_before = sim.agents.len();
    let (refused, _) = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "hello"}),
    );
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "INTERNAL");
    assert!(refused.get("retryAfterMs").is_none(), "{refused}");
    assert!(
        !refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains('/'),
        "no path in a client's error: {refused}"
    );
    assert_eq!(sim.agents.len(), agents_before, "nothing was started");
    assert_eq!(sim.store.sessions[&session_id].status.as_str(), "inactive");
    let (refused, _) = call(
        &mut sim,
        id,
        json!({"type": "steer", "sessionId": session_id, "text": "hello"}),
    );
    assert_eq!(refused["code"], "INTERNAL", "{refused}");
    let sessions_before = sim.store.sessions.len();
    let (refused, _) = call(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "echo"}),
    );
    assert_eq!(refused["code"], "INTERNAL", "{refused}");
    assert_eq!(sim.store.sessions.len(), sessions_before);
    // Reads still work.
    let (listed, _) = call(&mut sim, id, json!({"type": "list_sessions"}));
    assert_eq!(listed["type"], "session_list", "{listed}");
    // A newer reason replaces the older one.
    let reason = "storage: read-only (SQLITE_READONLY) writing tenants/dev/registry.db";
    sim.gateway.handle_storage(unwritable(reason), sim.now());
    let (_, body) = get(&mut sim, "/health");
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(health["reason"], reason);

    sim.gateway.handle_storage(
        StorageCompletion::Health {
            writable: true,
            reason: None,
        },
        sim.now(),
    );
    sim.pump();
    assert_eq!(get(&mut sim, "/readyz").0, 200);
    let (status, body) = get(&mut sim, "/health");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    assert!(health.get("reason").is_none(), "{health}");
    let (accepted, _) = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "hello"}),
    );
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    let (_, body) = get(&mut sim, "/metrics");
    let text = String::from_utf8(body).expect("UTF-8");
    assert!(
        text.contains("diminuendo_storage_refusals_total 3"),
        "{text}"
    );
    assert!(text.contains("\ndiminuendo_storage_writable 1\n"), "{text}");
    assert!(
        text.contains("\ndiminuendo_storage_congested 0\n"),
        "{text}"
    );
}

#[test]
fn draining_is_the_reason_health_gives_while_draining() {
    let mut sim = Sim::new(config(), 7, Instant::now());
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    let (status, body) = get(&mut sim, "/health");
    assert_eq!(status, 503);
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(health["status"], "draining");
    assert_eq!(health["reason"], "the gateway is draining");
}

fn chunk(sim: &mut Sim, agent: diminuendo_core::AgentId, text: &str) {
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s",
            "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}}}),
    );
}

#[test]
fn a_congested_queue_refuses_new_work_with_rate_limited_while_running_turns_go_on() {
    let mut sim = Sim::new(config(), 7, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let busy = create(&mut sim, id);
    let idle = create(&mut sim, id);
    call(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": busy}),
    );
    let (accepted, _) = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": busy, "text": "go"}),
    );
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    let agent = sim.agent_of(&busy).expect("agent");
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
    chunk(&mut sim, agent, "one ");

    sim.gateway
        .handle_storage(StorageCompletion::Backlog { congested: true }, sim.now());
    sim.pump();
    // Not a readiness problem: the gateway serves, it only takes no new work.
    assert_eq!(get(&mut sim, "/readyz").0, 200);
    let (_, body) = get(&mut sim, "/metrics");
    let text = String::from_utf8(body).expect("UTF-8");
    assert!(
        text.contains("\ndiminuendo_storage_congested 1\n"),
        "{text}"
    );
    for request in [
        json!({"type": "run_turn", "sessionId": idle, "text": "hello"}),
        json!({"type": "steer", "sessionId": idle, "text": "hello"}),
        json!({"type": "create_session", "agentType": "echo"}),
    ] {
        let (refused, _) = call(&mut sim, id, request.clone());
        assert_eq!(refused["type"], "error", "{request}: {refused}");
        assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
        assert_eq!(refused["retryAfterMs"], 1000, "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap_or_default()
                .contains("storage"),
            "{refused}"
        );
    }
    assert_eq!(sim.store.sessions.len(), 2);
    assert!(sim.agent_of(&idle).is_none(), "nothing was started");
    // The running turn goes on: its events are published and stored, in order, no gap.
    chunk(&mut sim, agent, "two ");
    chunk(&mut sim, agent, "three");
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 2, "result": {"stopReason": "end_turn"}}),
    );
    let (_, messages) = call(&mut sim, id, json!({"type": "ping"}));
    let complete = messages
        .iter()
        .find(|m| m["type"] == "turn_complete")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(complete["finalText"], "one two three", "{messages:?}");
    let stored = &sim.store.events[&busy];
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert!(sim.store.rejected_appends.is_empty());

    sim.gateway
        .handle_storage(StorageCompletion::Backlog { congested: false }, sim.now());
    sim.pump();
    let (created, _) = call(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "echo"}),
    );
    assert_eq!(created["type"], "session_created", "{created}");
    let (accepted, _) = call(
        &mut sim,
        id,
        json!({"type": "run_turn", "sessionId": idle, "text": "hello"}),
    );
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
}
