//! The WebSocket rules and the gateway protocol's handshake (PROTOCOL sections 2-4), with
//! tungstenite as an independent client.

use diminuendo_tests::tungstenite::protocol::frame::coding::CloseCode;
use diminuendo_tests::tungstenite::protocol::CloseFrame;
use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{
    expect_dev_greeting, expect_end, is_uuid, next_json, next_message, read_close, request,
    request_invalid, send_text, wire,
};
use serde_json::json;

use crate::with_each_gateway;

#[test]
fn dev_mode_greets_and_authenticates_at_once() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut ws, response) =
            gateway.ws_with("/ws", &[("Sec-WebSocket-Protocol", "diminuendo.v1")]);
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|value| value.to_str().ok()),
            Some("diminuendo.v1")
        );
        let welcome = next_json(&mut ws);
        assert_eq!(
            welcome,
            json!({"type": "welcome", "protocolVersion": 1, "requiresAuth": false})
        );
        let connected = next_json(&mut ws);
        assert_eq!(connected["type"], "connected", "{connected}");
        let client_id = connected["clientId"].as_str().expect("clientId");
        assert!(is_uuid(client_id), "{client_id}");
        assert_eq!(connected["heartbeatIntervalMs"], 30_000, "{connected}");
        assert!(connected["ts"]
            .as_u64()
            .is_some_and(|ts| ts > 1_600_000_000_000));
        let authenticated = next_json(&mut ws);
        assert_eq!(
            authenticated,
            json!({
                "type": "authenticated",
                "identity": {
                    "userId": "dev-user-001",
                    "email": "developer@example.com",
                    "tenantId": "dev",
                    "role": "owner",
                }
            })
        );
        // Two connections get different client ids.
        let mut other = gateway.ws();
        let other_connected = expect_dev_greeting(&mut other);
        assert_ne!(other_connected["clientId"], connected["clientId"]);
    });
}

#[test]
fn the_subprotocol_is_selected_among_several_offers() {
    with_each_gateway(&["--dev"], |gateway| {
        let (_ws, response) = gateway.ws_with(
            "/ws",
            &[("Sec-WebSocket-Protocol", "other.v9, diminuendo.v1")],
        );
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|value| value.to_str().ok()),
            Some("diminuendo.v1")
        );
    });
}

#[test]
fn ping_is_answered_with_pong() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        let pong = request(&mut ws, &json!({"type": "ping", "requestId": "r-1"}));
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["requestId"], "r-1", "{pong}");
        assert!(pong["ts"].is_u64(), "{pong}");
        // Without a requestId, none comes back.
        let pong = request(&mut ws, &json!({"type": "ping"}));
        assert_eq!(pong["type"], "pong", "{pong}");
        assert!(pong.get("requestId").is_none(), "{pong}");
        // Unknown fields are ignored; a null requestId is an omitted one.
        let pong = request(
            &mut ws,
            &json!({"type": "ping", "requestId": null, "extra": [1, 2]}),
        );
        assert_eq!(pong["type"], "pong", "{pong}");
        assert!(pong.get("requestId").is_none(), "{pong}");
    });
}

#[test]
fn malformed_messages_get_errors_and_keep_the_connection() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);

        send_text(&mut ws, "this is not json");
        let error = next_json(&mut ws);
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "INVALID_JSON", "{error}");
        assert!(error["message"].is_string(), "{error}");
        assert!(error.get("seq").is_none(), "{error}");

        let error = request_invalid(&mut ws, &json!({"requestId": "no-type"}));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");
        assert_eq!(error["requestId"], "no-type", "{error}");

        let error = request_invalid(&mut ws, &json!(["an", "array"]));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");

        let error = request_invalid(&mut ws, &json!({"type": 7}));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");

        let error = request_invalid(&mut ws, &json!({"type": "ping", "requestId": 42}));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");
        assert!(error.get("requestId").is_none(), "{error}");

        let too_long = "x".repeat(65);
        let error = request_invalid(&mut ws, &json!({"type": "ping", "requestId": too_long}));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");
        assert!(error.get("requestId").is_none(), "{error}");
        let longest = "y".repeat(64);
        let pong = request(&mut ws, &json!({"type": "ping", "requestId": longest}));
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["requestId"], longest.as_str(), "{pong}");

        let error = request_invalid(
            &mut ws,
            &json!({"type": "no_such_thing", "requestId": "u-9"}),
        );
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");
        assert_eq!(error["requestId"], "u-9", "{error}");

        // The connection is still in service.
        let pong = request(&mut ws, &json!({"type": "ping", "requestId": "still"}));
        assert_eq!(pong["requestId"], "still", "{pong}");
    });
}

#[test]
fn a_binary_message_closes_with_1003() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        ws.send(Message::binary(vec![1u8, 2, 3])).expect("send");
        assert_eq!(read_close(&mut ws), Some(1003));
        expect_end(&mut ws);
    });
}

#[test]
fn a_message_over_the_limit_closes_with_1009() {
    with_each_gateway(&["--dev", "--max-message-size", "1000"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        // At the limit is fine.
        let padding = "p".repeat(1000 - r#"{"type":"ping","requestId":"a","pad":""}"#.len());
        let fits = format!(r#"{{"type":"ping","requestId":"a","pad":"{padding}"}}"#);
        assert_eq!(fits.len(), 1000);
        send_text(&mut ws, &fits);
        assert_eq!(next_json(&mut ws)["requestId"], "a");
        // One byte over is not.
        send_text(&mut ws, &format!("{fits} "));
        assert_eq!(read_close(&mut ws), Some(1009));
        expect_end(&mut ws);
    });
}

#[test]
fn a_fragmented_message_over_the_limit_closes_with_1009() {
    with_each_gateway(&["--dev", "--max-message-size", "1000"], |gateway| {
        let mut ws = gateway.raw_ws("/ws");
        for _ in 0..3 {
            ws.json();
        }
        // Three fragments of 400 bytes: the third crosses the limit.
        let chunk = vec![b' '; 400];
        ws.send(&wire::frame(1, false, &chunk, [1, 2, 3, 4]));
        ws.send(&wire::frame(0, false, &chunk, [1, 2, 3, 4]));
        ws.send(&wire::frame(0, true, &chunk, [1, 2, 3, 4]));
        let frame = ws.frame();
        assert_eq!(frame.close_code(), Some(1009), "{frame:?}");
        assert!(ws.read_frame().is_none(), "the connection stays open");
    });
}

#[test]
fn fragmented_messages_are_reassembled() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.raw_ws("/ws");
        for _ in 0..3 {
            ws.json();
        }
        let message = br#"{"type":"ping","requestId":"frag"}"#;
        ws.send(&wire::frame(1, false, &message[..5], [1, 2, 3, 4]));
        // A control frame may come between fragments.
        ws.send(&wire::frame(9, true, b"mid", [5, 6, 7, 8]));
        ws.send(&wire::frame(0, false, &message[5..20], [9, 9, 9, 9]));
        ws.send(&wire::frame(0, true, &message[20..], [0, 0, 0, 0]));
        let pong = ws.frame();
        assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"mid"[..]));
        let reply = ws.json();
        assert_eq!(reply["type"], "pong", "{reply}");
        assert_eq!(reply["requestId"], "frag", "{reply}");
    });
}

#[test]
fn invalid_utf8_closes_with_1007() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.raw_ws("/ws");
        for _ in 0..3 {
            ws.json();
        }
        ws.send(&wire::frame(1, true, b"{\"type\":\"\xff\"}", [1, 2, 3, 4]));
        let frame = ws.frame();
        assert_eq!(frame.close_code(), Some(1007), "{frame:?}");
        assert!(ws.read_frame().is_none(), "the connection stays open");
    });
}

#[test]
fn websocket_ping_gets_pong_with_the_same_payload() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        let payload = b"are you there? \x00\xff".to_vec();
        ws.send(Message::Ping(payload.clone().into()))
            .expect("ping");
        match next_message(&mut ws) {
            Message::Pong(pong) => assert_eq!(pong.as_ref(), payload.as_slice()),
            other => panic!("expected a pong, got {other:?}"),
        }
    });
}

#[test]
fn a_client_close_is_echoed_and_the_connection_ends() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .expect("close");
        assert_eq!(read_close(&mut ws), Some(1000));
        expect_end(&mut ws);

        // Another code is echoed too.
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4321),
            reason: "".into(),
        }))
        .expect("close");
        assert_eq!(read_close(&mut ws), Some(4321));
        expect_end(&mut ws);
    });
}

#[test]
fn a_close_without_a_code_is_answered_without_one() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut ws = gateway.raw_ws("/ws");
        for _ in 0..3 {
            ws.json();
        }
        ws.send(&wire::frame(8, true, b"", [1, 2, 3, 4]));
        let frame = ws.frame();
        assert_eq!(frame.opcode, 8);
        assert!(frame.payload.is_empty(), "{frame:?}");
        assert!(ws.read_frame().is_none(), "the connection stays open");
    });
}

#[test]
fn without_dev_mode_authentication_is_required() {
    with_each_gateway(&[], |gateway| {
        let mut ws = gateway.ws();
        let welcome = next_json(&mut ws);
        assert_eq!(
            welcome,
            json!({"type": "welcome", "protocolVersion": 1, "requiresAuth": true})
        );
        let connected = next_json(&mut ws);
        assert_eq!(connected["type"], "connected", "{connected}");
        // No `authenticated` follows: the next message answers the request.
        let error = request(
            &mut ws,
            &json!({"type": "list_sessions", "requestId": "l-1"}),
        );
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "NOT_AUTHENTICATED", "{error}");
        assert_eq!(error["requestId"], "l-1", "{error}");
        // `ping` is allowed before authentication.
        let pong = request(&mut ws, &json!({"type": "ping", "requestId": "p"}));
        assert_eq!(pong["type"], "pong", "{pong}");
        // Session messages are refused until the connection authenticates.
        let error = request(
            &mut ws,
            &json!({"type": "create_session", "agentType": "x"}),
        );
        assert_eq!(error["code"], "NOT_AUTHENTICATED", "{error}");
    });
}

#[test]
fn settings_come_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("diminuendo-itest-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, "dev = true\nheartbeat_interval_ms = 12345\n").expect("write");
    let path_text = path.to_string_lossy().into_owned();
    with_each_gateway(&["--config", &path_text], |gateway| {
        let mut ws = gateway.ws();
        let connected = expect_dev_greeting(&mut ws);
        assert_eq!(connected["heartbeatIntervalMs"], 12345, "{connected}");
    });
    std::fs::remove_dir_all(&dir).ok();
}
