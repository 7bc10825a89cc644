//! `/metrics` after real traffic (PROTOCOL section 1): the gateway's own series move with what
//! happened on the wire.

use std::collections::HashMap;

use diminuendo_tests::{read_close, Client};
use serde_json::json;

use crate::with_each_gateway;

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {metrics:?}"))
}

#[test]
fn traffic_shows_in_the_metrics() {
    with_each_gateway(&["--dev", "--rate-limit", "20"], |gateway| {
        let mut client = Client::dev(gateway);
        let idle = client.create_session("echo");
        let active = client.create_session("echo");
        let id = active["id"].as_str().expect("id").to_owned();
        client.join(&id);
        client.run_turn(&id, "stream 30 100");
        let events = client.turn_events(&id);

        // Replays: one live join above, one recovered, one reload.
        let mut other = Client::dev(gateway);
        let joined = other.call(json!({"type": "join_session", "sessionId": id, "afterSeq": 1}));
        assert_eq!(joined["recovered"], true, "{joined}");
        let joined = other.call(json!({
            "type": "join_session", "sessionId": id, "afterSeq": 1, "epoch": "nope"
        }));
        assert_eq!(joined["recovered"], false, "{joined}");

        // A read of the session is a barrier: storage commits the session's pending events
        // before answering it, and the counters are read before the answer is sent.
        let read =
            client.call(json!({"type": "get_events", "sessionId": id, "afterSeq": 0, "limit": 1}));
        assert_eq!(read["type"], "events", "{read}");
        let metrics = gateway.metrics();
        assert_eq!(
            metrics.get("diminuendo_events_persisted_total"),
            metrics.get("diminuendo_events_published_total"),
            "{metrics:?}"
        );
        assert_eq!(
            value(&metrics, "diminuendo_events_published_total"),
            events.len() as f64
        );
        assert_eq!(
            value(&metrics, "diminuendo_sessions{status=\"ready\"}"),
            1.0
        );
        assert_eq!(
            value(&metrics, "diminuendo_sessions{status=\"inactive\"}"),
            1.0
        );
        let open: f64 = metrics
            .iter()
            .filter(|(series, _)| series.starts_with("diminuendo_websocket_connections{state="))
            .map(|(_, value)| value)
            .sum();
        assert_eq!(open, 2.0, "{metrics:?}");
        assert_eq!(
            value(&metrics, "diminuendo_replays_total{result=\"live\"}"),
            1.0
        );
        assert_eq!(
            value(&metrics, "diminuendo_replays_total{result=\"recovered\"}"),
            1.0
        );
        assert_eq!(
            value(&metrics, "diminuendo_replays_total{result=\"reload\"}"),
            1.0
        );
        assert_eq!(value(&metrics, "diminuendo_sessions_created_total"), 2.0);
        assert_eq!(value(&metrics, "diminuendo_turns_started_total"), 1.0);
        assert_eq!(value(&metrics, "diminuendo_turns_completed_total"), 1.0);
        assert_eq!(value(&metrics, "diminuendo_rate_limited_total"), 0.0);
        assert_eq!(
            value(&metrics, "diminuendo_slow_consumer_closes_total"),
            0.0
        );
        assert!(idle["id"].is_string());

        // Rate limiting counts.
        let mut limited = Client::dev(gateway);
        let close = loop {
            limited.send(&json!({"type": "list_sessions"}));
            match limited.ws.read() {
                Ok(diminuendo_tests::tungstenite::Message::Close(frame)) => {
                    break frame.map(|frame| u16::from(frame.code))
                }
                Ok(_) => {}
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(close, Some(4101));
        let metrics = gateway.metrics();
        assert!(
            value(&metrics, "diminuendo_rate_limited_total") >= 20.0,
            "{metrics:?}"
        );
        assert_eq!(value(&metrics, "diminuendo_rate_limit_closes_total"), 1.0);

        // A close is counted by code.
        other
            .ws
            .send(diminuendo_tests::tungstenite::Message::binary(vec![0u8]))
            .expect("send");
        // The close is counted before its frame is sent.
        assert_eq!(read_close(&mut other.ws), Some(1003));
        assert_eq!(
            gateway
                .metrics()
                .get("diminuendo_websocket_server_closes_total{code=\"1003\"}"),
            Some(&1.0)
        );
    });
}
