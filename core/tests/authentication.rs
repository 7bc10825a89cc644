//! Authentication through the core: tokens in `authenticate` and in the upgrade, failures, the
//! per-IP limit, and tenants kept apart.

mod common;

use common::*;
use diminuendo_core::auth::{testing, AuthConfig, Authenticator};
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::{ConnectionId, CoreConfig};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn sim() -> Sim {
    let mut sim = Sim::new(
        CoreConfig {
            coalesce_deltas: false,
            ..prod()
        },
        3,
    );
    let auth = Authenticator::new(AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    });
    sim.gateway
        .set_authenticator(auth.expect("valid auth settings"));
    sim
}

fn token(user: &str, tenant: &str, role: &str) -> String {
    let exp = SIM_START_UNIX_MS / 1000 + 3600;
    testing::sign_hs256(SECRET, &testing::claims(user, tenant, role, exp)).expect("signed")
}

fn send(sim: &mut Sim, id: ConnectionId, message: Value) -> Vec<Value> {
    sim.send(id, &client::text(&message.to_string()));
    sim.take_messages(id)
}

fn login(sim: &mut Sim, user: &str, tenant: &str, role: &str) -> ConnectionId {
    let id = open(sim, "/ws");
    sim.take_messages(id);
    let replies = send(
        sim,
        id,
        json!({"type": "authenticate", "token": token(user, tenant, role), "requestId": "a"}),
    );
    assert_eq!(replies[0]["type"], "authenticated", "{replies:?}");
    assert_eq!(replies[0]["requestId"], "a");
    assert_eq!(
        replies[0]["identity"],
        json!({"userId": user, "email": format!("{user}@example.com"), "tenantId": tenant, "role": role})
    );
    id
}

#[test]
fn failures_are_answered_once_each_then_limited_per_ip() {
    let mut sim = sim();
    let id = open(&mut sim, "/ws");
    sim.take_messages(id);
    for attempt in 0..10 {
        let replies = send(
            &mut sim,
            id,
            json!({"type": "authenticate", "token": format!("bad{attempt}")}),
        );
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["code"], "AUTH_FAILED");
    }
    let replies = send(
        &mut sim,
        id,
        json!({"type": "authenticate", "token": token("u", "t", "member"), "requestId": "x"}),
    );
    assert_eq!(replies.len(), 1, "one error per request: {replies:?}");
    assert_eq!(replies[0]["code"], "AUTH_RATE_LIMITED");
    assert_eq!(replies[0]["requestId"], "x");
    assert!(replies[0]["retryAfterMs"]
        .as_u64()
        .is_some_and(|ms| ms > 0 && ms <= 60_000));
    assert!(!replies[0]["message"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
}

#[test]
fn an_expired_or_foreign_token_fails_and_a_good_one_in_the_upgrade_authenticates() {
    let mut sim = sim();
    let id = open(&mut sim, "/ws");
    sim.take_messages(id);
    let expired = testing::sign_hs256(
        SECRET,
        &testing::claims("u", "t", "member", SIM_START_UNIX_MS / 1000 - 100),
    );
    let replies = send(
        &mut sim,
        id,
        json!({"type": "authenticate", "token": expired.expect("signed")}),
    );
    assert_eq!(replies[0]["code"], "AUTH_FAILED");
    assert_eq!(replies[0]["message"], "token expired");
    let other = testing::sign_hs256(
        "another-secret-that-is-also-long-enough!!",
        &testing::claims("u", "t", "member", SIM_START_UNIX_MS / 1000 + 60),
    );
    let replies = send(
        &mut sim,
        id,
        json!({"type": "authenticate", "token": other.expect("signed")}),
    );
    assert_eq!(replies[0]["code"], "AUTH_FAILED");
    let bad_tenant = testing::sign_hs256(
        SECRET,
        &testing::claims("u", "../etc", "member", SIM_START_UNIX_MS / 1000 + 60),
    );
    let replies = send(
        &mut sim,
        id,
        json!({"type": "authenticate", "token": bad_tenant.expect("signed")}),
    );
    assert_eq!(
        replies[0]["code"], "AUTH_FAILED",
        "a tenant id that cannot be a path segment"
    );

    let upgraded = sim.connect();
    let request = upgrade_with(
        "/ws",
        &format!("Authorization: Bearer {}\r\n", token("u", "t", "viewer")),
    );
    sim.send(upgraded, &request);
    let response = sim.take_response(upgraded).expect("101");
    assert_eq!(response.status, 101);
    let kinds: Vec<Value> = sim
        .take_messages(upgraded)
        .iter()
        .map(|m| m["type"].clone())
        .collect();
    assert_eq!(kinds, ["welcome", "connected", "authenticated"]);

    let browser = sim.connect();
    let request = upgrade_with(
        "/ws",
        &format!(
            "Sec-WebSocket-Protocol: diminuendo.v1, bearer.{}\r\n",
            token("u", "t", "owner")
        ),
    );
    sim.send(browser, &request);
    let response = sim.take_response(browser).expect("101");
    assert_eq!(
        response.header("Sec-WebSocket-Protocol"),
        Some("diminuendo.v1")
    );
    let kinds: Vec<Value> = sim
        .take_messages(browser)
        .iter()
        .map(|m| m["type"].clone())
        .collect();
    assert_eq!(kinds, ["welcome", "connected", "authenticated"]);

    let refused = sim.connect();
    sim.send(
        refused,
        &upgrade_with("/ws", "Authorization: Bearer not-a-token\r\n"),
    );
    sim.take_response(refused);
    let frames = sim.take_frames(refused);
    let error: Value = frames
        .iter()
        .rev()
        .filter(|f| f.opcode == 1)
        .find_map(|f| serde_json::from_slice(&f.payload).ok())
        .unwrap_or(Value::Null);
    assert_eq!(error["code"], "AUTH_FAILED");
    assert_eq!(frames.last().and_then(|f| f.close_code()), Some(4001));
}

#[test]
fn roles_are_enforced_and_tenants_never_see_each_other() {
    let mut sim = sim();
    let alice = login(&mut sim, "alice", "acme", "member");
    let mallory = login(&mut sim, "mallory", "evil", "owner");
    let viewer = login(&mut sim, "victor", "acme", "viewer");

    let created = send(
        &mut sim,
        alice,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    let session = created
        .iter()
        .find(|m| m["requestId"] == "c")
        .map(|m| m["session"]["id"].clone())
        .unwrap_or(Value::Null);
    assert!(session.is_string(), "{created:?}");
    assert_eq!(
        sim.take_messages(viewer).len(),
        1,
        "the tenant's other connection sees session_created"
    );

    let forbidden = send(
        &mut sim,
        viewer,
        json!({"type": "create_session", "agentType": "echo"}),
    );
    assert_eq!(forbidden[0]["code"], "FORBIDDEN");
    let forbidden = send(
        &mut sim,
        alice,
        json!({"type": "delete_session", "sessionId": session}),
    );
    assert_eq!(forbidden[0]["code"], "FORBIDDEN", "members may not delete");
    let listed = send(&mut sim, viewer, json!({"type": "list_sessions"}));
    assert_eq!(listed[0]["sessions"].as_array().map(Vec::len), Some(1));

    for request in [
        json!({"type": "join_session", "sessionId": session}),
        json!({"type": "run_turn", "sessionId": session, "text": "x"}),
        json!({"type": "get_events", "sessionId": session, "afterSeq": 0}),
        json!({"type": "rename_session", "sessionId": session, "name": "mine"}),
        json!({"type": "delete_session", "sessionId": session}),
    ] {
        let replies = send(&mut sim, mallory, request.clone());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["code"], "SESSION_NOT_FOUND", "{request}");
    }
    assert_eq!(
        send(&mut sim, mallory, json!({"type": "list_sessions"}))[0]["sessions"],
        json!([])
    );

    send(
        &mut sim,
        alice,
        json!({"type": "join_session", "sessionId": session}),
    );
    send(
        &mut sim,
        alice,
        json!({"type": "run_turn", "sessionId": session, "text": "secret plans"}),
    );
    let leaked: Vec<Value> = sim.take_messages(mallory);
    assert!(
        leaked.is_empty(),
        "another tenant's connection received {leaked:?}"
    );
}

#[test]
fn a_reply_owed_to_a_closed_connection_never_reaches_the_next_owner_of_its_id() {
    let mut sim = sim();
    let alice = login(&mut sim, "alice", "acme", "owner");
    let created = send(
        &mut sim,
        alice,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    let session = created
        .iter()
        .find(|m| m["requestId"] == "c")
        .map(|m| m["session"]["id"].clone())
        .unwrap_or(Value::Null);
    send(
        &mut sim,
        alice,
        json!({"type": "run_turn", "sessionId": session, "text": "confidential"}),
    );
    sim.hold_storage = true;
    send(
        &mut sim,
        alice,
        json!({"type": "get_events", "sessionId": session, "afterSeq": 0, "requestId": "e"}),
    );
    send(
        &mut sim,
        alice,
        json!({"type": "join_session", "sessionId": session, "afterSeq": 1, "requestId": "j"}),
    );
    sim.disconnect(alice);
    // The adapter gives the id to a connection of another tenant.
    let reused = sim.connect_reusing(alice);
    sim.send(reused, &client::upgrade("/ws"));
    sim.take_response(reused);
    sim.take_messages(reused);
    send(
        &mut sim,
        reused,
        json!({"type": "authenticate", "token": token("mallory", "evil", "owner")}),
    );
    sim.hold_storage = false;
    sim.deliver_storage(usize::MAX);
    let received = sim.take_messages(reused);
    let text = serde_json::to_string(&received).unwrap_or_default();
    assert!(
        !text.contains("confidential") && !text.contains(session.as_str().unwrap_or("?")),
        "leaked: {text}"
    );
}
