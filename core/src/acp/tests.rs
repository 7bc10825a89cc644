//! Scripted agent lines against the client; every expectation is on the exact lines written and
//! events emitted.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

fn writes(client: &mut AcpClient) -> Vec<Value> {
    std::iter::from_fn(|| client.poll_write())
        .map(|line| {
            assert_eq!(line.last(), Some(&b'\n'), "every write is one whole line");
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            serde_json::from_slice(&line).expect("every write is JSON")
        })
        .collect()
}

fn events(client: &mut AcpClient) -> Vec<AgentEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn feed(client: &mut AcpClient, message: Value, now: Instant) {
    client.handle_line(message.to_string().as_bytes(), now);
}

fn ready_client(config: AcpConfig) -> (AcpClient, Instant) {
    let now = Instant::now();
    let mut client = AcpClient::new(config);
    client.start("/work/session-1", now);
    let init = writes(&mut client);
    assert_eq!(init.len(), 1);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{}}}),
        now,
    );
    let new = writes(&mut client);
    assert_eq!(new.len(), 1);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"sess-A"}}),
        now,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    (client, now)
}

fn update(client: &mut AcpClient, update: Value, now: Instant) {
    feed(
        client,
        json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"sess-A","update":update}}),
        now,
    );
}

fn one_update(client: &mut AcpClient) -> (&'static str, Value) {
    match events(client).as_slice() {
        [AgentEvent::Update { kind, fields }] => (kind, Value::Object(fields.clone())),
        other => panic!("expected one update, got {other:?}"),
    }
}

fn permission_request(id: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"session/request_permission","params":{
    "sessionId":"sess-A",
    "toolCall":{"toolCallId":"call_2","title":"Modifying critical configuration file","kind":"edit","status":"pending"},
    "options":[
        {"kind":"allow_once","name":"Allow this change","optionId":"allow"},
        {"kind":"reject_once","name":"Skip this change","optionId":"reject"}
    ]}})
}

#[test]
fn handshake_initializes_then_creates_the_session() {
    let now = Instant::now();
    let mut client = AcpClient::new(AcpConfig::default());
    assert_eq!(client.poll_timeout(), None);
    client.start("/work/s1", now);
    client.start("/elsewhere", now); // a second start is ignored
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":1,
                "clientCapabilities":{"fs":{"readTextFile":false,"writeTextFile":false},"terminal":false,"auth":{"terminal":false}},
                "clientInfo":{"name":"diminuendo","version":env!("CARGO_PKG_VERSION")},
            }})
        ]
    );
    assert_eq!(client.poll_write(), None);
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(30)));
    assert_eq!(client.prompt("too early", now), Err(AcpError::NotReady));

    let later = now + Duration::from_secs(10);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{"loadSession":false},"authMethods":[]}}),
        later,
    );
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/work/s1","mcpServers":[]}})
        ]
    );
    // session/new gets its own 30 s.
    assert_eq!(client.poll_timeout(), Some(later + Duration::from_secs(30)));
    assert!(events(&mut client).is_empty());
    assert!(!client.is_ready());

    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"sess-A","modes":null}}),
        later,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    assert!(client.is_ready());
    assert_eq!(client.session_id(), Some("sess-A"));
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn capabilities_follow_the_configuration() {
    let mut client = AcpClient::new(AcpConfig {
        fs_capability: true,
        terminal_capability: true,
        ..AcpConfig::default()
    });
    client.start("/w", Instant::now());
    let init = writes(&mut client);
    assert_eq!(
        init[0]["params"]["clientCapabilities"],
        json!({"fs":{"readTextFile":true,"writeTextFile":true},"terminal":true,"auth":{"terminal":false}})
    );
}

#[test]
fn a_turn_prompts_and_completes() {
    let (mut client, now) = ready_client(AcpConfig::default());
    assert_eq!(client.prompt("hello there", now), Ok(()));
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"sessionId":"sess-A","prompt":[{"type":"text","text":"hello there"}]}})
        ]
    );
    assert!(client.in_turn());
    assert_eq!(client.prompt("again", now), Err(AcpError::Busy));
    assert!(writes(&mut client).is_empty());
    update(
        &mut client,
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hello there"}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}),
        now,
    );
    let mut fields = Map::new();
    fields.insert("text".into(), json!("hello there"));
    assert_eq!(
        events(&mut client),
        vec![
            AgentEvent::Update {
                kind: "text_delta",
                fields
            },
            AgentEvent::TurnComplete {
                stop_reason: "end_turn".into()
            }
        ]
    );
    assert!(!client.in_turn());
    // The next prompt gets the next id.
    assert_eq!(client.prompt("two", now), Ok(()));
    assert_eq!(writes(&mut client)[0]["id"], json!(3));
}

#[test]
fn an_error_response_to_the_prompt_is_a_turn_error() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("x", now).unwrap_or_default();
    writes(&mut client);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"model overloaded"}}),
        now,
    );
    assert_eq!(
        events(&mut client),
        vec![AgentEvent::TurnError {
            code: "AGENT_ERROR".into(),
            message: "model overloaded".into(),
            agent_code: Some(-32603),
        }]
    );
    assert!(client.is_ready(), "a failed turn leaves the client usable");
    // The TypeScript SDK's internalError({details}) keeps the reason in data.details.
    writes(&mut client);
    client.prompt("z", now).unwrap_or_default();
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Internal error","data":{"details":"Session s not found"}}}),
        now,
    );
    assert_eq!(
        events(&mut client),
        vec![AgentEvent::TurnError {
            code: "AGENT_ERROR".into(),
            message: "Internal error: Session s not found".into(),
            agent_code: Some(-32603),
        }]
    );
    assert_eq!(client.prompt("y", now), Ok(()));
}

#[test]
fn every_update_kind_maps_to_its_gateway_event() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("go", now).unwrap_or_default();
    let cases = [
        (
            json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"Hi"}}),
            "text_delta",
            json!({"text":"Hi"}),
        ),
        (
            json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"hmm"}}),
            "thinking_delta",
            json!({"text":"hmm"}),
        ),
        (
            json!({"sessionUpdate":"tool_call","toolCallId":"call_1","title":"Reading project files","kind":"read","status":"pending","locations":[{"path":"/p/README.md"}],"rawInput":{"path":"/p/README.md"}}),
            "tool_call",
            json!({"toolCallId":"call_1","title":"Reading project files","kind":"read","status":"pending","locations":[{"path":"/p/README.md"}],"input":{"path":"/p/README.md"}}),
        ),
        (
            // kind and status default per the ACP schema; no rawInput, no input.
            json!({"sessionUpdate":"tool_call","toolCallId":"call_9","title":"Think"}),
            "tool_call",
            json!({"toolCallId":"call_9","title":"Think","kind":"other","status":"pending"}),
        ),
        (
            json!({"sessionUpdate":"tool_call_update","toolCallId":"call_1","status":"completed","content":[{"type":"content","content":{"type":"text","text":"# My Project"}}],"rawOutput":{"content":"# My Project"}}),
            "tool_call_update",
            json!({"toolCallId":"call_1","status":"completed","content":[{"type":"content","content":{"type":"text","text":"# My Project"}}],"rawOutput":{"content":"# My Project"}}),
        ),
        (
            json!({"sessionUpdate":"tool_call_update","toolCallId":"call_1","title":"renamed"}),
            "tool_call_update",
            json!({"toolCallId":"call_1","title":"renamed"}),
        ),
        (
            // A diff, a terminal and a location with its line; kind and rawInput change.
            json!({"sessionUpdate":"tool_call_update","toolCallId":"call_1","kind":"edit","content":[{"type":"diff","path":"/p/a.rs","oldText":"a","newText":"b"},{"type":"terminal","terminalId":"term_1"}],"locations":[{"path":"/p/a.rs","line":3}],"rawInput":{"path":"/p/a.rs"}}),
            "tool_call_update",
            json!({"toolCallId":"call_1","kind":"edit","content":[{"type":"diff","path":"/p/a.rs","oldText":"a","newText":"b"},{"type":"terminal","terminalId":"term_1"}],"locations":[{"path":"/p/a.rs","line":3}],"input":{"path":"/p/a.rs"}}),
        ),
        (
            // Emptied lists are published: they replace the call's lists.
            json!({"sessionUpdate":"tool_call_update","toolCallId":"call_1","content":[],"locations":[]}),
            "tool_call_update",
            json!({"toolCallId":"call_1","content":[],"locations":[]}),
        ),
        (
            json!({"sessionUpdate":"plan","entries":[{"content":"a","priority":"high","status":"pending"}]}),
            "plan",
            json!({"entries":[{"content":"a","priority":"high","status":"pending"}]}),
        ),
        (
            json!({"sessionUpdate":"usage_update","used":53000,"size":200000,"cost":{"amount":0.045,"currency":"USD"}}),
            "usage",
            json!({"used":53000,"size":200000,"cost":{"amount":0.045,"currency":"USD"}}),
        ),
        (
            json!({"sessionUpdate":"usage_update","used":1,"size":2,"cost":null}),
            "usage",
            json!({"used":1,"size":2}),
        ),
    ];
    for (acp, kind, fields) in cases {
        update(&mut client, acp.clone(), now);
        assert_eq!(one_update(&mut client), (kind, fields), "for {acp}");
    }
}

#[test]
fn unknown_and_unmappable_updates_are_kept_whole() {
    let (mut client, now) = ready_client(AcpConfig::default());
    let kept = [
        json!({"sessionUpdate":"user_message_chunk","content":{"type":"text","text":"me"}}),
        json!({"sessionUpdate":"current_mode_update"}),
        json!({"sessionUpdate":"session_info_update","title":"Fixing the build"}),
        json!({"sessionUpdate":"brand_new_kind","x":[1,2,3]}),
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"image","data":"aGk=","mimeType":"image/png"}}),
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text"}}),
        json!({"sessionUpdate":"tool_call","title":"no id"}),
        json!({"sessionUpdate":"tool_call_update","status":"completed"}),
        json!({"sessionUpdate":"plan","entries":"not a list"}),
        json!({"sessionUpdate":"usage_update","used":"many"}),
        json!({"no":"kind"}),
        json!("not an object"),
    ];
    for raw in kept {
        update(&mut client, raw.clone(), now);
        assert_eq!(
            one_update(&mut client),
            ("agent_update", json!({ "update": raw })),
            "for {raw}"
        );
    }
    // A session/update without an update object is still reported.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"sess-A"}}),
        now,
    );
    assert_eq!(
        one_update(&mut client),
        ("agent_update", json!({ "update": null }))
    );
    // Updates outside a turn are reported too; nothing else was written.
    assert!(!client.in_turn());
    assert!(writes(&mut client).is_empty());
}

#[test]
fn permission_flow_answers_with_the_selected_option() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("permission", now).unwrap_or_default();
    writes(&mut client);
    feed(&mut client, permission_request(json!(7)), now);
    assert_eq!(
        events(&mut client),
        vec![AgentEvent::PermissionRequested {
            question_id: "q1".into(),
            tool_call_id: "call_2".into(),
            title: "Modifying critical configuration file".into(),
            options: vec![
                PermissionOption {
                    option_id: "allow".into(),
                    name: "Allow this change".into(),
                    kind: "allow_once".into()
                },
                PermissionOption {
                    option_id: "reject".into(),
                    name: "Skip this change".into(),
                    kind: "reject_once".into()
                },
            ],
        }]
    );
    assert!(
        writes(&mut client).is_empty(),
        "nothing is answered before the user"
    );
    assert_eq!(client.pending_questions().collect::<Vec<_>>(), vec!["q1"]);

    assert_eq!(
        client.answer_permission("q1", Some("maybe")),
        Err(AcpError::UnknownOption)
    );
    assert!(writes(&mut client).is_empty());
    assert_eq!(
        client.answer_permission("q9", Some("allow")),
        Err(AcpError::UnknownQuestion)
    );
    assert_eq!(client.answer_permission("q1", Some("allow")), Ok(()));
    let line = client.poll_write().unwrap_or_default();
    assert_eq!(
        &line[..],
        b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"outcome\":{\"outcome\":\"selected\",\"optionId\":\"allow\"}}}\n"
    );
    assert_eq!(
        client.answer_permission("q1", Some("allow")),
        Err(AcpError::UnknownQuestion),
        "a question is answered once"
    );
    assert_eq!(
        client.answer_permission("q1", None),
        Err(AcpError::UnknownQuestion)
    );
    assert!(writes(&mut client).is_empty());
    assert!(events(&mut client).is_empty());

    // The next question gets the next id; answering None is `cancelled`, with a string id echoed.
    feed(&mut client, permission_request(json!("perm-b")), now);
    assert!(matches!(
        events(&mut client).as_slice(),
        [AgentEvent::PermissionRequested { question_id, .. }] if question_id == "q2"
    ));
    assert_eq!(client.answer_permission("q2", None), Ok(()));
    let line = client.poll_write().unwrap_or_default();
    assert_eq!(
        &line[..],
        b"{\"jsonrpc\":\"2.0\",\"id\":\"perm-b\",\"result\":{\"outcome\":{\"outcome\":\"cancelled\"}}}\n"
    );
}

#[test]
fn the_typescript_example_agents_request_is_understood() {
    // Byte for byte what @agentclientprotocol/sdk's example agent sends mid-turn.
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("hi", now).unwrap_or_default();
    writes(&mut client);
    let line = r#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"sess-A","toolCall":{"toolCallId":"call_2","title":"Modifying critical configuration file","kind":"edit","status":"pending","locations":[{"path":"/home/user/project/config.json"}],"rawInput":{"path":"/home/user/project/config.json","content":"{\"database\": {\"host\": \"new-host\"}}"}},"options":[{"kind":"allow_once","name":"Allow this change","optionId":"allow"},{"kind":"reject_once","name":"Skip this change","optionId":"reject"}]}}"#;
    client.handle_line(line.as_bytes(), now);
    let question = match events(&mut client).as_slice() {
        [AgentEvent::PermissionRequested {
            question_id,
            tool_call_id,
            title,
            options,
        }] => {
            assert_eq!(tool_call_id, "call_2");
            assert_eq!(title, "Modifying critical configuration file");
            assert_eq!(options.len(), 2);
            question_id.clone()
        }
        other => panic!("expected a permission request, got {other:?}"),
    };
    client
        .answer_permission(&question, Some("reject"))
        .unwrap_or_default();
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":0,"result":{"outcome":{"outcome":"selected","optionId":"reject"}}})
        ]
    );
}

#[test]
fn a_permission_without_a_title_takes_the_tool_calls() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("p", now).unwrap_or_default();
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call","toolCallId":"t1","title":"Run rm -rf build","kind":"execute"}),
        now,
    );
    events(&mut client);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":3,"method":"session/request_permission","params":{"sessionId":"sess-A","toolCall":{"toolCallId":"t1"},"options":[{"optionId":"ok","name":"OK","kind":"allow_always"}]}}),
        now,
    );
    assert!(matches!(
        events(&mut client).as_slice(),
        [AgentEvent::PermissionRequested { title, .. }] if title == "Run rm -rf build"
    ));
}

#[test]
fn a_malformed_permission_request_is_invalid_params() {
    let (mut client, now) = ready_client(AcpConfig::default());
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":4,"method":"session/request_permission","params":{"sessionId":"sess-A","options":[]}}),
        now,
    );
    let out = writes(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["id"], json!(4));
    assert_eq!(out[0]["error"]["code"], json!(-32602));
    assert!(events(&mut client).is_empty());
    assert!(client.is_ready());
}

#[test]
fn cancel_answers_every_pending_permission_cancelled() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("two questions", now).unwrap_or_default();
    writes(&mut client);
    feed(&mut client, permission_request(json!(10)), now);
    feed(&mut client, permission_request(json!("eleven")), now);
    assert_eq!(events(&mut client).len(), 2);

    client.cancel(now);
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"sess-A"}}),
            json!({"jsonrpc":"2.0","id":10,"result":{"outcome":{"outcome":"cancelled"}}}),
            json!({"jsonrpc":"2.0","id":"eleven","result":{"outcome":{"outcome":"cancelled"}}}),
        ]
    );
    assert_eq!(
        events(&mut client),
        vec![
            AgentEvent::PermissionCancelled {
                question_id: "q1".into()
            },
            AgentEvent::PermissionCancelled {
                question_id: "q2".into()
            },
        ]
    );
    assert_eq!(
        client.answer_permission("q1", Some("allow")),
        Err(AcpError::UnknownQuestion)
    );
    // A second cancel in the same turn sends nothing more.
    client.cancel(now);
    assert!(writes(&mut client).is_empty());
    assert!(events(&mut client).is_empty());

    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"cancelled"}}),
        now,
    );
    assert_eq!(
        events(&mut client),
        vec![AgentEvent::TurnComplete {
            stop_reason: "cancelled".into()
        }]
    );
    // No turn: cancel writes nothing.
    client.cancel(now);
    assert!(writes(&mut client).is_empty());
}

#[test]
fn a_question_left_open_when_the_turn_ends_is_cancelled_first() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("p", now).unwrap_or_default();
    writes(&mut client);
    feed(&mut client, permission_request(json!(5)), now);
    events(&mut client);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}),
        now,
    );
    assert_eq!(
        events(&mut client),
        vec![
            AgentEvent::PermissionCancelled {
                question_id: "q1".into()
            },
            AgentEvent::TurnComplete {
                stop_reason: "end_turn".into()
            },
        ]
    );
    assert_eq!(
        writes(&mut client),
        vec![json!({"jsonrpc":"2.0","id":5,"result":{"outcome":{"outcome":"cancelled"}}})]
    );
}

#[test]
fn unsupported_agent_requests_get_method_not_found() {
    // Without the fs capability the fs/* requests are not served either.
    let (mut client, now) = ready_client(AcpConfig {
        terminal_capability: true,
        ..AcpConfig::default()
    });
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":42,"method":"fs/read_text_file","params":{"sessionId":"sess-A","path":"/etc/passwd"}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":"t-1","method":"terminal/create","params":{"sessionId":"sess-A","command":"ls"}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"method":"_vendor/whatever"}),
        now,
    );
    let lines: Vec<Bytes> = std::iter::from_fn(|| client.poll_write()).collect();
    assert_eq!(
        lines,
        vec![
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":42,\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n"),
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":\"t-1\",\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n"),
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n"),
        ]
    );
    // Unknown notifications are ignored (no answer to a notification).
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":1}}),
        now,
    );
    assert!(writes(&mut client).is_empty());
    assert!(events(&mut client).is_empty());
    assert!(client.is_ready());
}

#[test]
fn colliding_ids_in_both_directions_are_routed_by_method() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("collide", now).unwrap_or_default();
    writes(&mut client);
    // The agent's request id 2 equals our pending prompt's id 2.
    feed(&mut client, permission_request(json!(2)), now);
    assert!(matches!(
        events(&mut client).as_slice(),
        [AgentEvent::PermissionRequested { .. }]
    ));
    assert!(client.in_turn(), "the request did not complete our prompt");
    // And its id-1 request, equal to our answered session/new, is not mistaken for a response.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"method":"fs/write_text_file","params":{}}),
        now,
    );
    client
        .answer_permission("q1", Some("allow"))
        .unwrap_or_default();
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}),
            json!({"jsonrpc":"2.0","id":2,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}),
        ]
    );
    // The response with id 2 is the prompt's.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}),
        now,
    );
    assert_eq!(
        events(&mut client),
        vec![AgentEvent::TurnComplete {
            stop_reason: "end_turn".into()
        }]
    );
}

fn failed_message(client: &mut AcpClient) -> String {
    match events(client).as_slice() {
        [AgentEvent::Failed { message }] => message.clone(),
        other => panic!("expected one Failed, got {other:?}"),
    }
}

#[test]
fn protocol_violations_fail_the_client() {
    let bad: [&[u8]; 8] = [
        b"this is not json",
        b"{\"jsonrpc\":\"2.0\",\"id\":2,",
        b"[{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}]",
        b"{\"id\":2,\"result\":{\"stopReason\":\"end_turn\"}}",
        b"{\"jsonrpc\":\"1.0\",\"id\":2,\"result\":{}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":2}",
        b"{\"jsonrpc\":\"2.0\",\"method\":7}",
        b"\xff\xfe",
    ];
    for line in bad {
        let (mut client, now) = ready_client(AcpConfig::default());
        client.prompt("x", now).unwrap_or_default();
        client.handle_line(line, now);
        let message = failed_message(&mut client);
        assert!(!message.is_empty());
        assert!(client.is_closed());
        assert!(!client.in_turn());
        assert_eq!(client.poll_timeout(), None);
        assert_eq!(client.prompt("y", now), Err(AcpError::NotReady));
        // Everything after a failure is ignored.
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}),
            now,
        );
        client.handle_exit(now);
        client.handle_timeout(now + Duration::from_secs(3600));
        assert!(events(&mut client).is_empty());
    }
}

#[test]
fn a_response_to_an_unknown_id_fails() {
    for id in [json!(99), json!(1), json!("2"), json!(null)] {
        let (mut client, now) = ready_client(AcpConfig::default());
        client.prompt("x", now).unwrap_or_default();
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","id":id,"result":{"stopReason":"end_turn"}}),
            now,
        );
        let message = failed_message(&mut client);
        assert!(message.contains("never sent"), "{message}");
    }
}

#[test]
fn blank_lines_are_ignored() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.handle_line(b"", now);
    client.handle_line(b"  \r\n", now);
    assert!(events(&mut client).is_empty());
    assert!(client.is_ready());
}

#[test]
fn handshake_errors_fail_the_client() {
    let now = Instant::now();
    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"error":{"code":-32000,"message":"auth required"}}),
        now,
    );
    assert!(failed_message(&mut client).contains("auth required"));

    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":2}}),
        now,
    );
    assert!(failed_message(&mut client).contains("version 2"));

    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"no such cwd"}}),
        now,
    );
    assert!(failed_message(&mut client).contains("session/new"));

    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{}}),
        now,
    );
    assert!(failed_message(&mut client).contains("sessionId"));
}

#[test]
fn exiting_mid_turn_fails_the_turn() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("exit", now).unwrap_or_default();
    update(
        &mut client,
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"bye"}}),
        now,
    );
    client.handle_exit(now);
    let all = events(&mut client);
    assert_eq!(all.len(), 2);
    assert!(
        matches!(&all[1], AgentEvent::Failed { message } if message.contains("mid-turn")),
        "{all:?}"
    );
    assert!(client.is_closed());
}

#[test]
fn exiting_while_idle_just_closes() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.handle_exit(now);
    assert!(events(&mut client).is_empty());
    assert!(client.is_closed());
    assert_eq!(client.prompt("x", now), Err(AcpError::NotReady));

    let mut client = AcpClient::new(AcpConfig::default());
    client.handle_exit(now);
    assert!(events(&mut client).is_empty());
}

#[test]
fn exiting_during_the_handshake_fails() {
    let now = Instant::now();
    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    client.handle_exit(now);
    assert!(failed_message(&mut client).contains("initialize"));

    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}),
        now,
    );
    client.handle_exit(now);
    assert!(failed_message(&mut client).contains("session/new"));
}

#[test]
fn the_handshake_times_out() {
    let now = Instant::now();
    let config = AcpConfig {
        init_timeout: Duration::from_secs(5),
        ..AcpConfig::default()
    };
    let mut client = AcpClient::new(config.clone());
    client.start("/w", now);
    let deadline = client.poll_timeout().unwrap_or(now);
    assert_eq!(deadline, now + Duration::from_secs(5));
    client.handle_timeout(deadline - Duration::from_millis(1));
    assert!(events(&mut client).is_empty(), "not yet");
    client.handle_timeout(deadline);
    assert!(failed_message(&mut client).contains("initialize"));
    assert_eq!(client.poll_timeout(), None);

    // session/new: its own deadline, counted from initialize's answer.
    let mut client = AcpClient::new(config);
    client.start("/w", now);
    let answered = now + Duration::from_secs(4);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}),
        answered,
    );
    client.handle_timeout(now + Duration::from_secs(5));
    assert!(events(&mut client).is_empty());
    assert_eq!(
        client.poll_timeout(),
        Some(answered + Duration::from_secs(5))
    );
    client.handle_timeout(answered + Duration::from_secs(5));
    assert!(failed_message(&mut client).contains("session/new"));
}

#[test]
fn a_turn_has_no_deadline_in_the_client_the_session_owns_it() {
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("hang", now).unwrap_or_default();
    assert_eq!(client.poll_timeout(), None);
    client.handle_timeout(now + Duration::from_secs(1_000_000));
    assert!(events(&mut client).is_empty());
}

fn jsonish() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0u64..4).prop_map(|n| json!(n)),
        prop_oneof![
            Just("2.0"),
            Just("session/update"),
            Just("session/request_permission"),
            Just("fs/read_text_file"),
            Just("agent_message_chunk"),
            Just("tool_call"),
            Just("tool_call_update"),
            Just("usage_update"),
            Just("plan"),
            Just("text"),
        ]
        .prop_map(|s| json!(s)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("jsonrpc".to_string()),
                        Just("id".to_string()),
                        Just("method".to_string()),
                        Just("params".to_string()),
                        Just("result".to_string()),
                        Just("error".to_string()),
                        Just("update".to_string()),
                        Just("sessionUpdate".to_string()),
                        Just("content".to_string()),
                        Just("toolCall".to_string()),
                        Just("toolCallId".to_string()),
                        Just("options".to_string()),
                        Just("optionId".to_string()),
                        Just("stopReason".to_string()),
                        Just("sessionId".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_lines_never_panic(
        lines in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                jsonish().prop_map(|v| v.to_string().into_bytes()),
            ],
            0..24,
        ),
        actions in prop::collection::vec(0u8..6, 0..24),
    ) {
        let now = Instant::now();
        let mut client = AcpClient::new(AcpConfig::default());
        client.start("/w", now);
        for (i, line) in lines.iter().enumerate() {
            let at = now + Duration::from_millis(i as u64 * 100);
            client.handle_line(line, at);
            match actions.get(i).copied().unwrap_or(0) {
                1 => { let _ = client.prompt("p", at); }
                2 => client.cancel(at),
                3 => { let _ = client.answer_permission("q1", Some("allow")); }
                4 => client.handle_timeout(at + Duration::from_secs(40)),
                5 => { let _ = client.answer_permission("q1", None); }
                _ => {}
            }
            while let Some(line) = client.poll_write() {
                prop_assert_eq!(line.last(), Some(&b'\n'));
                prop_assert!(serde_json::from_slice::<Value>(&line).is_ok());
            }
            let _ = events(&mut client);
        }
        client.handle_exit(now);
        let _ = events(&mut client);
        prop_assert!(client.is_closed());
    }
}

// ---- The schema types, and issue 13's additions (not yet called by the session layer) ----

/// A client through `initialize` with these agent capabilities, started with `restore` if given.
fn initialized(capabilities: Value, restore: Option<&str>) -> (AcpClient, Instant) {
    let now = Instant::now();
    let mut client = AcpClient::new(AcpConfig::default());
    match restore {
        Some(session_id) => client.start_with_session("/work/s1", session_id, now),
        None => client.start("/work/s1", now),
    }
    writes(&mut client);
    assert_eq!(client.agent_features(), None);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":capabilities}}),
        now,
    );
    (client, now)
}

fn controls(client: &mut AcpClient) -> Vec<ControlEvent> {
    std::iter::from_fn(|| client.poll_control()).collect()
}

#[test]
fn an_initialize_result_without_a_protocol_version_fails() {
    let now = Instant::now();
    let mut client = AcpClient::new(AcpConfig::default());
    client.start("/w", now);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":0,"result":{"agentCapabilities":{}}}),
        now,
    );
    let message = failed_message(&mut client);
    assert!(
        message.contains("initialize result is invalid"),
        "{message}"
    );
    assert!(message.contains("protocolVersion"), "{message}");
}

#[test]
fn the_agents_capabilities_are_exposed() {
    let (client, _) = initialized(
        json!({"loadSession":true,"sessionCapabilities":{"resume":{}},
               "promptCapabilities":{"image":true,"audio":false,"embeddedContext":true}}),
        None,
    );
    assert_eq!(
        client.agent_features(),
        Some(AgentFeatures {
            load_session: true,
            resume_session: true,
            image: true,
            audio: false,
            embedded_context: true,
        })
    );
    let capabilities = client.agent_capabilities().map(|c| c.load_session);
    assert_eq!(capabilities, Some(true));

    let (client, _) = initialized(json!({}), None);
    assert_eq!(client.agent_features(), Some(AgentFeatures::default()));
}

#[test]
fn a_new_session_reports_its_id_and_origin() {
    let (mut client, now) = initialized(json!({"loadSession":true}), None);
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/work/s1","mcpServers":[]}})
        ]
    );
    assert_eq!(client.session_origin(), None);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"sess-9",
            "modes":{"currentModeId":"ask","availableModes":[{"id":"ask","name":"Ask"},{"id":"code","name":"Code"}]}}}),
        now,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    assert_eq!(client.session_id(), Some("sess-9"));
    assert_eq!(client.session_origin(), Some(SessionOrigin::New));
    assert_eq!(client.restore_error(), None);
    assert_eq!(client.current_mode(), Some("ask"));
    let modes: Vec<&str> = client
        .available_modes()
        .iter()
        .map(|mode| &*mode.id.0)
        .collect();
    assert_eq!(modes, vec!["ask", "code"]);
}

#[test]
fn an_earlier_session_is_resumed_when_the_agent_advertises_resume() {
    let (mut client, now) = initialized(
        json!({"loadSession":true,"sessionCapabilities":{"resume":{}}}),
        Some("sess-old"),
    );
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"method":"session/resume","params":{"sessionId":"sess-old","cwd":"/work/s1"}})
        ]
    );
    assert!(!client.is_ready());
    assert_eq!(client.prompt("early", now), Err(AcpError::NotReady));
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{}}),
        now,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    assert_eq!(client.session_id(), Some("sess-old"));
    assert_eq!(client.session_origin(), Some(SessionOrigin::Resumed));
    assert_eq!(client.replayed_updates(), 0);
    // The resumed session takes prompts under its old id.
    assert_eq!(client.prompt("again", now), Ok(()));
    assert_eq!(
        writes(&mut client)[0]["params"]["sessionId"],
        json!("sess-old")
    );
}

#[test]
fn a_load_replay_is_consumed_and_ready_follows_the_answer() {
    let (mut client, now) = initialized(json!({"loadSession":true}), Some("sess-old"));
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"method":"session/load","params":{"mcpServers":[],"cwd":"/work/s1","sessionId":"sess-old"}})
        ]
    );
    let replay = [
        json!({"sessionUpdate":"user_message_chunk","content":{"type":"text","text":"hello"}}),
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hello"}}),
        json!({"sessionUpdate":"tool_call","toolCallId":"c1","title":"Read"}),
        json!({"sessionUpdate":"current_mode_update","currentModeId":"code"}),
    ];
    // Each replayed update restarts the handshake deadline.
    let later = now + Duration::from_secs(20);
    for update in &replay {
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"sess-old","update":update}}),
            later,
        );
    }
    assert!(events(&mut client).is_empty(), "the replay is not reported");
    assert_eq!(client.poll_timeout(), Some(later + Duration::from_secs(30)));
    assert_eq!(client.replayed_updates(), 4);
    // The replayed mode is the session's state all the same.
    assert_eq!(client.current_mode(), Some("code"));
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":null}),
        later,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    assert_eq!(client.session_origin(), Some(SessionOrigin::Loaded));
    assert_eq!(client.session_id(), Some("sess-old"));
    // Updates after the answer are live again.
    update(
        &mut client,
        json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"live"}}),
        later,
    );
    assert_eq!(
        one_update(&mut client),
        ("text_delta", json!({"text":"live"}))
    );
    assert_eq!(client.replayed_updates(), 4);
}

#[test]
fn without_resume_or_load_an_earlier_session_gets_a_new_one() {
    let (mut client, now) = initialized(json!({"loadSession":false}), Some("sess-old"));
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/work/s1","mcpServers":[]}})
        ]
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"sess-new"}}),
        now,
    );
    assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
    assert_eq!(client.session_origin(), Some(SessionOrigin::New));
    assert_eq!(client.session_id(), Some("sess-new"));
    assert_eq!(client.restore_error(), None);
}

#[test]
fn a_refused_resume_or_load_falls_back_to_a_new_session() {
    for capabilities in [
        json!({"sessionCapabilities":{"resume":{}}}),
        json!({"loadSession":true}),
    ] {
        let (mut client, now) = initialized(capabilities.clone(), Some("sess-gone"));
        writes(&mut client);
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"Resource not found"}}),
            now,
        );
        assert!(events(&mut client).is_empty(), "for {capabilities}");
        assert_eq!(
            writes(&mut client),
            vec![
                json!({"jsonrpc":"2.0","id":2,"method":"session/new","params":{"cwd":"/work/s1","mcpServers":[]}})
            ]
        );
        assert_eq!(client.restore_error(), Some("Resource not found"));
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","id":2,"result":{"sessionId":"sess-new"}}),
            now,
        );
        assert_eq!(events(&mut client), vec![AgentEvent::Ready]);
        assert_eq!(client.session_origin(), Some(SessionOrigin::New));
        assert_eq!(client.session_id(), Some("sess-new"));
    }
}

#[test]
fn exiting_during_a_load_names_it() {
    let (mut client, now) = initialized(json!({"loadSession":true}), Some("s"));
    client.handle_exit(now);
    assert!(failed_message(&mut client).contains("session/load"));
}

fn config_options_json(current: &str) -> Value {
    json!([{"id":"model","name":"Model","type":"select","currentValue":current,
            "options":[{"value":"fast","name":"Fast"},{"value":"smart","name":"Smart"}]}])
}

#[test]
fn set_mode_and_set_config_option_answer_with_control_events() {
    let (mut client, now) = ready_client(AcpConfig::default());
    assert_eq!(client.config_options(), None);
    assert_eq!(client.set_mode("code"), Ok(2));
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":2,"method":"session/set_mode","params":{"sessionId":"sess-A","modeId":"code"}})
        ]
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{}}),
        now,
    );
    assert_eq!(
        controls(&mut client),
        vec![ControlEvent::ModeSet {
            request: 2,
            mode_id: "code".into(),
            result: Ok(())
        }]
    );
    assert_eq!(client.current_mode(), Some("code"));
    assert!(events(&mut client).is_empty());

    // A refused mode keeps the current one.
    assert_eq!(client.set_mode("yolo"), Ok(3));
    writes(&mut client);
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"no such mode"}}),
        now,
    );
    assert_eq!(
        controls(&mut client),
        vec![ControlEvent::ModeSet {
            request: 3,
            mode_id: "yolo".into(),
            result: Err("no such mode".into())
        }]
    );
    assert_eq!(client.current_mode(), Some("code"));

    // A config option, in a turn too.
    client.prompt("p", now).unwrap_or_default();
    writes(&mut client);
    let set =
        client.set_config_option("model", schema::SessionConfigOptionValue::value_id("smart"));
    assert_eq!(set, Ok(5));
    assert_eq!(
        writes(&mut client),
        vec![
            json!({"jsonrpc":"2.0","id":5,"method":"session/set_config_option","params":{"sessionId":"sess-A","configId":"model","value":"smart"}})
        ]
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":5,"result":{"configOptions":config_options_json("smart")}}),
        now,
    );
    let expected: Vec<schema::SessionConfigOption> =
        serde_json::from_value(config_options_json("smart")).unwrap_or_default();
    assert_eq!(expected.len(), 1);
    assert_eq!(
        controls(&mut client),
        vec![ControlEvent::ConfigOptionSet {
            request: 5,
            result: Ok(expected.clone())
        }]
    );
    assert_eq!(client.config_options(), Some(&expected[..]));
    assert!(client.in_turn(), "the answer is not the prompt's");

    // A boolean option is sent as {type: "boolean", value}.
    let _ = client.set_config_option(
        "fast_apply",
        schema::SessionConfigOptionValue::boolean(true),
    );
    assert_eq!(
        writes(&mut client)[0]["params"],
        json!({"sessionId":"sess-A","configId":"fast_apply","type":"boolean","value":true})
    );

    // Not before the session is open.
    let mut fresh = AcpClient::new(AcpConfig::default());
    assert_eq!(fresh.set_mode("code"), Err(AcpError::NotReady));
    fresh.start("/w", now);
    assert_eq!(
        fresh.set_config_option("m", schema::SessionConfigOptionValue::boolean(false)),
        Err(AcpError::NotReady)
    );
}

#[test]
fn state_updates_are_control_events_not_agent_updates() {
    let (mut client, now) = ready_client(AcpConfig::default());
    let mode = json!({"sessionUpdate":"current_mode_update","currentModeId":"architect"});
    update(&mut client, mode, now);
    let commands = json!({"sessionUpdate":"available_commands_update","availableCommands":[{"name":"web","description":"search"}]});
    update(&mut client, commands, now);
    let options =
        json!({"sessionUpdate":"config_option_update","configOptions":config_options_json("fast")});
    update(&mut client, options, now);
    // A newer mode replaces the waiting one and moves to the back.
    let newer = json!({"sessionUpdate":"current_mode_update","currentModeId":"code"});
    update(&mut client, newer, now);
    assert_eq!(
        events(&mut client),
        vec![],
        "no agent_update for state kinds"
    );
    let all = controls(&mut client);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        matches!(&all[0], ControlEvent::CommandsChanged { commands } if commands.len() == 1 && commands[0].name == "web")
    );
    assert!(
        matches!(&all[1], ControlEvent::ConfigOptionsChanged { options } if options.len() == 1)
    );
    assert_eq!(
        all[2],
        ControlEvent::ModeChanged {
            mode_id: "code".into()
        }
    );
    assert_eq!(client.current_mode(), Some("code"));
    assert_eq!(client.available_commands().map(<[_]>::len), Some(1));
    assert_eq!(client.config_options().map(<[_]>::len), Some(1));
    // A malformed one is only an agent_update.
    let bad = json!({"sessionUpdate":"current_mode_update"});
    update(&mut client, bad.clone(), now);
    assert_eq!(
        one_update(&mut client),
        ("agent_update", json!({ "update": bad }))
    );
    assert!(controls(&mut client).is_empty());
}

#[test]
fn tool_call_fields_are_bounded_and_flagged() {
    let (mut client, now) = ready_client(AcpConfig::default());
    let big = "é".repeat(40 * 1024); // 80 KiB of UTF-8
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call","toolCallId":"c","title":"T","content":[{"type":"diff","path":"/p/x","oldText":big,"newText":big}],"rawInput":{"a":big},"rawOutput":[big, big]}),
        now,
    );
    let (kind, fields) = one_update(&mut client);
    assert_eq!(kind, "tool_call");
    assert_eq!(fields["truncated"], json!(true));
    for key in ["content", "input", "rawOutput"] {
        let size = fields[key].to_string().len();
        assert!(size <= 64 * 1024 + 64, "{key} is {size} bytes");
        assert!(size >= 60 * 1024, "{key} is {size} bytes");
    }
    // The diff keeps its shape: both texts present, cut on a character boundary.
    let diff = &fields["content"][0];
    assert_eq!(diff["type"], "diff");
    assert_eq!(diff["path"], "/p/x");
    assert!(diff["newText"].is_string() && diff["oldText"].is_string());
    assert_eq!(fields["rawOutput"].as_array().map(Vec::len), Some(1));
    // Small fields are not cut, and not flagged.
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call_update","toolCallId":"c","rawOutput":{"ok":true}}),
        now,
    );
    assert_eq!(
        one_update(&mut client),
        (
            "tool_call_update",
            json!({"toolCallId":"c","rawOutput":{"ok":true}})
        )
    );
    // An object of very many keys is cut to its JSON text, as a string.
    let many: Map<String, Value> = (0..20_000).map(|i| (format!("key{i}"), json!(i))).collect();
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call_update","toolCallId":"c","rawInput":many}),
        now,
    );
    let (_, fields) = one_update(&mut client);
    assert_eq!(fields["truncated"], json!(true));
    assert!(fields["input"]
        .as_str()
        .is_some_and(|s| s.len() <= 64 * 1024));
}

#[test]
fn published_fields_keep_sorted_keys() {
    // The bytes the gateway publishes: keys sorted at every depth, as before the schema crate
    // turned on serde_json's preserve_order.
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("p", now).unwrap_or_default();
    let cases = [
        (
            r#"{"toolCallId":"c","title":"T","sessionUpdate":"tool_call","status":"in_progress","kind":"read","rawInput":{"z":1,"a":{"y":2,"b":3}}}"#,
            r#"{"input":{"a":{"b":3,"y":2},"z":1},"kind":"read","status":"in_progress","title":"T","toolCallId":"c"}"#,
        ),
        (
            r#"{"toolCallId":"c","sessionUpdate":"tool_call_update","status":"completed","content":[{"type":"content","content":{"type":"text","text":"x"}}]}"#,
            r#"{"content":[{"content":{"text":"x","type":"text"},"type":"content"}],"status":"completed","toolCallId":"c"}"#,
        ),
        (
            r#"{"used":5,"size":9,"sessionUpdate":"usage_update","cost":{"currency":"USD","amount":0.5}}"#,
            r#"{"cost":{"amount":0.5,"currency":"USD"},"size":9,"used":5}"#,
        ),
        (
            r#"{"sessionUpdate":"plan","entries":[{"status":"pending","priority":"high","content":"a"}]}"#,
            r#"{"entries":[{"content":"a","priority":"high","status":"pending"}]}"#,
        ),
        (
            r#"{"sessionUpdate":"brand_new","z":{"y":1,"x":2},"a":0}"#,
            r#"{"update":{"a":0,"sessionUpdate":"brand_new","z":{"x":2,"y":1}}}"#,
        ),
    ];
    for (update, published) in cases {
        let line = format!(
            r#"{{"jsonrpc":"2.0","method":"session/update","params":{{"sessionId":"sess-A","update":{update}}}}}"#
        );
        client.handle_line(line.as_bytes(), now);
        let fields = match events(&mut client).as_slice() {
            [AgentEvent::Update { fields, .. }] => fields.clone(),
            other => panic!("expected one update, got {other:?}"),
        };
        assert_eq!(
            serde_json::to_string(&fields).unwrap_or_default(),
            published,
            "for {update}"
        );
    }
}

#[test]
fn the_schemas_defaults_apply_to_unknown_kinds_and_statuses() {
    // ACP's ToolKind reads a kind it does not know as `other`, and ToolCallStatus an unknown
    // status as the default `pending` (a status update then carries none).
    let (mut client, now) = ready_client(AcpConfig::default());
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call","toolCallId":"c","title":"T","kind":"teleport","status":"weird"}),
        now,
    );
    assert_eq!(
        one_update(&mut client),
        (
            "tool_call",
            json!({"toolCallId":"c","title":"T","kind":"other","status":"pending"})
        )
    );
    update(
        &mut client,
        json!({"sessionUpdate":"tool_call_update","toolCallId":"c","status":"weird"}),
        now,
    );
    assert_eq!(
        one_update(&mut client),
        ("tool_call_update", json!({"toolCallId":"c"}))
    );
}

#[test]
fn file_requests_are_surfaced_when_the_capability_is_advertised() {
    let (mut client, now) = ready_client(AcpConfig {
        fs_capability: true,
        ..AcpConfig::default()
    });
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":42,"method":"fs/read_text_file","params":{"sessionId":"sess-A","path":"/work/session-1/a.txt","line":3,"limit":10}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":"w-1","method":"fs/write_text_file","params":{"sessionId":"sess-A","path":"/work/session-1/b.txt","content":"new"}}),
        now,
    );
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":43,"method":"fs/read_text_file","params":{"sessionId":"sess-A","path":"/etc/passwd"}}),
        now,
    );
    assert!(
        writes(&mut client).is_empty(),
        "nothing answered before the host"
    );
    assert!(events(&mut client).is_empty());
    assert_eq!(
        controls(&mut client),
        vec![
            ControlEvent::ReadTextFile {
                request: FileRequestId(1),
                path: "/work/session-1/a.txt".into(),
                line: Some(3),
                limit: Some(10),
            },
            ControlEvent::WriteTextFile {
                request: FileRequestId(2),
                path: "/work/session-1/b.txt".into(),
                content: "new".into(),
            },
            ControlEvent::ReadTextFile {
                request: FileRequestId(3),
                path: "/etc/passwd".into(),
                line: None,
                limit: None,
            },
        ]
    );
    // An answer of the wrong kind, or to no request, is refused.
    assert_eq!(
        client.answer_write_text_file(FileRequestId(1), Ok(())),
        Err(AcpError::UnknownRequest)
    );
    assert_eq!(
        client.answer_read_text_file(FileRequestId(9), Ok(String::new())),
        Err(AcpError::UnknownRequest)
    );
    assert_eq!(
        client.answer_read_text_file(FileRequestId(1), Ok("line three\n".into())),
        Ok(())
    );
    assert_eq!(
        client.answer_write_text_file(FileRequestId(2), Ok(())),
        Ok(())
    );
    assert_eq!(
        client.answer_read_text_file(FileRequestId(3), Err(schema::Error::invalid_params())),
        Ok(())
    );
    let lines: Vec<Bytes> = std::iter::from_fn(|| client.poll_write()).collect();
    assert_eq!(
        lines,
        vec![
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":42,\"result\":{\"content\":\"line three\\n\"}}\n"),
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":\"w-1\",\"result\":{}}\n"),
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":43,\"error\":{\"code\":-32602,\"message\":\"Invalid params\"}}\n"),
        ]
    );
    assert_eq!(
        client.answer_read_text_file(FileRequestId(1), Ok(String::new())),
        Err(AcpError::UnknownRequest),
        "answered once"
    );

    // Malformed: -32602 at once.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":50,"method":"fs/write_text_file","params":{"sessionId":"sess-A","path":"/x"}}),
        now,
    );
    let out = writes(&mut client);
    assert_eq!(out[0]["error"]["code"], json!(-32602));
    assert!(controls(&mut client).is_empty());

    // Bounded: past MAX_PENDING_FILE_REQUESTS, -32603 at once.
    for id in 0..=MAX_PENDING_FILE_REQUESTS {
        feed(
            &mut client,
            json!({"jsonrpc":"2.0","id":100 + id,"method":"fs/read_text_file","params":{"sessionId":"sess-A","path":"/x"}}),
            now,
        );
    }
    assert_eq!(controls(&mut client).len(), MAX_PENDING_FILE_REQUESTS);
    let out = writes(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["id"], json!(100 + MAX_PENDING_FILE_REQUESTS));
    assert_eq!(out[0]["error"]["code"], json!(-32603));
}

#[test]
fn closing_answers_pending_control_requests_and_drops_file_requests() {
    let (mut client, now) = ready_client(AcpConfig {
        fs_capability: true,
        ..AcpConfig::default()
    });
    let mode = client.set_mode("code").unwrap_or_default();
    let option = client
        .set_config_option("model", schema::SessionConfigOptionValue::value_id("fast"))
        .unwrap_or_default();
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":7,"method":"fs/read_text_file","params":{"sessionId":"sess-A","path":"/x"}}),
        now,
    );
    controls(&mut client);
    writes(&mut client);
    // Idle, so the exit is no failure; the two requests are answered all the same.
    client.handle_exit(now);
    assert!(events(&mut client).is_empty());
    assert_eq!(
        controls(&mut client),
        vec![
            ControlEvent::ModeSet {
                request: mode,
                mode_id: "code".into(),
                result: Err("the agent exited".into())
            },
            ControlEvent::ConfigOptionSet {
                request: option,
                result: Err("the agent exited".into())
            },
        ]
    );
    assert_eq!(
        client.answer_read_text_file(FileRequestId(1), Ok(String::new())),
        Err(AcpError::UnknownRequest)
    );
    assert!(writes(&mut client).is_empty());
}

#[test]
fn the_prompt_and_permission_messages_are_the_schemas() {
    // What goes to the agent, byte for byte.
    let (mut client, now) = ready_client(AcpConfig::default());
    client.prompt("say \"hi\"", now).unwrap_or_default();
    assert_eq!(
        client.poll_write().unwrap_or_default(),
        Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"session/prompt\",\"params\":{\"sessionId\":\"sess-A\",\"prompt\":[{\"type\":\"text\",\"text\":\"say \\\"hi\\\"\"}]}}\n")
    );
    client.cancel(now);
    assert_eq!(
        client.poll_write().unwrap_or_default(),
        Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"method\":\"session/cancel\",\"params\":{\"sessionId\":\"sess-A\"}}\n")
    );
    // An unknown stop reason is not ACP's: a turn error.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"paused"}}),
        now,
    );
    assert!(matches!(
        events(&mut client).as_slice(),
        [AgentEvent::TurnError { code, message, agent_code: None }] if code == AGENT_ERROR && message.contains("session/prompt result is invalid")
    ));
    // A permission option kind ACP does not define is invalid params.
    feed(
        &mut client,
        json!({"jsonrpc":"2.0","id":8,"method":"session/request_permission","params":{"sessionId":"sess-A","toolCall":{"toolCallId":"t"},"options":[{"optionId":"o","name":"O","kind":"allow_sometimes"}]}}),
        now,
    );
    assert_eq!(writes(&mut client)[0]["error"]["code"], json!(-32602));
}

/// A `session/update` line as agents write them, and the many ways one can be almost that.
fn chunk_like_line() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        ".{0,12}".prop_map(|t| serde_json::to_string(&t).unwrap_or_default()),
        Just(r#""esc\"aped\\ \u00e9 \n""#.to_string()),
        Just("5".to_string()),
    ];
    let content = (text, 0usize..12).prop_map(|(text, shape)| match shape {
        0 | 1 | 8..=11 => format!(r#"{{"type":"text","text":{text}}}"#),
        2 => format!(r#"{{"text":{text},"type":"text","annotations":7,"_meta":"x"}}"#),
        3 => r#"{"type":"image","data":"aGk=","mimeType":"image/png"}"#.to_string(),
        4 => r#"{"type":"text"}"#.to_string(),
        5 => format!(r#"["text",null,{text}]"#),
        6 => format!(r#"{{"type":"image","type":"text","text":{text}}}"#),
        _ => format!(r#"{{"type":"text","text":"first","text":{text}}}"#),
    });
    let tag = prop_oneof![
        4 => Just("agent_message_chunk"),
        4 => Just("agent_thought_chunk"),
        1 => Just("user_message_chunk"),
        1 => Just("tool_call"),
        1 => Just(r"agent_message\u005fchunk"),
    ];
    let update = (tag, content, 0usize..10).prop_map(|(tag, content, shape)| match shape {
        0 | 1 | 6..=9 => format!(r#"{{"sessionUpdate":"{tag}","content":{content}}}"#),
        2 => format!(r#"{{"content":{content},"messageId":7,"_meta":[],"sessionUpdate":"{tag}"}}"#),
        3 => format!(r#"["{tag}",{content}]"#),
        4 => format!(r#"{{"sessionUpdate":"{tag}","sessionUpdate":"plan","content":{content}}}"#),
        _ => format!(r#"{{"sessionUpdate":"{tag}"}}"#),
    });
    let params = (update, 0usize..9).prop_map(|(update, shape)| match shape {
        0 | 1 | 5..=8 => format!(r#"{{"sessionId":"sess-A","update":{update}}}"#),
        2 => format!(r#"[{update}]"#),
        3 => r#"{"sessionId":"sess-A"}"#.to_string(),
        _ => format!(r#"{{"update":{update},"update":{{"sessionUpdate":"plan","entries":[]}}}}"#),
    });
    (
        params,
        prop_oneof![8 => Just("2.0"), 1 => Just("1.0"), 1 => Just(r"2\u002e0")],
        prop_oneof![8 => Just("session/update"), 1 => Just(r"session\/update"), 1 => Just("session/x")],
        prop_oneof![8 => Just(""), 1 => Just(r#","id":null"#), 1 => Just(r#","id":3"#)],
        0usize..8,
    )
        .prop_map(|(params, jsonrpc, method, id, shape)| match shape {
            0 | 1 | 4..=7 => format!(r#"{{"jsonrpc":"{jsonrpc}","method":"{method}"{id},"params":{params}}}"#),
            2 => format!(r#"{{"params":{params},"method":"{method}","jsonrpc":"{jsonrpc}"{id}}} "#),
            _ => format!(r#"{{"jsonrpc":"{jsonrpc}","method":"{method}","params":{params}}} x"#),
        })
}

proptest! {
    #[test]
    fn the_text_chunk_fast_path_reports_what_the_general_path_does(
        lines in prop::collection::vec(chunk_like_line(), 1..12),
    ) {
        let (mut fast, now) = ready_client(AcpConfig::default());
        let (mut general, _) = ready_client(AcpConfig::default());
        fast.prompt("p", now).unwrap_or_default();
        general.prompt("p", now).unwrap_or_default();
        for line in &lines {
            fast.handle_line(line.as_bytes(), now);
            if !general.is_closed() {
                general.handle_message(line.trim().as_bytes(), now);
            }
            prop_assert_eq!(events(&mut fast), events(&mut general), "for {}", line);
            let (fast_out, general_out): (Vec<Bytes>, Vec<Bytes>) = (
                std::iter::from_fn(|| fast.poll_write()).collect(),
                std::iter::from_fn(|| general.poll_write()).collect(),
            );
            prop_assert_eq!(fast_out, general_out);
            prop_assert_eq!(fast.is_closed(), general.is_closed());
        }
    }
}

#[test]
fn the_fast_path_takes_plain_chunks_and_leaves_the_rest() {
    let plain = br#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"hm \"ok\""}}}}"#;
    let mut fields = Map::new();
    fields.insert("text".into(), json!("hm \"ok\""));
    assert_eq!(
        fast::text_update(plain),
        Some(AgentEvent::Update {
            kind: "thinking_delta",
            fields
        })
    );
    for other in [
        &br#"{"jsonrpc":"2.0","id":null,"method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x"}}}}"#[..],
        br#"{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"tool_call","toolCallId":"c","title":"t"}}}"#,
        br#"["2.0","session/update",{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x"}}}]"#,
    ] {
        assert_eq!(fast::text_update(other), None);
    }
}
