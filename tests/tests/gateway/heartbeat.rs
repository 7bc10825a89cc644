//! Heartbeats and the liveness timeout (PROTOCOL section 4).

use std::time::{Duration, Instant};

use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{expect_dev_greeting, next_message, wire};

use crate::with_each_gateway;

const INTERVAL_MS: u64 = 200;

#[test]
fn an_idle_client_gets_heartbeat_then_ping_and_stays_while_it_answers() {
    let interval = INTERVAL_MS.to_string();
    with_each_gateway(
        &["--dev", "--heartbeat-interval-ms", &interval],
        |gateway| {
            let mut ws = gateway.ws();
            let connected = expect_dev_greeting(&mut ws);
            let greeted = Instant::now();
            assert_eq!(connected["heartbeatIntervalMs"], INTERVAL_MS);

            let heartbeat = match next_message(&mut ws) {
                Message::Text(text) => {
                    serde_json::from_str::<serde_json::Value>(text.as_str()).expect("JSON")
                }
                other => panic!("expected the heartbeat message, got {other:?}"),
            };
            let elapsed = greeted.elapsed();
            assert_eq!(heartbeat["type"], "heartbeat", "{heartbeat}");
            assert!(heartbeat["ts"].is_u64(), "{heartbeat}");
            assert!(
                elapsed >= Duration::from_millis(INTERVAL_MS * 3 / 4),
                "heartbeat too early: {elapsed:?}"
            );
            assert!(
                elapsed < Duration::from_secs(3),
                "heartbeat too late: {elapsed:?}"
            );
            match next_message(&mut ws) {
                Message::Ping(_) => {}
                other => panic!("expected a ping after the heartbeat, got {other:?}"),
            }

            // tungstenite answers each ping with a pong, so the connection stays up well past 2.5
            // intervals and keeps getting heartbeats.
            let watch_until = Instant::now() + Duration::from_millis(INTERVAL_MS * 6);
            let mut heartbeats = 1;
            while Instant::now() < watch_until {
                match next_message(&mut ws) {
                    Message::Text(text) => {
                        assert!(text.as_str().contains(r#""type":"heartbeat""#), "{text}");
                        heartbeats += 1;
                    }
                    Message::Ping(_) => {}
                    other => panic!("unexpected {other:?} from a live connection"),
                }
            }
            assert!(heartbeats >= 3, "only {heartbeats} heartbeats");
        },
    );
}

#[test]
fn a_silent_client_is_closed_with_4103() {
    let interval = INTERVAL_MS.to_string();
    with_each_gateway(
        &["--dev", "--heartbeat-interval-ms", &interval],
        |gateway| {
            let upgraded = Instant::now();
            let mut ws = gateway.raw_ws("/ws");
            for _ in 0..3 {
                ws.json();
            }
            let mut heartbeats = 0;
            let mut pings = 0;
            let close = loop {
                let frame = ws.frame();
                match frame.opcode {
                    1 => {
                        let message: serde_json::Value =
                            serde_json::from_slice(&frame.payload).expect("JSON");
                        assert_eq!(message["type"], "heartbeat", "{message}");
                        heartbeats += 1;
                    }
                    9 => pings += 1,
                    8 => break frame,
                    other => panic!("unexpected opcode {other}"),
                }
            };
            let elapsed = upgraded.elapsed();
            assert_eq!(close.close_code(), Some(4103), "{close:?}");
            assert!(
                heartbeats >= 1 && pings >= 1,
                "{heartbeats} heartbeats, {pings} pings"
            );
            // 2.5 intervals after the last frame from the client (the upgrade request).
            assert!(
                elapsed >= Duration::from_millis(INTERVAL_MS * 5 / 2 - 20),
                "closed too early: {elapsed:?}"
            );
            assert!(
                elapsed < Duration::from_secs(3),
                "closed too late: {elapsed:?}"
            );
            // The client completes the close handshake; the server ends the connection.
            ws.send(&wire::close(4103));
            assert!(ws.read_frame().is_none(), "a frame after the close");
        },
    );
}
