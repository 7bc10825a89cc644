//! Resume (PROTOCOL section 6): `join_session {afterSeq, epoch}` replays exactly the missed events,
//! byte-identical to the live ones, and live events follow with no gap and no duplicate; a
//! resume that cannot be served whole answers `recovered: false`. Across restarts: a clean stop
//! keeps the epoch and the events; a killed gateway comes back with every session, `inactive`,
//! under a new epoch.

use std::time::Duration;

use diminuendo_tests::{assert_gap_free, events_of, parse, seqs, Client, Gateway};
use serde_json::{json, Value};

use crate::with_each_gateway;

/// Joins with `afterSeq` (and `epoch` if given) and returns the reply's text.
fn resume(client: &mut Client, id: &str, after_seq: u64, epoch: Option<&str>) -> String {
    let mut join = json!({"type": "join_session", "sessionId": id, "afterSeq": after_seq});
    if let Some(epoch) = epoch {
        join["epoch"] = json!(epoch);
    }
    client.call_text(join)
}

#[test]
fn a_reconnecting_client_gets_exactly_what_it_missed_then_live_events() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut runner = Client::dev(gateway);
        let session = runner.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        runner.join(&id);

        let mut reader = Client::dev(gateway);
        reader.join(&id);
        runner.run_turn(&id, "first");
        let first = runner.turn_events(&id);
        let seen = reader.turn_events(&id);
        assert_eq!(seen, first);
        let seen_up_to = seqs(&seen).last().copied().expect("events");
        drop(reader);

        // More happens while the reader is away.
        runner.run_turn(&id, "stream 20 50");
        let missed = runner.turn_events(&id);
        assert_gap_free(&missed, seen_up_to + 1);
        let last_seq = seen_up_to + missed.len() as u64;

        let mut reader = Client::dev(gateway);
        let reply = resume(&mut reader, &id, seen_up_to, Some(&epoch));
        let joined = parse(&reply);
        assert_eq!(joined["type"], "session_joined", "{reply}");
        assert_eq!(joined["recovered"], true, "{reply}");
        assert_eq!(joined["epoch"], epoch.as_str());
        assert_eq!(joined["lastSeq"], last_seq);
        assert_eq!(joined["session"]["id"], id.as_str());
        let (replayed, _) = events_of(&reply);
        assert_eq!(
            replayed, missed,
            "the replay is not byte-identical to the live events"
        );

        // Live events follow with no gap and no duplicate.
        runner.run_turn(&id, "third");
        let live_runner = runner.turn_events(&id);
        let live_reader = reader.turn_events(&id);
        assert_eq!(live_reader, live_runner);
        assert_gap_free(&live_reader, last_seq + 1);

        // An omitted epoch means the current one; afterSeq == lastSeq replays nothing.
        let now_last = last_seq + live_reader.len() as u64;
        let mut other = Client::dev(gateway);
        let reply = resume(&mut other, &id, now_last - 3, None);
        assert_eq!(parse(&reply)["recovered"], true, "{reply}");
        assert_eq!(
            events_of(&reply).0,
            live_runner[live_runner.len() - 3..].to_vec()
        );
        let reply = resume(&mut other, &id, now_last, Some(&epoch));
        let joined = parse(&reply);
        assert_eq!(joined["recovered"], true, "{reply}");
        assert_eq!(joined["events"], json!([]), "{reply}");
        // The re-joins never subscribed twice: one more turn arrives once.
        runner.run_turn(&id, "fourth");
        let expected = runner.turn_events(&id);
        other.turn_events(&id);
        let rest = other.barrier();
        assert!(
            rest.iter().all(|text| parse(text).get("seq").is_none()),
            "duplicate events after a re-join: {rest:?}"
        );
        assert_gap_free(&expected, now_last + 1);
    });
}

#[test]
fn a_resume_that_cannot_be_served_whole_is_not_recovered() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut runner = Client::dev(gateway);
        let session = runner.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        runner.join(&id);
        runner.run_turn(&id, "hello");
        let events = runner.turn_events(&id);
        let last_seq = events.len() as u64;

        let mut reader = Client::dev(gateway);
        for (case, after, epoch) in [
            ("wrong epoch", 2, Some("0000000000000000-not-it")),
            (
                "afterSeq beyond lastSeq",
                last_seq + 1,
                Some(epoch.as_str()),
            ),
            ("far beyond, no epoch", last_seq + 1000, None),
        ] {
            let reply = resume(&mut reader, &id, after, epoch);
            let joined = parse(&reply);
            assert_eq!(joined["type"], "session_joined", "{case}: {reply}");
            assert_eq!(joined["recovered"], false, "{case}: {reply}");
            assert_eq!(joined["events"], json!([]), "{case}: {reply}");
            assert_eq!(joined["lastSeq"], last_seq, "{case}: {reply}");
            assert_eq!(joined["epoch"], epoch_of(&session), "{case}: {reply}");
        }
        // Even a refused resume subscribes: live events follow from lastSeq + 1.
        runner.run_turn(&id, "next");
        let live = reader.turn_events(&id);
        assert_gap_free(&live, last_seq + 1);
    });
}

fn epoch_of(session: &Value) -> &str {
    session["epoch"].as_str().expect("epoch")
}

#[test]
fn a_clean_restart_keeps_the_epoch_and_the_events() {
    for binary in diminuendo_tests::binaries() {
        let mut gateway = Gateway::start(binary, &["--dev"]);
        let mut client = Client::dev(&gateway);
        let session = client.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = epoch_of(&session).to_owned();
        client.join(&id);
        client.run_turn(&id, "before the restart");
        let seen = client.turn_events(&id);

        gateway.signal(libc::SIGTERM);
        // Whatever the client still gets before the close (the agent's deactivation).
        let mut tail = Vec::new();
        loop {
            match client.ws.read() {
                Ok(diminuendo_tests::tungstenite::Message::Text(text)) => {
                    let value = parse(text.as_str());
                    if value["sessionId"] == id.as_str() && value.get("seq").is_some() {
                        tail.push(text.as_str().to_owned());
                    }
                }
                Ok(diminuendo_tests::tungstenite::Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let status = gateway
            .wait_exit(Duration::from_secs(15))
            .expect("the gateway did not exit");
        assert_eq!(status.code(), Some(0), "{status:?}");
        let data_dir = gateway.take_data_dir();
        drop(gateway);

        let gateway = Gateway::start_in(binary, &["--dev"], data_dir);
        let mut client = Client::dev(&gateway);
        let list = client.call(json!({"type": "list_sessions"}));
        let restored = list["sessions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("the session is gone: {list}"))
            .clone();
        assert_eq!(restored["status"], "inactive", "{restored}");
        assert_eq!(
            restored["epoch"],
            epoch.as_str(),
            "a clean stop changed the epoch"
        );
        let received: Vec<String> = seen.iter().chain(&tail).cloned().collect();
        let last_seen = seqs(&received).last().copied().expect("events");
        let last_seq = restored["lastSeq"].as_u64().expect("lastSeq");
        assert!(
            last_seq >= last_seen,
            "lastSeq {last_seq} < {last_seen} seen"
        );
        let stored = client.all_events(&id, 0);
        assert_eq!(stored.len() as u64, last_seq);
        assert_eq!(stored[..received.len()], received[..]);
        // A resume in the kept epoch works across the restart.
        let reply = resume(&mut client, &id, seqs(&seen)[2], Some(&epoch));
        assert_eq!(parse(&reply)["recovered"], true, "{reply}");
        assert_eq!(events_of(&reply).0, stored[3..].to_vec());
    }
}

/// Waits until storage has committed every event of the session: a read of it is a barrier
/// (storage commits the session's pending events before answering), and the counters are read
/// before the answer is sent.
fn wait_persisted(gateway: &Gateway, client: &mut Client, id: &str) {
    let read =
        client.call(json!({"type": "get_events", "sessionId": id, "afterSeq": 0, "limit": 1}));
    assert_eq!(read["type"], "events", "{read}");
    let metrics = gateway.metrics();
    assert_eq!(
        metrics.get("diminuendo_events_persisted_total"),
        metrics.get("diminuendo_events_published_total"),
        "{metrics:?}"
    );
}

#[test]
fn a_killed_gateway_comes_back_with_a_new_epoch() {
    for binary in diminuendo_tests::binaries() {
        let mut gateway = Gateway::start(binary, &["--dev"]);
        let mut client = Client::dev(&gateway);
        let session = client.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = epoch_of(&session).to_owned();
        client.join(&id);
        client.run_turn(&id, "before the crash");
        let seen = client.turn_events(&id);
        wait_persisted(&gateway, &mut client, &id);
        gateway.signal(libc::SIGKILL);
        gateway.wait_exit(Duration::from_secs(10)).expect("killed");
        let data_dir = gateway.take_data_dir();
        drop(gateway);
        let gateway = Gateway::start_in(binary, &["--dev"], data_dir);
        let mut client = Client::dev(&gateway);
        let joined = client.join(&id);
        let new_epoch = joined["epoch"].as_str().expect("epoch");
        assert_ne!(new_epoch, epoch, "an unclean stop kept the epoch");
        assert_eq!(joined["session"]["status"], "inactive", "{joined}");
        assert_eq!(
            joined["lastSeq"].as_u64(),
            Some(seen.len() as u64),
            "{joined}"
        );
        let reply = resume(&mut client, &id, 2, Some(&epoch));
        assert_eq!(parse(&reply)["recovered"], false, "{reply}");
        let reply = resume(&mut client, &id, 2, Some(new_epoch));
        assert_eq!(parse(&reply)["recovered"], true, "{reply}");
        assert_eq!(client.all_events(&id, 0), seen);
    }
}
