//! Per-connection limits (PROTOCOL sections 2 and 3): the message rate limit, and the outbound
//! queue limit that closes a slow consumer with 4100 while everyone else gets everything.

use diminuendo_tests::tungstenite::{self, Message};
use diminuendo_tests::{assert_gap_free, delta_text, parse, Client};
use serde_json::json;

use crate::with_each_gateway;

#[test]
fn the_rate_limit_refuses_then_closes_4101() {
    with_each_gateway(&["--dev", "--rate-limit", "5"], |gateway| {
        let mut client = Client::dev(gateway);
        for index in 0..5 {
            let list = client.call(json!({"type": "list_sessions"}));
            assert_eq!(list["type"], "session_list", "message {index}: {list}");
            // Pings do not count.
            for _ in 0..3 {
                let pong = client.call(json!({"type": "ping"}));
                assert_eq!(pong["type"], "pong", "{pong}");
            }
        }
        let error = client.call(json!({"type": "list_sessions", "requestId": "sixth"}));
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "RATE_LIMITED", "{error}");
        assert_eq!(error["requestId"], "sixth", "{error}");
        let retry = error["retryAfterMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("no retryAfterMs: {error}"));
        assert!((1..=10_000).contains(&retry), "{error}");
        // Still served: a ping is answered while limited.
        assert_eq!(client.call(json!({"type": "ping"}))["type"], "pong");

        // Going on: more refusals, then the close.
        let mut refused = 1;
        let close = loop {
            assert!(refused < 100, "never closed after {refused} refusals");
            client.send(&json!({"type": "list_sessions"}));
            match client.ws.read() {
                Ok(Message::Text(text)) => {
                    let error = parse(text.as_str());
                    assert_eq!(error["code"], "RATE_LIMITED", "{error}");
                    refused += 1;
                }
                Ok(Message::Close(frame)) => break frame.map(|frame| u16::from(frame.code)),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(error) => panic!("no close frame: {error}"),
            }
        };
        assert_eq!(close, Some(4101), "after {refused} refusals");
        let metrics = gateway.metrics();
        // The message that closed the connection was refused too.
        let limited = metrics
            .get("diminuendo_rate_limited_total")
            .copied()
            .unwrap_or(0.0);
        assert!(limited >= f64::from(refused), "{limited} < {refused}");
        assert_eq!(
            metrics.get("diminuendo_rate_limit_closes_total"),
            Some(&1.0)
        );
    });
}

#[test]
fn a_slow_consumer_is_closed_with_4100_and_the_others_get_everything() {
    // The turns stream 128 KiB each, in 16 chunks: a burst the 256 KiB queue holds for a client
    // that reads.
    let args = ["--dev", "--outbound-queue-limit", "262144"];
    with_each_gateway(&args, |gateway| {
        let mut fast = Client::dev(gateway);
        let session = fast.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        fast.join(&id);

        let mut slow = Client::new(gateway.ws_small_buffer(4096));
        // Greeting: welcome, connected, authenticated.
        for _ in 0..3 {
            slow.next_json();
        }
        slow.join(&id);
        let rss_before = gateway.rss_kib();

        // Turns until the slow client, which reads nothing, is closed (bounded: 64 MiB).
        let mut events = Vec::new();
        for turn in 0.. {
            assert!(turn < 512, "the slow consumer was never closed");
            fast.run_turn(&id, "stream 16 8192");
            let turn_events = fast.turn_events(&id);
            assert_eq!(delta_text(&turn_events).len(), 16 * 8192);
            events.extend(turn_events);
            if gateway
                .metrics()
                .get("diminuendo_slow_consumer_closes_total")
                == Some(&1.0)
            {
                break;
            }
        }
        assert_gap_free(&events, 1);
        // The loop above ended on this very counter.
        assert_eq!(
            gateway
                .metrics()
                .get("diminuendo_slow_consumer_closes_total"),
            Some(&1.0)
        );

        // The slow client reads now: a prefix of the events, in order, then the close 4100 as
        // the last frame (or the end of the connection).
        let mut received = Vec::new();
        let mut close = None;
        loop {
            match slow.ws.read() {
                Ok(Message::Text(text)) => {
                    let value = parse(text.as_str());
                    if value.get("seq").is_some() {
                        received.push(text.as_str().to_owned());
                    }
                }
                Ok(Message::Close(frame)) => {
                    close = Some(frame.map(|frame| u16::from(frame.code)));
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(error))
                    if error.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    break
                }
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed)
                | Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => break,
                Err(error) => panic!("the slow connection did not end cleanly: {error}"),
            }
        }
        if let Some(code) = close {
            assert_eq!(code, Some(4100), "the slow consumer's close code");
        }
        assert!(
            received.len() < events.len(),
            "the slow client got everything"
        );
        if !received.is_empty() {
            assert_gap_free(&received, 1);
            assert_eq!(received[..], events[..received.len()], "a different prefix");
        }
        let metrics = gateway.metrics();
        assert_eq!(
            metrics.get("diminuendo_websocket_server_closes_total{code=\"4100\"}"),
            Some(&1.0)
        );
        if let (Some(before), Some(after)) = (rss_before, gateway.rss_kib()) {
            assert!(
                after < before + 256 * 1024,
                "RSS grew from {before} KiB to {after} KiB"
            );
        }
        // The fast client is still in service.
        assert_eq!(fast.call(json!({"type": "ping"}))["type"], "pong");
    });
}

#[test]
fn a_client_that_reads_keeps_up_with_a_fast_agent_at_the_default_limit() {
    // A fast agent's output is taken in bounded bites and written between them, so a client
    // that reads is not mistaken for a slow consumer (8 MiB through the default 4 MiB budget,
    // uncoalesced).
    let args = ["--dev", "--coalesce-deltas", "false"];
    with_each_gateway(&args, |gateway| {
        let mut fast = Client::dev(gateway);
        let session = fast.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        fast.join(&id);
        fast.run_turn(&id, "stream 8000 1024");
        let events = fast.turn_events(&id);
        assert_eq!(delta_text(&events).len(), 8000 * 1024);
        assert_gap_free(&events, 1);
        assert_eq!(
            gateway
                .metrics()
                .get("diminuendo_slow_consumer_closes_total"),
            Some(&0.0)
        );
    });
}
