//! Tenant isolation (PROTOCOL section 7): a connection of tenant B never sees anything of tenant
//! A, and A's session ids answer `SESSION_NOT_FOUND` to B.

use diminuendo_core::auth::testing::{claims, sign_hs256};
use diminuendo_tests::{parse, unix_now, Client};
use serde_json::json;

use crate::with_each_gateway;

const SECRET: &str = "a-tenant-test-secret-that-is-long-enough";

fn client_of(gateway: &diminuendo_tests::Gateway, sub: &str, tenant: &str) -> Client {
    let token = sign_hs256(SECRET, &claims(sub, tenant, "owner", unix_now() + 3600)).expect("sign");
    Client::authenticated(gateway, &token)
}

#[test]
fn another_tenant_sees_nothing_and_finds_nothing() {
    with_each_gateway(&["--jwt-secret", SECRET], |gateway| {
        let mut alice = client_of(gateway, "alice", "tenant-a");
        let mut bob = client_of(gateway, "bob", "tenant-b");
        // A second connection of tenant A is told about A's changes: the broadcast works, so its
        // absence on B's side means something.
        let mut alice_too = client_of(gateway, "alice2", "tenant-a");

        let session = alice.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        assert_eq!(session["tenantId"], "tenant-a");
        let created = alice_too.next_json();
        assert_eq!(created["type"], "session_created", "{created}");

        let list = bob.call(json!({"type": "list_sessions", "includeArchived": true}));
        assert_eq!(
            list,
            json!({"type": "session_list", "requestId": list["requestId"], "sessions": []})
        );
        for request in [
            json!({"type": "join_session", "sessionId": id}),
            json!({"type": "join_session", "sessionId": id, "afterSeq": 0}),
            json!({"type": "run_turn", "sessionId": id, "text": "hi"}),
            json!({"type": "steer", "sessionId": id, "text": "hi"}),
            json!({"type": "stop_turn", "sessionId": id}),
            json!({"type": "get_events", "sessionId": id, "afterSeq": 0}),
            json!({"type": "get_history", "sessionId": id}),
            json!({"type": "rename_session", "sessionId": id, "name": "mine now"}),
            json!({"type": "archive_session", "sessionId": id}),
            json!({"type": "delete_session", "sessionId": id}),
        ] {
            let error = bob.call(request.clone());
            assert_eq!(error["type"], "error", "{request} -> {error}");
            assert_eq!(error["code"], "SESSION_NOT_FOUND", "{request} -> {error}");
        }

        // A runs a turn (its status changes broadcast session_updated to tenant A).
        alice.join(&id);
        alice.run_turn(&id, "a secret of tenant a");
        let events = alice.turn_events(&id);
        assert!(!events.is_empty());
        alice.call(json!({"type": "rename_session", "sessionId": id, "name": "still A's"}));
        let seen_by_a: Vec<String> = alice_too
            .barrier()
            .iter()
            .map(|text| parse(text)["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            seen_by_a.iter().any(|kind| kind == "session_updated"),
            "{seen_by_a:?}"
        );

        // Everything of A is done (A's own reads above) before B's barrier: B got nothing.
        let seen_by_b = bob.barrier();
        assert!(seen_by_b.is_empty(), "tenant B received {seen_by_b:?}");

        // B's own session is B's alone; A's list does not show it.
        let bobs = bob.create_session("echo");
        let list = alice.call(json!({"type": "list_sessions"}));
        let ids: Vec<&str> = list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, vec![id.as_str()], "{list}");
        assert_ne!(bobs["id"], id.as_str());
        let error =
            alice.call(json!({"type": "get_events", "sessionId": bobs["id"], "afterSeq": 0}));
        assert_eq!(error["code"], "SESSION_NOT_FOUND", "{error}");
        // A does not get B's session_created.
        let seen_by_a: Vec<String> = alice.barrier();
        assert!(
            seen_by_a
                .iter()
                .all(|text| !text.contains(bobs["id"].as_str().unwrap_or("?"))),
            "{seen_by_a:?}"
        );
    });
}
