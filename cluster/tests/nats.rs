//! The cluster engine against a real `nats-server -js` on loopback (each test starts its own on
//! a free port with a temporary store directory and stops it by PID).

mod common;

use bytes::Bytes;
use common::*;
use diminuendo_cluster::*;
use std::time::Duration;

#[test]
fn registry_compare_and_set_list_and_cache() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));

    // A tenant whose id holds a `.`, and one that is its prefix: keys must not mix them up.
    let m1 = meta("acme.corp", "s1", "first", 10);
    let r1 = a
        .registry(|token| ClusterCommand::RegistryCreate {
            token,
            meta: m1.clone(),
        })
        .expect("create");
    assert_eq!(
        b.registry(|token| ClusterCommand::RegistryCreate {
            token,
            meta: m1.clone()
        }),
        Err(ClusterError::Conflict),
        "a second create of the same session is refused"
    );
    a.registry(|token| ClusterCommand::RegistryCreate {
        token,
        meta: meta("acme", "s2", "other tenant", 5),
    })
    .expect("create in tenant acme");
    a.registry(|token| ClusterCommand::RegistryCreate {
        token,
        meta: meta("acme.corp", "s0 *>", "odd id", 20),
    })
    .expect("an id with spaces and wildcards");

    let mut renamed = m1.clone();
    renamed.name = "renamed".into();
    let r2 = a
        .registry(|token| ClusterCommand::RegistryUpdate {
            token,
            meta: renamed.clone(),
            revision: r1,
        })
        .expect("update on the current revision");
    assert!(r2 > r1);
    let mut stale = m1.clone();
    stale.name = "lost update".into();
    assert_eq!(
        b.registry(|token| ClusterCommand::RegistryUpdate {
            token,
            meta: stale,
            revision: r1,
        }),
        Err(ClusterError::Conflict),
        "an update on an old revision is refused"
    );

    let got = b.get("acme.corp", "s1").expect("get").expect("present");
    assert_eq!(got.meta, renamed);
    assert_eq!(got.revision, r2);
    assert_eq!(got.meta.to_record().expect("record").name, "renamed");

    let list = b.list("acme.corp").expect("list");
    let ids: Vec<&str> = list.iter().map(|e| e.meta.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s0 *>"], "tenant acme.corp only, oldest first");
    let list = b.list("acme").expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].meta.id, "s2");
    assert!(b.list("nobody").expect("list").is_empty());

    // B's cache follows A's writes through the watch.
    poll_until("B's cache to show the rename", WAIT, || {
        b.cluster
            .cached_session("acme.corp", "s1")
            .filter(|e| e.revision == r2 && e.meta.name == "renamed")
    });
    assert_eq!(
        a.registry(|token| ClusterCommand::RegistryDelete {
            token,
            tenant_id: "acme.corp".into(),
            session_id: "s1".into(),
            revision: Some(r1),
        }),
        Err(ClusterError::Conflict),
        "a delete on an old revision is refused"
    );
    a.registry(|token| ClusterCommand::RegistryDelete {
        token,
        tenant_id: "acme.corp".into(),
        session_id: "s1".into(),
        revision: Some(r2),
    })
    .expect("delete");
    assert_eq!(b.get("acme.corp", "s1").expect("get"), None);
    assert_eq!(b.list("acme.corp").expect("list").len(), 1);
    poll_until("B's cache to drop the deleted entry", WAIT, || {
        b.cluster
            .cached_session("acme.corp", "s1")
            .is_none()
            .then_some(())
    });
    assert_eq!(b.cluster.cached_sessions("acme.corp").len(), 1);
}

#[test]
fn lease_acquire_renew_expire_take_over_and_fencing() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("t1", "sess-1");

    a.acquire(s, 1).expect("A acquires");
    match b.acquire(s, 2) {
        Err(ClusterError::LeaseHeld(info)) => {
            assert_eq!(info.value.instance, "gw-a");
            assert_eq!(info.value.fence, 1);
        }
        other => panic!("B must see A's lease, got {other:?}"),
    }
    // Renewals keep it past the max age (3 × 400 ms).
    for _ in 0..8 {
        a.renew(s).expect("A renews");
        std::thread::sleep(Duration::from_millis(250)); // renewal interval, not synchronization
    }
    assert!(
        matches!(b.acquire(s, 2), Err(ClusterError::LeaseHeld(_))),
        "a renewed lease does not expire"
    );
    // Renewals sent back to back run one after the other, each on the previous one's revision.
    let tokens: Vec<u64> = (0..5)
        .map(|_| {
            let token = a.token();
            a.submit(ClusterCommand::RenewLease {
                token,
                session_id: s.into(),
            });
            token
        })
        .collect();
    for token in tokens {
        let r = a.wait_for("renewal", |c| match c {
            ClusterCompletion::Lease {
                token: tk, result, ..
            } if *tk == token => Some(result.clone()),
            _ => None,
        });
        assert!(r.is_ok(), "{r:?}");
    }

    // A is the owner: it appends.
    assert_eq!(a.open_log(t, s).expect("open"), None, "empty log");
    a.append(t, s, 1, "e1", b"{\"seq\":1}").expect("append 1");
    a.append(t, s, 2, "e1", b"{\"seq\":2}").expect("append 2");

    // A stops renewing (it is "slow", and does not know yet); the lease expires and B takes
    // over.
    poll_until("A's lease to expire and B to acquire", WAIT, || {
        b.acquire(s, 2).ok()
    });
    let tail = b.open_log(t, s).expect("open").expect("tail");
    assert_eq!((tail.seq, tail.epoch.as_str()), (2, "e1"));
    b.append(t, s, 3, "e1", b"{\"seq\":3,\"by\":\"b\"}")
        .expect("B appends");

    // A, still unaware, is fenced off by the stream: it can never append again.
    match a.append(t, s, 3, "e1", b"{\"seq\":3,\"by\":\"a\"}") {
        Err(ClusterError::Fenced { last }) => {
            let last = last.expect("the log's last event");
            assert_eq!(last.seq, 3);
            assert_eq!(&last.payload[..], b"{\"seq\":3,\"by\":\"b\"}");
        }
        other => panic!("A's append must be fenced, got {other:?}"),
    }
    assert!(matches!(
        a.append(t, s, 4, "e1", b"{}"),
        Err(ClusterError::Fenced { .. })
    ));
    assert_eq!(
        a.renew(s),
        Err(ClusterError::LeaseLost),
        "A learns it lost the lease"
    );
    let (events, _) = b.fetch(t, s, 0, None, 100).expect("fetch");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "nothing of A's after the take-over");
    assert!(a.cluster.stats().appends_fenced >= 1);

    // Release lets another acquire at once; a release of a lease not held is refused.
    b.lease(|token| ClusterCommand::ReleaseLease {
        token,
        session_id: s.into(),
    })
    .expect("release");
    assert_eq!(
        b.lease(|token| ClusterCommand::ReleaseLease {
            token,
            session_id: s.into(),
        }),
        Err(ClusterError::LeaseLost)
    );
    a.acquire(s, 3).expect("A acquires again after the release");
    let token = b.token();
    b.submit(ClusterCommand::GetLease {
        token,
        session_id: s.into(),
    });
    let holder = b.wait_for("lease holder", |c| match c {
        ClusterCompletion::LeaseHolder { token: tk, result } if *tk == token => {
            Some(result.clone())
        }
        _ => None,
    });
    assert_eq!(holder.expect("read").expect("held").value.instance, "gw-a");

    // An owner that learns of the loss by its renewal stops appending at once, even before
    // the new owner appended anything (the stream could not refuse it yet).
    let s2 = "sess-2";
    a.acquire(s2, 1).expect("A acquires");
    a.open_log(t, s2).expect("open");
    a.append(t, s2, 1, "e1", b"1").expect("append");
    poll_until("A's second lease to expire and B to acquire", WAIT, || {
        b.acquire(s2, 2).ok()
    });
    assert_eq!(a.renew(s2), Err(ClusterError::LeaseLost));
    assert_eq!(
        a.append(t, s2, 2, "e1", b"2"),
        Err(ClusterError::Fenced { last: None }),
        "refused here, without publishing"
    );
    assert_eq!(b.fetch(t, s2, 0, None, 10).expect("fetch").0.len(), 1);
}

#[test]
fn a_stale_owner_append_after_take_over_fences_the_late_one() {
    // The narrow race: the old owner appends after the new owner read the tail. The new owner's
    // first append is then refused, it re-opens (learning the old owner's event) and continues.
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("t1", "race");
    a.open_log(t, s).expect("open");
    a.append(t, s, 1, "e1", b"1").expect("append");
    b.open_log(t, s).expect("open");
    a.append(t, s, 2, "e1", b"2-from-a")
        .expect("A still appends");
    match b.append(t, s, 2, "e2", b"2-from-b") {
        Err(ClusterError::Fenced { last: Some(last) }) => assert_eq!(last.seq, 2),
        other => panic!("expected fenced, got {other:?}"),
    }
    let tail = b.open_log(t, s).expect("reopen").expect("tail");
    assert_eq!(&tail.payload[..], b"2-from-a");
    b.append(t, s, 3, "e2", b"3-from-b")
        .expect("B continues after reopening");
    assert!(matches!(
        a.append(t, s, 3, "e1", b"3-from-a"),
        Err(ClusterError::Fenced { .. })
    ));
}

#[test]
fn append_and_fetch_are_byte_identical_with_seq_and_epoch() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("tenant.with.dots", "s-1");
    assert_eq!(
        a.append(t, s, 1, "e", b"x"),
        Err(ClusterError::LogNotOpen),
        "no append before the log is opened"
    );
    a.open_log(t, s).expect("open");
    b.open_log(t, "other").expect("open other");
    // A frame over the server's max_payload (1 MiB) is refused before sending; the log stays
    // open and the next append needs no reopening.
    assert!(matches!(
        a.append(t, s, 1, "e", &vec![b'x'; 2 << 20]),
        Err(ClusterError::TooLarge(_))
    ));
    let payload = |seq: u64| -> Vec<u8> {
        format!("{{\"type\":\"text_delta\",\"seq\":{seq},\"text\":\"h\u{e9}llo \\n\\\"{seq}\\\" \u{1f600}\"}}\n")
            .into_bytes()
    };
    let mut stream_seqs = Vec::new();
    for seq in 1..=200u64 {
        stream_seqs.push(
            a.append(t, s, seq, "00000000000000e1", &payload(seq))
                .expect("append"),
        );
        if seq % 10 == 0 {
            // Another session's events interleave in the stream.
            b.append(t, "other", seq / 10, "x", b"other")
                .expect("other append");
        }
    }
    assert!(stream_seqs.windows(2).all(|w| w[0] < w[1]));

    let (events, more) = b.fetch(t, s, 0, None, 1000).expect("fetch all");
    assert!(!more);
    assert_eq!(events.len(), 200);
    for (i, e) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(e.seq, seq);
        assert_eq!(e.epoch, "00000000000000e1");
        assert_eq!(&e.payload[..], &payload(seq)[..], "byte-identical");
        assert_eq!(e.stream_seq, Some(stream_seqs[i]));
    }

    let (events, more) = b.fetch(t, s, 150, None, 20).expect("fetch a page");
    assert!(more);
    assert_eq!(events.first().map(|e| e.seq), Some(151));
    assert_eq!(events.last().map(|e| e.seq), Some(170));
    let (events, more) = b.fetch(t, s, 170, None, 100).expect("fetch the rest");
    assert!(!more);
    assert_eq!(events.len(), 30);
    assert_eq!(
        b.fetch(t, s, 200, None, 100).expect("up to date"),
        (vec![], false)
    );
    assert_eq!(
        b.fetch(t, "nothing", 0, None, 100).expect("empty"),
        (vec![], false)
    );

    // An instance that never saw the log finds a range by searching, not by reading it all.
    let mut c = Node::start(Node::config(&nats.url(), "gw-c"));
    for (after, limit, want) in [
        (150u64, 20u32, 151..=170u64),
        (1, 2, 2..=3),
        (199, 10, 200..=200),
        (0, 3, 1..=3),
    ] {
        let (events, _) = c.fetch(t, s, after, None, limit).expect("fetch");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            want.collect::<Vec<_>>()
        );
        assert!(events.iter().all(|e| e.payload[..] == payload(e.seq)[..]));
    }

    // A position hint (a registry entry's log mark) is used when right, ignored when stale.
    let (events, _) = b
        .fetch(t, s, 99, Some(stream_seqs[99]), 5)
        .expect("fetch from a hint");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [100, 101, 102, 103, 104]
    );
    let (events, _) = b
        .fetch(t, s, 9, Some(stream_seqs[150]), 3)
        .expect("fetch with a hint past the wanted events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    let (events, _) = b
        .fetch(t, s, 195, Some(stream_seqs[199] + 1000), 10)
        .expect("fetch with a hint past the end");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [196, 197, 198, 199, 200]
    );

    // Purging a deleted session's log.
    let token = a.token();
    a.submit(ClusterCommand::PurgeLog {
        token,
        tenant_id: t.into(),
        session_id: "other".into(),
    });
    let purged = a.wait_for("purged", |c| match c {
        ClusterCompletion::Purged { token: tk, result } if *tk == token => Some(result.clone()),
        _ => None,
    });
    assert_eq!(purged, Ok(20));
    assert_eq!(
        b.fetch(t, "other", 0, None, 100).expect("purged"),
        (vec![], false)
    );
    assert_eq!(
        b.fetch(t, s, 0, None, 1000).expect("untouched").0.len(),
        200
    );

    let st = a.cluster.stats();
    println!(
        "append ack latency over {} appends: mean {} µs, max {} µs",
        st.appends,
        st.append_nanos_total / st.appends.max(1) / 1000,
        st.append_nanos_max / 1000
    );
}

#[test]
fn live_subscription_delivers_in_order() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("t", "live");
    b.subscribe(t, s);
    a.open_log(t, s).expect("open");
    let n = 300u64;
    for seq in 1..=n {
        a.submit(ClusterCommand::Append {
            tenant_id: t.into(),
            session_id: s.into(),
            seq,
            epoch: "e".into(),
            payload: Bytes::from(format!("event {seq}")),
        });
    }
    let mut got = Vec::new();
    while got.len() < n as usize {
        let e = b.wait_for("live event", |c| match c {
            ClusterCompletion::LiveEvent {
                session_id, event, ..
            } if session_id == s => Some(event.clone()),
            _ => None,
        });
        assert_eq!(&e.payload[..], format!("event {}", e.seq).as_bytes());
        got.push(e.seq);
    }
    assert_eq!(
        got,
        (1..=n).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    let acked = (1..=n)
        .map(|seq| {
            a.wait_for("appended", |c| match c {
                ClusterCompletion::Appended { seq: q, result, .. } if *q == seq => {
                    Some(result.clone())
                }
                _ => None,
            })
        })
        .filter(Result::is_ok)
        .count();
    assert_eq!(acked, n as usize);

    // After unsubscribing nothing more arrives (checked with a later marker on another session).
    b.submit(ClusterCommand::Unsubscribe {
        tenant_id: t.into(),
        session_id: s.into(),
    });
    b.subscribe(t, "marker");
    a.append(t, s, n + 1, "e", b"late").expect("append");
    a.open_log(t, "marker").expect("open");
    a.append(t, "marker", 1, "e", b"marker").expect("append");
    b.wait_for("marker", |c| match c {
        ClusterCompletion::LiveEvent { session_id, .. } if session_id == "marker" => Some(()),
        _ => None,
    });
    assert!(
        !b.drain().iter().any(
            |c| matches!(c, ClusterCompletion::LiveEvent { session_id, .. } if session_id == s)
        ),
        "no delivery after unsubscribe"
    );
}

#[test]
fn commands_forwarded_to_the_owner_and_tenant_notifications() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));

    // Nobody serves the session yet.
    let token = b.token();
    b.submit(ClusterCommand::Forward {
        token,
        session_id: "s.1".into(),
        payload: Bytes::from_static(b"{}"),
    });
    let r = b.wait_for("forwarded", |c| match c {
        ClusterCompletion::Forwarded { token: t, result } if *t == token => Some(result.clone()),
        _ => None,
    });
    assert_eq!(r, Err(ClusterError::NoResponders));

    a.submit(ClusterCommand::ServeCommands {
        session_id: "s.1".into(),
    });
    a.wait_for("serving", |c| match c {
        ClusterCompletion::Serving { result, .. } => Some(result.clone()),
        _ => None,
    })
    .expect("serving");
    for i in 0..5 {
        let token = b.token();
        let body = format!("{{\"type\":\"run_turn\",\"requestId\":\"r{i}\"}}");
        b.submit(ClusterCommand::Forward {
            token,
            session_id: "s.1".into(),
            payload: Bytes::from(body.clone()),
        });
        let (request, payload) = a.wait_for("command request", |c| match c {
            ClusterCompletion::CommandRequest {
                session_id,
                request,
                payload,
            } if session_id == "s.1" => Some((*request, payload.clone())),
            _ => None,
        });
        assert_eq!(&payload[..], body.as_bytes());
        a.submit(ClusterCommand::Reply {
            request,
            payload: Bytes::from(format!("{{\"ok\":{i}}}")),
        });
        let r = b.wait_for("forwarded", |c| match c {
            ClusterCompletion::Forwarded { token: t, result } if *t == token => {
                Some(result.clone())
            }
            _ => None,
        });
        assert_eq!(r.expect("reply"), Bytes::from(format!("{{\"ok\":{i}}}")));
    }
    assert_eq!(b.cluster.stats().forwarded, 6);

    // Tenant notifications reach the watchers of that tenant only.
    b.submit(ClusterCommand::WatchTenant {
        tenant_id: "acme.corp".into(),
    });
    b.wait_for("watching", |c| match c {
        ClusterCompletion::Watching { result, .. } => Some(result.clone()),
        _ => None,
    })
    .expect("watching");
    a.submit(ClusterCommand::Notify {
        tenant_id: "acme".into(),
        payload: Bytes::from_static(b"not for acme.corp"),
    });
    a.submit(ClusterCommand::Notify {
        tenant_id: "acme.corp".into(),
        payload: Bytes::from_static(b"{\"type\":\"session_created\"}"),
    });
    let (tenant, payload) = b.wait_for("notice", |c| match c {
        ClusterCompletion::TenantNotice { tenant_id, payload } => {
            Some((tenant_id.clone(), payload.clone()))
        }
        _ => None,
    });
    assert_eq!(tenant, "acme.corp");
    assert_eq!(&payload[..], b"{\"type\":\"session_created\"}");

    // Instance liveness.
    let token = a.token();
    a.submit(ClusterCommand::ListInstances { token });
    let list = a.wait_for("instances", |c| match c {
        ClusterCompletion::Instances { token: t, result } if *t == token => Some(result.clone()),
        _ => None,
    });
    let mut names: Vec<String> = list
        .expect("instances")
        .into_iter()
        .map(|i| i.instance)
        .collect();
    names.sort();
    assert_eq!(names, ["gw-a", "gw-b"]);
    // A stopped instance removes its entry.
    drop(b);
    let token = a.token();
    a.submit(ClusterCommand::ListInstances { token });
    let list = a.wait_for("instances", |c| match c {
        ClusterCompletion::Instances { token: t, result } if *t == token => Some(result.clone()),
        _ => None,
    });
    let names: Vec<String> = list
        .expect("instances")
        .into_iter()
        .map(|i| i.instance)
        .collect();
    assert_eq!(names, ["gw-a"]);
}

#[test]
fn nats_restart_recovers_by_itself_with_state_intact() {
    let mut nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("t", "durable");
    let rev = a
        .registry(|token| ClusterCommand::RegistryCreate {
            token,
            meta: meta(t, s, "kept", 1),
        })
        .expect("create");
    a.open_log(t, s).expect("open");
    for seq in 1..=3 {
        a.append(t, s, seq, "e", format!("before {seq}").as_bytes())
            .expect("append");
    }
    b.subscribe(t, s);
    b.submit(ClusterCommand::WatchTenant {
        tenant_id: t.into(),
    });
    b.wait_for("watching", |c| match c {
        ClusterCompletion::Watching { result, .. } => Some(result.clone()),
        _ => None,
    })
    .expect("watching");

    nats.stop();
    a.wait_state(ConnectionState::Reconnecting);
    assert_eq!(a.cluster.connection_state(), ConnectionState::Reconnecting);
    // While NATS is down a registry write fails with a clear error, not a hang.
    let down = a.registry(|token| ClusterCommand::RegistryUpdate {
        token,
        meta: meta(t, s, "while down", 1),
        revision: rev,
    });
    assert_eq!(down, Err(ClusterError::Unavailable));
    assert_eq!(
        a.append(t, s, 4, "e", b"while down"),
        Err(ClusterError::Unavailable),
        "nothing is appended while NATS is down"
    );

    nats.restart();
    a.wait_state(ConnectionState::Connected);
    b.wait_state(ConnectionState::Connected);

    // Everything is still there; the append chain continues; live delivery resumes.
    let got = poll_until("the registry to answer after the restart", WAIT, || {
        b.get(t, s).ok().flatten()
    });
    assert_eq!((got.meta.name.as_str(), got.revision), ("kept", rev));
    let (events, _) = b.fetch(t, s, 0, None, 100).expect("fetch");
    let bodies: Vec<&[u8]> = events.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(bodies, [&b"before 1"[..], b"before 2", b"before 3"]);
    // The first JetStream request after the restart may still find JetStream starting: the
    // append is then reported failed (outcome unknown), and the owner re-opens the log.
    let stream_seq = poll_until("an append after the restart", WAIT, || {
        match a.append(t, s, 4, "e", b"after") {
            Ok(sseq) => Some(sseq),
            Err(ClusterError::LogNotOpen)
            | Err(ClusterError::Timeout)
            | Err(ClusterError::Nats(_)) => {
                let tail = a.open_log(t, s).ok().flatten()?;
                (tail.seq == 4).then(|| tail.stream_seq.unwrap_or(0))
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    });
    assert!(stream_seq > 0);
    let live = b.wait_for("live event after the restart", |c| match c {
        ClusterCompletion::LiveEvent { event, .. } if event.seq == 4 => Some(event.clone()),
        _ => None,
    });
    assert_eq!(&live.payload[..], b"after");
    a.submit(ClusterCommand::Notify {
        tenant_id: t.into(),
        payload: Bytes::from_static(b"after restart"),
    });
    b.wait_for("notice after the restart", |c| match c {
        ClusterCompletion::TenantNotice { payload, .. } if &payload[..] == b"after restart" => {
            Some(())
        }
        _ => None,
    });
    a.registry(|token| ClusterCommand::RegistryUpdate {
        token,
        meta: meta(t, s, "updated after", 1),
        revision: rev,
    })
    .expect("CAS on the revision from before the restart");
    // B's cache follows writes made after the restart (its watch came back by itself).
    poll_until(
        "B's cache to see the update after the restart",
        WAIT,
        || {
            b.cluster
                .cached_session(t, s)
                .filter(|e| e.meta.name == "updated after")
        },
    );
    assert!(a.cluster.stats().reconnects >= 1);
}

#[test]
fn start_refuses_bad_settings_and_waits_for_a_late_server() {
    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }
    let bad = Cluster::start(
        ClusterConfig::new("not a url at all ::", "x"),
        std::sync::Arc::new(NoWake),
    );
    assert!(bad.is_err());
    for broken in [
        ClusterConfig::new("nats://127.0.0.1:1", ""),
        ClusterConfig {
            lease_renewal: Duration::ZERO,
            ..ClusterConfig::new("nats://127.0.0.1:1", "x")
        },
        ClusterConfig {
            replicas: 0,
            ..ClusterConfig::new("nats://127.0.0.1:1", "x")
        },
    ] {
        assert!(Cluster::start(broken, std::sync::Arc::new(NoWake)).is_err());
    }
    let mut c = ClusterConfig::new("nats://127.0.0.1:1", "x");
    c.creds_file = Some("/nonexistent/creds".into());
    match Cluster::start(c, std::sync::Arc::new(NoWake)) {
        Err(ClusterError::Nats(m)) => assert!(m.contains("--cluster-creds"), "{m}"),
        other => panic!("expected a creds error, got {:?}", other.map(|_| ())),
    }

    // Started before the server exists: reports disconnected, queues commands, then serves them.
    let mut nats = NatsServer::start();
    nats.stop();
    let signal_node = {
        let mut cfg = Node::config(&nats.url(), "late");
        cfg.op_timeout = Duration::from_secs(10);
        cfg
    };
    let cluster = Cluster::start(signal_node, std::sync::Arc::new(NoWake)).expect("start");
    assert_ne!(cluster.connection_state(), ConnectionState::Connected);
    cluster
        .submit(ClusterCommand::ListInstances { token: 7 })
        .expect("submit");
    nats.restart();
    let result = poll_until("the queued command's answer", WAIT, || {
        let mut out = Vec::new();
        cluster.drain_completions(&mut out);
        out.into_iter().find_map(|c| match c {
            ClusterCompletion::Instances { token: 7, result } => Some(result),
            _ => None,
        })
    });
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(cluster.connection_state(), ConnectionState::Connected);
}

#[test]
fn credentials_reach_the_server() {
    let nats = NatsServer::start_with(&["--user", "gw", "--pass", "s3cret"]);
    let mut good = Node::config(&nats.url(), "auth-ok");
    good.user_password = Some(("gw".into(), "s3cret".into()));
    let mut a = Node::start(good);
    assert!(a.list("t").expect("list").is_empty());

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }
    let mut bad = Node::config(&nats.url(), "auth-bad");
    bad.user_password = Some(("gw".into(), "wrong".into()));
    let cluster = Cluster::start(bad, std::sync::Arc::new(NoWake)).expect("start");
    cluster
        .submit(ClusterCommand::ListInstances { token: 1 })
        .expect("submit");
    // The instance with the right password is seen; the other never connects (its request
    // waits for a layout it cannot create, so no answer comes).
    let instances = poll_until("the good instance's liveness entry", WAIT, || {
        let token = a.token();
        a.submit(ClusterCommand::ListInstances { token });
        let list = a.wait_for("instances", |c| match c {
            ClusterCompletion::Instances { token: tk, result } if *tk == token => {
                Some(result.clone())
            }
            _ => None,
        });
        list.ok().filter(|l| !l.is_empty())
    });
    assert_eq!(
        instances
            .iter()
            .map(|i| i.instance.as_str())
            .collect::<Vec<_>>(),
        ["auth-ok"]
    );
    assert_ne!(cluster.connection_state(), ConnectionState::Connected);
    let mut out = Vec::new();
    cluster.drain_completions(&mut out);
    assert!(
        !out.iter()
            .any(|c| matches!(c, ClusterCompletion::Instances { .. })),
        "{out:?}"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the `openssl` command.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=diminuendo test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &p("server.pem"),
        "--tlskey",
        &p("server.key"),
    ]);
    let url = format!("tls://127.0.0.1:{}", nats.port);

    let mut good = Node::config(&url, "tls-ok");
    good.tls_ca = Some(certs.path().join("ca.pem"));
    let mut a = Node::start(good);
    a.registry(|token| ClusterCommand::RegistryCreate {
        token,
        meta: meta("t", "s", "over tls", 1),
    })
    .expect("a write over TLS");

    // Without the CA the server is not trusted: never connected, nothing answered.
    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }
    let untrusting =
        Cluster::start(Node::config(&url, "tls-bad"), std::sync::Arc::new(NoWake)).expect("start");
    untrusting
        .submit(ClusterCommand::ListInstances { token: 1 })
        .expect("submit");
    let seen = poll_until("the trusted instance's liveness entry", WAIT, || {
        let token = a.token();
        a.submit(ClusterCommand::ListInstances { token });
        a.wait_for("instances", |c| match c {
            ClusterCompletion::Instances { token: tk, result } if *tk == token => {
                Some(result.clone())
            }
            _ => None,
        })
        .ok()
        .filter(|l| !l.is_empty())
    });
    assert_eq!(
        seen.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(),
        ["tls-ok"]
    );
    assert_ne!(untrusting.connection_state(), ConnectionState::Connected);
}

#[test]
fn a_refused_append_never_reaches_live_subscribers() {
    // A publish reaches plain subscribers of its subject even when the stream refuses it, so
    // live delivery listens to what the stream republishes once stored, never to the publishes.
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "gw-a"));
    let mut b = Node::start(Node::config(&nats.url(), "gw-b"));
    let (t, s) = ("t", "refused");
    b.subscribe(t, s);
    a.open_log(t, s).expect("open");
    b.open_log(t, s).expect("open");
    let first = b.append(t, s, 1, "e", b"from b").expect("b appends");
    assert!(matches!(
        a.append(t, s, 1, "e", b"from a, refused"),
        Err(ClusterError::Fenced { .. })
    ));
    let second = b.append(t, s, 2, "e", b"from b 2").expect("b appends");
    let mut got = Vec::new();
    while got.last().map(|e: &LogEvent| e.seq) != Some(2) {
        got.push(b.wait_for("live", |c| match c {
            ClusterCompletion::LiveEvent { event, .. } => Some(event.clone()),
            _ => None,
        }));
    }
    let bodies: Vec<&[u8]> = got.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(
        bodies,
        [&b"from b"[..], b"from b 2"],
        "only stored events, in order"
    );
    assert_eq!(
        got.iter().map(|e| e.stream_seq).collect::<Vec<_>>(),
        [Some(first), Some(second)],
        "live events carry their stream sequence"
    );
}
