//! SIGKILL at seeded random moments while clients create sessions in bursts and stream turns
//! with several joined clients; after each kill (issue 10, PROTOCOL sections 5 and 6):
//!
//! - before the restart, on the files the killed process left: every `PRAGMA integrity_check`
//!   is `ok`, and no session directory lacks its registry row;
//! - after the restart on the same data directory: every session whose `session_created` a
//!   client received is listed; no session directory lacks its registry row; every log is
//!   contiguous from seq 1; every resume with the epoch a client had is `recovered: false`;
//!   every turn the kill cut off is closed (`turn_error` `INTERRUPTED` in the log, ended in
//!   `get_history`).
//!
//! `CRASH_SEED` sets the seed (printed); `CRASH_ROUNDS` the kill points per binary (default 5,
//! so 15 per run over the three binaries).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{parse, Client, Gateway};
use serde_json::{json, Value};

const ARGS: &[&str] = &["--dev", "--rate-limit", "0"];
/// Runner sessions (each streams turns) and the observers joined to all of them.
const RUNNERS: usize = 3;
const OBSERVERS: usize = 2;
/// Most creates one round's burst sends (and most in flight at once).
const MAX_CREATES: usize = 4000;
const CREATE_WINDOW: usize = 32;

/// splitmix64: the test's only source of randomness, from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients saw before the kill.
#[derive(Default)]
struct Seen {
    /// Sessions whose `session_created` reply arrived.
    acknowledged: BTreeSet<String>,
    /// Per joined session: the epoch of the join and the highest seq received.
    joined: BTreeMap<String, (String, u64)>,
    /// Turns started (`turn_started` received) and not seen ending, by session.
    open_turns: BTreeMap<String, String>,
    turns_started: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one text message; `None` once the connection is gone (the kill).
fn read_text(client: &mut Client) -> Option<String> {
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn send(client: &mut Client, message: &Value) -> bool {
    client.ws.send(Message::text(message.to_string())).is_ok()
}

/// Sends `message` with `requestId` and returns the reply; `None` when the connection ends
/// first (the kill may come at any moment, a request in flight included).
fn request(client: &mut Client, message: Value, request_id: &str) -> Option<Value> {
    let mut message = message;
    message["requestId"] = json!(request_id);
    if !send(client, &message) {
        return None;
    }
    loop {
        let value = parse(&read_text(client)?);
        if value["requestId"] == request_id {
            return Some(value);
        }
    }
}

/// Notes an event a client received on a joined session.
fn note_event(seen: &Shared, value: &Value) {
    let (Some(session), Some(seq)) = (value["sessionId"].as_str(), value["seq"].as_u64()) else {
        return;
    };
    let mut seen = lock(seen);
    if let Some(entry) = seen.joined.get_mut(session) {
        entry.1 = entry.1.max(seq);
    }
    match value["type"].as_str() {
        Some("turn_started") => {
            let turn = value["turnId"].as_str().unwrap_or_default().to_owned();
            seen.open_turns.insert(session.to_owned(), turn);
            seen.turns_started += 1;
        }
        Some("turn_complete" | "turn_error") => {
            seen.open_turns.remove(session);
        }
        _ => {}
    }
}

/// Pipelined `create_session`s (at most `CREATE_WINDOW` in flight) until the kill.
fn creator(mut client: Client, seen: Shared, stop: Arc<AtomicBool>) {
    let (mut sent, mut in_flight) = (0usize, 0usize);
    loop {
        while in_flight < CREATE_WINDOW && sent < MAX_CREATES && !stop.load(Ordering::Relaxed) {
            let request = json!({"type": "create_session", "agentType": "echo",
                "name": format!("burst {sent}"), "requestId": format!("c{sent}")});
            if !send(&mut client, &request) {
                return;
            }
            sent += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            return;
        }
        let Some(text) = read_text(&mut client) else {
            return;
        };
        let value = parse(&text);
        if value["type"] == "session_created" && value.get("requestId").is_some() {
            in_flight -= 1;
            let id = value["session"]["id"].as_str().unwrap_or_default();
            lock(&seen).acknowledged.insert(id.to_owned());
        } else if value["type"] == "error" {
            panic!("a create was refused: {value}");
        }
    }
}

/// One session streaming turn after turn; joined by its runner.
fn runner(mut client: Client, index: usize, seen: Shared, ids: Arc<Mutex<Vec<String>>>) {
    let Some(created) = request(
        &mut client,
        json!({"type": "create_session", "agentType": "echo"}),
        "create",
    ) else {
        return;
    };
    let Some(id) = created["session"]["id"].as_str().map(str::to_owned) else {
        panic!("create_session refused: {created}");
    };
    lock(&seen).acknowledged.insert(id.clone());
    let Some(joined) = request(
        &mut client,
        json!({"type": "join_session", "sessionId": id}),
        "join",
    ) else {
        return;
    };
    let epoch = joined["epoch"].as_str().unwrap_or_default().to_owned();
    lock(&seen).joined.insert(id.clone(), (epoch, 0));
    if let Ok(mut ids) = ids.lock() {
        ids.push(id.clone());
    }
    let prompts = ["stream 400 64", "slow 40 10", "stream 2000 16"];
    for turn in 0.. {
        let prompt = prompts[(index + turn) % prompts.len()];
        if !send(
            &mut client,
            &json!({"type": "run_turn", "sessionId": id, "text": prompt, "requestId": format!("r{turn}")}),
        ) {
            return;
        }
        // Until this turn's end (or the kill).
        loop {
            let Some(text) = read_text(&mut client) else {
                return;
            };
            let value = parse(&text);
            note_event(&seen, &value);
            if value["type"] == "error" {
                panic!("run_turn refused: {value}");
            }
            if value["sessionId"] == id.as_str()
                && matches!(value["type"].as_str(), Some("turn_complete" | "turn_error"))
            {
                break;
            }
        }
    }
}

/// Joins every runner session as they appear and reads until the kill.
fn observer(mut client: Client, seen: Shared, ids: Arc<Mutex<Vec<String>>>) {
    let mut joined = BTreeSet::new();
    let mut next_request = 0;
    loop {
        let wanted: Vec<String> = ids.lock().map(|ids| ids.clone()).unwrap_or_default();
        for id in wanted {
            if joined.insert(id.clone()) {
                next_request += 1;
                let request = json!({"type": "join_session", "sessionId": id,
                    "requestId": format!("j{next_request}")});
                if !send(&mut client, &request) {
                    return;
                }
            }
        }
        let Some(text) = read_text(&mut client) else {
            return;
        };
        let value = parse(&text);
        if value["type"] == "session_joined" {
            let id = value["session"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let epoch = value["epoch"].as_str().unwrap_or_default().to_owned();
            let last = value["lastSeq"].as_u64().unwrap_or(0);
            let mut seen = lock(&seen);
            let entry = seen.joined.entry(id).or_insert((epoch, 0));
            entry.1 = entry.1.max(last);
        } else {
            note_event(&seen, &value);
        }
    }
}

// ------------------------------------------------------------------ checks on the files

fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()))
}

fn integrity_ok(path: &Path) {
    let db = open_db(path);
    let result: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap_or_else(|error| panic!("integrity_check of {}: {error}", path.display()));
    assert_eq!(result, "ok", "integrity_check of {}", path.display());
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every registry row's session id (checking each registry's integrity).
fn registry_ids(data: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for tenant in dir_names(&data.join("tenants")) {
        let path = data.join("tenants").join(&tenant).join("registry.db");
        if !path.exists() {
            continue;
        }
        integrity_ok(&path);
        let db = open_db(&path);
        let mut statement = db.prepare("SELECT id FROM sessions").expect("select");
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .expect("query");
        ids.extend(rows.map(|row| row.expect("a row")));
    }
    ids
}

/// Checks every database of the data directory; returns the registry's ids.
fn check_files(data: &Path) -> BTreeSet<String> {
    let ids = registry_ids(data);
    for session in dir_names(&data.join("sessions")) {
        assert!(
            ids.contains(&session),
            "session directory {session} has no registry row"
        );
        let path = data.join("sessions").join(&session).join("session.db");
        if path.exists() {
            integrity_ok(&path);
        }
    }
    ids
}

/// A session log's events: `(seq, type, turn_id)` in order, and the history's open turns.
fn read_log(data: &Path, session: &str) -> (Vec<(u64, String, Option<String>)>, usize) {
    let path = data.join("sessions").join(session).join("session.db");
    if !path.exists() {
        return (Vec::new(), 0);
    }
    let db = open_db(&path);
    let mut statement = db
        .prepare("SELECT seq, type, turn_id FROM events ORDER BY seq")
        .expect("select");
    let events = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query")
        .map(|row| row.expect("a row"))
        .collect();
    let open: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM turns WHERE completed_at IS NULL",
            [],
            |row| row.get(0),
        )
        .expect("count");
    (events, open as usize)
}

// ------------------------------------------------------------------ one round

struct Round {
    acknowledged: usize,
    turns_cut: usize,
}

fn kill_round(
    binary: &str,
    data_dir: PathBuf,
    rng: &mut Rng,
    all_acked: &mut BTreeSet<String>,
) -> (PathBuf, Round) {
    let mut gateway = Gateway::start_in(binary, ARGS, data_dir);
    let seen: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut threads = Vec::new();
    for index in 0..RUNNERS {
        let (client, seen, ids) = (Client::dev(&gateway), seen.clone(), ids.clone());
        threads.push(std::thread::spawn(move || runner(client, index, seen, ids)));
    }
    for _ in 0..OBSERVERS {
        let (client, seen, ids) = (Client::dev(&gateway), seen.clone(), ids.clone());
        threads.push(std::thread::spawn(move || observer(client, seen, ids)));
    }
    {
        let (client, seen, stop) = (Client::dev(&gateway), seen.clone(), stop.clone());
        threads.push(std::thread::spawn(move || creator(client, seen, stop)));
    }
    // Wait (polling, bounded) until work is under way: creates acknowledged and turns started.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (acked, turns) = {
            let seen = lock(&seen);
            (seen.acknowledged.len(), seen.turns_started)
        };
        if acked > RUNNERS && turns >= RUNNERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no work under way: {acked} creates, {turns} turns"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The kill point: a seeded random moment into the work.
    std::thread::sleep(Duration::from_millis(rng.below(400)));
    gateway.signal(libc::SIGKILL);
    gateway
        .wait_exit(Duration::from_secs(10))
        .expect("the killed gateway was not reaped");
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a client thread panicked");
    }
    let data_dir = gateway.take_data_dir();
    drop(gateway);
    let data = data_dir.join("data");
    let seen = std::mem::take(&mut *lock(&seen));

    // The files the kill left: intact, and no log without its row.
    let ids = check_files(&data);
    all_acked.extend(seen.acknowledged.iter().cloned());
    for id in all_acked.iter() {
        assert!(
            ids.contains(id),
            "acknowledged session {id} has no registry row after the kill"
        );
    }

    // Restart on the same directory.
    let gateway = Gateway::start_in(binary, ARGS, data_dir);
    let mut client = Client::dev(&gateway);
    let list = client.call(json!({"type": "list_sessions", "includeArchived": true}));
    let listed: BTreeSet<String> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    let gone: Vec<&String> = all_acked
        .iter()
        .filter(|id| !listed.contains(*id))
        .collect();
    assert!(
        gone.is_empty(),
        "acknowledged but not listed after the restart: {gone:?}"
    );
    let ids = check_files(&data);
    for session in dir_names(&data.join("sessions")) {
        let (events, open_rows) = read_log(&data, &session);
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "the log of {session} is not contiguous from 1"
        );
        assert_eq!(open_rows, 0, "{session}: a history row is still open");
        // The last turn_started has an end after it.
        if let Some(start) = events.iter().rposition(|e| e.1 == "turn_started") {
            let turn = &events[start].2;
            assert!(
                events[start..]
                    .iter()
                    .any(|e| &e.2 == turn && (e.1 == "turn_complete" || e.1 == "turn_error")),
                "{session}: turn {turn:?} still open"
            );
        }
        assert!(ids.contains(&session));
    }
    // Every resume with the epoch a client had answers `recovered: false`; a turn the kill cut
    // off ends with INTERRUPTED and shows ended in the history.
    for (id, (epoch, last)) in &seen.joined {
        let joined = client.call(json!({"type": "join_session", "sessionId": id,
            "afterSeq": last, "epoch": epoch}));
        assert_eq!(joined["type"], "session_joined", "{joined}");
        assert_eq!(
            joined["recovered"], false,
            "resume of {id} after a kill: {joined}"
        );
        assert_ne!(joined["epoch"].as_str(), Some(epoch.as_str()));
    }
    for (id, turn) in &seen.open_turns {
        let events: Vec<Value> = client.all_events(id, 0).iter().map(|t| parse(t)).collect();
        // Its start may have been published and lost with the last batch (the new epoch says
        // so); a turn whose start is stored must be closed.
        if !events
            .iter()
            .any(|e| e["type"] == "turn_started" && e["turnId"] == turn.as_str())
        {
            continue;
        }
        let end = events
            .iter()
            .find(|e| {
                e["turnId"] == turn.as_str()
                    && matches!(e["type"].as_str(), Some("turn_complete" | "turn_error"))
            })
            .unwrap_or_else(|| panic!("turn {turn} of {id} cut off by the kill is not closed"));
        // It may have completed just before the kill without the client seeing it.
        if end["type"] == "turn_error" {
            assert_eq!(end["code"], "INTERRUPTED", "{end}");
        }
        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let turns = history["turns"].as_array().expect("turns");
        let row = turns
            .iter()
            .find(|t| t["turnId"] == turn.as_str())
            .unwrap_or_else(|| panic!("turn {turn} of {id} not in the history: {history}"));
        assert!(
            row["completedAt"].is_number(),
            "turn {turn} of {id} not ended in the history: {row}"
        );
    }
    let mut gateway = gateway;
    let data_dir = gateway.take_data_dir();
    drop(client);
    drop(gateway);
    (
        data_dir,
        Round {
            acknowledged: seen.acknowledged.len(),
            turns_cut: seen.open_turns.len(),
        },
    )
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let rounds = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(5);
    println!("crash test seed: CRASH_SEED={seed} ({rounds} kill points per binary)");
    let mut rng = Rng(seed);
    let mut kills = 0;
    for binary in diminuendo_tests::binaries() {
        let first = Gateway::start(binary, ARGS);
        let mut first = first;
        let mut data_dir = first.take_data_dir();
        drop(first);
        let mut acked = BTreeSet::new();
        for round in 0..rounds {
            let (dir, report) = kill_round(binary, data_dir, &mut rng, &mut acked);
            data_dir = dir;
            kills += 1;
            println!(
                "{binary} kill {round}: {} acknowledged creates, {} turns cut off; {} sessions kept",
                report.acknowledged,
                report.turns_cut,
                acked.len()
            );
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    assert!(kills >= 10, "{kills} kill points");
}
