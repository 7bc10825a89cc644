//! The session lifecycle in dev mode (PROTOCOL section 5): the registry requests, a turn with the
//! echo agent and its event order, reading the past, and the errors.

use diminuendo_tests::{assert_gap_free, delta_text, events_of, parse, seqs, types, Client};
use serde_json::{json, Value};

use crate::with_each_gateway;

fn session_ids(list: &Value) -> Vec<String> {
    assert_eq!(list["type"], "session_list", "{list}");
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|session| session["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn create_list_rename_archive_delete_with_tenant_broadcasts() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut client = Client::dev(gateway);
        let mut watcher = Client::dev(gateway);

        let reply = client.call(json!({
            "type": "create_session", "requestId": "c-1", "agentType": "echo", "name": "first"
        }));
        assert_eq!(reply["type"], "session_created", "{reply}");
        let session = &reply["session"];
        let id = session["id"].as_str().expect("id").to_owned();
        assert_eq!(session["name"], "first");
        assert_eq!(session["agentType"], "echo");
        assert_eq!(session["status"], "inactive");
        assert_eq!(session["archived"], false);
        assert_eq!(session["tenantId"], "dev");
        assert_eq!(session["createdBy"], "dev-user-001");
        assert_eq!(session["lastSeq"], 0);
        assert!(session["epoch"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(session["createdAt"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000));
        assert!(session["updatedAt"].is_u64(), "{session}");
        // The requester also gets the broadcast (without the requestId), and so does the other
        // connection of the tenant.
        for connection in [&mut client, &mut watcher] {
            let broadcast = connection.next_json();
            assert_eq!(broadcast["type"], "session_created", "{broadcast}");
            assert_eq!(broadcast["session"]["id"], id.as_str());
            assert!(broadcast.get("requestId").is_none(), "{broadcast}");
        }

        let second = client.create_session("echo");
        let second_id = second["id"].as_str().expect("id").to_owned();
        let list = client.call(json!({"type": "list_sessions"}));
        let ids = session_ids(&list);
        assert!(ids.contains(&id) && ids.contains(&second_id), "{list}");

        let renamed =
            client.call(json!({"type": "rename_session", "sessionId": id, "name": "renamed"}));
        assert_eq!(renamed["type"], "session_updated", "{renamed}");
        assert_eq!(renamed["session"]["name"], "renamed");

        let archived = client.call(json!({"type": "archive_session", "sessionId": id}));
        assert_eq!(archived["type"], "session_updated", "{archived}");
        assert_eq!(archived["session"]["archived"], true);
        let list = client.call(json!({"type": "list_sessions"}));
        assert_eq!(session_ids(&list), vec![second_id.clone()], "{list}");
        let list = client.call(json!({"type": "list_sessions", "includeArchived": true}));
        let ids = session_ids(&list);
        assert!(ids.contains(&id), "{list}");
        let listed = list["sessions"]
            .as_array()
            .and_then(|sessions| sessions.iter().find(|s| s["id"] == id.as_str()))
            .expect("the archived session");
        assert_eq!(listed["archived"], true);
        assert_eq!(listed["name"], "renamed");

        let unarchived = client.call(json!({"type": "unarchive_session", "sessionId": id}));
        assert_eq!(unarchived["session"]["archived"], false, "{unarchived}");
        assert_eq!(
            session_ids(&client.call(json!({"type": "list_sessions"}))).len(),
            2
        );

        // The watcher saw every change, in order, as tenant broadcasts.
        let seen: Vec<Value> = watcher.barrier().iter().map(|text| parse(text)).collect();
        let kinds: Vec<(&str, &str)> = seen
            .iter()
            .map(|m| {
                (
                    m["type"].as_str().unwrap_or_default(),
                    m["session"]["id"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("session_created", second_id.as_str()),
                ("session_updated", id.as_str()),
                ("session_updated", id.as_str()),
                ("session_updated", id.as_str()),
            ],
            "{seen:?}"
        );

        let deleted = client.call(json!({"type": "delete_session", "sessionId": id}));
        assert_eq!(
            deleted,
            json!({"type": "session_deleted", "requestId": deleted["requestId"], "sessionId": id})
        );
        let broadcast = watcher.next_json();
        assert_eq!(
            broadcast,
            json!({"type": "session_deleted", "sessionId": id})
        );
        let list = client.call(json!({"type": "list_sessions", "includeArchived": true}));
        assert_eq!(session_ids(&list), vec![second_id], "{list}");
        let error = client.call(json!({"type": "join_session", "sessionId": id}));
        assert_eq!(error["code"], "SESSION_NOT_FOUND", "{error}");
    });
}

#[test]
fn a_turn_publishes_its_events_in_order_and_the_past_can_be_read() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut client = Client::dev(gateway);
        let mut watcher = Client::dev(gateway);
        let session = client.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        let joined = watcher.join(&id);
        assert_eq!(joined["recovered"], false, "{joined}");
        assert_eq!(joined["lastSeq"], 0, "{joined}");
        assert_eq!(joined["epoch"], epoch.as_str(), "{joined}");
        assert_eq!(joined["events"], json!([]), "{joined}");
        // A join does not spawn the agent.
        assert_eq!(joined["session"]["status"], "inactive", "{joined}");
        client.join(&id);

        let accepted = client.run_turn(&id, "hello there");
        let turn_id = accepted["turnId"].as_str().expect("turnId").to_owned();
        assert_eq!(accepted["sessionId"], id.as_str());
        let events = client.turn_events(&id);
        let watched = watcher.turn_events(&id);
        assert_eq!(events, watched, "two subscribers got different bytes");
        assert_gap_free(&events, 1);
        let parsed: Vec<Value> = events.iter().map(|text| parse(text)).collect();
        let states: Vec<(&str, &str)> = parsed
            .iter()
            .filter(|e| e["type"] == "session_state")
            .map(|e| {
                (
                    e["previous"].as_str().unwrap_or(""),
                    e["status"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("inactive", "activating"),
                ("activating", "ready"),
                ("ready", "running"),
                ("running", "ready"),
            ]
        );
        let kinds = types(&events);
        let deltas = kinds.iter().filter(|k| *k == "text_delta").count();
        assert!(deltas >= 1, "{kinds:?}");
        let mut expected = vec![
            "session_state",
            "session_state",
            "session_state",
            "turn_started",
        ];
        expected.extend(std::iter::repeat_n("text_delta", deltas));
        expected.extend(["turn_complete", "session_state"]);
        assert_eq!(kinds, expected);
        for event in &parsed {
            assert_eq!(event["sessionId"], id.as_str(), "{event}");
            assert!(
                event["ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
                "{event}"
            );
        }
        let started = &parsed[3];
        assert_eq!(started["turnId"], turn_id.as_str());
        assert_eq!(started["text"], "hello there");
        assert_eq!(started["userId"], "dev-user-001");
        assert_eq!(delta_text(&events), "hello there");
        let complete = &parsed[parsed.len() - 2];
        assert_eq!(complete["turnId"], turn_id.as_str());
        assert_eq!(complete["stopReason"], "end_turn");
        assert_eq!(complete["finalText"], "hello there");

        // A second turn on the ready session: no activation this time.
        client.run_turn(&id, "again");
        let second = client.turn_events(&id);
        assert_gap_free(&second, events.len() as u64 + 1);
        assert_eq!(types(&second)[..2], ["session_state", "turn_started"]);
        let all: Vec<String> = events.iter().chain(&second).cloned().collect();
        let last_seq = all.len() as u64;

        // get_events: everything, byte for byte; a page with hasMore; past the end.
        let reply = client.call_text(json!({"type": "get_events", "sessionId": id, "afterSeq": 0}));
        let parsed_reply = parse(&reply);
        assert_eq!(parsed_reply["type"], "events", "{reply}");
        assert_eq!(parsed_reply["sessionId"], id.as_str());
        assert_eq!(parsed_reply["epoch"], epoch.as_str());
        assert_eq!(parsed_reply["lastSeq"], last_seq);
        let (stored, has_more) = events_of(&reply);
        assert!(!has_more);
        assert_eq!(stored, all, "stored events differ from the published ones");
        let reply = client.call_text(json!({
            "type": "get_events", "sessionId": id, "afterSeq": 2, "limit": 3
        }));
        let (page, has_more) = events_of(&reply);
        assert!(has_more, "{reply}");
        assert_eq!(seqs(&page), vec![3, 4, 5]);
        assert_eq!(page, all[2..5].to_vec());
        let reply = client.call_text(json!({
            "type": "get_events", "sessionId": id, "afterSeq": last_seq - 2, "limit": 2
        }));
        let (page, has_more) = events_of(&reply);
        assert!(!has_more, "{reply}");
        assert_eq!(page, all[all.len() - 2..].to_vec());
        let reply = client.call_text(json!({
            "type": "get_events", "sessionId": id, "afterSeq": last_seq
        }));
        assert_eq!(events_of(&reply), (Vec::new(), false));

        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        assert_eq!(history["type"], "history", "{history}");
        assert_eq!(history["sessionId"], id.as_str());
        let turns = history["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 2, "{history}");
        let first = turns
            .iter()
            .find(|turn| turn["turnId"] == turn_id.as_str())
            .unwrap_or_else(|| panic!("the first turn is missing: {history}"));
        assert_eq!(first["userText"], "hello there");
        assert_eq!(first["finalText"], "hello there");
        assert_eq!(first["stopReason"], "end_turn");
        assert!(turns
            .iter()
            .any(|turn| turn["userText"] == "again" && turn["finalText"] == "again"));
    });
}

#[test]
fn errors_invalid_state_unknown_agent_and_missing_fields() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut client = Client::dev(gateway);
        let error = client.call(json!({"type": "create_session", "agentType": "no-such-agent"}));
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "AGENT_UNAVAILABLE", "{error}");

        for missing in [
            json!({"type": "create_session"}),
            json!({"type": "rename_session", "name": "x"}),
            json!({"type": "join_session"}),
            json!({"type": "run_turn", "text": "x"}),
            json!({"type": "get_events", "afterSeq": 0}),
        ] {
            let error = client.call_invalid(missing.clone());
            assert_eq!(error["code"], "INVALID_MESSAGE", "{missing} -> {error}");
        }

        let id = client.create_session("echo")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        for missing in [
            json!({"type": "run_turn", "sessionId": id}),
            json!({"type": "rename_session", "sessionId": id}),
            json!({"type": "get_events", "sessionId": id}),
            json!({"type": "run_turn", "sessionId": id, "text": 5}),
        ] {
            let error = client.call_invalid(missing.clone());
            assert_eq!(error["code"], "INVALID_MESSAGE", "{missing} -> {error}");
        }
        let error = client.call(json!({"type": "stop_turn", "sessionId": id}));
        assert_eq!(error["code"], "INVALID_STATE", "{error}");

        client.join(&id);
        client.run_turn(&id, "hang");
        client.events_until(&id, |event| event["type"] == "turn_started");
        let error = client.call(json!({"type": "run_turn", "sessionId": id, "text": "more"}));
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "INVALID_STATE", "{error}");
        let stopping = client.call(json!({"type": "stop_turn", "sessionId": id}));
        assert_eq!(stopping["type"], "turn_stopping", "{stopping}");
        let rest = client.turn_events(&id);
        let complete = rest
            .iter()
            .map(|text| parse(text))
            .find(|event| event["type"] == "turn_complete")
            .expect("turn_complete");
        assert_eq!(complete["stopReason"], "cancelled", "{complete}");
        // Ready again: a new turn is accepted.
        client.run_turn(&id, "after");
        let events = client.turn_events(&id);
        assert_eq!(delta_text(&events), "after");
    });
}
