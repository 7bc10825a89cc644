//! Unit tests of the `/acp` edge: the JSON-RPC reader, the frames, the error mapping, the
//! translation of every session event kind and reply, and one client's bookkeeping.

use agent_client_protocol_schema::v1::{RequestId, SessionNotification};
use serde_json::{json, Value};

use super::jsonrpc::{self, Incoming};
use super::translate;
use super::{AcpEdge, Question, Stage};

fn error_of(text: &str) -> (RequestId, i32) {
    match jsonrpc::parse(text) {
        Ok(incoming) => panic!("{text} was read as {incoming:?}"),
        Err(refused) => (refused.0, i32::from(refused.1.code)),
    }
}

#[test]
fn the_reader_tells_requests_notifications_and_responses_apart() {
    assert_eq!(
        jsonrpc::parse(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"a":1}}"#).ok(),
        Some(Incoming::Request {
            id: RequestId::Number(1),
            method: "initialize".into(),
            params: json!({"a": 1}),
        })
    );
    assert_eq!(
        jsonrpc::parse(r#"{"jsonrpc":"2.0","id":"x","method":"session/list"}"#).ok(),
        Some(Incoming::Request {
            id: RequestId::Str("x".into()),
            method: "session/list".into(),
            params: Value::Null,
        })
    );
    assert_eq!(
        jsonrpc::parse(r#"{"jsonrpc":"2.0","method":"session/cancel","params":{}}"#).ok(),
        Some(Incoming::Notification {
            method: "session/cancel".into(),
            params: json!({}),
        })
    );
    assert_eq!(
        jsonrpc::parse(r#"{"jsonrpc":"2.0","id":3,"result":{"outcome":{"outcome":"cancelled"}}}"#)
            .ok(),
        Some(Incoming::Response {
            id: RequestId::Number(3),
            result: Ok(json!({"outcome": {"outcome": "cancelled"}})),
        })
    );
    assert_eq!(
        jsonrpc::parse(r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"no"}}"#).ok(),
        Some(Incoming::Response {
            id: RequestId::Number(3),
            result: Err(json!({"code": 1, "message": "no"})),
        })
    );
}

#[test]
fn the_reader_refuses_what_is_not_one_json_rpc_message() {
    assert_eq!(error_of("{"), (RequestId::Null, -32700));
    assert_eq!(error_of(""), (RequestId::Null, -32700));
    assert_eq!(error_of("[]"), (RequestId::Null, -32600));
    assert_eq!(
        error_of(r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#),
        (RequestId::Null, -32600)
    );
    assert_eq!(error_of("null"), (RequestId::Null, -32600));
    assert_eq!(error_of("7"), (RequestId::Null, -32600));
    assert_eq!(
        error_of(r#"{"id":1,"method":"x"}"#),
        (RequestId::Number(1), -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
        (RequestId::Null, -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#),
        (RequestId::Null, -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#),
        (RequestId::Number(1), -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":"a","method":null}"#),
        (RequestId::Str("a".into()), -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":1}"#),
        (RequestId::Number(1), -32600)
    );
    assert_eq!(
        error_of(r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#),
        (RequestId::Number(1), -32600)
    );
    assert_eq!(error_of(r#"{"jsonrpc":"2.0"}"#), (RequestId::Null, -32600));
}

#[test]
fn frames_are_json_rpc_2_0_and_the_payload_is_read_back() {
    for size in [0, 100, 200, 70_000] {
        let frame = jsonrpc::response(&RequestId::Number(4), json!({"pad": "x".repeat(size)}));
        let value: Value = serde_json::from_slice(jsonrpc::frame_payload(&frame)).expect("JSON");
        assert_eq!(value["jsonrpc"], "2.0");
        assert_eq!(value["id"], 4);
        assert_eq!(value["result"]["pad"].as_str().map(str::len), Some(size));
    }
    let frame = jsonrpc::error(
        &RequestId::Null,
        jsonrpc::gateway_error("FORBIDDEN", "no", None),
    );
    let value: Value = serde_json::from_slice(jsonrpc::frame_payload(&frame)).expect("JSON");
    assert_eq!(
        value,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32040, "message": "no", "data": {"code": "FORBIDDEN"}}})
    );
    let frame = jsonrpc::request(9, "session/request_permission", json!({}));
    let value: Value = serde_json::from_slice(jsonrpc::frame_payload(&frame)).expect("JSON");
    assert_eq!(
        value,
        json!({"jsonrpc": "2.0", "id": 9, "method": "session/request_permission", "params": {}})
    );
    assert!(jsonrpc::frame_payload(&[]).is_empty());
}

#[test]
fn every_gateway_code_has_its_json_rpc_code() {
    let cases = [
        ("INVALID_MESSAGE", -32602),
        ("SESSION_NOT_FOUND", -32002),
        ("NOT_AUTHENTICATED", -32000),
        ("AUTH_FAILED", -32000),
        ("FORBIDDEN", -32040),
        ("RATE_LIMITED", -32041),
        ("INVALID_STATE", -32042),
        ("AGENT_UNAVAILABLE", -32043),
        ("AGENT_REFUSED", -32044),
        ("SHUTTING_DOWN", -32045),
        ("TURN_TIMEOUT", -32046),
        ("AGENT_UNRESPONSIVE", -32047),
        ("AUTH_RATE_LIMITED", -32048),
        ("INTERRUPTED", -32049),
        ("INTERNAL", -32603),
    ];
    for (gateway_code, rpc_code) in cases {
        let error = jsonrpc::gateway_error(gateway_code, "m", Some(5));
        assert_eq!(i32::from(error.code), rpc_code, "{gateway_code}");
        assert_eq!(
            error.data,
            Some(json!({"code": gateway_code, "retryAfterMs": 5}))
        );
    }
}

fn event(kind: &str, fields: Value) -> Value {
    let mut event = json!({"type": kind, "sessionId": "s1", "seq": 7, "ts": 1, "turnId": "t1"});
    if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
        event.extend(fields);
    }
    event
}

fn updates_of(event: &Value) -> Vec<Value> {
    translate::session_updates(event)
        .into_iter()
        .map(|n| serde_json::to_value(n).expect("serialize"))
        .collect()
}

#[test]
fn each_event_kind_becomes_its_session_updates() {
    let started = updates_of(&event(
        "turn_started",
        json!({"text": "hi", "userId": "u", "content": [{"type": "image", "data": "AAAA", "mimeType": "image/png"}]}),
    ));
    assert_eq!(started.len(), 2);
    assert_eq!(
        started[0]["update"],
        json!({"sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": "hi"}})
    );
    assert_eq!(started[1]["update"]["content"]["type"], "image");
    assert_eq!(
        started[0]["_meta"],
        json!({"diminuendo": {"seq": 7, "turnId": "t1"}})
    );
    assert_eq!(started[0]["sessionId"], "s1");

    let cases = [
        (
            "text_delta",
            json!({"text": "a"}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "a"}}),
        ),
        (
            "thinking_delta",
            json!({"text": "b"}),
            json!({"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "b"}}),
        ),
        (
            "plan",
            json!({"entries": [{"content": "x", "priority": "high", "status": "pending"}]}),
            json!({"sessionUpdate": "plan", "entries": [{"content": "x", "priority": "high", "status": "pending"}]}),
        ),
        (
            "current_mode_update",
            json!({"currentModeId": "code"}),
            json!({"sessionUpdate": "current_mode_update", "currentModeId": "code"}),
        ),
        (
            "available_commands_update",
            json!({"availableCommands": [{"name": "go", "description": "d"}]}),
            json!({"sessionUpdate": "available_commands_update", "availableCommands": [{"name": "go", "description": "d"}]}),
        ),
    ];
    for (kind, fields, expected) in cases {
        let updates = updates_of(&event(kind, fields));
        assert_eq!(updates.len(), 1, "{kind}");
        assert_eq!(updates[0]["update"], expected, "{kind}");
    }

    let tool = updates_of(&event(
        "tool_call",
        json!({"toolCallId": "c1", "title": "Read", "kind": "read", "status": "pending", "input": {"path": "a"}, "truncated": true}),
    ));
    assert_eq!(tool[0]["update"]["sessionUpdate"], "tool_call");
    assert_eq!(tool[0]["update"]["rawInput"], json!({"path": "a"}));
    assert_eq!(tool[0]["update"]["kind"], "read");
    let update = updates_of(&event(
        "tool_call_update",
        json!({"toolCallId": "c1", "status": "completed", "rawOutput": 4}),
    ));
    assert_eq!(update[0]["update"]["status"], "completed");
    assert_eq!(update[0]["update"]["rawOutput"], 4);

    let usage = updates_of(&event(
        "usage",
        json!({"used": 5, "size": 10, "cost": {"amount": 0.5, "currency": "USD"}}),
    ));
    assert_eq!(usage[0]["update"]["sessionUpdate"], "usage_update");
    assert_eq!(usage[0]["update"]["used"], 5);

    // A raw update passes when it has ACP's shape, and is left out when it does not.
    let raw = updates_of(&event(
        "agent_update",
        json!({"update": {"sessionUpdate": "session_info_update", "title": "T"}}),
    ));
    assert_eq!(raw[0]["update"]["sessionUpdate"], "session_info_update");
    assert!(updates_of(&event(
        "agent_update",
        json!({"update": {"sessionUpdate": "echo_unknown_kind"}})
    ))
    .is_empty());

    for kind in [
        "permission_requested",
        "permission_resolved",
        "turn_complete",
        "turn_error",
        "session_state",
        "file_changed",
    ] {
        assert!(updates_of(&event(kind, json!({}))).is_empty(), "{kind}");
    }
    // Not a session event at all.
    assert!(updates_of(&json!({"type": "text_delta", "text": "no session"})).is_empty());
}

#[test]
fn permissions_and_their_resolution_are_acp_messages() {
    let asked = event(
        "permission_requested",
        json!({"questionId": "q1", "toolCallId": "c1", "title": "Write",
               "options": [{"optionId": "allow", "name": "Allow", "kind": "allow_once"}]}),
    );
    let request = translate::permission_request("s1", &asked).expect("a request");
    let value = serde_json::to_value(&request).expect("serialize");
    assert_eq!(
        value["toolCall"],
        json!({"toolCallId": "c1", "title": "Write"})
    );
    assert_eq!(value["options"][0]["optionId"], "allow");
    assert_eq!(value["_meta"]["diminuendo"]["questionId"], "q1");
    // An option kind ACP does not define: nothing to forward.
    let odd = event(
        "permission_requested",
        json!({"questionId": "q", "toolCallId": "c", "title": "x",
        "options": [{"optionId": "a", "name": "A", "kind": "maybe"}]}),
    );
    assert!(translate::permission_request("s1", &odd).is_none());

    let resolved = event(
        "permission_resolved",
        json!({"questionId": "q1", "optionId": "allow", "userId": "u"}),
    );
    let notification: SessionNotification =
        translate::permission_resolved("s1", "c1", &resolved).expect("a notification");
    let value = serde_json::to_value(notification).expect("serialize");
    assert_eq!(
        value["update"],
        json!({"sessionUpdate": "tool_call_update", "toolCallId": "c1"})
    );
    assert_eq!(
        value["_meta"]["diminuendo"]["permissionResolved"],
        json!({"questionId": "q1", "optionId": "allow", "userId": "u"})
    );
}

#[test]
fn replies_become_the_results_of_their_methods() {
    let init = serde_json::to_value(
        translate::initialize(
            &["echo".into(), "other".into()],
            &[(
                "other".into(),
                crate::acp::AgentFeatures {
                    image: true,
                    ..Default::default()
                },
            )],
        )
        .expect("init"),
    )
    .expect("json");
    assert_eq!(init["protocolVersion"], 1);
    assert_eq!(init["agentCapabilities"]["loadSession"], true);
    assert_eq!(init["_meta"]["diminuendo"]["defaultAgentType"], "echo");
    // The default type's agent has not answered yet: everything, checked per prompt.
    assert_eq!(
        init["agentCapabilities"]["promptCapabilities"],
        json!({"image": true, "audio": true, "embeddedContext": true})
    );
    assert_eq!(
        init["_meta"]["diminuendo"]["promptCapabilities"],
        json!({"other": {"image": true, "audio": false, "embeddedContext": false}})
    );

    let joined = json!({"type": "session_joined", "session": {"id": "s1", "agentType": "echo", "name": "n"},
        "lastSeq": 3, "epoch": "e", "events": [],
        "agent": {"currentModeId": "ask", "availableModes": [{"id": "ask", "name": "Ask"}],
                  "configOptions": [{"id": "speed", "name": "Speed", "type": "select", "currentValue": "normal",
                                     "options": [{"value": "normal", "name": "Normal"}]}]}});
    let new =
        serde_json::to_value(translate::new_session(&joined, None).expect("new")).expect("json");
    assert_eq!(new["sessionId"], "s1");
    assert_eq!(new["modes"]["currentModeId"], "ask");
    assert_eq!(new["configOptions"][0]["id"], "speed");
    assert_eq!(new["_meta"]["diminuendo"]["lastSeq"], 3);
    let load =
        serde_json::to_value(translate::load_session(&joined, None).expect("load")).expect("json");
    assert!(load.get("sessionId").is_none());
    assert_eq!(load["modes"]["availableModes"][0]["id"], "ask");
    assert!(translate::resume_session(&json!({"session": {"id": "s"}}), None).is_ok());

    let sessions: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("s{i}"), "name": "n", "updatedAt": 86_400_000 * i}))
        .collect();
    let page = serde_json::to_value(translate::list_sessions(&sessions, 0, 2).expect("list"))
        .expect("json");
    assert_eq!(page["sessions"][1]["sessionId"], "s1");
    assert_eq!(page["sessions"][1]["updatedAt"], "1970-01-02T00:00:00.000Z");
    assert_eq!(page["nextCursor"], "2");
    let last = serde_json::to_value(translate::list_sessions(&sessions, 4, 2).expect("list"))
        .expect("json");
    assert_eq!(last["sessions"].as_array().map(Vec::len), Some(1));
    assert!(last.get("nextCursor").is_none());
    let past = serde_json::to_value(translate::list_sessions(&sessions, 99, 2).expect("list"))
        .expect("json");
    assert_eq!(past["sessions"], json!([]));

    let prompt =
        serde_json::to_value(translate::prompt("cancelled", "t1").expect("prompt")).expect("json");
    assert_eq!(prompt["stopReason"], "cancelled");
    assert!(
        translate::prompt("exploded", "t1").is_err(),
        "a stop reason ACP does not define"
    );
}

#[test]
fn timestamps_are_rfc_3339_utc() {
    assert_eq!(translate::iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        translate::iso8601(951_782_400_123),
        "2000-02-29T00:00:00.123Z"
    );
    assert_eq!(
        translate::iso8601(1_798_675_200_000),
        "2026-12-31T00:00:00.000Z"
    );
    assert_eq!(translate::iso8601(-1), "1969-12-31T23:59:59.999Z");
}

#[test]
fn the_edge_keeps_one_reply_per_request_and_each_question_once() {
    let mut edge = AcpEdge::default();
    let first = edge.open(Some(RequestId::Number(1)), Stage::SetMode);
    let second = edge.open(None, Stage::Cancel);
    assert_ne!(first, second);
    assert_eq!(edge.take(&first).map(|p| p.stage), Some(Stage::SetMode));
    assert!(edge.take(&first).is_none(), "one reply each");
    assert!(edge.take("r1").is_none(), "not one of ours");
    assert!(edge.take("acp:x").is_none());

    edge.await_turn("t1".into(), "s".into(), RequestId::Str("p".into()));
    assert_eq!(edge.turn_ended("t1"), Some(RequestId::Str("p".into())));
    assert_eq!(edge.turn_ended("t1"), None);

    let question = Question {
        session_id: "s".into(),
        question_id: "q".into(),
        tool_call_id: "c".into(),
        options: vec!["allow".into()],
    };
    let id = edge.ask(question.clone());
    assert!(edge.asked("q"));
    assert_eq!(edge.resolved("q"), Some(question.clone()));
    assert_eq!(
        edge.answered(&RequestId::Number(id)),
        None,
        "resolved first: the answer is late"
    );
    let id = edge.ask(question.clone());
    assert_eq!(
        edge.answered(&RequestId::Number(id)),
        Some(question.clone())
    );
    assert_eq!(
        edge.answered(&RequestId::Number(id)),
        None,
        "one answer counts"
    );
    assert_eq!(edge.answered(&RequestId::Str("1".into())), None);
    // The answering client is told the resolution too (its answer may have lost).
    assert_eq!(edge.resolved("q"), Some(question.clone()));
    assert_eq!(edge.resolved("q"), None);
    assert!(!edge.asked("q"));

    // A deleted session: its prompts are taken (to be answered), its questions forgotten.
    edge.await_turn("t2".into(), "s".into(), RequestId::Number(7));
    edge.await_turn("t3".into(), "other".into(), RequestId::Number(8));
    edge.ask(question);
    assert_eq!(edge.session_gone("s"), vec![RequestId::Number(7)]);
    assert!(!edge.asked("q"));
    assert_eq!(edge.turn_ended("t3"), Some(RequestId::Number(8)));
}
