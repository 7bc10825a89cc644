//! `/acp` on the simulated gateway (docs/ACP.md): JSON-RPC errors, the methods, a turn seen on
//! `/acp` and `/ws` at once, `session/load`'s history in order, `session/list`'s cursors, and a
//! permission request answered from either side.

mod common;

use std::time::Instant;

use common::*;
use diminuendo_core::sim::{client, AgentMode, Sim};
use diminuendo_core::{ConnectionId, CoreConfig};
use serde_json::{json, Value};

fn config() -> CoreConfig {
    CoreConfig {
        coalesce_deltas: false,
        ..dev()
    }
}

fn send(sim: &mut Sim, id: ConnectionId, message: &Value) {
    sim.send(id, &client::text(&message.to_string()));
}

/// Sends a request and returns everything that arrived, in order.
fn exchange(sim: &mut Sim, id: ConnectionId, message: Value) -> Vec<Value> {
    send(sim, id, &message);
    sim.take_messages(id)
}

/// Sends a request with this `id` and returns (what arrived before its response, the response).
fn call(
    sim: &mut Sim,
    id: ConnectionId,
    rid: i64,
    method: &str,
    params: Value,
) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    let mut response = Value::Null;
    for message in exchange(
        sim,
        id,
        json!({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}),
    ) {
        if response.is_null() && message["id"] == rid && message.get("method").is_none() {
            response = message;
        } else if response.is_null() {
            before.push(message);
        }
    }
    (before, response)
}

fn open_acp(sim: &mut Sim) -> ConnectionId {
    let id = open(sim, "/acp");
    assert!(sim.take_received(id).is_empty(), "ACP has no greeting");
    let (_, response) = call(sim, id, 0, "initialize", json!({"protocolVersion": 1}));
    assert_eq!(response["result"]["protocolVersion"], 1, "{response}");
    id
}

fn new_session(sim: &mut Sim, id: ConnectionId) -> String {
    let (_, response) = call(
        sim,
        id,
        1,
        "session/new",
        json!({"cwd": "/home/me/project", "mcpServers": []}),
    );
    response["result"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no sessionId: {response}"))
        .to_owned()
}

fn updates(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m["method"] == "session/update")
        .map(|m| m["params"].clone())
        .collect()
}

#[test]
fn initialize_advertises_what_the_gateway_serves() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open(&mut sim, "/acp");
    let (_, response) = call(
        &mut sim,
        id,
        7,
        "initialize",
        json!({"protocolVersion": 3, "clientCapabilities": {}}),
    );
    let result = &response["result"];
    assert_eq!(response["jsonrpc"], "2.0");
    assert_eq!(result["protocolVersion"], 1);
    assert_eq!(result["agentCapabilities"]["loadSession"], true);
    assert_eq!(
        result["agentCapabilities"]["sessionCapabilities"],
        json!({"list": {}, "resume": {}})
    );
    assert_eq!(
        result["agentCapabilities"]["promptCapabilities"]["image"],
        true
    );
    assert_eq!(result["_meta"]["diminuendo"]["agentTypes"], json!(["echo"]));
    assert_eq!(result["authMethods"], json!([]));
    let (_, again) = call(&mut sim, id, 8, "initialize", json!({"protocolVersion": 1}));
    assert_eq!(again["error"]["code"], -32600, "{again}");
    assert_eq!(again["id"], 8);
}

#[test]
fn bad_messages_get_json_rpc_errors_and_the_connection_stays() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open(&mut sim, "/acp");
    let (_, early) = call(&mut sim, id, 1, "session/list", json!({}));
    assert_eq!(early["error"]["code"], -32600, "before initialize: {early}");
    let cases = [
        ("{not json", -32700, Value::Null),
        ("[]", -32600, Value::Null),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}]"#,
            -32600,
            Value::Null,
        ),
        ("42", -32600, Value::Null),
        (
            r#"{"jsonrpc":"1.0","id":5,"method":"initialize"}"#,
            -32600,
            json!(5),
        ),
        (
            r#"{"jsonrpc":"2.0","id":{"x":1},"method":"initialize"}"#,
            -32600,
            Value::Null,
        ),
        (r#"{"jsonrpc":"2.0","id":6,"method":7}"#, -32600, json!(6)),
        (
            r#"{"jsonrpc":"2.0","id":"p","method":"initialize","params":{"protocolVersion":"one"}}"#,
            -32602,
            json!("p"),
        ),
    ];
    for (text, code, rid) in cases {
        sim.send(id, &client::text(text));
        let replies = sim.take_messages(id);
        assert_eq!(replies.len(), 1, "{text}: {replies:?}");
        assert_eq!(replies[0]["error"]["code"], code, "{text}: {}", replies[0]);
        assert_eq!(replies[0]["id"], rid, "{text}");
        assert_eq!(replies[0]["jsonrpc"], "2.0");
    }
    // Still usable.
    let (_, response) = call(&mut sim, id, 2, "initialize", json!({"protocolVersion": 1}));
    assert_eq!(response["result"]["protocolVersion"], 1);
    let (_, unknown) = call(&mut sim, id, 3, "session/teleport", json!({}));
    assert_eq!(unknown["error"]["code"], -32601);
    assert_eq!(unknown["error"]["data"]["method"], "session/teleport");
    let (_, ext) = call(&mut sim, id, 4, "_vendor/thing", json!({}));
    assert_eq!(ext["error"]["code"], -32601);
    // An unknown notification is not answered.
    assert!(exchange(
        &mut sim,
        id,
        json!({"jsonrpc": "2.0", "method": "nothing/here"})
    )
    .is_empty());
    let (_, relative) = call(
        &mut sim,
        id,
        5,
        "session/new",
        json!({"cwd": "project", "mcpServers": []}),
    );
    assert_eq!(relative["error"]["code"], -32602, "{relative}");
    let (_, unknown_type) = call(
        &mut sim,
        id,
        6,
        "session/new",
        json!({"cwd": "/p", "mcpServers": [], "_meta": {"agentType": "nope"}}),
    );
    assert_eq!(unknown_type["error"]["code"], -32602, "{unknown_type}");
    assert_eq!(unknown_type["error"]["data"]["agentTypes"], json!(["echo"]));
    let (_, missing) = call(
        &mut sim,
        id,
        7,
        "session/prompt",
        json!({"sessionId": "00000000-0000-4000-8000-000000000000", "prompt": []}),
    );
    assert_eq!(missing["error"]["code"], -32002, "{missing}");
    assert_eq!(missing["error"]["data"]["code"], "SESSION_NOT_FOUND");
    assert!(!sim.is_closed(id));
}

#[test]
fn a_binary_message_closes_1003_as_on_ws() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open(&mut sim, "/acp");
    sim.send(id, &masked(OP_BINARY, true, b"{}"));
    let frames = sim.take_frames(id);
    assert_eq!(frames.last().and_then(Frame::close_code), Some(1003));
}

#[test]
fn a_prompt_runs_a_turn_seen_on_acp_and_ws_and_answers_its_stop_reason() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let acp = open_acp(&mut sim);
    let session_id = new_session(&mut sim, acp);
    let ws = open_ws(&mut sim);
    send(
        &mut sim,
        ws,
        &json!({"type": "join_session", "sessionId": session_id, "requestId": "j"}),
    );
    sim.take_messages(ws);
    let (before, response) = call(
        &mut sim,
        acp,
        2,
        "session/prompt",
        json!({"sessionId": session_id, "prompt": [{"type": "text", "text": "stream 3"}]}),
    );
    assert_eq!(response["result"]["stopReason"], "end_turn", "{response}");
    let seen = updates(&before);
    let kinds: Vec<&str> = seen
        .iter()
        .map(|u| u["update"]["sessionUpdate"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "user_message_chunk",
            "agent_message_chunk",
            "agent_message_chunk",
            "agent_message_chunk"
        ]
    );
    assert_eq!(seen[0]["update"]["content"]["text"], "stream 3");
    let text: String = seen[1..]
        .iter()
        .map(|u| u["update"]["content"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, "c0 c1 c2 ");
    let seqs: Vec<u64> = seen
        .iter()
        .map(|u| u["_meta"]["diminuendo"]["seq"].as_u64().unwrap_or_default())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The /ws client saw the same turn, the same seqs.
    let ws_events: Vec<Value> = sim
        .take_messages(ws)
        .into_iter()
        .filter(|m| m.get("seq").is_some())
        .collect();
    let deltas: Vec<u64> = ws_events
        .iter()
        .filter(|e| e["type"] == "text_delta" || e["type"] == "turn_started")
        .map(|e| e["seq"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(deltas, seqs);
    assert!(ws_events.iter().any(|e| e["type"] == "turn_complete"));

    // A turn started on /ws is seen live on /acp.
    send(
        &mut sim,
        ws,
        &json!({"type": "run_turn", "sessionId": session_id, "text": "from the browser", "requestId": "t"}),
    );
    let live = updates(&sim.take_messages(acp));
    assert_eq!(live[0]["update"]["sessionUpdate"], "user_message_chunk");
    assert_eq!(live[0]["update"]["content"]["text"], "from the browser");
    assert_eq!(live[1]["update"]["content"]["text"], "from the browser");
}

#[test]
fn load_replays_the_history_in_order_then_answers_then_goes_live() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let first = open_acp(&mut sim);
    let session_id = new_session(&mut sim, first);
    for (rid, text) in [(2, "one"), (3, "stream 2"), (4, "three")] {
        let (_, done) = call(
            &mut sim,
            first,
            rid,
            "session/prompt",
            json!({"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}),
        );
        assert_eq!(done["result"]["stopReason"], "end_turn");
    }
    sim.disconnect(first);

    let second = open_acp(&mut sim);
    let (_, early) = call(
        &mut sim,
        second,
        1,
        "session/prompt",
        json!({"sessionId": session_id, "prompt": []}),
    );
    assert_eq!(early["error"]["data"]["code"], "INVALID_STATE", "{early}");
    let (before, response) = call(
        &mut sim,
        second,
        2,
        "session/load",
        json!({"sessionId": session_id, "cwd": "/elsewhere", "mcpServers": []}),
    );
    assert!(response.get("result").is_some(), "{response}");
    let history: Vec<(String, String)> = updates(&before)
        .iter()
        .map(|u| {
            (
                u["update"]["sessionUpdate"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                u["update"]["content"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("user_message_chunk", "one"),
        ("agent_message_chunk", "one"),
        ("user_message_chunk", "stream 2"),
        ("agent_message_chunk", "c0 "),
        ("agent_message_chunk", "c1 "),
        ("user_message_chunk", "three"),
        ("agent_message_chunk", "three"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(history, expected);
    // Then live, and prompting works on the loaded session.
    let (live, done) = call(
        &mut sim,
        second,
        3,
        "session/prompt",
        json!({"sessionId": session_id, "prompt": [{"type": "text", "text": "four"}]}),
    );
    assert_eq!(done["result"]["stopReason"], "end_turn");
    assert_eq!(updates(&live).len(), 2);

    // Resume is live only.
    let third = open_acp(&mut sim);
    let (before, resumed) = call(
        &mut sim,
        third,
        2,
        "session/resume",
        json!({"sessionId": session_id, "cwd": "/x"}),
    );
    assert!(resumed.get("result").is_some(), "{resumed}");
    assert!(updates(&before).is_empty());
}

#[test]
fn list_pages_the_tenants_sessions_with_cursors() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = open_acp(&mut sim);
    let mut created = Vec::new();
    for _ in 0..53 {
        created.push(new_session(&mut sim, id));
    }
    let (_, first) = call(&mut sim, id, 2, "session/list", json!({}));
    let page: Vec<Value> = first["result"]["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(page.len(), 50);
    assert_eq!(page[0]["sessionId"], created[0].as_str());
    assert!(page[0]["updatedAt"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));
    let cursor = first["result"]["nextCursor"].clone();
    let (_, second) = call(&mut sim, id, 3, "session/list", json!({"cursor": cursor}));
    let rest: Vec<&str> = second["result"]["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["sessionId"].as_str())
        .collect();
    assert_eq!(
        rest,
        created[50..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(second["result"].get("nextCursor").is_none());
    let (_, bad) = call(&mut sim, id, 4, "session/list", json!({"cursor": "zzz"}));
    assert_eq!(bad["error"]["code"], -32602);
}

/// Answers the ACP handshake as an agent would, then asks for a permission.
fn ask_permission(sim: &mut Sim, session_id: &str) -> diminuendo_core::AgentId {
    let agent = sim.agent_of(session_id).expect("agent");
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "method": "session/request_permission", "params": {
        "sessionId": "s", "toolCall": {"toolCallId": "t1", "title": "Write file"},
        "options": [{"optionId": "allow", "name": "Allow", "kind": "allow_once"}, {"optionId": "reject", "name": "Reject", "kind": "reject_once"}]}}));
    agent
}

fn permission_request(messages: &[Value]) -> Value {
    messages
        .iter()
        .find(|m| m["method"] == "session/request_permission")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_permission_goes_to_acp_and_ws_and_the_first_answer_wins() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let acp = open_acp(&mut sim);
    let session_id = new_session(&mut sim, acp);
    let ws = open_ws(&mut sim);
    send(
        &mut sim,
        ws,
        &json!({"type": "join_session", "sessionId": session_id, "requestId": "j"}),
    );
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "session/prompt", "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "go"}]}}),
    );
    let agent = ask_permission(&mut sim, &session_id);
    let request = permission_request(&sim.take_messages(acp));
    assert_eq!(
        request["params"]["toolCall"]["toolCallId"], "t1",
        "{request}"
    );
    assert_eq!(request["params"]["options"][1]["kind"], "reject_once");
    assert!(sim
        .take_messages(ws)
        .iter()
        .any(|m| m["type"] == "permission_requested"));
    // The ACP client answers first.
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": request["id"], "result": {"outcome": {"outcome": "selected", "optionId": "reject"}}}),
    );
    let answer = sim.agents[&agent]
        .written
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        answer["result"]["outcome"],
        json!({"outcome": "selected", "optionId": "reject"})
    );
    let to_ws = sim.take_messages(ws);
    assert!(
        to_ws
            .iter()
            .any(|m| m["type"] == "permission_resolved" && m["optionId"] == "reject"),
        "{to_ws:?}"
    );
    // The answering client sees the resolution too, and is not asked again.
    let after = sim.take_messages(acp);
    assert!(after
        .iter()
        .all(|m| m["method"] != "session/request_permission"));
    let resolution: Vec<Value> = updates(&after)
        .into_iter()
        .filter_map(|u| u["_meta"]["diminuendo"].get("permissionResolved").cloned())
        .collect();
    assert_eq!(resolution.len(), 1, "{after:?}");
    assert_eq!(resolution[0]["optionId"], "reject");

    // A second question, answered first on /ws: the ACP client sees it resolved.
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "session/request_permission", "params": {
        "sessionId": "s", "toolCall": {"toolCallId": "t2", "title": "Run"},
        "options": [{"optionId": "allow", "name": "Allow", "kind": "allow_once"}]}}),
    );
    let request = permission_request(&sim.take_messages(acp));
    let question = sim
        .take_messages(ws)
        .into_iter()
        .find(|m| m["type"] == "permission_requested")
        .map(|m| m["questionId"].clone())
        .unwrap_or(Value::Null);
    send(
        &mut sim,
        ws,
        &json!({"type": "answer_question", "sessionId": session_id, "questionId": question, "optionId": "allow", "requestId": "a"}),
    );
    let seen = updates(&sim.take_messages(acp));
    let resolved = seen
        .iter()
        .find(|u| u["_meta"]["diminuendo"].get("permissionResolved").is_some())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        resolved["update"]["sessionUpdate"], "tool_call_update",
        "{seen:?}"
    );
    assert_eq!(resolved["update"]["toolCallId"], "t2");
    assert_eq!(
        resolved["_meta"]["diminuendo"]["permissionResolved"]["optionId"],
        "allow"
    );
    let written = sim.agents[&agent].written.len();
    // The late ACP answer changes nothing and gets nothing.
    let late = exchange(
        &mut sim,
        acp,
        json!({"jsonrpc": "2.0", "id": request["id"], "result": {"outcome": {"outcome": "cancelled"}}}),
    );
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(sim.agents[&agent].written.len(), written);
    // The prompt ends with the turn.
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 2, "result": {"stopReason": "end_turn"}}),
    );
    let end = sim.take_messages(acp);
    assert!(
        end.iter()
            .any(|m| m["id"] == 2 && m["result"]["stopReason"] == "end_turn"),
        "{end:?}"
    );
}

#[test]
fn cancel_ends_the_prompt_cancelled() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let acp = open_acp(&mut sim);
    let session_id = new_session(&mut sim, acp);
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "session/prompt", "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "go"}]}}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
    sim.take_messages(acp);
    let nothing = exchange(
        &mut sim,
        acp,
        json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session_id}}),
    );
    assert!(nothing.iter().all(|m| m.get("id").is_none()), "{nothing:?}");
    assert!(sim.agents[&agent]
        .written
        .iter()
        .any(|m| m["method"] == "session/cancel"));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 2, "result": {"stopReason": "cancelled"}}),
    );
    let end = sim.take_messages(acp);
    assert!(
        end.iter()
            .any(|m| m["id"] == 2 && m["result"]["stopReason"] == "cancelled"),
        "{end:?}"
    );
}

#[test]
fn a_long_history_loads_page_by_page_at_the_pace_the_client_reads() {
    let config = CoreConfig {
        outbound_queue_limit: 64 * 1024,
        ..config()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let first = open_acp(&mut sim);
    let session_id = new_session(&mut sim, first);
    for rid in 10..13 {
        let prompt =
            json!({"sessionId": session_id, "prompt": [{"type": "text", "text": "stream 150"}]});
        let (_, done) = call(&mut sim, first, rid, "session/prompt", prompt);
        assert_eq!(done["result"]["stopReason"], "end_turn", "{done}");
    }
    sim.disconnect(first);

    let reader = open_acp(&mut sim);
    // A client that reads 1500 bytes at a time.
    sim.set_write_limit(reader, Some(1500));
    send(
        &mut sim,
        reader,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "session/load",
        "params": {"sessionId": session_id, "cwd": "/", "mcpServers": []}}),
    );
    let mut received = Vec::new();
    for _ in 0..100_000 {
        received.extend(sim.take_messages(reader));
        if received.iter().any(|m| m["id"] == 2) || sim.is_closed(reader) {
            break;
        }
        sim.unblock(reader);
    }
    assert!(!sim.is_closed(reader), "closed as a slow consumer");
    let response = received.last().cloned().unwrap_or(Value::Null);
    assert!(response.get("result").is_some(), "{response}");
    let history = updates(&received);
    // 3 turns of a prompt and 150 chunks.
    assert_eq!(history.len(), 3 * 151);
    let seqs: Vec<u64> = history
        .iter()
        .map(|u| u["_meta"]["diminuendo"]["seq"].as_u64().unwrap_or_default())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(history[151]["update"]["content"]["text"], "stream 150");
    assert_eq!(history[152]["update"]["content"]["text"], "c0 ");
}

#[test]
fn the_upgrade_heartbeats_and_rate_limit_are_the_connection_machines() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    let id = sim.connect();
    sim.send(
        id,
        &upgrade_with(
            "/acp",
            "Sec-WebSocket-Protocol: acp.v1, bearer.ignored-in-dev\r\n",
        ),
    );
    let response = sim.take_response(id).expect("a response");
    assert_eq!(response.status, 101);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), Some("acp.v1"));
    assert!(response
        .header("Acp-Connection-Id")
        .is_some_and(|v| v.len() == 36));
    assert!(sim.take_received(id).is_empty(), "no greeting");
    // A heartbeat is the ping alone: no `/ws` message.
    sim.advance(std::time::Duration::from_secs(31));
    let frames = sim.take_frames(id);
    assert_eq!(frames.iter().map(|f| f.opcode).collect::<Vec<_>>(), [0x9]);
    // The rate window: 60 messages per 10 s; the 61st request is answered -32041, and a client
    // that keeps going is closed with 4101.
    for n in 0..60 {
        send(
            &mut sim,
            id,
            &json!({"jsonrpc": "2.0", "method": "nothing", "params": {"n": n}}),
        );
    }
    assert!(sim.take_messages(id).is_empty());
    let limited = exchange(
        &mut sim,
        id,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}}),
    );
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0]["error"]["code"], -32041);
    assert_eq!(limited[0]["error"]["data"]["code"], "RATE_LIMITED");
    for _ in 0..70 {
        send(
            &mut sim,
            id,
            &json!({"jsonrpc": "2.0", "method": "nothing"}),
        );
    }
    let frames = sim.take_frames(id);
    assert_eq!(frames.last().and_then(Frame::close_code), Some(4101));
}

#[test]
fn outside_dev_mode_the_token_comes_with_the_upgrade() {
    let mut sim = Sim::new(prod(), 1, Instant::now());
    let (_, refused) = one_response(&mut sim, &upgrade_with("/acp", ""));
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("WWW-Authenticate"), Some("Bearer"));
    // A token the gateway cannot verify (no key configured): upgraded, then 4001, as on /ws.
    let id = sim.connect();
    sim.send(id, &upgrade_with("/acp", "Authorization: Bearer x.y.z\r\n"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(101));
    let frames = sim.take_frames(id);
    assert!(
        frames.iter().all(|f| f.opcode != 1),
        "no /ws error message on /acp"
    );
    assert_eq!(frames.last().and_then(Frame::close_code), Some(4001));
    // /ws is unchanged: upgraded without a token, to authenticate by message.
    let (_, ws) = one_response(&mut sim, &upgrade_with("/ws", ""));
    assert_eq!(ws.status, 101);
}

#[test]
fn a_prompt_waiting_on_a_deleted_session_is_answered() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let acp = open_acp(&mut sim);
    let session_id = new_session(&mut sim, acp);
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "session/prompt",
        "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "go"}]}}),
    );
    let agent = sim.agent_of(&session_id).expect("agent");
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
    sim.take_messages(acp);
    let ws = open_ws(&mut sim);
    send(
        &mut sim,
        ws,
        &json!({"type": "delete_session", "sessionId": session_id, "requestId": "d"}),
    );
    assert!(sim
        .take_messages(ws)
        .iter()
        .any(|m| m["type"] == "session_deleted"));
    let answered = sim.take_messages(acp);
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0]["id"], 2);
    assert_eq!(answered[0]["error"]["code"], -32002);
    assert_eq!(answered[0]["error"]["message"], "the session was deleted");
}

#[test]
fn an_answer_naming_an_option_not_offered_counts_as_cancelled() {
    let mut sim = Sim::new(config(), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let acp = open_acp(&mut sim);
    let session_id = new_session(&mut sim, acp);
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "session/prompt",
        "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "go"}]}}),
    );
    let agent = ask_permission(&mut sim, &session_id);
    let request = permission_request(&sim.take_messages(acp));
    send(
        &mut sim,
        acp,
        &json!({"jsonrpc": "2.0", "id": request["id"],
        "result": {"outcome": {"outcome": "selected", "optionId": "not-offered"}}}),
    );
    let answer = sim.agents[&agent]
        .written
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(answer["id"], 0, "{answer}");
    assert_eq!(answer["result"]["outcome"], json!({"outcome": "cancelled"}));
}

#[test]
fn new_reads_the_agent_type_from_namespaced_meta_and_rate_refusals_say_when() {
    let mut sim = Sim::new(
        CoreConfig {
            rate_limit_messages: 3,
            ..config()
        },
        1,
        Instant::now(),
    );
    let acp = open_acp(&mut sim);
    let (_, unknown) = call(
        &mut sim,
        acp,
        2,
        "session/new",
        json!({"cwd": "/", "mcpServers": [], "_meta": {"diminuendo": {"agentType": "nope"}}}),
    );
    assert_eq!(
        unknown["error"]["data"]["code"], "AGENT_UNAVAILABLE",
        "{unknown}"
    );
    let (_, named) = call(
        &mut sim,
        acp,
        3,
        "session/new",
        json!({"cwd": "/", "mcpServers": [], "_meta": {"diminuendo": {"agentType": "echo", "name": "mine"}}}),
    );
    assert_eq!(
        named["result"]["_meta"]["diminuendo"]["name"], "mine",
        "{named}"
    );
    let (_, limited) = call(&mut sim, acp, 4, "session/list", json!({}));
    assert_eq!(limited["error"]["code"], -32041, "{limited}");
    let retry = limited["error"]["data"]["retryAfterMs"]
        .as_u64()
        .unwrap_or_default();
    assert!(retry > 0 && retry <= 10_000, "{limited}");
}
