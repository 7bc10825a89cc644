//! `/acp` (docs/ACP.md) on every binary: an ACP client runs a turn on the echo agent, quits,
//! reconnects and loads the session's history in order while a `/ws` client watches the same
//! session; permission requests and cancel; the JSON-RPC errors; authentication and tenants.
//! Every message the gateway sends on `/acp` is read back with ACP's own Rust types
//! (`agent-client-protocol-schema`): a response as the result of the method it answers, a
//! notification or request as its params.

use std::io::{Read, Write};

use agent_client_protocol_schema::v1::{
    AgentResponse, Error as AcpError, RequestPermissionRequest, SessionNotification,
};
use diminuendo_core::auth::testing::{claims, sign_hs256};
use diminuendo_tests::{next_json, read_close, send_text, unix_now, Client, Gateway, Ws};
use serde_json::{json, Value};
use tungstenite::Message;

use crate::with_each_gateway;

const SECRET: &str = "an-acp-test-secret-of-at-least-32-bytes";

/// An ACP client over tungstenite: numbered requests, everything else kept in order.
struct Acp {
    ws: Ws,
    next_id: i64,
}

/// Reads one server message back with ACP's types; `method` is that of the request a response
/// answers.
fn check(message: &Value, method: Option<&str>) {
    assert_eq!(message["jsonrpc"], "2.0", "{message}");
    if let Some(error) = message.get("error") {
        serde_json::from_value::<AcpError>(error.clone())
            .unwrap_or_else(|e| panic!("not an ACP error ({e}): {message}"));
        return;
    }
    match message["method"].as_str() {
        Some("session/update") => {
            serde_json::from_value::<SessionNotification>(message["params"].clone())
                .unwrap_or_else(|e| panic!("not a session/update ({e}): {message}"));
        }
        Some("session/request_permission") => {
            serde_json::from_value::<RequestPermissionRequest>(message["params"].clone())
                .unwrap_or_else(|e| panic!("not a permission request ({e}): {message}"));
        }
        Some(other) => panic!("the gateway sent an unexpected method {other}: {message}"),
        None => {
            let method = method.unwrap_or_else(|| panic!("an unexpected response: {message}"));
            AgentResponse::from_method_and_result(method, message["result"].clone())
                .unwrap_or_else(|e| panic!("not a {method} result ({e}): {message}"));
        }
    }
}

impl Acp {
    fn connect(gateway: &Gateway, headers: &[(&str, &str)]) -> Acp {
        let (ws, _) = gateway.ws_with("/acp", headers);
        Acp { ws, next_id: 0 }
    }

    fn dev(gateway: &Gateway) -> Acp {
        let mut acp = Acp::connect(gateway, &[]);
        let (_, init) = acp.call(
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {}}),
        );
        assert_eq!(init["result"]["protocolVersion"], 1, "{init}");
        acp
    }

    fn send(&mut self, message: &Value) {
        send_text(&mut self.ws, &message.to_string());
    }

    fn next(&mut self, method: Option<&str>) -> Value {
        let message = next_json(&mut self.ws);
        let is_response = message.get("method").is_none();
        check(&message, if is_response { method } else { None });
        message
    }

    /// Sends a request; returns what arrived before its response, and the response.
    fn call(&mut self, method: &str, params: Value) -> (Vec<Value>, Value) {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.until_response(id, method)
    }

    fn until_response(&mut self, id: i64, method: &str) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        for _ in 0..10_000 {
            let message = self.next(Some(method));
            if message["id"] == id && message.get("method").is_none() {
                return (before, message);
            }
            before.push(message);
        }
        panic!("no response to {method} among 10000 messages");
    }

    fn new_session(&mut self) -> String {
        let (_, response) = self.call(
            "session/new",
            json!({"cwd": "/home/me/project", "mcpServers": []}),
        );
        response["result"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("session/new: {response}"))
            .to_owned()
    }

    fn prompt(&mut self, session_id: &str, text: &str) -> (Vec<Value>, Value) {
        self.call(
            "session/prompt",
            json!({"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}),
        )
    }

    /// The raw text of the next message (for error replies checked as they are).
    fn raw_reply(&mut self, text: &str) -> Value {
        send_text(&mut self.ws, text);
        self.next(None)
    }
}

/// `(sessionUpdate, text)` of each `session/update` among `messages`.
fn chunks(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|m| m["method"] == "session/update")
        .map(|m| {
            let update = &m["params"]["update"];
            (
                update["sessionUpdate"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                update["content"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_turn_then_reconnect_and_load_the_history_while_ws_watches() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut acp = Acp::dev(gateway);
        let session_id = acp.new_session();
        let mut browser = Client::dev(gateway);
        browser.join(&session_id);

        let (updates, done) = acp.prompt(&session_id, "hello gateway");
        assert_eq!(done["result"]["stopReason"], "end_turn", "{done}");
        assert_eq!(
            chunks(&updates),
            pairs(&[
                ("user_message_chunk", "hello gateway"),
                ("agent_message_chunk", "hello gateway")
            ])
        );
        // The browser on /ws saw the same turn, with the same seqs.
        let seen = browser.turn_events(&session_id);
        let ws_seqs: Vec<u64> = seen
            .iter()
            .map(|text| diminuendo_tests::parse(text))
            .filter(|e| e["type"] == "turn_started" || e["type"] == "text_delta")
            .map(|e| e["seq"].as_u64().unwrap_or_default())
            .collect();
        let acp_seqs: Vec<u64> = updates
            .iter()
            .map(|m| {
                m["params"]["_meta"]["diminuendo"]["seq"]
                    .as_u64()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(ws_seqs, acp_seqs);

        let (_, second) = acp.prompt(&session_id, "think twice");
        assert_eq!(second["result"]["stopReason"], "end_turn");
        // A turn the browser starts is seen live on /acp.
        browser.run_turn(&session_id, "from the browser");
        let mut live = Vec::new();
        while live.len() < 2 {
            live.push(acp.next(None));
        }
        assert_eq!(
            chunks(&live),
            pairs(&[
                ("user_message_chunk", "from the browser"),
                ("agent_message_chunk", "from the browser")
            ])
        );
        browser.turn_events(&session_id);
        drop(acp);

        // Quit, reconnect, load: the whole history in order, then the response.
        let mut again = Acp::dev(gateway);
        let (history, loaded) = again.call(
            "session/load",
            json!({"sessionId": session_id, "cwd": "/somewhere/else", "mcpServers": []}),
        );
        assert!(loaded.get("result").is_some(), "{loaded}");
        // The echo agent's own prompt capabilities (its agent runs): no audio.
        let echo_caps = json!({"image": true, "audio": false, "embeddedContext": true});
        assert_eq!(
            loaded["result"]["_meta"]["diminuendo"]["promptCapabilities"],
            echo_caps
        );
        let (_, audio) = again.call(
            "session/prompt",
            json!({"sessionId": session_id, "prompt": [{"type": "text", "text": "hi"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"}]}),
        );
        assert_eq!(audio["error"]["code"], -32602, "{audio}");
        let (_, init) =
            Acp::connect(gateway, &[]).call("initialize", json!({"protocolVersion": 1}));
        assert_eq!(
            init["result"]["agentCapabilities"]["promptCapabilities"],
            echo_caps
        );
        assert_eq!(
            chunks(&history),
            pairs(&[
                ("user_message_chunk", "hello gateway"),
                ("agent_message_chunk", "hello gateway"),
                ("user_message_chunk", "think twice"),
                ("agent_thought_chunk", "twice"),
                ("agent_message_chunk", "twice"),
                ("user_message_chunk", "from the browser"),
                ("agent_message_chunk", "from the browser"),
            ])
        );
        let seqs: Vec<u64> = history
            .iter()
            .map(|m| {
                m["params"]["_meta"]["diminuendo"]["seq"]
                    .as_u64()
                    .unwrap_or_default()
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // Then live: a prompt on the loaded session.
        let (_, after) = again.prompt(&session_id, "recall");
        assert_eq!(after["result"]["stopReason"], "end_turn");
        let (_, list) = again.call("session/list", json!({}));
        let listed: Vec<&str> = list["result"]["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["sessionId"].as_str())
            .collect();
        assert!(listed.contains(&session_id.as_str()), "{list}");
    });
}

#[test]
fn permissions_and_cancel_through_acp_with_ws_watching() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut acp = Acp::dev(gateway);
        let session_id = acp.new_session();
        let mut browser = Client::dev(gateway);
        browser.join(&session_id);
        acp.send(&json!({"jsonrpc": "2.0", "id": 100, "method": "session/prompt",
            "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "permission"}]}}));
        let request = loop {
            let message = acp.next(None);
            if message["method"] == "session/request_permission" {
                break message;
            }
        };
        assert_eq!(request["params"]["sessionId"], session_id.as_str());
        acp.send(&json!({"jsonrpc": "2.0", "id": request["id"],
            "result": {"outcome": {"outcome": "selected", "optionId": "allow"}}}));
        let (updates, done) = acp.until_response(100, "session/prompt");
        assert_eq!(done["result"]["stopReason"], "end_turn", "{done}");
        assert!(chunks(&updates).contains(&(
            "agent_message_chunk".to_owned(),
            "permission: allow".to_owned()
        )));
        let seen: Vec<Value> = browser
            .turn_events(&session_id)
            .iter()
            .map(|text| diminuendo_tests::parse(text))
            .collect();
        assert!(seen
            .iter()
            .any(|e| e["type"] == "permission_resolved" && e["optionId"] == "allow"));

        // Cancel a hanging turn: the prompt answers `cancelled`.
        acp.send(
            &json!({"jsonrpc": "2.0", "id": 101, "method": "session/prompt",
            "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "hang"}]}}),
        );
        // The turn started (its user chunk arrives) before the cancel goes out.
        let started = acp.next(None);
        assert_eq!(
            started["params"]["update"]["sessionUpdate"], "user_message_chunk",
            "{started}"
        );
        acp.send(&json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session_id}}));
        let (_, cancelled) = acp.until_response(101, "session/prompt");
        assert_eq!(
            cancelled["result"]["stopReason"], "cancelled",
            "{cancelled}"
        );
    });
}

#[test]
fn bad_messages_get_json_rpc_errors_and_oversized_closes_1009() {
    with_each_gateway(&["--dev", "--max-message-size", "65536"], |gateway| {
        let mut acp = Acp::dev(gateway);
        for (text, code) in [
            ("{oops", -32700),
            ("[]", -32600),
            (
                r#"[{"jsonrpc":"2.0","id":9,"method":"session/list","params":{}}]"#,
                -32600,
            ),
            ("\"text\"", -32600),
            (
                r#"{"jsonrpc":"2.0","id":9,"method":"session/fly","params":{}}"#,
                -32601,
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"method":"session/new","params":{"cwd":3}}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"method":"session/load","params":{"sessionId":"nope","cwd":"/","mcpServers":[]}}"#,
                -32002,
            ),
        ] {
            let reply = acp.raw_reply(text);
            assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
        }
        // Still usable, then a message over --max-message-size: close 1009.
        let (_, list) = acp.call("session/list", json!({}));
        assert!(list.get("result").is_some(), "{list}");
        let big = json!({"jsonrpc": "2.0", "id": 10, "method": "session/list",
            "params": {"_meta": {"pad": "x".repeat(70_000)}}});
        acp.ws.send(Message::text(big.to_string())).expect("send");
        assert_eq!(read_close(&mut acp.ws), Some(1009));
        // The gateway is fine.
        let mut fresh = Acp::dev(gateway);
        let (_, list) = fresh.call("session/list", json!({}));
        assert!(list.get("result").is_some());
    });
}

/// The raw HTTP answer to an upgrade of `/acp` with extra header lines.
fn upgrade_status(gateway: &Gateway, extra: &str) -> String {
    let mut stream = diminuendo_tests::connect(gateway.addr());
    let request = format!(
        "GET /acp HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn authentication_origins_and_tenants_as_on_ws() {
    let args = [
        "--jwt-secret",
        SECRET,
        "--allowed-origins",
        "https://app.example",
    ];
    with_each_gateway(&args, |gateway| {
        let token = |sub: &str, tenant: &str| {
            sign_hs256(SECRET, &claims(sub, tenant, "owner", unix_now() + 3600)).expect("sign")
        };
        // No token: refused before the upgrade (ACP has no message to authenticate with).
        let refused = upgrade_status(gateway, "");
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        assert!(refused.contains("WWW-Authenticate: Bearer"), "{refused}");
        // A foreign origin: 403, as on /ws.
        let alice_token = token("alice", "tenant-a");
        let foreign = upgrade_status(
            gateway,
            &format!("Authorization: Bearer {alice_token}\r\nOrigin: https://evil.example\r\n"),
        );
        assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
        // A bad token: upgraded, then closed 4001, as on /ws.
        let mut bad = Acp::connect(gateway, &[("Authorization", "Bearer not.a.jwt")]);
        assert_eq!(read_close(&mut bad.ws), Some(4001));

        // Alice by header, Bob by the subprotocol (next to acp.v1, which is selected).
        let bearer = format!("Bearer {alice_token}");
        let mut alice = Acp::connect(gateway, &[("Authorization", bearer.as_str())]);
        alice.call("initialize", json!({"protocolVersion": 1}));
        let session_id = alice.new_session();
        let (_, done) = alice.prompt(&session_id, "a secret of tenant a");
        assert_eq!(done["result"]["stopReason"], "end_turn");

        let protocols = format!("acp.v1, bearer.{}", token("bob", "tenant-b"));
        let (ws, response) =
            gateway.ws_with("/acp", &[("Sec-WebSocket-Protocol", protocols.as_str())]);
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some("acp.v1")
        );
        let mut bob = Acp { ws, next_id: 0 };
        bob.call("initialize", json!({"protocolVersion": 1}));
        let (_, list) = bob.call("session/list", json!({}));
        assert_eq!(list["result"]["sessions"], json!([]), "{list}");
        for (method, params) in [
            (
                "session/load",
                json!({"sessionId": session_id, "cwd": "/", "mcpServers": []}),
            ),
            (
                "session/resume",
                json!({"sessionId": session_id, "cwd": "/"}),
            ),
            (
                "session/prompt",
                json!({"sessionId": session_id, "prompt": [{"type": "text", "text": "hi"}]}),
            ),
            (
                "session/set_mode",
                json!({"sessionId": session_id, "modeId": "code"}),
            ),
        ] {
            let (before, error) = bob.call(method, params);
            assert!(before.is_empty(), "{method}: {before:?}");
            assert_eq!(error["error"]["code"], -32002, "{method}: {error}");
            assert_eq!(error["error"]["data"]["code"], "SESSION_NOT_FOUND");
        }
        // Alice's /acp saw none of Bob's attempts; a prompt still works.
        let (_, still) = alice.prompt(&session_id, "still mine");
        assert_eq!(still["result"]["stopReason"], "end_turn");
    });
}

/// Reads server frames from `stream` until a close frame; returns its code.
fn read_close_frame(stream: &mut std::net::TcpStream) -> u16 {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse what we have.
        let mut offset = 0;
        while buffer.len() >= offset + 2 {
            let opcode = buffer[offset] & 0x0f;
            let (len, header) = match buffer[offset + 1] & 0x7f {
                126 if buffer.len() >= offset + 4 => (
                    u16::from_be_bytes([buffer[offset + 2], buffer[offset + 3]]) as usize,
                    4,
                ),
                127 if buffer.len() >= offset + 10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&buffer[offset + 2..offset + 10]);
                    (u64::from_be_bytes(be) as usize, 10)
                }
                126 | 127 => break,
                len => (len as usize, 2),
            };
            if buffer.len() < offset + header + len {
                break;
            }
            if opcode == 0x8 {
                let payload = &buffer[offset + header..offset + header + len];
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
            offset += header + len;
        }
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("no close frame: {e}"));
        assert!(n > 0, "the stream ended before a close frame");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn an_oversized_message_gets_its_1009_even_while_the_client_still_sends() {
    with_each_gateway(&["--dev"], |gateway| {
        for path in ["/acp", "/ws"] {
            let mut stream = diminuendo_tests::connect(gateway.addr());
            let upgrade = format!(
                "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(upgrade.as_bytes()).expect("upgrade");
            // A text frame announcing 2 MiB (over the 1 MiB limit), and a first part of it.
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&(2u64 << 20).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            frame.extend(std::iter::repeat_n(b'x', 256 * 1024));
            stream.write_all(&frame).expect("the first part");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).expect("the 101"), 1);
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101"), "{path}");
            // The close frame arrives whole, though the gateway has unread bytes of ours.
            assert_eq!(read_close_frame(&mut stream), 1009, "{path}");
            // The rest of the message is taken (and discarded): no reset...
            stream
                .write_all(&vec![b'x'; 512 * 1024])
                .unwrap_or_else(|e| panic!("{path}: the gateway reset the connection: {e}"));
            // ...and the stream ends cleanly once we stop.
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let mut rest = Vec::new();
            let ended = stream.read_to_end(&mut rest);
            assert!(ended.is_ok(), "{path}: {ended:?}");
        }
    });
}
