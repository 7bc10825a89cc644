//! The measurement of issue 10's table: SIGKILL a gateway during a burst of `create_session`
//! (or of `create_session` + `run_turn` on each new session) after a fixed delay, then count
//! the sessions acknowledged, listed after the restart, acknowledged but gone, and (on the files
//! the kill left, before the restart) session directories with no registry row and their events.
//!
//! `DIMINUENDO_TEST_BIN_DIR=target/release cargo run --release -p diminuendo-tests --example
//! kill_table [-- BINARY]` (default `diminuendo-tokio`). Prints one markdown row per kill.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diminuendo_tests::tungstenite::Message;
use diminuendo_tests::{parse, Client, Gateway};
use serde_json::json;

const ARGS: &[&str] = &["--dev", "--rate-limit", "0"];
const WINDOW: usize = 32;

fn burst(mut client: Client, with_turn: bool, acked: Arc<Mutex<BTreeSet<String>>>) {
    let (mut sent, mut in_flight) = (0usize, 0usize);
    loop {
        while in_flight < WINDOW {
            let request = json!({"type": "create_session", "agentType": "echo",
                "requestId": format!("c{sent}")});
            if client.ws.send(Message::text(request.to_string())).is_err() {
                return;
            }
            sent += 1;
            in_flight += 1;
        }
        let text = match client.ws.read() {
            Ok(Message::Text(text)) => text.as_str().to_owned(),
            Ok(_) => continue,
            Err(_) => return,
        };
        let value = parse(&text);
        if value["type"] == "session_created" && value.get("requestId").is_some() {
            in_flight -= 1;
            let id = value["session"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if with_turn {
                let turn = json!({"type": "run_turn", "sessionId": id, "text": "stream 20 16"});
                if client.ws.send(Message::text(turn.to_string())).is_err() {
                    return;
                }
            }
            if let Ok(mut acked) = acked.lock() {
                acked.insert(id);
            }
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn registry_ids(data: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for tenant in names(&data.join("tenants")) {
        let path = data.join("tenants").join(tenant).join("registry.db");
        let Ok(db) = rusqlite::Connection::open(path) else {
            continue;
        };
        let Ok(mut st) = db.prepare("SELECT id FROM sessions") else {
            continue;
        };
        let found: Vec<String> = match st.query_map([], |r| r.get::<_, String>(0)) {
            Ok(rows) => rows.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        };
        ids.extend(found);
    }
    ids
}

fn run(binary: &str, with_turn: bool, delay: Duration) {
    let mut gateway = Gateway::start(binary, ARGS);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let client = Client::dev(&gateway);
    let thread = {
        let acked = acked.clone();
        std::thread::spawn(move || burst(client, with_turn, acked))
    };
    // The kill point: a fixed delay into the burst (this is what is measured, not a sync).
    std::thread::sleep(delay);
    gateway.signal(libc::SIGKILL);
    gateway.wait_exit(Duration::from_secs(10));
    let _ = thread.join();
    let data_dir = gateway.take_data_dir();
    drop(gateway);
    let data = data_dir.join("data");
    let rows = registry_ids(&data);
    let (mut orphans, mut orphan_events) = (0, 0i64);
    for session in names(&data.join("sessions")) {
        if rows.contains(&session) {
            continue;
        }
        orphans += 1;
        let path = data.join("sessions").join(&session).join("session.db");
        if let Ok(db) = rusqlite::Connection::open(path) {
            orphan_events += db
                .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0);
        }
    }
    let gateway = Gateway::start_in(binary, ARGS, data_dir);
    let mut client = Client::dev(&gateway);
    let list = client.call(json!({"type": "list_sessions", "includeArchived": true}));
    let listed: BTreeSet<String> = list["sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let gone = acked.iter().filter(|id| !listed.contains(*id)).count();
    let what = if with_turn {
        "`create_session` + `run_turn` each"
    } else {
        "a burst of `create_session`"
    };
    println!(
        "| {what} ({:.1} s in) | {} | {} | {gone} | {orphans} ({orphan_events} events) |",
        delay.as_secs_f64(),
        acked.len(),
        listed.len(),
    );
}

fn main() {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "diminuendo-tokio".to_owned());
    println!("{binary}");
    println!("| SIGKILL during | `session_created` received | listed after restart | acknowledged but gone | session dirs with no registry row |");
    println!("|---|---:|---:|---:|---:|");
    run(&binary, false, Duration::from_millis(400));
    run(&binary, false, Duration::from_millis(1300));
    run(&binary, true, Duration::from_millis(300));
    run(&binary, true, Duration::from_millis(900));
}
