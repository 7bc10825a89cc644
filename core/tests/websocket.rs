//! The WebSocket side of the gateway (PROTOCOL sections 1-4 and 8), driven through the simulator
//! on its virtual clock.

mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::{ConnectionId, CoreConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

fn refused(config: CoreConfig, bytes: &[u8]) -> (Sim, ConnectionId, HttpResponse) {
    let mut sim = Sim::new(config, 11, Instant::now());
    let (id, response) = one_response(&mut sim, bytes);
    (sim, id, response)
}

// ---------------------------------------------------------------- the opening handshake

#[test]
fn ws_without_upgrade_gets_426_with_upgrade_header() {
    for bytes in [
        client::get("/ws"),
        raw_upgrade(
            "/ws",
            &format!(
                "Upgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n\
                 Sec-WebSocket-Version: 13\r\n",
                client::KEY
            ),
        ),
        request("HEAD", "/ws", ""),
    ] {
        let mut sim = Sim::new(dev(), 11, Instant::now());
        let id = sim.connect();
        sim.send(id, &bytes);
        let head_only = bytes.starts_with(b"HEAD");
        let received = sim.take_received(id);
        let (response, len) =
            client::parse_response_with(&received, head_only).expect("a whole response");
        assert_eq!(len, received.len());
        assert_eq!(response.status, 426);
        assert_eq!(response.header("Upgrade"), Some("websocket"));
        assert!(response.header("Content-Length").is_some());
        assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"));
        assert!(!sim.is_closed(id));
    }
}

#[test]
fn a_version_other_than_13_gets_426_naming_13() {
    let bytes = raw_upgrade(
        "/ws",
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n\
             Sec-WebSocket-Version: 12\r\n",
            client::KEY
        ),
    );
    let (_, _, response) = refused(dev(), &bytes);
    assert_eq!(response.status, 426);
    assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
}

#[test]
fn broken_upgrades_get_400_and_close() {
    let base = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
    for headers in [
        // A bad key, no key, a key of 15 bytes.
        format!("{base}Connection: Upgrade\r\nSec-WebSocket-Key: not-a-key\r\n"),
        format!("{base}Connection: Upgrade\r\n"),
        format!("{base}Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n"),
        // No Connection: upgrade.
        format!("{base}Sec-WebSocket-Key: {}\r\n", client::KEY),
        format!(
            "{base}Connection: keep-alive\r\nSec-WebSocket-Key: {}\r\n",
            client::KEY
        ),
    ] {
        let (sim, id, response) = refused(dev(), &raw_upgrade("/ws", &headers));
        assert_eq!(response.status, 400, "{headers:?}");
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(sim.is_closed(id), "{headers:?}");
    }
}

#[test]
fn the_origin_allowlist_applies_outside_dev_mode() {
    let allowlist = CoreConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..prod()
    };
    let bad = upgrade_with("/ws", "Origin: https://evil.example\r\n");
    let good = upgrade_with("/ws", "Origin: https://app.example\r\n");
    let (_, _, response) = refused(allowlist.clone(), &bad);
    assert_eq!(response.status, 403);
    assert_eq!(response.header("Cache-Control"), Some("no-store"));
    let (_, _, response) = refused(allowlist.clone(), &good);
    assert_eq!(response.status, 101);
    // Non-browser clients send no Origin.
    let (_, _, response) = refused(allowlist.clone(), &client::upgrade("/ws"));
    assert_eq!(response.status, 101);
    // Dev mode accepts any origin, and so does an empty allowlist.
    let dev_allowlist = CoreConfig {
        dev_mode: true,
        ..allowlist
    };
    let (_, _, response) = refused(dev_allowlist, &bad);
    assert_eq!(response.status, 101);
    let (_, _, response) = refused(prod(), &bad);
    assert_eq!(response.status, 101);
}

#[test]
fn upgrades_over_max_connections_get_503() {
    let config = CoreConfig {
        max_connections: 2,
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let first = open_ws(&mut sim);
    let _second = open_ws(&mut sim);
    let (third, response) = one_response(&mut sim, &client::upgrade("/ws"));
    assert_eq!(response.status, 503);
    assert!(response.header("Retry-After").is_some());
    // Changed on purpose (issue 11, item 9): the limit counts connections, not upgrades, so the
    // refused connection is answered with `Connection: close` and closed.
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(sim.is_closed(third));
    // A slot frees up when a WebSocket goes.
    sim.disconnect(first);
    let (_, response) = one_response(&mut sim, &client::upgrade("/ws"));
    assert_eq!(response.status, 101);
}

#[test]
fn the_101_carries_the_accept_key_and_no_length() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let (_, response) = one_response(&mut sim, &client::upgrade("/ws"));
    assert_eq!(response.status, 101);
    assert_eq!(
        response.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(response
        .header("Upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(response
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(response.header("Content-Length"), None);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), None);
    assert_eq!(response.header("Sec-WebSocket-Extensions"), None);
}

#[test]
fn the_diminuendo_subprotocol_is_selected_when_offered() {
    for (offer, selected) in [
        (
            "Sec-WebSocket-Protocol: diminuendo.v1\r\n",
            Some("diminuendo.v1"),
        ),
        (
            "Sec-WebSocket-Protocol: other, diminuendo.v1, bearer.abc\r\n",
            Some("diminuendo.v1"),
        ),
        ("Sec-WebSocket-Protocol: other\r\n", None),
        ("Sec-WebSocket-Extensions: permessage-deflate\r\n", None),
    ] {
        let mut sim = Sim::new(dev(), 1, Instant::now());
        let (_, response) = one_response(&mut sim, &upgrade_with("/ws", offer));
        assert_eq!(response.status, 101);
        assert_eq!(
            response.header("Sec-WebSocket-Protocol"),
            selected,
            "{offer:?}"
        );
        assert_eq!(response.header("Sec-WebSocket-Extensions"), None);
    }
}

#[test]
fn frames_in_the_same_read_as_the_upgrade_are_processed() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let id = sim.connect();
    let mut bytes = client::upgrade("/ws");
    bytes.extend(text_json(
        &json!({"type": "ping", "requestId": "same-read"}),
    ));
    bytes.extend(masked(OP_PING, true, b"p"));
    sim.send(id, &bytes);
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(101));
    let frames = sim.take_frames(id);
    let kinds: Vec<Value> = frames
        .iter()
        .map(|f| {
            if f.opcode == OP_TEXT {
                json(f)["type"].clone()
            } else {
                json!(f.opcode)
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            json!("welcome"),
            json!("connected"),
            json!("authenticated"),
            json!("pong"),
            json!(OP_PONG)
        ]
    );
    assert_eq!(json(&frames[3])["requestId"], "same-read");
    assert_eq!(frames[4].payload, b"p");
}

// ---------------------------------------------------------------- the greeting

#[test]
fn dev_mode_greets_with_welcome_connected_authenticated() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    sim.advance(Duration::from_millis(1234));
    let id = open(&mut sim, "/ws");
    let frames = sim.take_frames(id);
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.fin && f.opcode == OP_TEXT));
    assert_eq!(
        std::str::from_utf8(&frames[0].payload).ok(),
        Some(r#"{"type":"welcome","protocolVersion":1,"requiresAuth":false}"#)
    );
    let connected = json(&frames[1]);
    let client_id = connected["clientId"]
        .as_str()
        .expect("a clientId")
        .to_owned();
    assert_eq!(
        connected,
        json!({
            "type": "connected",
            "clientId": client_id,
            "heartbeatIntervalMs": 30000,
            "ts": SIM_START_UNIX_MS + 1234,
        })
    );
    let bytes = client_id.as_bytes();
    assert_eq!(bytes.len(), 36);
    for dash in [8, 13, 18, 23] {
        assert_eq!(bytes[dash], b'-');
    }
    assert_eq!(bytes[14], b'4', "a version 4 UUID");
    assert!(client_id
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert_eq!(
        json(&frames[2]),
        json!({
            "type": "authenticated",
            "identity": {
                "userId": "dev-user-001",
                "email": "developer@example.com",
                "tenantId": "dev",
                "role": "owner",
            },
        })
    );
    // Another connection gets another id.
    let other = open(&mut sim, "/ws");
    let messages = sim.take_messages(other);
    assert_ne!(messages[1]["clientId"], client_id.as_str());
}

#[test]
fn the_heartbeat_interval_is_announced_from_the_config() {
    let config = CoreConfig {
        heartbeat_interval: Duration::from_millis(1500),
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let id = open(&mut sim, "/ws");
    assert_eq!(sim.take_messages(id)[1]["heartbeatIntervalMs"], 1500);
}

#[test]
fn without_dev_mode_authentication_is_required() {
    let mut sim = Sim::new(prod(), 5, Instant::now());
    let id = open(&mut sim, "/ws");
    let messages = sim.take_messages(id);
    assert_eq!(messages.len(), 2, "no authenticated: {messages:?}");
    assert_eq!(
        messages[0],
        json!({"type": "welcome", "protocolVersion": 1, "requiresAuth": true})
    );
    assert_eq!(messages[1]["type"], "connected");
    assert_eq!(messages[1]["ts"], SIM_START_UNIX_MS);

    for message in [
        json!({"type": "list_sessions", "requestId": "a"}),
        json!({"type": "create_session", "requestId": "b", "agentType": "x"}),
        json!({"type": "no_such_type", "requestId": "c"}),
    ] {
        sim.send(id, &text_json(&message));
        let reply = sim.take_messages(id);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0]["type"], "error");
        assert_eq!(reply[0]["code"], "NOT_AUTHENTICATED", "{message}");
        assert_eq!(reply[0]["requestId"], message["requestId"]);
        assert!(reply[0]["message"].is_string());
    }
    sim.advance(Duration::from_millis(250));
    sim.send(id, &text_json(&json!({"type": "ping", "requestId": "p"})));
    assert_eq!(
        sim.take_messages(id),
        [json!({"type": "pong", "ts": SIM_START_UNIX_MS + 250, "requestId": "p"})]
    );
    sim.send(
        id,
        &text_json(&json!({"type": "authenticate", "token": "x.y.z", "requestId": "t"})),
    );
    let reply = sim.take_messages(id);
    assert_eq!(reply[0]["code"], "AUTH_FAILED");
    assert_eq!(reply[0]["requestId"], "t");
    assert!(!sim.is_closed(id));
}

#[test]
fn an_unauthenticated_connection_is_closed_with_4001_after_the_auth_timeout() {
    let mut sim = Sim::new(prod(), 5, Instant::now());
    let timeout = sim.gateway.config().auth_timeout;
    assert_eq!(timeout, Duration::from_secs(10));
    let id = open(&mut sim, "/ws");
    sim.take_received(id);
    // Traffic does not extend the deadline.
    sim.advance(Duration::from_secs(5));
    sim.send(id, &text_json(&json!({"type": "ping"})));
    sim.take_received(id);
    sim.advance(timeout - Duration::from_secs(5) - Duration::from_millis(1));
    assert!(sim.take_received(id).is_empty());
    sim.advance(Duration::from_millis(1));
    let frames = sim.take_frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(4001));
    assert!(!sim.is_closed(id), "waiting for the client's close");
    sim.send(id, &client::close(4001));
    assert!(sim.is_closed(id));
    assert!(sim.take_received(id).is_empty(), "no second close frame");
    assert_eq!(sim.gateway.connection_count(), 0);
}

// ---------------------------------------------------------------- the envelope

fn single_reply(sim: &mut Sim, id: ConnectionId, text: &str) -> Value {
    sim.send(id, &client::text(text));
    let replies = sim.take_messages(id);
    assert_eq!(replies.len(), 1, "{text}: {replies:?}");
    assert!(sim.take_received(id).is_empty());
    replies.into_iter().next().unwrap_or_default()
}

#[test]
fn envelope_errors() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    let long = "r".repeat(65);
    for (text, code, request_id) in [
        ("not json", "INVALID_JSON", None),
        ("{\"type\":\"ping\"", "INVALID_JSON", None),
        ("", "INVALID_JSON", None),
        ("[1,2]", "INVALID_MESSAGE", None),
        ("\"ping\"", "INVALID_MESSAGE", None),
        ("null", "INVALID_MESSAGE", None),
        ("{}", "INVALID_MESSAGE", None),
        ("{\"type\":5}", "INVALID_MESSAGE", None),
        ("{\"requestId\":\"m\"}", "INVALID_MESSAGE", Some("m")),
        (
            "{\"type\":\"ping\",\"requestId\":5}",
            "INVALID_MESSAGE",
            None,
        ),
        (
            "{\"type\":\"ping\",\"requestId\":[\"a\"]}",
            "INVALID_MESSAGE",
            None,
        ),
        (
            &format!("{{\"type\":\"ping\",\"requestId\":\"{long}\"}}"),
            "INVALID_MESSAGE",
            None,
        ),
        (
            "{\"type\":\"nope\",\"requestId\":\"u\"}",
            "INVALID_MESSAGE",
            Some("u"),
        ),
        ("{\"type\":\"nope\"}", "INVALID_MESSAGE", None),
    ] {
        let reply = single_reply(&mut sim, id, text);
        assert_eq!(reply["type"], "error", "{text}");
        assert_eq!(reply["code"], code, "{text}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(reply.get("seq"), None);
        match request_id {
            Some(request_id) => assert_eq!(reply["requestId"], request_id, "{text}"),
            None => assert_eq!(reply.get("requestId"), None, "{text}"),
        }
    }
    assert!(!sim.is_closed(id), "envelope errors do not close");
}

#[test]
fn optional_fields_may_be_null_and_unknown_fields_are_ignored() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    let at_limit = "x".repeat(64);
    for (text, request_id) in [
        (
            r#"{"type":"ping","requestId":null,"extra":[1]}"#.to_owned(),
            None,
        ),
        (
            format!(r#"{{"type":"ping","requestId":"{at_limit}"}}"#),
            Some(at_limit.as_str()),
        ),
        (r#"{"requestId":"q","type":"ping"}"#.to_owned(), Some("q")),
    ] {
        let reply = single_reply(&mut sim, id, &text);
        assert_eq!(reply["type"], "pong", "{text}");
        assert_eq!(reply["ts"], SIM_START_UNIX_MS);
        match request_id {
            Some(request_id) => assert_eq!(reply["requestId"], request_id),
            None => assert_eq!(reply.get("requestId"), None),
        }
    }
}

// ---------------------------------------------------------------- control frames

#[test]
fn ping_is_answered_with_a_pong_of_the_same_payload() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    for payload in [&b""[..], b"hello", &[0xff; 125]] {
        sim.send(id, &masked(OP_PING, true, payload));
        let frames = sim.take_frames(id);
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].opcode, frames[0].fin), (OP_PONG, true));
        assert_eq!(frames[0].payload, payload);
    }
    // An unsolicited pong gets nothing.
    sim.send(id, &masked(OP_PONG, true, b"x"));
    assert!(sim.take_received(id).is_empty());
    // A ping between the fragments of a message is answered at once.
    sim.send(id, &masked(OP_TEXT, false, br#"{"type":"#));
    sim.send(id, &masked(OP_PING, true, b"mid"));
    let frames = sim.take_frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, b"mid");
    sim.send(id, &masked(OP_CONT, true, br#""ping"}"#));
    assert_eq!(sim.take_messages(id)[0]["type"], "pong");
}

#[test]
fn a_client_close_is_echoed_and_the_connection_closes() {
    for (code, reason) in [(1000u16, ""), (1001, "bye"), (4000, "app")] {
        let mut sim = Sim::new(dev(), 5, Instant::now());
        let id = open_ws(&mut sim);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        sim.send(id, &masked(OP_CLOSE, true, &payload));
        let frames = parse_frames(&sim.take_received(id));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].close_code(), Some(code));
        assert!(sim.is_closed(id));
        assert_eq!(sim.gateway.connection_count(), 0);
        assert_eq!(sim.gateway.metrics().websocket_connections_open, 0);
    }
}

#[test]
fn a_close_without_payload_gets_an_empty_close() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.send(id, &masked(OP_CLOSE, true, b""));
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].opcode, OP_CLOSE);
    assert!(frames[0].payload.is_empty());
    assert!(sim.is_closed(id));
}

#[test]
fn frames_after_a_close_are_ignored() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.set_write_limit(id, Some(0));
    let mut bytes = client::close(1000);
    bytes.extend(masked(OP_PING, true, b"late"));
    sim.send(id, &bytes);
    sim.send(id, &text_json(&json!({"type": "ping"})));
    sim.set_write_limit(id, None);
    drain(&mut sim, id);
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1000));
    assert!(sim.is_closed(id));
}

// ---------------------------------------------------------------- failures

/// Sends `bytes` and expects exactly one close frame with `code`, after which the server closes.
fn fails_with(config: CoreConfig, path: &str, bytes: &[u8], code: u16) {
    let mut sim = Sim::new(config, 5, Instant::now());
    let id = open(&mut sim, path);
    sim.take_received(id);
    sim.send(id, bytes);
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(code));
    assert!(sim.is_closed(id), "the socket closes after the close frame");
    assert_eq!(sim.gateway.connection_count(), 0);
    assert_eq!(sim.gateway.metrics().websocket_closes.get(&code), Some(&1));
}

#[test]
fn an_unmasked_frame_closes_with_1002() {
    fails_with(dev(), "/ws", &[0x81, 0x02, b'h', b'i'], 1002);
}

#[test]
fn reserved_bits_and_opcodes_close_with_1002() {
    let mut rsv = masked(OP_TEXT, true, b"{}");
    rsv[0] |= 0x40;
    fails_with(dev(), "/ws", &rsv, 1002);
    fails_with(dev(), "/ws", &masked(0x3, true, b"x"), 1002);
    // A control frame may not be fragmented, nor carry more than 125 bytes.
    fails_with(dev(), "/ws", &masked(OP_PING, false, b"x"), 1002);
    fails_with(dev(), "/ws", &masked(OP_PING, true, &[0; 126]), 1002);
    // A continuation with nothing to continue.
    fails_with(dev(), "/ws", &masked(OP_CONT, true, b"x"), 1002);
}

#[test]
fn a_binary_message_on_ws_closes_with_1003() {
    fails_with(dev(), "/ws", &masked(OP_BINARY, true, b"\x00\x01"), 1003);
}

#[test]
fn a_message_over_the_limit_closes_with_1009_at_its_header() {
    let config = dev();
    let limit = config.max_message_size as u64;
    // Only the header of a frame one byte over the limit: no payload is sent at all.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(limit + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    fails_with(config.clone(), "/ws", &header, 1009);

    // Fragments that add up to more than the limit fail at the header of the one that overflows.
    let small = CoreConfig {
        max_message_size: 1000,
        ..dev()
    };
    let mut bytes = masked(OP_TEXT, false, &[b' '; 600]);
    let mut second = vec![0x80, 0x80 | 126];
    second.extend_from_slice(&401u16.to_be_bytes());
    second.extend_from_slice(&[9, 9, 9, 9]);
    bytes.extend(second);
    fails_with(small.clone(), "/ws", &bytes, 1009);

    // Exactly at the limit is fine.
    let mut sim = Sim::new(small, 5, Instant::now());
    let id = open_ws(&mut sim);
    let text = format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "p".repeat(1000 - 24)
    );
    assert_eq!(text.len(), 1000);
    sim.send(id, &client::text(&text));
    assert_eq!(sim.take_messages(id)[0]["type"], "pong");
}

#[test]
fn invalid_utf8_closes_with_1007() {
    fails_with(
        dev(),
        "/ws",
        &masked(OP_TEXT, true, b"{\"a\":\"\xff\"}"),
        1007,
    );
    // Split across fragments: the bad byte is in the second.
    let mut bytes = masked(OP_TEXT, false, b"\"\xc3");
    bytes.extend(masked(OP_CONT, true, b"\x28\""));
    fails_with(dev(), "/ws", &bytes, 1007);
    // In a close reason.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.push(0xff);
    fails_with(dev(), "/ws", &masked(OP_CLOSE, true, &payload), 1007);
}

#[test]
fn invalid_close_codes_close_with_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        fails_with(dev(), "/ws", &client::close(code), 1002);
    }
    fails_with(dev(), "/ws", &masked(OP_CLOSE, true, &[3]), 1002);
}

#[test]
fn input_after_a_failure_is_ignored() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.set_write_limit(id, Some(0));
    let mut bytes = masked(OP_BINARY, true, b"x");
    bytes.extend(masked(OP_PING, true, b"after"));
    sim.send(id, &bytes);
    sim.send(id, &masked(OP_PING, true, b"later"));
    sim.set_write_limit(id, None);
    drain(&mut sim, id);
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(1003));
    assert!(sim.is_closed(id));
}

// ---------------------------------------------------------------- /echo

#[test]
fn echo_exists_only_for_the_conformance_suite() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let (_, response) = one_response(&mut sim, &client::upgrade("/echo"));
    assert_eq!(response.status, 404);

    let config = CoreConfig {
        conformance_echo: true,
        ..prod()
    };
    let mut sim = Sim::new(config, 5, Instant::now());
    let id = sim.connect();
    sim.send(
        id,
        &upgrade_with("/echo", "Sec-WebSocket-Protocol: diminuendo.v1\r\n"),
    );
    let response = sim.take_response(id).expect("101");
    assert_eq!(response.status, 101);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), None);
    assert!(sim.take_received(id).is_empty(), "no greeting on /echo");
    sim.send(id, &client::text("héllo, not JSON"));
    sim.send(id, &masked(OP_BINARY, true, &[0, 1, 2, 255]));
    let mut fragmented = masked(OP_BINARY, false, b"ab");
    fragmented.extend(masked(OP_PING, true, b"pi"));
    fragmented.extend(masked(OP_CONT, true, b"cd"));
    sim.send(id, &fragmented);
    let frames = parse_frames(&sim.take_received(id));
    let got: Vec<(u8, Vec<u8>)> = frames.into_iter().map(|f| (f.opcode, f.payload)).collect();
    assert_eq!(
        got,
        [
            (OP_TEXT, "héllo, not JSON".as_bytes().to_vec()),
            (OP_BINARY, vec![0, 1, 2, 255]),
            (OP_PONG, b"pi".to_vec()),
            (OP_BINARY, b"abcd".to_vec()),
        ]
    );
    // /echo needs no authentication and has no heartbeat.
    sim.advance(Duration::from_secs(120));
    assert!(sim.take_received(id).is_empty());
    assert!(!sim.is_closed(id));
    sim.send(id, &client::close(1000));
    assert_eq!(
        parse_frames(&sim.take_received(id))[0].close_code(),
        Some(1000)
    );
    assert!(sim.is_closed(id));
}

// ---------------------------------------------------------------- heartbeat

fn heartbeat_and_ping(frames: &[Frame], at_ms: u64) {
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        json(&frames[0]),
        json!({"type": "heartbeat", "ts": SIM_START_UNIX_MS + at_ms})
    );
    assert_eq!(frames[1].opcode, OP_PING);
}

#[test]
fn a_silent_server_sends_heartbeat_then_ping() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.advance(Duration::from_millis(29_999));
    assert!(sim.take_received(id).is_empty());
    sim.advance(Duration::from_millis(1));
    heartbeat_and_ping(&sim.take_frames(id), 30_000);
    // Anything the server sends pushes the next heartbeat back.
    sim.advance(Duration::from_secs(10));
    sim.send(id, &text_json(&json!({"type": "ping"})));
    assert_eq!(sim.take_messages(id).len(), 1);
    sim.advance(Duration::from_millis(29_999));
    assert!(sim.take_received(id).is_empty());
    sim.advance(Duration::from_millis(1));
    heartbeat_and_ping(&sim.take_frames(id), 70_000);
    // A pong from the client does not count as the server sending.
    sim.send(id, &masked(OP_PONG, true, b""));
    sim.advance(Duration::from_secs(30));
    heartbeat_and_ping(&sim.take_frames(id), 100_000);
    assert!(!sim.is_closed(id));
}

#[test]
fn a_client_silent_for_two_and_a_half_intervals_is_closed_with_4103() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.advance(Duration::from_millis(74_999));
    let frames = sim.take_frames(id);
    assert_eq!(frames.len(), 4, "two heartbeats with their pings");
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    let frames = sim.take_frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(4103));
    // It never answers the close either: gone after the close timeout.
    sim.advance(Duration::from_millis(4_999));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(id));
    assert_eq!(sim.gateway.connection_count(), 0);
    assert_eq!(sim.gateway.metrics().websocket_closes.get(&4103), Some(&1));
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    let mut heartbeats = 0;
    for _ in 0..60 {
        sim.advance(Duration::from_secs(5));
        for frame in sim.take_frames(id) {
            assert_ne!(frame.opcode, OP_CLOSE);
            if frame.opcode == OP_PING {
                heartbeats += 1;
                sim.send(id, &masked(OP_PONG, true, &frame.payload));
            }
        }
    }
    assert_eq!(heartbeats, 10, "one every 30 s over 300 s");
    assert!(!sim.is_closed(id));
}

#[test]
fn any_client_frame_shows_it_is_alive() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.advance(Duration::from_secs(70));
    sim.send(id, &masked(OP_PING, true, b""));
    sim.advance(Duration::from_millis(74_999));
    assert!(!sim.is_closed(id));
    assert!(sim.take_frames(id).iter().all(|f| f.opcode != OP_CLOSE));
    sim.advance(Duration::from_millis(1));
    assert_eq!(
        sim.take_frames(id).last().and_then(Frame::close_code),
        Some(4103)
    );
}

// ---------------------------------------------------------------- shutdown

#[test]
fn graceful_shutdown() {
    let config = CoreConfig {
        conformance_echo: true,
        ..dev()
    };
    let mut sim = Sim::new(config, 99, Instant::now());
    let polite = open_ws(&mut sim);
    let silent = open_ws(&mut sim);
    let echo = open(&mut sim, "/echo");
    let http = sim.connect();
    assert_eq!(sim.gateway.connection_count(), 4);
    sim.advance(Duration::from_secs(1));

    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    assert!(sim.gateway.is_draining());
    assert!(
        sim.is_closed(http),
        "an idle HTTP connection closes at once"
    );
    for id in [polite, silent] {
        let frames = sim.take_frames(id);
        assert_eq!(frames.len(), 2, "{frames:?}");
        let shutdown = json(&frames[0]);
        assert_eq!(shutdown["type"], "server_shutdown");
        assert!(shutdown["reason"].as_str().is_some_and(|r| !r.is_empty()));
        let after = shutdown["reconnectAfterMs"].as_u64().expect("a number");
        assert!((1000..=5000).contains(&after), "{after}");
        assert_eq!(frames[1].close_code(), Some(1001));
        assert!(!sim.is_closed(id));
    }
    let frames = sim.take_frames(echo);
    assert_eq!(frames.len(), 1, "/echo gets the close only");
    assert_eq!(frames[0].close_code(), Some(1001));

    // A second call changes nothing.
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    assert!(sim.take_received(polite).is_empty());

    // Data after the close is ignored; the close reply ends the connection.
    sim.send(polite, &text_json(&json!({"type": "ping"})));
    assert!(sim.take_received(polite).is_empty());
    sim.send(polite, &client::close(1001));
    assert!(sim.is_closed(polite));
    assert!(sim.take_received(polite).is_empty());
    sim.send(echo, &client::close(1001));
    assert!(sim.is_closed(echo));

    sim.advance(Duration::from_millis(4_999));
    assert!(!sim.is_closed(silent));
    assert_eq!(sim.gateway.connection_count(), 1);
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(silent));
    assert_eq!(sim.gateway.connection_count(), 0);
    assert_eq!(sim.gateway.metrics().websocket_connections_open, 0);
    assert_eq!(sim.gateway.metrics().http_connections_open, 0);

    // New connections are still answered while draining: 503, then closed.
    let late = sim.connect();
    sim.send(late, &client::upgrade("/ws"));
    assert_eq!(sim.take_response(late).map(|r| r.status), Some(503));
    assert!(sim.is_closed(late));
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn shutdown_jitter_is_spread() {
    let mut values = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let mut sim = Sim::new(dev(), seed, Instant::now());
        let id = open_ws(&mut sim);
        sim.gateway.begin_shutdown(sim.now());
        sim.pump();
        let after = sim.take_messages(id)[0]["reconnectAfterMs"]
            .as_u64()
            .expect("a number");
        assert!((1000..=5000).contains(&after));
        values.insert(after);
    }
    assert!(values.len() > 10, "{values:?}");
}

// ---------------------------------------------------------------- slow consumers and partial writes

fn slow_config() -> CoreConfig {
    CoreConfig {
        outbound_queue_limit: 4 * 1024,
        ..dev()
    }
}

fn pings(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| masked(OP_PING, true, &[i as u8; 125]))
        .collect()
}

#[test]
fn a_slow_consumer_is_closed_with_4100_after_its_partly_written_frame() {
    let mut sim = Sim::new(slow_config(), 5, Instant::now());
    let id = open_ws(&mut sim);
    // The socket takes one byte of the first pong, then blocks and is never unblocked.
    sim.set_write_limit(id, Some(1));
    sim.send(id, &masked(OP_PING, true, &[0xab; 125]));
    let mut received = sim.take_received(id);
    assert_eq!(received.len(), 1);
    // 40 more pongs of 127 bytes each exceed 4 KiB.
    sim.send(id, &pings(40));
    assert!(!sim.is_closed(id));
    assert!(
        sim.gateway.outbound_len(id) < 4 * 1024,
        "the queue was discarded: {}",
        sim.gateway.outbound_len(id)
    );
    // Later input is ignored.
    sim.send(id, &pings(3));
    drain(&mut sim, id);
    received.extend(sim.take_received(id));
    let frames = parse_frames(&received);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].opcode, OP_PONG);
    assert_eq!(
        frames[0].payload, [0xab; 125],
        "the started frame is finished"
    );
    assert_eq!(frames[1].close_code(), Some(4100));
    assert!(sim.is_closed(id), "closed once the close frame is written");
    assert_eq!(sim.gateway.connection_count(), 0);
    assert_eq!(sim.gateway.metrics().websocket_closes.get(&4100), Some(&1));
}

#[test]
fn a_slow_consumer_whose_socket_took_nothing_gets_only_the_close() {
    let mut sim = Sim::new(slow_config(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.set_write_limit(id, Some(0));
    let mut queued = 0;
    for i in 0..200 {
        sim.send(
            id,
            &text_json(&json!({"type": "ping", "requestId": format!("r{i}")})),
        );
        let now_queued = sim.gateway.outbound_len(id);
        if now_queued < queued {
            // The queue went over 4 KiB and was replaced by the close frame.
            assert!(queued <= 4 * 1024);
            break;
        }
        queued = now_queued;
    }
    assert!(sim.take_received(id).is_empty());
    sim.set_write_limit(id, None);
    drain(&mut sim, id);
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(4100));
    assert!(sim.is_closed(id));
}

#[test]
fn a_slow_consumer_that_never_reads_is_closed_after_the_close_timeout() {
    let mut sim = Sim::new(slow_config(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.set_write_limit(id, Some(1));
    sim.send(id, &pings(40));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(4_999));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(id));
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn the_slow_consumer_limit_applies_to_the_upgrade_response_too() {
    // A client that blocks right after sending the upgrade: the 101 is finished first, whatever
    // was queued after it is discarded.
    let mut sim = Sim::new(slow_config(), 5, Instant::now());
    let id = sim.connect();
    sim.set_write_limit(id, Some(1));
    sim.send(id, &client::upgrade("/ws"));
    sim.send(id, &pings(40));
    drain(&mut sim, id);
    let received = sim.take_received(id);
    let (response, len) = client::parse_response(&received).expect("the whole 101");
    assert_eq!(response.status, 101);
    let frames = parse_frames(&received[len..]);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(4100));
    assert!(sim.is_closed(id));
}

#[test]
fn a_queue_at_the_limit_is_not_a_slow_consumer() {
    let mut sim = Sim::new(slow_config(), 5, Instant::now());
    let id = open_ws(&mut sim);
    sim.set_write_limit(id, Some(0));
    // 32 pongs of 127 bytes: 4064 bytes, under 4096.
    sim.send(id, &pings(32));
    assert_eq!(sim.gateway.outbound_len(id), 32 * 127);
    sim.set_write_limit(id, None);
    drain(&mut sim, id);
    let frames = parse_frames(&sim.take_received(id));
    assert_eq!(frames.len(), 32);
    assert!(frames.iter().all(|f| f.opcode == OP_PONG));
    assert!(!sim.is_closed(id));
}

#[test]
fn one_byte_writes_deliver_every_byte_in_order() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = sim.connect();
    sim.set_write_limit(id, Some(1));
    sim.send(id, &client::upgrade("/ws"));
    let mut requests = Vec::new();
    for i in 0..20 {
        requests.extend(text_json(
            &json!({"type": "ping", "requestId": format!("r{i}")}),
        ));
        requests.extend(masked(OP_PING, true, format!("p{i}").as_bytes()));
    }
    sim.send(id, &requests);
    let mut unblocks = 0;
    while sim.gateway.outbound_len(id) > 0 {
        assert!(sim.peer(id).is_some_and(|p| !p.received.is_empty()));
        sim.unblock(id);
        unblocks += 1;
    }
    let received = sim.take_received(id);
    assert_eq!(unblocks + 1, received.len(), "one byte per write");
    let (response, len) = client::parse_response(&received).expect("101");
    assert_eq!(response.status, 101);
    let frames = parse_frames(&received[len..]);
    assert_eq!(frames.len(), 3 + 40);
    for i in 0..20 {
        let reply = json(&frames[3 + 2 * i]);
        assert_eq!(reply["requestId"], format!("r{i}"));
        assert_eq!(frames[4 + 2 * i].opcode, OP_PONG);
        assert_eq!(frames[4 + 2 * i].payload, format!("p{i}").as_bytes());
    }
    assert!(!sim.is_closed(id));
}

#[test]
fn an_idle_connection_holds_no_outbound_queue() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    assert_eq!(sim.gateway.outbound_len(id), 0);
    sim.set_write_limit(id, Some(3));
    for i in 0..10 {
        sim.send(
            id,
            &text_json(&json!({"type": "ping", "requestId": i.to_string()})),
        );
        sim.send(id, &masked(OP_TEXT, false, b"{\"type\""));
        sim.send(id, &masked(OP_CONT, true, b":\"ping\"}"));
    }
    assert!(sim.gateway.outbound_len(id) > 0);
    drain(&mut sim, id);
    assert_eq!(sim.gateway.outbound_len(id), 0);
    assert_eq!(parse_frames(&sim.take_received(id)).len(), 20);
    sim.advance(Duration::from_secs(30));
    sim.set_write_limit(id, None);
    sim.unblock(id);
    assert_eq!(sim.take_frames(id).len(), 2);
    assert_eq!(sim.gateway.outbound_len(id), 0);
}

// ---------------------------------------------------------------- timers

#[test]
fn poll_timeout_is_in_the_future_after_every_advance() {
    let mut sim = Sim::new(prod(), 5, Instant::now());
    let ws = open(&mut sim, "/ws");
    let _dev_like = sim.connect();
    let partial = sim.connect();
    sim.send(partial, b"GET /livez HTTP/1.1\r\n");
    for step in [1u64, 999, 5_000, 3_000, 1, 1, 10_000, 30_000, 60_000, 1] {
        sim.advance(Duration::from_millis(step));
        if let Some(at) = sim.gateway.poll_timeout() {
            assert!(
                at > sim.now(),
                "a deadline in the past after advancing {step} ms"
            );
        }
        // Replies from a non-authenticated connection reset nothing that matters here.
        if !sim.is_closed(ws) {
            sim.send(ws, &masked(OP_PONG, true, b""));
        }
    }
    assert_eq!(sim.gateway.connection_count(), 0);
    assert_eq!(
        sim.gateway.poll_timeout(),
        None,
        "no timers without connections"
    );
}

#[test]
fn advancing_past_many_deadlines_fires_each_at_its_time_in_order() {
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let early = open_ws(&mut sim);
    sim.advance(Duration::from_secs(10));
    let late = open_ws(&mut sim);
    let http = sim.connect();
    sim.send(http, b"GET /livez HTTP/1.1\r\n");
    // One jump over heartbeats at 30/60 (early) and 40/70 (late), the 408 at 20, the 4103
    // closes at 75 and 85 and the final closes at 80 and 90.
    sim.advance(Duration::from_secs(200));
    let ts = |frames: &[Frame]| -> Vec<u64> {
        frames
            .iter()
            .filter(|f| f.opcode == OP_TEXT)
            .map(|f| json(f)["ts"].as_u64().unwrap_or_default() - SIM_START_UNIX_MS)
            .collect()
    };
    let early_frames = parse_frames(&sim.take_received(early));
    let late_frames = parse_frames(&sim.take_received(late));
    assert_eq!(ts(&early_frames), [30_000, 60_000]);
    assert_eq!(ts(&late_frames), [40_000, 70_000]);
    assert_eq!(early_frames.last().and_then(Frame::close_code), Some(4103));
    assert_eq!(late_frames.last().and_then(Frame::close_code), Some(4103));
    assert_eq!(sim.take_response(http).map(|r| r.status), Some(408));
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn a_coarse_tick_directly_on_the_gateway_fires_what_is_due() {
    // An adapter whose timer fires late calls handle_timeout once with a later `now`.
    let mut sim = Sim::new(dev(), 5, Instant::now());
    let id = open_ws(&mut sim);
    // The earliest entry may be the stale request-head deadline of the connection's HTTP life
    // (10 s); it only wakes the caller early.
    let first = sim.now() + Duration::from_secs(30);
    assert!(sim.gateway.poll_timeout().is_some_and(|at| at <= first));
    sim.gateway.handle_timeout(first - Duration::from_millis(1));
    sim.pump();
    assert!(sim.take_received(id).is_empty());
    sim.gateway.handle_timeout(first + Duration::from_secs(3));
    sim.pump();
    heartbeat_and_ping(&sim.take_frames(id), 33_000);
    let next = sim.gateway.poll_timeout().expect("the next deadline");
    assert!(next > first + Duration::from_secs(3));
}

// ---------------------------------------------------------------- properties

/// One thing the client sends, as masked frames, with the replies it must cause.
#[derive(Debug, Clone)]
enum Item {
    JsonPing(String),
    BadJson(String),
    UnknownType(String),
    WsPing(Vec<u8>),
    WsPong(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Json(Value),
    Pong(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    let id = "[a-zA-Z0-9é-]{0,12}";
    prop_oneof![
        3 => id.prop_map(Item::JsonPing),
        1 => "[^\"]{0,20}".prop_map(|text| Item::BadJson(format!("{{\"type\":\"{text}"))),
        1 => id.prop_map(Item::UnknownType),
        2 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Item::WsPing),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Item::WsPong),
    ]
}

fn frame_with(opcode: u8, fin: bool, payload: &[u8], mask: u32) -> Vec<u8> {
    client::frame(opcode, fin, payload, mask.to_be_bytes())
}

/// Encodes the items into a stream. Text messages are cut into fragments at the given points,
/// with a WebSocket ping between fragments when `interleave` says so. Returns the stream, the
/// stream offsets at which each reply becomes due, and the replies.
fn encode(items: &[(Item, Vec<usize>, bool, u32)]) -> (Vec<u8>, Vec<(usize, Reply)>) {
    let mut stream = Vec::new();
    let mut due = Vec::new();
    for (index, (item, cuts, interleave, mask)) in items.iter().enumerate() {
        let (text, reply) = match item {
            Item::JsonPing(id) => (
                json!({"type": "ping", "requestId": id}).to_string(),
                Reply::Json(json!({"type": "pong", "ts": SIM_START_UNIX_MS, "requestId": id})),
            ),
            Item::BadJson(text) => (
                text.clone(),
                Reply::Json(json!({
                    "type": "error",
                    "code": "INVALID_JSON",
                    "message": "the message is not valid JSON",
                })),
            ),
            Item::UnknownType(id) => (
                json!({"type": "no_such_thing", "requestId": id}).to_string(),
                Reply::Json(json!({
                    "type": "error",
                    "code": "INVALID_MESSAGE",
                    "message": "unknown message type",
                    "requestId": id,
                })),
            ),
            Item::WsPing(payload) => {
                stream.extend(frame_with(OP_PING, true, payload, *mask));
                due.push((stream.len(), Reply::Pong(payload.clone())));
                continue;
            }
            Item::WsPong(payload) => {
                stream.extend(frame_with(OP_PONG, true, payload, *mask));
                continue;
            }
        };
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut start = 0;
        let mut pieces = Vec::new();
        for point in points {
            pieces.push(&bytes[start..point]);
            start = point;
        }
        pieces.push(&bytes[start..]);
        let last = pieces.len() - 1;
        for (n, piece) in pieces.iter().enumerate() {
            let opcode = if n == 0 { OP_TEXT } else { OP_CONT };
            stream.extend(frame_with(
                opcode,
                n == last,
                piece,
                mask.rotate_left(n as u32),
            ));
            if *interleave && n < last {
                let payload = format!("i{index}.{n}").into_bytes();
                stream.extend(frame_with(OP_PING, true, &payload, *mask));
                due.push((stream.len(), Reply::Pong(payload)));
            }
        }
        due.push((stream.len(), reply));
    }
    (stream, due)
}

fn replies(frames: &[Frame]) -> Vec<Reply> {
    frames
        .iter()
        .map(|frame| match frame.opcode {
            OP_TEXT => Reply::Json(json(frame)),
            OP_PONG => Reply::Pong(frame.payload.clone()),
            other => panic!("unexpected frame {other}: {frame:?}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn any_fragmentation_and_split_gives_the_same_replies_in_order(
        items in prop::collection::vec(
            (item(), prop::collection::vec(0usize..64, 0..4), any::<bool>(), any::<u32>()),
            1..16,
        ),
        reads in prop::collection::vec(1usize..48, 0..60),
        write_limit in prop::option::of(1usize..64),
    ) {
        let (stream, due) = encode(&items);
        let expected: Vec<Reply> = due.iter().map(|(_, reply)| reply.clone()).collect();

        // All in one read.
        let mut sim = Sim::new(dev(), 5, Instant::now());
        let id = open_ws(&mut sim);
        sim.send(id, &stream);
        let whole = sim.take_received(id);
        prop_assert_eq!(replies(&parse_frames(&whole)), expected.clone());

        // In arbitrary reads: after each read, exactly the replies whose request is complete.
        let mut sim = Sim::new(dev(), 5, Instant::now());
        let id = open_ws(&mut sim);
        let mut sent = 0;
        let mut received = Vec::new();
        let mut index = 0;
        while sent < stream.len() {
            sim.set_write_limit(id, write_limit);
            let size = reads.get(index).copied().unwrap_or(stream.len()).min(stream.len() - sent);
            index += 1;
            sim.send(id, &stream[sent..sent + size]);
            sent += size;
            sim.set_write_limit(id, None);
            drain(&mut sim, id);
            received.extend(sim.take_received(id));
            let expected_now = due.iter().filter(|(at, _)| *at <= sent).count();
            prop_assert_eq!(parse_frames(&received).len(), expected_now, "after {} bytes", sent);
        }
        prop_assert_eq!(&received, &whole);
        prop_assert!(!sim.is_closed(id));
        prop_assert_eq!(sim.gateway.outbound_len(id), 0);
    }
}

// ---------------------------------------------------------------- the adapter contract

/// Writes everything waiting for `id` and returns it, as an adapter with a fast socket would.
fn write_all(gateway: &mut diminuendo_core::Gateway, id: ConnectionId, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(ready) = gateway.poll_transmit() {
        assert_eq!(ready, id);
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let filled = gateway.outbound(id, &mut slices);
        let before = out.len();
        for slice in &slices[..filled] {
            out.extend_from_slice(slice);
        }
        gateway.handle_sent(id, out.len() - before, now);
    }
    out
}

#[test]
fn close_connection_is_emitted_only_after_the_close_frame_is_written() {
    use diminuendo_core::{Event, Gateway};
    let start = std::time::Instant::now();
    let mut gateway = Gateway::new(dev(), 1, start, SIM_START_UNIX_MS);
    let id = ConnectionId(42);
    gateway.handle_accept(id, "127.0.0.1:5000".parse().expect("an address"), start);
    let mut upgrade = client::upgrade("/ws");
    gateway.handle_data(id, &mut upgrade, start);
    // Authentication records the member (a storage command); nothing closes.
    while let Some(event) = gateway.poll_event() {
        assert!(matches!(event, Event::Storage(_)), "{event:?}");
    }
    let greeting = write_all(&mut gateway, id, start);
    let (response, len) = client::parse_response(&greeting).expect("101");
    assert_eq!(response.status, 101);
    assert_eq!(parse_frames(&greeting[len..]).len(), 3);

    let mut close = client::close(1000);
    gateway.handle_data(id, &mut close, start);
    assert_eq!(
        gateway.poll_event(),
        None,
        "the close frame is not written yet"
    );
    assert_eq!(gateway.connection_count(), 1);
    let reply = write_all(&mut gateway, id, start);
    assert_eq!(parse_frames(&reply)[0].close_code(), Some(1000));
    assert_eq!(gateway.poll_event(), Some(Event::CloseConnection(id)));
    assert_eq!(gateway.poll_event(), None);
    assert_eq!(gateway.connection_count(), 0);
    assert_eq!(gateway.outbound_len(id), 0);
    // The core has forgotten the connection: late input and a late handle_closed are harmless.
    gateway.handle_data(id, &mut client::close(1000), start);
    gateway.handle_closed(id, start);
    assert_eq!(gateway.poll_transmit(), None);
    assert_eq!(gateway.poll_event(), None);
}
