//! The parts of a gateway that each runtime adapter implements itself, on every binary of
//! `diminuendo_tests::binaries()`: the wake-up hook (storage and agent threads finishing work
//! while the loop waits), partial writes (a socket that takes less than was queued), and the
//! exit sequence (a graceful stop flushes storage for the next start).

use std::time::Duration;

use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{binaries, expect_dev_greeting, next_json, send_text, Gateway, Ws};
use serde_json::{json, Value};

/// The next message of type `kind`; other messages (session events, tenant notifications) are
/// passed to `seen`. An error fails the test.
fn until(ws: &mut Ws, kind: &str, mut seen: impl FnMut(&Value)) -> Value {
    for _ in 0..100_000 {
        let message = next_json(ws);
        assert_ne!(message["type"], "error", "{message}");
        if message["type"] == kind {
            return message;
        }
        seen(&message);
    }
    panic!("no {kind}");
}

fn call(ws: &mut Ws, message: Value, reply: &str) -> Value {
    send_text(ws, &message.to_string());
    until(ws, reply, |_| {})
}

fn greeted(gateway: &Gateway) -> Ws {
    let mut ws = gateway.ws();
    expect_dev_greeting(&mut ws);
    ws
}

fn create_session(ws: &mut Ws, name: &str) -> String {
    let created = call(
        ws,
        json!({"type": "create_session", "requestId": "c", "agentType": "echo", "name": name}),
        "session_created",
    );
    created["session"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session id: {created}"))
        .to_owned()
}

#[test]
fn a_streaming_turn_and_a_resume_work_on_every_runtime() {
    for binary in binaries() {
        let gateway = Gateway::start(binary, &["--dev"]);
        let mut ws = greeted(&gateway);
        let session_id = create_session(&mut ws, "stream");
        call(
            &mut ws,
            json!({"type": "join_session", "requestId": "j", "sessionId": session_id}),
            "session_joined",
        );
        // 500 chunks of 1000 bytes: many wake-ups from the agent's reader thread, more than one
        // `Services::poll` budget, and storage writes all along.
        call(
            &mut ws,
            json!({"type": "run_turn", "requestId": "t", "sessionId": session_id, "text": "stream 500 1000"}),
            "turn_accepted",
        );
        let mut streamed = 0;
        let complete = until(&mut ws, "turn_complete", |event| {
            if event["type"] == "text_delta" {
                streamed += event["text"].as_str().map_or(0, str::len);
            }
        });
        assert_eq!(complete["stopReason"], "end_turn", "{binary}: {complete}");
        assert_eq!(streamed, 500 * 1000, "{binary}");
        let last_seq = complete["seq"].as_u64().expect("a seq");

        // Another connection resumes from seq 0: every event, in order, none missing.
        let mut other = greeted(&gateway);
        let joined = call(
            &mut other,
            json!({"type": "join_session", "requestId": "r", "sessionId": session_id, "afterSeq": 0}),
            "session_joined",
        );
        assert_eq!(joined["recovered"], true, "{binary}: {joined}");
        let events = joined["events"].as_array().expect("events");
        assert!(events.len() as u64 >= last_seq, "{binary}");
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event["seq"], index as u64 + 1, "{binary}");
        }
    }
}

#[test]
fn a_large_echo_leaves_through_partial_writes_on_every_runtime() {
    for binary in binaries() {
        let gateway = Gateway::start(binary, &["--dev", "--conformance-echo"]);
        let (mut ws, _) = gateway.ws_with("/echo", &[]);
        // Far more than the socket buffers hold: the server's writes come back short while this
        // client is still sending, and finish only once it reads.
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(payload.clone())).expect("send");
        match ws.read().expect("the echo") {
            Message::Binary(echoed) => {
                assert!(
                    echoed.as_ref() == payload.as_slice(),
                    "{binary}: echo differs"
                )
            }
            other => panic!("{binary}: unexpected {other:?}"),
        }
    }
}

#[test]
fn a_graceful_stop_flushes_storage_for_the_next_start_on_every_runtime() {
    for binary in binaries() {
        let dir = std::env::temp_dir().join(format!(
            "diminuendo-runtimes-{}-{binary}",
            std::process::id()
        ));
        let data_dir = dir.to_string_lossy().into_owned();
        let args = ["--dev", "--data-dir", data_dir.as_str()];
        let mut gateway = Gateway::start(binary, &args);
        let mut ws = greeted(&gateway);
        let session_id = create_session(&mut ws, "kept");
        call(
            &mut ws,
            json!({"type": "join_session", "requestId": "j", "sessionId": session_id}),
            "session_joined",
        );
        call(
            &mut ws,
            json!({"type": "run_turn", "requestId": "t", "sessionId": session_id, "text": "remember me"}),
            "turn_accepted",
        );
        until(&mut ws, "turn_complete", |_| {});
        gateway.signal(libc::SIGTERM);
        let status = gateway
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{binary} did not exit"));
        assert_eq!(status.code(), Some(0), "{binary}: {status:?}");
        drop(ws);
        drop(gateway);

        let gateway = Gateway::start(binary, &args);
        let mut ws = greeted(&gateway);
        let history = call(
            &mut ws,
            json!({"type": "get_history", "requestId": "h", "sessionId": session_id}),
            "history",
        );
        assert_eq!(
            history["turns"][0]["finalText"], "remember me",
            "{binary}: {history}"
        );
        drop(ws);
        drop(gateway);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
