//! Cluster mode on the simulated engine (`sim::cluster`): several gateways against a model of
//! NATS JetStream (a KV registry with compare-and-set, leases expiring with simulated time, a
//! log fenced by the expected last subject sequence, live delivery delayed, reordered and lost,
//! request/reply, notifications).
//!
//! Proven here, on fixed scenarios and on schedules proptest chooses:
//! - delivery across instances: every `/ws` client of every instance sees each session's
//!   events in `seq` order with no gap and no duplicate from its join point, or is told to join
//!   again (an explicit reload); once the schedule settles, every client still joined has every
//!   event the log stored (two sessions at once, owned by any instance);
//! - create on one instance, list and join on another; a turn started from any instance runs on
//!   the owner and is seen live everywhere;
//! - a fenced former owner cannot append (its agent is killed, its events never reach the log);
//! - ownership is taken over after the lease expires (a killed owner), the cut turn ends
//!   `INTERRUPTED`, the log continues under a new epoch;
//! - an acknowledged session (`session_created` received) is never lost;
//! - registry changes made on any instance reach every instance's clients, after the
//!   acknowledged KV write; `/readyz` is 503 and changes are refused while NATS is away;
//! - the next owner's agent reopens the previous owner's agent session (`session/load`), and an
//!   idle owner's clean release keeps the epoch.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::sim::client;
use diminuendo_core::sim::cluster::SimCluster;
use diminuendo_core::{ConnectionId, CoreConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

const RENEWAL: Duration = Duration::from_secs(1);

fn config() -> CoreConfig {
    CoreConfig {
        coalesce_deltas: false,
        ..dev()
    }
}

/// What one client has seen of one session.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The last seq delivered since the join; `None` when not joined.
    last: Option<u64>,
    /// Every seq delivered live or replayed, in order (for the final check).
    seqs: Vec<u64>,
    reloads: u32,
}

/// A client on one instance, and the model checking what it receives.
struct Client {
    node: usize,
    id: ConnectionId,
    seen: BTreeMap<String, Seen>,
    replies: Vec<Value>,
    all: Vec<Value>,
}

impl Client {
    fn open(cluster: &mut SimCluster, node: usize) -> Client {
        let id = open_ws(&mut cluster.nodes[node]);
        Client {
            node,
            id,
            seen: BTreeMap::new(),
            replies: Vec::new(),
            all: Vec::new(),
        }
    }

    fn send(&self, cluster: &mut SimCluster, message: Value) {
        cluster.nodes[self.node].send(self.id, &client::text(&message.to_string()));
        cluster.collect();
    }

    /// Takes what arrived and checks it: per session, seqs exactly one more than the last.
    fn read(&mut self, cluster: &mut SimCluster) {
        for message in cluster.nodes[self.node].take_messages(self.id) {
            self.check(&message);
            if message.get("requestId").is_some() {
                self.replies.push(message.clone());
            }
            self.all.push(message);
        }
    }

    fn check(&mut self, message: &Value) {
        if std::env::var("DIMINUENDO_SIM_TRACE").is_ok() {
            eprintln!("node {} <- {}", self.node, message);
        }
        let kind = message["type"].as_str().unwrap_or_default();
        if kind == "session_joined" {
            let session = message["session"]["id"].as_str().unwrap_or_default();
            let last = message["lastSeq"].as_u64().expect("lastSeq");
            let seen = self.seen.entry(session.to_owned()).or_default();
            let events = message["events"].as_array().cloned().unwrap_or_default();
            if let (Some(first), Some(after)) = (events.first(), seen.last) {
                assert_eq!(
                    first["seq"].as_u64(),
                    Some(after + 1),
                    "replay starts after afterSeq"
                );
            }
            for (index, event) in events.iter().enumerate() {
                let seq = event["seq"].as_u64().expect("seq");
                if index > 0 {
                    assert_eq!(Some(seq), events[index - 1]["seq"].as_u64().map(|s| s + 1));
                }
                seen.seqs.push(seq);
            }
            if let Some(event) = events.last() {
                assert_eq!(
                    event["seq"].as_u64(),
                    Some(last),
                    "a replay ends at lastSeq"
                );
            }
            seen.last = Some(last);
            return;
        }
        if kind == "session_left" {
            // Asked for (`leave_session`), or unasked: the session moved to another instance
            // and this client may have seen events the log never stored; it must join again
            // (an explicit reload).
            let session = message["sessionId"].as_str().unwrap_or_default();
            if let Some(seen) = self.seen.get_mut(session) {
                seen.last = None;
                if message.get("requestId").is_none() {
                    seen.reloads += 1;
                }
            }
            return;
        }
        let (Some(seq), Some(session)) = (message["seq"].as_u64(), message["sessionId"].as_str())
        else {
            return;
        };
        let seen = self.seen.entry(session.to_owned()).or_default();
        let Some(last) = seen.last else {
            panic!("an event of a session not joined: {message}");
        };
        assert_eq!(
            seq,
            last + 1,
            "a gap or a duplicate on instance {}: {message}",
            self.node
        );
        seen.last = Some(seq);
        seen.seqs.push(seq);
    }

    /// The reply to the request `request_id`, if it came.
    fn reply(&self, request_id: &str) -> Option<&Value> {
        self.replies.iter().find(|r| r["requestId"] == request_id)
    }
}

fn settle(cluster: &mut SimCluster, clients: &mut [Client]) {
    for _ in 0..200 {
        let moving = cluster.step();
        for client in clients.iter_mut() {
            client.read(cluster);
        }
        if !moving {
            break;
        }
    }
}

fn create(cluster: &mut SimCluster, clients: &mut [Client], on: usize) -> String {
    clients[on].send(
        cluster,
        json!({"type": "create_session", "agentType": "echo", "requestId": "create"}),
    );
    settle(cluster, clients);
    let reply = clients[on]
        .reply("create")
        .cloned()
        .expect("session_created");
    assert_eq!(reply["type"], "session_created", "{reply}");
    reply["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn join(cluster: &mut SimCluster, clients: &mut [Client], who: usize, session: &str, tag: &str) {
    clients[who].send(
        cluster,
        json!({"type": "join_session", "sessionId": session, "requestId": tag}),
    );
    settle(cluster, clients);
    let reply = clients[who].reply(tag).cloned().expect("a join reply");
    assert_eq!(reply["type"], "session_joined", "{reply}");
}

fn log_seqs(cluster: &SimCluster, session: &str) -> Vec<u64> {
    cluster
        .engine
        .log
        .get(session)
        .map(|log| log.iter().map(|e| e.seq).collect())
        .unwrap_or_default()
}

fn owner(cluster: &SimCluster, session: &str) -> Option<usize> {
    (0..cluster.nodes.len()).find(|&n| {
        cluster.nodes[n]
            .gateway
            .cluster_status()
            .is_some_and(|s| s.owned.iter().any(|id| id == session))
    })
}

#[test]
fn create_on_a_list_on_c_turn_from_b_seen_everywhere_in_order() {
    let mut cluster = SimCluster::new(3, config(), 11, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..3).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    clients[2].send(
        &mut cluster,
        json!({"type": "list_sessions", "requestId": "list"}),
    );
    settle(&mut cluster, &mut clients);
    let list = clients[2].reply("list").cloned().expect("session_list");
    assert_eq!(list["sessions"][0]["id"], session.as_str(), "{list}");
    for who in 0..3 {
        join(&mut cluster, &mut clients, who, &session, "join");
    }
    clients[1].send(
        &mut cluster,
        json!({"type": "run_turn", "sessionId": session, "text": "stream 5", "requestId": "t1"}),
    );
    settle(&mut cluster, &mut clients);
    let accepted = clients[1].reply("t1").cloned().expect("turn_accepted");
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    assert_eq!(
        owner(&cluster, &session),
        Some(1),
        "the turn runs where it was asked"
    );
    // A second turn from A is forwarded to B and relayed.
    clients[0].send(
        &mut cluster,
        json!({"type": "run_turn", "sessionId": session, "text": "stream 3", "requestId": "t2"}),
    );
    settle(&mut cluster, &mut clients);
    let accepted = clients[0].reply("t2").cloned().expect("a relayed reply");
    assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
    assert!(cluster.nodes[0].gateway.metrics().cluster_forwarded >= 1);
    let log = log_seqs(&cluster, &session);
    assert!(log.len() > 10, "{log:?}");
    assert_eq!(log, (1..=log.len() as u64).collect::<Vec<_>>());
    for client in &clients {
        assert_eq!(client.seen[&session].seqs, log, "instance {}", client.node);
    }
    // The history, read on an instance that ran neither turn, is rebuilt from the log.
    clients[2].send(
        &mut cluster,
        json!({"type": "get_history", "sessionId": session, "requestId": "h"}),
    );
    settle(&mut cluster, &mut clients);
    let history = clients[2].reply("h").cloned().expect("history");
    assert_eq!(history["type"], "history", "{history}");
    let turns = history["turns"].as_array().cloned().unwrap_or_default();
    assert_eq!(turns.len(), 2, "{history}");
    assert_eq!(turns[0]["userText"], "stream 5", "{history}");
    assert_eq!(turns[1]["userText"], "stream 3", "{history}");
    assert_eq!(turns[1]["finalText"], "c0 c1 c2 ", "{history}");
}

fn turn(
    cluster: &mut SimCluster,
    clients: &mut [Client],
    who: usize,
    session: &str,
    text: &str,
    tag: &str,
) -> Value {
    clients[who].send(
        cluster,
        json!({"type": "run_turn", "sessionId": session, "text": text, "requestId": tag}),
    );
    settle(cluster, clients);
    clients[who].reply(tag).cloned().unwrap_or(Value::Null)
}

fn logged(cluster: &SimCluster, session: &str) -> Vec<Value> {
    cluster
        .engine
        .log
        .get(session)
        .map(|log| {
            log.iter()
                .map(|e| serde_json::from_slice(&e.payload).expect("a JSON event"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_owner_is_taken_over_after_its_lease_expires_and_the_cut_turn_ends_interrupted() {
    let mut cluster = SimCluster::new(3, config(), 21, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..3).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    for who in 0..3 {
        join(&mut cluster, &mut clients, who, &session, "join");
    }
    let reply = turn(&mut cluster, &mut clients, 1, &session, "stream 2", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    let epoch_before = cluster.engine.log[&session].last().map(|e| e.epoch.clone());
    // The agent's own session id is in the registry: the next owner's agent reopens it
    // (`session/resume` or `session/load`, when the agent can).
    assert_eq!(
        cluster.engine.registry[&session]
            .0
            .acp_session_id
            .as_deref(),
        Some("sim-session")
    );
    // The next turn's agent never answers: it is running when its instance is killed.
    cluster.nodes[1].agent_mode = diminuendo_core::sim::AgentMode::Manual;
    let reply = turn(&mut cluster, &mut clients, 1, &session, "hang", "t2");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    let cut = reply["turnId"].as_str().expect("turnId").to_owned();
    // A client joining on another instance gets the running turn in its snapshot, as on one
    // node.
    let mut late = Client::open(&mut cluster, 0);
    late.send(
        &mut cluster,
        json!({"type": "join_session", "sessionId": session, "requestId": "late"}),
    );
    settle(&mut cluster, &mut clients);
    late.read(&mut cluster);
    let joined = late.reply("late").cloned().expect("session_joined");
    assert_eq!(joined["turn"]["turnId"], cut.as_str(), "{joined}");
    assert_eq!(joined["turn"]["text"], "hang", "{joined}");
    cluster.restart(1);
    clients[1] = Client::open(&mut cluster, 1);
    // Before the lease expires nobody can take the session: the turn is refused, not lost.
    let early = turn(&mut cluster, &mut clients, 2, &session, "early", "t3");
    assert_eq!(early["type"], "error", "{early}");
    for _ in 0..8 {
        cluster.advance(Duration::from_millis(500));
        settle(&mut cluster, &mut clients);
    }
    let reply = turn(&mut cluster, &mut clients, 2, &session, "stream 3", "t4");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    assert_eq!(owner(&cluster, &session), Some(2));
    let events = logged(&cluster, &session);
    let interrupted: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "turn_error" && e["turnId"] == cut.as_str())
        .collect();
    assert_eq!(interrupted.len(), 1, "{events:?}");
    assert_eq!(interrupted[0]["code"], "INTERRUPTED");
    let log = log_seqs(&cluster, &session);
    assert_eq!(
        log,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "one log, no seq twice"
    );
    let epoch_after = cluster.engine.log[&session].last().map(|e| e.epoch.clone());
    assert_ne!(
        epoch_before, epoch_after,
        "events may have been lost: a new epoch"
    );
    assert!(events
        .iter()
        .any(|e| e["type"] == "turn_complete" && e["turnId"] == reply["turnId"]));
    for who in [0, 2] {
        assert_eq!(clients[who].seen[&session].seqs, log, "instance {who}");
    }
    // The registry still has the session (acknowledged, never lost).
    assert!(cluster.engine.registry.contains_key(&session));
}

#[test]
fn a_fenced_former_owner_cannot_append_and_kills_its_agent() {
    let mut cluster = SimCluster::new(2, config(), 31, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..2).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    for who in 0..2 {
        join(&mut cluster, &mut clients, who, &session, "join");
    }
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 2", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    assert_eq!(owner(&cluster, &session), Some(0));
    let old_agent = cluster.nodes[0]
        .agent_of(&session)
        .expect("the owner's agent");
    // A partition: A's lease expires without A knowing; B takes the session over.
    cluster.cut_off(0, &session);
    let reply = turn(&mut cluster, &mut clients, 1, &session, "stream 2", "t2");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    assert_eq!(owner(&cluster, &session).map(|_| ()), Some(()));
    let log_before = log_seqs(&cluster, &session);
    // A still believes it owns the session; its next publish is refused by the fence.
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 2", "t3");
    let _ = reply;
    settle(&mut cluster, &mut clients);
    assert!(
        cluster.engine.fenced >= 1,
        "the stale owner's append was refused"
    );
    assert_eq!(cluster.nodes[0].gateway.metrics().cluster_leases_lost, 1);
    assert!(
        !cluster.nodes[0].agents[&old_agent].alive,
        "its agent is stopped at once"
    );
    assert!(!cluster.nodes[0]
        .gateway
        .cluster_status()
        .is_some_and(|s| s.owned.contains(&session)));
    let log = log_seqs(&cluster, &session);
    assert_eq!(log, (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        log, log_before,
        "nothing of the stale owner reached the log"
    );
    assert_eq!(clients[1].seen[&session].seqs, log);
    // A's client saw events the log never stored: it was told to join again.
    assert_eq!(clients[0].seen[&session].reloads, 1);
}

// ------------------------------------------------------------------ schedules proptest picks

#[derive(Debug, Clone)]
enum Op {
    /// The client on this instance asks for a turn streaming this many chunks, in this session.
    Turn(usize, u8, usize),
    /// Messages move this many steps.
    Step(u8),
    /// Simulated time passes (leases renew or expire, idle sessions deactivate).
    Advance(u16),
    /// The instance is killed (SIGKILL) and replaced; its client reconnects and joins.
    Kill(usize),
    /// The client on this instance joins the session again, resuming after what it has.
    Rejoin(usize, usize),
    /// The session's owner's lease expires without it knowing (a partition).
    CutOff(usize),
    /// The client on this instance leaves the session.
    Leave(usize, usize),
    /// The agents of this instance answer nothing more (a turn then hangs until the instance
    /// is killed, or cut off, and the turn is cut).
    Hang(usize),
    /// The instance stops (SIGSTOP) or continues (SIGCONT).
    Freeze(usize),
    Thaw(usize),
}

/// Sessions in each schedule.
const SESSIONS: usize = 2;

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..nodes, 1u8..6, 0..SESSIONS).prop_map(|(n, c, s)| Op::Turn(n, c, s)),
        4 => (1u8..6).prop_map(Op::Step),
        2 => (100u16..2500).prop_map(Op::Advance),
        1 => (0..nodes).prop_map(Op::Kill),
        1 => (0..nodes, 0..SESSIONS).prop_map(|(n, s)| Op::Rejoin(n, s)),
        1 => (0..SESSIONS).prop_map(Op::CutOff),
        1 => (0..nodes, 0..SESSIONS).prop_map(|(n, s)| Op::Leave(n, s)),
        1 => (0..nodes).prop_map(Op::Hang),
        1 => (0..nodes).prop_map(Op::Freeze),
        1 => (0..nodes).prop_map(Op::Thaw),
    ]
}

/// What a schedule exercised (summed over the instances alive at its end, and the engine).
#[derive(Debug, Default, Clone, Copy)]
struct Exercised {
    forwarded: u64,
    catchup_fetches: u64,
    leases_lost: u64,
    renewals: u64,
    fenced: u64,
    reloads: u64,
    interrupted: u64,
}

fn run(seed: u64, lose_one_in: u64, max_delay: u64, ops: &[Op]) -> Exercised {
    let nodes = 3;
    let mut cluster = SimCluster::new(nodes, config(), seed, Instant::now(), RENEWAL);
    cluster.lose_one_in = lose_one_in;
    cluster.max_delay = max_delay;
    let mut clients: Vec<Client> = (0..nodes).map(|n| Client::open(&mut cluster, n)).collect();
    let sessions: Vec<String> = (0..SESSIONS)
        .map(|s| create(&mut cluster, &mut clients, s % nodes))
        .collect();
    for session in &sessions {
        for who in 0..nodes {
            join(&mut cluster, &mut clients, who, session, "join");
        }
    }
    let join_message = |session: &str| json!({"type": "join_session", "sessionId": session, "requestId": "rejoin"});
    for (index, op) in ops.iter().enumerate() {
        // A frozen instance reads nothing from its clients (their requests wait in its socket).
        let frozen = |who: usize| cluster.is_frozen(who);
        match *op {
            Op::Turn(who, _, _) | Op::Rejoin(who, _) | Op::Leave(who, _) if frozen(who) => {}
            Op::Turn(who, chunks, s) => clients[who].send(
                &mut cluster,
                json!({"type": "run_turn", "sessionId": sessions[s],
                    "text": format!("stream {chunks}"), "requestId": format!("t{index}")}),
            ),
            Op::Step(steps) => {
                for _ in 0..steps {
                    cluster.step();
                    for client in clients.iter_mut() {
                        client.read(&mut cluster);
                    }
                }
            }
            Op::Advance(ms) => {
                cluster.advance(Duration::from_millis(ms as u64));
                for client in clients.iter_mut() {
                    client.read(&mut cluster);
                }
            }
            Op::Kill(who) => {
                cluster.restart(who);
                clients[who] = Client::open(&mut cluster, who);
                for session in &sessions {
                    clients[who].send(&mut cluster, join_message(session));
                }
            }
            Op::Rejoin(who, s) => {
                let after = clients[who]
                    .seen
                    .get(&sessions[s])
                    .and_then(|seen| seen.last);
                let mut message = join_message(&sessions[s]);
                if let Some(after) = after {
                    message["afterSeq"] = json!(after);
                }
                clients[who].send(&mut cluster, message);
            }
            Op::Hang(who) => {
                cluster.nodes[who].agent_mode = diminuendo_core::sim::AgentMode::Manual;
            }
            Op::Freeze(who) => cluster.freeze(who),
            Op::Thaw(who) => cluster.thaw(who),
            Op::Leave(who, s) => clients[who].send(
                &mut cluster,
                json!({"type": "leave_session", "sessionId": sessions[s], "requestId": "leave"}),
            ),
            Op::CutOff(s) => {
                if let Some(owner) = owner(&cluster, &sessions[s]) {
                    cluster.cut_off(owner, &sessions[s]);
                }
            }
        }
        for client in clients.iter_mut() {
            client.read(&mut cluster);
        }
    }
    // Settle: every instance running, every message delivered, leases renewed or expired.
    for who in 0..nodes {
        cluster.thaw(who);
    }
    for _ in 0..12 {
        settle(&mut cluster, &mut clients);
        cluster.advance(Duration::from_millis(400));
    }
    settle(&mut cluster, &mut clients);
    // Clients told to join again do so now, and everyone must catch up with the log.
    for session in &sessions {
        for who in 0..nodes {
            if clients[who]
                .seen
                .get(session)
                .is_none_or(|seen| seen.last.is_none())
            {
                clients[who].replies.clear();
                join(&mut cluster, &mut clients, who, session, "final");
            }
        }
    }
    settle(&mut cluster, &mut clients);
    for session in &sessions {
        let log = log_seqs(&cluster, session);
        assert_eq!(
            log,
            (1..=log.len() as u64).collect::<Vec<_>>(),
            "the log has each seq once, in order"
        );
        for client in &clients {
            let seen = &client.seen[session];
            assert_eq!(
                seen.last,
                log.last().copied().or(Some(0)),
                "instance {} is behind the log ({:?})",
                client.node,
                seen.seqs
            );
        }
        assert!(
            cluster.engine.registry.contains_key(session),
            "the session was never lost"
        );
    }
    let mut exercised = Exercised {
        fenced: cluster.engine.fenced,
        interrupted: sessions
            .iter()
            .flat_map(|session| logged(&cluster, session))
            .filter(|e| e["code"] == "INTERRUPTED")
            .count() as u64,
        ..Exercised::default()
    };
    for node in &cluster.nodes {
        let metrics = node.gateway.metrics();
        exercised.forwarded += metrics.cluster_forwarded;
        exercised.catchup_fetches += metrics.cluster_catchup_fetches;
        exercised.leases_lost += metrics.cluster_leases_lost;
        exercised.renewals += metrics.cluster_lease_renewals;
    }
    exercised.reloads = clients
        .iter()
        .map(|c| c.seen.values().map(|s| s.reloads as u64).sum::<u64>())
        .sum();
    exercised
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_instance_delivers_every_event_in_order_with_no_gap_and_no_duplicate(
        seed in 1u64..1_000_000,
        lossy in any::<bool>(),
        max_delay in 0u64..5,
        ops in proptest::collection::vec(op(3), 1..40),
    ) {
        run(seed, if lossy { 4 } else { 0 }, max_delay, &ops);
    }
}

/// The schedules the strategy generates do reach every mechanism the proptest is meant to
/// prove (a proptest that never forwards or never takes over would prove nothing of them).
#[test]
fn the_generated_schedules_exercise_every_mechanism() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = (
        1u64..1_000_000,
        any::<bool>(),
        0u64..5,
        proptest::collection::vec(op(3), 1..40),
    );
    let mut total = Exercised::default();
    for _ in 0..200 {
        let (seed, lossy, max_delay, ops) = strategy
            .new_tree(&mut runner)
            .expect("a schedule")
            .current();
        let e = run(seed, if lossy { 4 } else { 0 }, max_delay, &ops);
        total.forwarded += e.forwarded;
        total.catchup_fetches += e.catchup_fetches;
        total.leases_lost += e.leases_lost;
        total.renewals += e.renewals;
        total.fenced += e.fenced;
        total.reloads += e.reloads;
        total.interrupted += e.interrupted;
    }
    assert!(total.forwarded > 0, "{total:?}");
    assert!(total.catchup_fetches > 0, "{total:?}");
    assert!(total.leases_lost > 0, "{total:?}");
    assert!(total.renewals > 0, "{total:?}");
    assert!(total.fenced > 0, "{total:?}");
    assert!(total.reloads > 0, "{total:?}");
    assert!(total.interrupted > 0, "{total:?}");
}

/// Found by the proptest: a join sent while the lease was being acquired on its instance was
/// answered after the turn had published there, and its old subscription still delivered
/// meanwhile (a duplicate).
#[test]
fn a_join_sent_while_the_lease_is_acquired_replaces_the_subscription_at_once() {
    let ops = [
        Op::Turn(1, 1, 0),
        Op::Step(2),
        Op::Rejoin(1, 0),
        Op::Turn(0, 1, 0),
    ];
    let _ = run(13860, 0, 1, &ops);
}

#[test]
fn an_idle_owner_releases_its_lease_and_the_next_owner_keeps_the_epoch() {
    let config = CoreConfig {
        idle_session_timeout: Duration::from_secs(2),
        ..config()
    };
    let mut cluster = SimCluster::new(2, config, 41, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..2).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    join(&mut cluster, &mut clients, 1, &session, "join");
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 2", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    // Nobody is joined on A: once idle, A stops the agent, records the last event, releases.
    for _ in 0..10 {
        cluster.advance(Duration::from_millis(500));
        settle(&mut cluster, &mut clients);
    }
    assert_eq!(owner(&cluster, &session), None);
    assert!(
        !cluster.engine.leases.contains_key(&session),
        "the lease was released"
    );
    let (meta, _) = &cluster.engine.registry[&session];
    assert_eq!(meta.status, "inactive");
    let log = log_seqs(&cluster, &session);
    assert_eq!(meta.last_seq, *log.last().expect("events"));
    assert!(cluster.nodes[0].gateway.metrics().cluster_lease_renewals >= 1);
    let epoch = cluster.engine.log[&session].last().map(|e| e.epoch.clone());
    // B takes it at once (no lease to wait for) and continues the same epoch.
    let reply = turn(&mut cluster, &mut clients, 1, &session, "stream 1", "t2");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    assert_eq!(owner(&cluster, &session), Some(1));
    assert_eq!(
        cluster.engine.log[&session].last().map(|e| e.epoch.clone()),
        epoch
    );
    let log = log_seqs(&cluster, &session);
    assert_eq!(log, (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(clients[1].seen[&session].seqs, log);
}

/// Found by the proptest: a feed's fetch that ended while the lease was being acquired (before
/// the log was opened) took the acquisition for done and dropped the requests waiting for it
/// (a join never answered, a client left behind).
#[test]
fn a_fetch_ending_while_the_lease_is_acquired_does_not_drop_the_waiting_requests() {
    use Op::*;
    let ops = [
        Turn(2, 2, 0),
        Step(2),
        Step(5),
        Turn(1, 1, 0),
        Step(2),
        Turn(0, 1, 0),
        Advance(1000),
        Step(2),
        Turn(0, 1, 0),
        Kill(2),
        Advance(1397),
        Step(2),
        Step(1),
        Turn(1, 1, 0),
        Step(3),
        Rejoin(1, 0),
        Turn(0, 1, 0),
        Advance(1603),
    ];
    let _ = run(721868, 4, 4, &ops);
}

/// Found by the proptest: the previous owner, cut off without knowing, appended after the new
/// owner opened the log; the new owner's watchers got those events, then the new owner reused
/// their seqs. It now opens the log again until it is the last to have appended.
#[test]
fn a_take_over_reopens_the_log_while_a_cut_off_owner_still_appends() {
    use Op::*;
    let ops = [
        Turn(1, 1, 0),
        Turn(1, 1, 0),
        Turn(1, 1, 0),
        Turn(2, 5, 0),
        Step(3),
        Step(3),
        CutOff(0),
        Turn(0, 1, 0),
        Step(1),
        Turn(2, 2, 0),
        Step(1),
    ];
    let _ = run(765552, 4, 3, &ops);
}

#[test]
fn registry_changes_on_any_instance_reach_every_instance_after_the_acknowledged_write() {
    let mut cluster = SimCluster::new(3, config(), 51, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..3).map(|n| Client::open(&mut cluster, n)).collect();
    // Every instance watches the tenant once one of its clients asked anything.
    for client in &clients {
        client.send(
            &mut cluster,
            json!({"type": "list_sessions", "requestId": "l0"}),
        );
    }
    settle(&mut cluster, &mut clients);
    let session = create(&mut cluster, &mut clients, 0);
    for who in [1, 2] {
        assert!(
            clients[who]
                .all
                .iter()
                .any(|m| m["type"] == "session_created" && m["session"]["id"] == session.as_str()),
            "instance {who} was told of the new session"
        );
    }
    // Renamed on C, which never read the entry's revision.
    clients[2].send(
        &mut cluster,
        json!({"type": "rename_session", "sessionId": session, "name": "renamed", "requestId": "rn"}),
    );
    settle(&mut cluster, &mut clients);
    let reply = clients[2].reply("rn").cloned().expect("a reply");
    assert_eq!(reply["type"], "session_updated", "{reply}");
    assert_eq!(cluster.engine.registry[&session].0.name, "renamed");
    clients[1].send(
        &mut cluster,
        json!({"type": "list_sessions", "requestId": "l1"}),
    );
    settle(&mut cluster, &mut clients);
    let list = clients[1].reply("l1").cloned().expect("session_list");
    assert_eq!(list["sessions"][0]["name"], "renamed", "{list}");
    // A turn, then a delete on B: the registry entry and the log are gone, everyone is told.
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 1", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    clients[1].send(
        &mut cluster,
        json!({"type": "delete_session", "sessionId": session, "requestId": "del"}),
    );
    settle(&mut cluster, &mut clients);
    let reply = clients[1].reply("del").cloned().expect("a reply");
    assert_eq!(reply["type"], "session_deleted", "{reply}");
    assert!(!cluster.engine.registry.contains_key(&session));
    assert!(
        !cluster.engine.log.contains_key(&session),
        "the log was purged"
    );
    for who in [0, 2] {
        assert!(
            clients[who]
                .all
                .iter()
                .any(|m| m["type"] == "session_deleted"),
            "instance {who} was told of the deletion"
        );
    }
}

#[test]
fn while_nats_is_unreachable_readyz_is_503_and_changes_are_refused() {
    use diminuendo_core::cluster::{ClusterCompletion, ConnectionState};
    let mut cluster = SimCluster::new(1, config(), 61, Instant::now(), RENEWAL);
    let (_, ready) = one_response(&mut cluster.nodes[0], &request("GET", "/readyz", ""));
    assert_eq!(ready.status, 200);
    cluster.nodes[0].cluster_input(ClusterCompletion::Connection {
        state: ConnectionState::Reconnecting,
    });
    let (_, ready) = one_response(&mut cluster.nodes[0], &request("GET", "/readyz", ""));
    assert_eq!(ready.status, 503);
    let (_, health) = one_response(&mut cluster.nodes[0], &request("GET", "/health", ""));
    let health: Value = serde_json::from_slice(&health.body).expect("JSON");
    assert_eq!(health["cluster"]["instance"], "gw-0", "{health}");
    assert_eq!(health["cluster"]["nats"], "reconnecting", "{health}");
    let mut clients = vec![Client::open(&mut cluster, 0)];
    clients[0].send(
        &mut cluster,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    settle(&mut cluster, &mut clients);
    let reply = clients[0].reply("c").cloned().expect("a reply");
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(cluster.engine.registry.is_empty());
    cluster.nodes[0].cluster_input(ClusterCompletion::Connection {
        state: ConnectionState::Connected,
    });
    let (_, ready) = one_response(&mut cluster.nodes[0], &request("GET", "/readyz", ""));
    assert_eq!(ready.status, 200);
}

#[test]
fn the_next_owner_s_agent_reopens_the_agent_session_of_the_previous_one() {
    let mut cluster = SimCluster::new(2, config(), 71, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..2).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    let reply = turn(&mut cluster, &mut clients, 0, &session, "remember 42", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    cluster.restart(0);
    for _ in 0..8 {
        cluster.advance(Duration::from_millis(500));
        settle(&mut cluster, &mut clients);
    }
    cluster.nodes[1].agent_mode = diminuendo_core::sim::AgentMode::Manual;
    let _ = turn(
        &mut cluster,
        &mut clients,
        1,
        &session,
        "what was it?",
        "t2",
    );
    let agent = cluster.nodes[1].agent_of(&session).expect("an agent on B");
    let initialize = cluster.nodes[1].agents[&agent].written[0].clone();
    assert_eq!(initialize["method"], "initialize");
    cluster.nodes[1].agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": initialize["id"],
            "result": {"protocolVersion": 1, "agentCapabilities": {"loadSession": true}}}),
    );
    settle(&mut cluster, &mut clients);
    let reopen = cluster.nodes[1].agents[&agent].written[1].clone();
    assert_eq!(reopen["method"], "session/load", "{reopen}");
    assert_eq!(reopen["params"]["sessionId"], "sim-session", "{reopen}");
}

#[test]
fn the_owner_s_status_write_racing_a_rename_elsewhere_keeps_the_new_name() {
    let mut cluster = SimCluster::new(2, config(), 81, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..2).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    join(&mut cluster, &mut clients, 1, &session, "join");
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 1", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    // B renames; before A hears of it, A writes the session's status (a new turn).
    clients[1].send(
        &mut cluster,
        json!({"type": "rename_session", "sessionId": session, "name": "renamed", "requestId": "rn"}),
    );
    clients[0].send(
        &mut cluster,
        json!({"type": "run_turn", "sessionId": session, "text": "stream 1", "requestId": "t2"}),
    );
    settle(&mut cluster, &mut clients);
    assert_eq!(
        clients[1].reply("rn").map(|r| r["type"].clone()),
        Some(json!("session_updated"))
    );
    let (meta, _) = &cluster.engine.registry[&session];
    assert_eq!(
        meta.name, "renamed",
        "the owner's write did not undo the rename"
    );
    assert_eq!(meta.status, "ready");
}

#[test]
fn a_frozen_owner_is_taken_over_once_its_lease_expired_and_gives_up_when_it_wakes() {
    let mut cluster = SimCluster::new(3, config(), 91, Instant::now(), RENEWAL);
    let mut clients: Vec<Client> = (0..3).map(|n| Client::open(&mut cluster, n)).collect();
    let session = create(&mut cluster, &mut clients, 0);
    for who in 0..3 {
        join(&mut cluster, &mut clients, who, &session, "join");
    }
    let reply = turn(&mut cluster, &mut clients, 0, &session, "stream 2", "t1");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    let old_agent = cluster.nodes[0].agent_of(&session).expect("A's agent");
    // A freezes (SIGSTOP): what is forwarded to it times out; its lease still lives.
    cluster.freeze(0);
    let early = turn(&mut cluster, &mut clients, 1, &session, "stream 1", "t2");
    assert_eq!(early["code"], "AGENT_UNAVAILABLE", "{early}");
    for _ in 0..8 {
        cluster.advance(Duration::from_millis(500));
        settle(&mut cluster, &mut clients);
    }
    // Its lease expired: B's turn times out on A, then takes the lease.
    let reply = turn(&mut cluster, &mut clients, 1, &session, "stream 1", "t3");
    assert_eq!(reply["type"], "turn_accepted", "{reply}");
    assert!(cluster.nodes[1]
        .gateway
        .cluster_status()
        .is_some_and(|s| s.owned.contains(&session)));
    // A wakes: its renewals are overdue, it gives the session up and kills its agent.
    cluster.thaw(0);
    settle(&mut cluster, &mut clients);
    assert_eq!(cluster.nodes[0].gateway.metrics().cluster_leases_lost, 1);
    assert!(!cluster.nodes[0].agents[&old_agent].alive);
    let log = log_seqs(&cluster, &session);
    assert_eq!(log, (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(clients[2].seen[&session].seqs, log);
    assert_eq!(clients[1].seen[&session].seqs, log);
}
