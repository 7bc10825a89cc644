//! A graceful stop while turns stream (PROTOCOL section 8): a turn that ends within the grace
//! period completes, one that does not gets `turn_error` `SHUTTING_DOWN`, every client gets
//! `server_shutdown` then 1001, the process exits 0, and every event any client received is in
//! the store afterwards, byte for byte.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{parse, Client, Gateway};
use serde_json::Value;

const ARGS: &[&str] = &["--dev", "--turn-grace-ms", "2000"];

/// What one client got after the signal: its session events (by session id, then seq), and
/// whether `server_shutdown` preceded a 1001 close.
#[derive(Default)]
struct Received {
    events: BTreeMap<String, BTreeMap<u64, String>>,
}

impl Received {
    fn add(&mut self, text: &str) {
        let value = parse(text);
        if let (Some(session), Some(seq)) = (value["sessionId"].as_str(), value["seq"].as_u64()) {
            let previous = self
                .events
                .entry(session.to_owned())
                .or_default()
                .insert(seq, text.to_owned());
            assert!(previous.is_none(), "seq {seq} of {session} received twice");
        }
    }
}

/// Reads `client` until the server's close; returns every event text after the last one
/// `client` handed out, and checks `server_shutdown` then 1001.
fn drain(client: &mut Client, received: &mut Received, turn_ends: &mut Vec<Value>) {
    for text in client.take_pending() {
        received.add(&text);
    }
    let mut notice = None;
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let value = parse(text.as_str());
                if value["type"] == "server_shutdown" {
                    assert!(notice.is_none(), "two server_shutdown");
                    notice = Some(value);
                    continue;
                }
                assert!(notice.is_none(), "a message after server_shutdown: {value}");
                if matches!(value["type"].as_str(), Some("turn_complete" | "turn_error")) {
                    turn_ends.push(value.clone());
                }
                received.add(text.as_str());
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map(|frame| u16::from(frame.code));
                assert_eq!(code, Some(1001));
                break;
            }
            Ok(_) => {}
            Err(error) => panic!("no close frame: {error}"),
        }
    }
    let notice = notice.expect("no server_shutdown before the close");
    let after = notice["reconnectAfterMs"]
        .as_u64()
        .expect("reconnectAfterMs");
    assert!((1000..=5000).contains(&after), "{notice}");
}

#[test]
fn every_event_a_client_saw_survives_a_graceful_stop() {
    for binary in diminuendo_tests::binaries() {
        let mut gateway = Gateway::start(binary, ARGS);
        let mut observer = Client::dev(&gateway);
        let mut runners = Vec::new();
        let mut ids = Vec::new();
        // What each client received, runners first, the observer last.
        let mut received: Vec<Received> = (0..4).map(|_| Received::default()).collect();
        // Two sessions whose turns end within the grace period, one that never ends.
        for prompt in ["slow 20 50", "slow 10 80", "hang"] {
            let mut runner = Client::dev(&gateway);
            let id = runner.create_session("echo")["id"]
                .as_str()
                .expect("id")
                .to_owned();
            runner.join(&id);
            observer.join(&id);
            runner.run_turn(&id, prompt);
            for text in runner.events_until(&id, |e| e["type"] == "turn_started") {
                received[runners.len()].add(&text);
            }
            runners.push(runner);
            ids.push(id);
        }
        // Every turn is running: the observer saw each start.
        for id in &ids {
            for text in observer.events_until(id, |e| e["type"] == "turn_started") {
                received[3].add(&text);
            }
        }
        let signalled = Instant::now();
        gateway.signal(libc::SIGTERM);

        let mut ends = Vec::new();
        let clients = runners.iter_mut().chain(std::iter::once(&mut observer));
        for (client, got) in clients.zip(received.iter_mut()) {
            let mut turn_ends = Vec::new();
            drain(client, got, &mut turn_ends);
            ends.push(turn_ends);
        }
        // Every client saw events of its sessions after the signal.
        assert!(received.iter().all(|got| !got.events.is_empty()));
        let status = gateway
            .wait_exit(Duration::from_secs(20))
            .expect("the gateway did not exit");
        assert_eq!(status.code(), Some(0), "{status:?}");
        assert!(
            signalled.elapsed() >= Duration::from_millis(1900),
            "the grace period was not waited for: {:?}",
            signalled.elapsed()
        );

        // The observer saw how each turn ended.
        let observed = &ends[3];
        let end_of = |id: &str| {
            observed
                .iter()
                .find(|e| e["sessionId"] == id)
                .unwrap_or_else(|| panic!("no end of the turn of {id}: {observed:?}"))
        };
        for id in &ids[..2] {
            let end = end_of(id);
            assert_eq!(end["type"], "turn_complete", "{end}");
            assert_eq!(end["stopReason"], "end_turn", "{end}");
        }
        let end = end_of(&ids[2]);
        assert_eq!(end["type"], "turn_error", "{end}");
        assert_eq!(end["code"], "SHUTTING_DOWN", "{end}");

        let data_dir = gateway.take_data_dir();
        drop(gateway);
        let gateway = Gateway::start_in(binary, ARGS, data_dir);
        let mut reader = Client::dev(&gateway);
        for id in &ids {
            let stored: BTreeMap<u64, String> = reader
                .all_events(id, 0)
                .into_iter()
                .map(|text| (parse(&text)["seq"].as_u64().expect("seq"), text))
                .collect();
            for got in &received {
                for (seq, text) in got.events.get(id).into_iter().flatten() {
                    assert_eq!(
                        stored.get(seq),
                        Some(text),
                        "event {seq} of {id} received but not stored as sent"
                    );
                }
            }
        }
    }
}
