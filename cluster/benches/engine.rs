//! Figures of the cluster engine against a local `nats-server -js` (file store on a temporary
//! directory, loopback): append→ack latency, append throughput over many sessions, cross-instance
//! live delivery latency, forwarded-command round trip, registry create, catch-up fetch.
//! `cargo bench -p diminuendo-cluster` (the server from `DIMINUENDO_NATS_SERVER`, else the test
//! command's venv). Prints figures; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use common::*;
use diminuendo_cluster::*;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, v: &mut [Duration]) {
    println!(
        "{what:<44} n={:<6} p50 {:>7.1} µs  p99 {:>7.1} µs",
        v.len(),
        pct(v, 0.5).as_secs_f64() * 1e6,
        pct(v, 0.99).as_secs_f64() * 1e6
    );
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"text_delta\",\"sessionId\":\"bench\",\"seq\":{seq},\"ts\":1700000000000,\"turnId\":\"t1\",\"text\":\"a typical streamed chunk of agent text, some tens of bytes\"}}"
    ))
}

fn main() {
    let nats = NatsServer::start();
    let mut a = Node::start(Node::config(&nats.url(), "bench-a"));
    let mut b = Node::start(Node::config(&nats.url(), "bench-b"));
    let t = "bench";

    // 1. Sequential append→ack on one session.
    a.open_log(t, "seq").expect("open");
    let n = 2000u64;
    let mut lat = Vec::new();
    for seq in 1..=n {
        let start = Instant::now();
        a.submit(ClusterCommand::Append {
            tenant_id: t.into(),
            session_id: "seq".into(),
            seq,
            epoch: "e".into(),
            payload: frame(seq),
        });
        a.wait_for("ack", |c| match c {
            ClusterCompletion::Appended { seq: q, result, .. } if *q == seq => Some(result.clone()),
            _ => None,
        })
        .expect("append");
        lat.push(start.elapsed());
    }
    report("append→ack, one session, one at a time", &mut lat);

    // 2. Throughput: 64 sessions, 200 events each, all submitted at once (per session the
    //    appends are sequential: each waits for the previous one's ack).
    let sessions = 64;
    let per = 200u64;
    for s in 0..sessions {
        a.open_log(t, &format!("tp{s}")).expect("open");
    }
    let start = Instant::now();
    for seq in 1..=per {
        for s in 0..sessions {
            a.submit(ClusterCommand::Append {
                tenant_id: t.into(),
                session_id: format!("tp{s}"),
                seq,
                epoch: "e".into(),
                payload: frame(seq),
            });
        }
    }
    let total = sessions as u64 * per;
    let mut acked = 0u64;
    while acked < total {
        a.wait_for("acks", |c| match c {
            ClusterCompletion::Appended { result: Ok(_), .. } => Some(()),
            ClusterCompletion::Appended { result: Err(e), .. } => panic!("append failed: {e}"),
            _ => None,
        });
        acked += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<44} {total} events in {:.2} s: {:.0} events/s",
        format!("append throughput, {sessions} sessions"),
        secs,
        total as f64 / secs
    );
    let st = a.cluster.stats();
    println!(
        "{:<44} mean {:.1} µs over {} appends",
        "  engine-side publish→ack",
        st.append_nanos_total as f64 / st.appends as f64 / 1000.0,
        st.appends
    );

    // 3. Cross-instance live delivery: appended on A, received by B's subscription.
    b.subscribe(t, "live");
    a.open_log(t, "live").expect("open");
    let mut lat = Vec::new();
    for seq in 1..=2000u64 {
        let start = Instant::now();
        a.submit(ClusterCommand::Append {
            tenant_id: t.into(),
            session_id: "live".into(),
            seq,
            epoch: "e".into(),
            payload: frame(seq),
        });
        b.wait_for("live", |c| match c {
            ClusterCompletion::LiveEvent { event, .. } if event.seq == seq => Some(()),
            _ => None,
        });
        lat.push(start.elapsed());
        a.wait_for("ack", |c| match c {
            ClusterCompletion::Appended { seq: q, .. } if *q == seq => Some(()),
            _ => None,
        });
    }
    report("append on A → live event on B", &mut lat);

    // 4. A command forwarded from B to the owner A and answered.
    a.submit(ClusterCommand::ServeCommands {
        session_id: "owned".into(),
    });
    a.wait_for("serving", |c| match c {
        ClusterCompletion::Serving { result, .. } => Some(result.clone()),
        _ => None,
    })
    .expect("serve");
    let mut lat = Vec::new();
    for _ in 0..2000 {
        let token = b.token();
        let start = Instant::now();
        b.submit(ClusterCommand::Forward {
            token,
            session_id: "owned".into(),
            payload: Bytes::from_static(b"{\"type\":\"steer\",\"requestId\":\"r\",\"text\":\"x\"}"),
        });
        let request = a.wait_for("request", |c| match c {
            ClusterCompletion::CommandRequest { request, .. } => Some(*request),
            _ => None,
        });
        a.submit(ClusterCommand::Reply {
            request,
            payload: Bytes::from_static(b"{\"type\":\"ok\"}"),
        });
        b.wait_for("reply", |c| match c {
            ClusterCompletion::Forwarded { token: tk, result } if *tk == token => {
                Some(result.clone())
            }
            _ => None,
        })
        .expect("forwarded");
        lat.push(start.elapsed());
    }
    report("forwarded command B → A → reply on B", &mut lat);

    // 5. Registry create (acknowledged KV write), the durable part of create_session.
    let mut lat = Vec::new();
    for i in 0..2000 {
        let start = Instant::now();
        a.registry(|token| ClusterCommand::RegistryCreate {
            token,
            meta: meta(t, &format!("s{i}"), "bench", i),
        })
        .expect("create");
        lat.push(start.elapsed());
    }
    report("registry create (KV create, acknowledged)", &mut lat);

    // 6. Catch-up: the last 100 events of a 2000-event session from an instance that never saw
    //    it (the search over stream sequences), and the whole session.
    let mut c = Node::start(Node::config(&nats.url(), "bench-c"));
    let mut lat = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let (events, _) = c.fetch(t, "seq", n - 100, None, 1000).expect("fetch");
        assert_eq!(events.len(), 100);
        lat.push(start.elapsed());
    }
    report("fetch last 100 of 2000 (no position known)", &mut lat);
    let mut lat = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let (events, _) = c.fetch(t, "seq", 0, None, 10_000).expect("fetch");
        assert_eq!(events.len() as u64, n);
        lat.push(start.elapsed());
    }
    report("fetch all 2000 events", &mut lat);
    drop((a, b, c));
    drop(nats);
}
