//! Cluster mode (CLUSTER.md, issue 16) with real processes: a `nats-server -js` on a temporary
//! store and three gateway instances of one binary on loopback (`gw-a`, `gw-b`, `gw-c`), all
//! dev mode, sharing one `--workspace-root`. Each process is stopped by its PID; every wait is a
//! bounded poll of a condition or a blocking read with a timeout.
//!
//! The binaries: every one of `diminuendo_tests::binaries()`, or those named (comma-separated) in
//! `DIMINUENDO_CLUSTER_BINARIES`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use diminuendo_tests::cluster::{dev_client_at, get_at, poll_until, Cluster, Haproxy};
use diminuendo_tests::{assert_gap_free, binaries, parse, seqs, Client};
use serde_json::{json, Value};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn cluster_binaries() -> Vec<String> {
    match std::env::var("DIMINUENDO_CLUSTER_BINARIES") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|name| name.trim().to_owned()).collect()
        }
        _ => binaries().iter().map(|name| (*name).to_owned()).collect(),
    }
}

/// Runs `test` on a fresh three-instance cluster of every binary.
fn with_each_cluster(test: impl Fn(&mut Cluster)) {
    for binary in cluster_binaries() {
        let mut cluster = Cluster::start(&binary, 3, &[]);
        test(&mut cluster);
    }
}

fn session_ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {list}"))
        .iter()
        .map(|session| session["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn health(cluster: &Cluster, index: usize) -> Value {
    let response = cluster.at(index).get("/health");
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("/health is not JSON ({error})"))
}

/// `run_turn` from `client`, retried (4 times a second, within the rate limit) while the
/// cluster refuses it because the session cannot be run yet (its former owner's lease has not
/// expired, or NATS is not back): the reply that is not such a refusal.
fn run_turn_eventually(client: &mut Client, session_id: &str, text: &str) -> Value {
    // A command forwarded to an owner that does not answer (frozen) is answered after the
    // engine's operation timeout (5 s): wait longer than the harness's usual read timeout.
    client
        .ws
        .get_ref()
        .socket()
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("a read timeout");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refusals = Vec::new();
    loop {
        let reply = client.call(json!({"type": "run_turn", "sessionId": session_id, "text": text}));
        match reply["type"].as_str() {
            Some("turn_accepted") => return reply,
            Some("error") => refusals.push(reply),
            _ => panic!("unexpected reply to run_turn: {reply}"),
        }
        assert!(
            Instant::now() < deadline,
            "run_turn still refused after 30 s: {refusals:?}"
        );
        // Retrying a refused request, with a deadline.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The session's stored log after `after_seq`, read through `addr` (`get_events`)
/// once it reaches `through` (the owner shows its clients an event before JetStream has
/// acknowledged it, so a read right after a turn may not have its last events yet).
fn log_through(addr: SocketAddr, id: &str, after_seq: u64, through: u64) -> Vec<String> {
    let mut last = Vec::new();
    poll_until(
        "the log to reach the last seq",
        Duration::from_secs(10),
        || {
            let mut reader = dev_client_at(addr);
            last = reader.all_events(id, after_seq);
            let reached = seqs(&last).last().is_some_and(|&seq| seq >= through);
            reached.then(|| last.clone())
        },
    )
}

#[test]
fn a_session_created_on_one_instance_is_listed_and_joined_on_another() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let session = on_a.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();

        let mut on_c = Client::dev(cluster.at(C));
        let list = on_c.call(json!({"type": "list_sessions"}));
        assert!(
            session_ids(&list).contains(&id),
            "a session acknowledged on A is not listed on C: {list}{}",
            cluster.logs()
        );
        let joined = on_c.join(&id);
        assert_eq!(joined["type"], "session_joined", "{joined}");
        assert_eq!(joined["session"]["id"], id.as_str(), "{joined}");
        assert_eq!(joined["session"]["epoch"], session["epoch"], "{joined}");

        // /health names each instance and its NATS connection.
        for index in [A, B, C] {
            let health = health(cluster, index);
            assert_eq!(
                health["cluster"]["instance"],
                Cluster::instance_id(index).as_str(),
                "{health}"
            );
            assert_eq!(health["cluster"]["nats"], "connected", "{health}");
        }
    });
}

#[test]
fn a_turn_started_on_b_is_seen_live_on_a_and_c_in_order() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let id = on_a.create_session("echo")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        on_a.join(&id);
        let mut on_c = Client::dev(cluster.at(C));
        on_c.join(&id);
        let mut on_b = Client::dev(cluster.at(B));
        on_b.join(&id);

        on_b.run_turn(&id, "stream 200 64");
        let seen_b = on_b.turn_events(&id);
        let seen_a = on_a.turn_events(&id);
        let seen_c = on_c.turn_events(&id);
        let first = seqs(&seen_b)[0];
        assert_gap_free(&seen_b, first);
        assert_eq!(seen_a, seen_b, "A saw another sequence than B");
        assert_eq!(seen_c, seen_b, "C saw another sequence than B");

        // A second turn, from C this time (forwarded to the owner B): the same again, with no
        // duplicate of the first turn.
        on_c.run_turn(&id, "stream 50 10");
        let second_c = on_c.turn_events(&id);
        assert_gap_free(&second_c, first + seen_b.len() as u64);
        assert_eq!(on_a.turn_events(&id), second_c);
        assert_eq!(on_b.turn_events(&id), second_c);
        for client in [&mut on_a, &mut on_b, &mut on_c] {
            let rest = client.barrier();
            assert!(
                rest.iter().all(|text| parse(text).get("seq").is_none()),
                "events after the turn: {rest:?}"
            );
        }

        // The log read from a fourth connection on A is what everyone saw live.
        let mut live = seen_b.clone();
        live.extend(second_c);
        let through = *seqs(&live).last().expect("events");
        let stored = log_through(cluster.at(A).addr(), &id, first - 1, through);
        assert_eq!(stored, live, "the stored log differs from the live events");

        // B owns the session; the forwarded turn was counted on C.
        let owned = health(cluster, B)["cluster"]["ownedSessions"].clone();
        assert!(
            owned.as_array().is_some_and(|ids| ids.contains(&json!(id))),
            "B does not report the session as owned: {owned}"
        );
        let metric = |index: usize, name: &str| {
            cluster
                .at(index)
                .metrics()
                .get(name)
                .copied()
                .unwrap_or(0.0)
        };
        assert!(metric(C, "diminuendo_cluster_forwarded_total") >= 1.0);
        // The owner renews its lease (every 500 ms here).
        poll_until("a lease renewal on B", Duration::from_secs(10), || {
            (metric(B, "diminuendo_cluster_lease_renewals_total") >= 1.0).then_some(())
        });
        assert_eq!(metric(B, "diminuendo_cluster_leases_lost_total"), 0.0);
    });
}

#[test]
fn a_killed_owner_s_session_continues_on_another_instance_with_the_agent_s_memory() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let session = on_a.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        on_a.join(&id);
        let mut on_c = Client::dev(cluster.at(C));
        on_c.join(&id);

        // A owns the session: a first turn the agent will remember.
        on_a.run_turn(&id, "remember the tulips");
        let first = on_a.turn_events(&id);
        assert_eq!(on_c.turn_events(&id), first);

        // A slow turn, cut by SIGKILL of A once C has seen it start.
        on_a.run_turn(&id, "slow 100 50");
        let cut = on_c.events_until(&id, |event| event["type"] == "text_delta");
        drop(on_a);
        cluster.kill(A);

        // The next turn, from B, once A's lease has expired.
        let mut on_b = Client::dev(cluster.at(B));
        on_b.join(&id);
        run_turn_eventually(&mut on_b, &id, "recall");
        // B first sees the cut turn end (INTERRUPTED), then the new turn.
        let recalled = on_b.events_until(&id, |event| event["type"] == "turn_complete");
        assert!(
            recalled
                .iter()
                .any(|text| parse(text)["code"] == "INTERRUPTED"),
            "{recalled:?}"
        );
        let text = diminuendo_tests::delta_text(&recalled);
        assert!(
            text.contains("remember the tulips"),
            "the agent lost its memory: {text:?} in {recalled:?}{}",
            cluster.logs()
        );

        // C saw the cut turn end INTERRUPTED, and never a gap or a duplicate (a new epoch
        // restarts nothing: seqs go on).
        let after_cut = on_c.events_until(&id, |event| {
            event["type"] == "turn_complete"
                && event["finalText"]
                    .as_str()
                    .is_some_and(|t| t.contains("remember the tulips"))
        });
        let mut all = first.clone();
        all.extend(cut);
        all.extend(after_cut);
        let seen: Vec<u64> = seqs(&all);
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a duplicate seq: {seen:?}");
        assert!(
            all.iter().any(|text| {
                let event = parse(text);
                event["type"] == "turn_error" && event["code"] == "INTERRUPTED"
            }),
            "the cut turn did not end INTERRUPTED: {all:?}"
        );
        // The stored log, read on C, has every seq once and in order, and ends as C saw it.
        let through = *seen.last().expect("events");
        let stored = log_through(cluster.at(C).addr(), &id, 0, through);
        assert_gap_free(&stored, 1);
        for text in &all {
            assert!(
                stored.contains(text),
                "C saw {text}, the log lacks it: {stored:?}"
            );
        }
        // A new epoch when acknowledged events may be missing; the old one is not recovered.
        let mut reader = Client::dev(cluster.at(C));
        let reply = reader.call_text(json!({
            "type": "join_session", "sessionId": id, "afterSeq": 1, "epoch": epoch
        }));
        let joined = parse(&reply);
        assert_eq!(joined["type"], "session_joined", "{reply}");
        if joined["epoch"] != epoch.as_str() {
            assert_eq!(joined["recovered"], false, "{reply}");
        }
    });
}

#[test]
fn acknowledged_sessions_survive_the_instance_that_created_them() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let mut created = Vec::new();
        for _ in 0..20 {
            created.push(
                on_a.create_session("echo")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        drop(on_a);
        cluster.kill(A);
        let mut on_b = Client::dev(cluster.at(B));
        let list = on_b.call(json!({"type": "list_sessions"}));
        let listed = session_ids(&list);
        for id in &created {
            assert!(
                listed.contains(id),
                "{id} was acknowledged and is lost: {list}"
            );
        }
        // Each can be joined and run on B.
        let id = &created[7];
        on_b.join(id);
        run_turn_eventually(&mut on_b, id, "hello");
        let events = on_b.turn_events(id);
        assert!(diminuendo_tests::delta_text(&events).contains("hello"));
    });
}

#[test]
fn a_fenced_former_owner_cannot_append() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let id = on_a.create_session("echo")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        on_a.join(&id);
        let mut on_c = Client::dev(cluster.at(C));
        on_c.join(&id);
        on_a.run_turn(&id, "slow 200 20");
        on_c.events_until(&id, |event| event["type"] == "text_delta");

        // A freezes mid-turn (SIGSTOP): its lease expires and B takes the session over.
        cluster.at_mut(A).signal(libc::SIGSTOP);
        let mut on_b = Client::dev(cluster.at(B));
        on_b.join(&id);
        run_turn_eventually(&mut on_b, &id, "after the take-over");
        // B sees the frozen owner's turn end INTERRUPTED, then its own turn.
        let taken = on_b.events_until(&id, |event| {
            event["type"] == "turn_complete" && event["finalText"] == "after the take-over"
        });
        assert!(
            taken
                .iter()
                .any(|text| parse(text)["code"] == "INTERRUPTED"),
            "{taken:?}"
        );
        on_b.events_until(&id, |event| event["type"] == "session_state");
        // A wakes up with its agent still streaming: whatever it tries to append is refused.
        cluster.at_mut(A).signal(libc::SIGCONT);
        poll_until("A to give the session up", Duration::from_secs(20), || {
            let owned = health(cluster, A)["cluster"]["ownedSessions"].clone();
            (!owned.as_array().is_some_and(|ids| ids.contains(&json!(id)))).then_some(())
        });
        let lost = cluster.at(A).metrics();
        assert!(
            lost.get("diminuendo_cluster_leases_lost_total")
                .copied()
                .unwrap_or(0.0)
                >= 1.0,
            "{lost:?}"
        );

        // The log has each seq once, and nothing after B's turn came from A.
        on_b.run_turn(&id, "last");
        let last = on_b.turn_events(&id);
        let last_seq = *seqs(&last).last().expect("events");
        let stored = log_through(cluster.at(C).addr(), &id, 0, last_seq);
        assert_gap_free(&stored, 1);
        assert_eq!(stored.len() as u64, last_seq, "{stored:?}");
        // What C saw live matches the log (no event of A's after its lease was lost).
        let mut live = on_c.barrier();
        live.retain(|text| {
            parse(text)["sessionId"] == id.as_str() && parse(text).get("seq").is_some()
        });
        for text in &live {
            assert!(
                stored.contains(text),
                "C saw an event the log does not have: {text}"
            );
        }
    });
}

#[test]
fn the_instances_recover_by_themselves_when_nats_restarts_under_load() {
    with_each_cluster(|cluster| {
        let mut on_a = Client::dev(cluster.at(A));
        let session = on_a.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        on_a.join(&id);
        let mut on_c = Client::dev(cluster.at(C));
        on_c.join(&id);
        on_a.run_turn(&id, "slow 40 50");
        on_c.events_until(&id, |event| event["type"] == "text_delta");

        cluster.nats.stop();
        for index in [A, B, C] {
            poll_until("/readyz 503 without NATS", Duration::from_secs(10), || {
                (cluster.at(index).get("/readyz").status == 503).then_some(())
            });
        }
        // Meanwhile registry changes are refused at once with a clear error, never left hanging.
        let mut on_b = Client::dev(cluster.at(B));
        let refused = on_b.call(json!({
            "type": "create_session", "agentType": "echo", "name": "while NATS is away"
        }));
        assert_eq!(refused["type"], "error", "{refused}");
        drop(on_b);
        cluster.nats.start_again();
        for index in [A, B, C] {
            cluster.wait_ready(index, Duration::from_secs(30));
        }

        // A new turn works, from B, and C sees it with no gap (a new epoch if events were lost).
        let mut on_b = Client::dev(cluster.at(B));
        on_b.join(&id);
        run_turn_eventually(&mut on_b, &id, "after the restart");
        // The turn A was running is over (it lost the session while NATS was away, or ended):
        // B may first see its end, then the new turn.
        let after = on_b.events_until(&id, |event| {
            event["type"] == "turn_complete"
                && event["finalText"]
                    .as_str()
                    .is_some_and(|text| text.contains("after the restart"))
        });
        assert!(diminuendo_tests::delta_text(&after).contains("after the restart"));
        // C watched the session through the outage: its feed read the log again afterwards
        // (live events may be lost across a reconnection).
        let catchups = cluster.at(C).metrics();
        assert!(
            catchups
                .get("diminuendo_cluster_catchup_fetches_total")
                .copied()
                .unwrap_or(0.0)
                >= 1.0,
            "{catchups:?}"
        );
        let through = *seqs(&after).last().expect("events");
        let events = log_through(cluster.at(C).addr(), &id, 0, through);
        assert_gap_free(&events, 1);
        let mut reader = Client::dev(cluster.at(C));
        let reply = reader.call_text(json!({"type": "join_session", "sessionId": id}));
        for event in &after {
            assert!(
                events.contains(event),
                "{event} is not in the log: {events:?}"
            );
        }
        // No silent gap for the client of A, which kept streaming while NATS was away: under
        // the same epoch, every event it was shown is the log's event of that seq.
        if parse(&reply)["epoch"] == epoch.as_str() {
            let shown: Vec<String> = on_a
                .barrier()
                .into_iter()
                .filter(|text| {
                    let event = parse(text);
                    event["sessionId"] == id.as_str() && event.get("seq").is_some()
                })
                .collect();
            for text in &shown {
                let seq = parse(text)["seq"].as_u64().expect("seq");
                let index = usize::try_from(seq - 1).expect("an index");
                assert_eq!(
                    events.get(index),
                    Some(text),
                    "A's client was shown seq {seq} and the log has another event under the \
                     same epoch {epoch}: {events:?}"
                );
            }
        }
    });
}

#[test]
fn behind_haproxy_clients_resume_on_another_instance_when_one_is_killed() {
    with_each_cluster(|cluster| {
        let backends: Vec<_> = [A, B, C].iter().map(|&i| cluster.at(i).addr()).collect();
        let proxy = Haproxy::start(&backends);
        // Every instance is ready: the balancer's checks pass for all three.
        let mut first = dev_client_at(proxy.addr);
        let session = first.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        first.join(&id);
        // Watchers through the balancer, spread over the instances (round robin).
        let mut watchers: Vec<Client> = (0..3).map(|_| dev_client_at(proxy.addr)).collect();
        for watcher in &mut watchers {
            watcher.join(&id);
        }
        first.run_turn(&id, "stream 30 16");
        let seen = first.turn_events(&id);
        for watcher in &mut watchers {
            assert_eq!(watcher.turn_events(&id), seen);
        }
        let seen_up_to = *seqs(&seen).last().expect("events");

        // One instance dies; every client reconnects through the balancer and resumes.
        drop(first);
        drop(watchers);
        cluster.kill(A);
        let mut runner = poll_until(
            "a client through the balancer",
            Duration::from_secs(10),
            || {
                let response = get_at(proxy.addr, "/readyz");
                (response.status == 200).then(|| dev_client_at(proxy.addr))
            },
        );
        let reply = runner.call_text(json!({
            "type": "join_session", "sessionId": id, "afterSeq": seen_up_to, "epoch": epoch
        }));
        let joined = parse(&reply);
        assert_eq!(joined["type"], "session_joined", "{reply}");
        assert_eq!(joined["recovered"], true, "{reply}");
        run_turn_eventually(&mut runner, &id, "after the loss");
        let after = runner.turn_events(&id);
        assert!(diminuendo_tests::delta_text(&after).contains("after the loss"));
        let through = *seqs(&after).last().expect("events");
        let stored = log_through(proxy.addr, &id, 0, through);
        assert_gap_free(&stored, 1);
        // What the watchers on the surviving instances saw live was stored, byte for byte.
        for event in &seen {
            assert!(
                stored.contains(event),
                "{event} is not in the log: {stored:?}"
            );
        }
        assert!(stored.ends_with(&after), "{stored:?}");
    });
}

#[test]
fn the_three_binaries_serve_one_cluster_together() {
    let binaries: Vec<&str> = binaries().to_vec();
    let cluster = Cluster::start_mixed(&binaries, &[]);
    let mut clients: Vec<Client> = [A, B, C]
        .iter()
        .map(|&i| Client::dev(cluster.at(i)))
        .collect();
    let id = clients[A].create_session("echo")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for client in &mut clients {
        client.join(&id);
    }
    // A turn run from each instance in turn (the first makes B the owner; the others are
    // forwarded to it), seen identically everywhere.
    for (runner, text) in [(B, "stream 40 8"), (C, "from mio"), (A, "from tokio")] {
        clients[runner].run_turn(&id, text);
        let seen = clients[runner].turn_events(&id);
        let expected = if runner == B { "abcdefgh" } else { text };
        assert!(
            diminuendo_tests::delta_text(&seen).starts_with(expected),
            "{seen:?}"
        );
        for (index, client) in clients.iter_mut().enumerate() {
            if index != runner {
                assert_eq!(
                    client.turn_events(&id),
                    seen,
                    "instance {index} ({}) saw another turn than {runner}{}",
                    binaries[index],
                    cluster.logs()
                );
            }
        }
    }
}
