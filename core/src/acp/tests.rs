//! Scripted agent lines against the client; every expectation is on the exact lines written and
//! events emitted.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};

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
            message: "model overloaded".into()
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
            message: "Internal error: Session s not found".into()
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
            json!({"toolCallId":"call_1","title":"Reading project files","kind":"read","status":"pending","input":{"path":"/p/README.md"}}),
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
            json!({"toolCallId":"call_1","status":"completed","content":[{"type":"content","content":{"type":"text","text":"# My Project"}}]}),
        ),
        (
            json!({"sessionUpdate":"tool_call_update","toolCallId":"call_1","title":"renamed"}),
            "tool_call_update",
            json!({"toolCallId":"call_1"}),
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
        json!({"sessionUpdate":"available_commands_update","availableCommands":[{"name":"web","description":"search"}]}),
        json!({"sessionUpdate":"current_mode_update","currentModeId":"architect"}),
        json!({"sessionUpdate":"config_option_update","configOptions":[]}),
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
fn the_turn_times_out() {
    let (mut client, now) = ready_client(AcpConfig {
        turn_timeout: Some(Duration::from_secs(60)),
        ..AcpConfig::default()
    });
    assert_eq!(client.poll_timeout(), None, "no deadline between turns");
    client.prompt("hang", now).unwrap_or_default();
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(60)));
    client.handle_timeout(now + Duration::from_secs(59));
    assert!(events(&mut client).is_empty());
    client.handle_timeout(now + Duration::from_secs(61));
    assert!(failed_message(&mut client).contains("did not finish the turn"));
    assert!(client.is_closed());
}

#[test]
fn without_a_turn_timeout_a_turn_has_no_deadline() {
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
        let mut client = AcpClient::new(AcpConfig {
            turn_timeout: Some(Duration::from_secs(1)),
            ..AcpConfig::default()
        });
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
