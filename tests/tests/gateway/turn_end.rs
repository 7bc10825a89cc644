//! Every turn ends (issue 13, item 2) against each binary, with a scripted agent that misbehaves
//! (`tests/agents/stubborn.py`): a turn past `--turn-timeout-ms` is cancelled, an agent that
//! ignores the cancel (and SIGTERM) for `--cancel-grace-ms` is killed and the turn ends
//! `AGENT_UNRESPONSIVE`, the next turn gets a fresh process; `stop_turn` ends a hung turn within
//! the grace; a stopped turn the agent answers with an error ends `cancelled`; with
//! `--max-agents 1` a hung session holds the only agent slot no longer than timeout + grace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diminuendo_core::auth::testing::{claims, sign_hs256};
use diminuendo_tests::{binaries, delta_text, parse, unix_now, Client, Gateway};
use serde_json::{json, Value};

const SECRET: &str = "a-turn-end-test-secret-that-is-long-enough";
const TIMEOUT_MS: u64 = 1500;
const GRACE_MS: u64 = 1000;

fn stubborn_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/stubborn.py")
}

/// A config with the `stubborn` agent type (no sandbox needed: it touches nothing).
fn write_config(dir: &Path) -> String {
    let path = dir.join("stubborn.toml");
    let config = format!(
        "[agents.stubborn]\ncommand = \"/usr/bin/python3\"\nargs = [{:?}]\n",
        stubborn_script().display().to_string()
    );
    std::fs::write(&path, config).expect("write the config");
    path.display().to_string()
}

fn start(binary: &str, config: &str, extra: &[&str]) -> Gateway {
    start_with_timeout(binary, config, TIMEOUT_MS, extra)
}

fn start_with_timeout(binary: &str, config: &str, timeout_ms: u64, extra: &[&str]) -> Gateway {
    let timeout = timeout_ms.to_string();
    let grace = GRACE_MS.to_string();
    let mut args = vec![
        "--config",
        config,
        "--turn-timeout-ms",
        &timeout,
        "--cancel-grace-ms",
        &grace,
    ];
    args.extend_from_slice(extra);
    Gateway::start(binary, &args)
}

fn joined(gateway: &Gateway, client: Option<Client>) -> (Client, String) {
    let mut client = client.unwrap_or_else(|| Client::dev(gateway));
    let id = client.create_session("stubborn")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    client.join(&id);
    (client, id)
}

fn end_of(events: &[String]) -> Value {
    events
        .iter()
        .map(|e| parse(e))
        .find(|e| matches!(e["type"].as_str(), Some("turn_complete" | "turn_error")))
        .unwrap_or(Value::Null)
}

fn last_status(events: &[String]) -> Value {
    events
        .iter()
        .rev()
        .map(|e| parse(e))
        .find(|e| e["type"] == "session_state")
        .map(|e| e["status"].clone())
        .unwrap_or(Value::Null)
}

fn pid_of(text: &str) -> i32 {
    text.strip_prefix("pid ")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

fn alive(pid: i32) -> bool {
    // A zombie is dead too; /proc/PID/stat's third field is the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn requires_python() -> bool {
    Path::new("/usr/bin/python3").exists()
}

#[test]
fn a_hung_turn_times_out_its_agent_is_killed_and_the_next_turn_gets_a_fresh_process() {
    assert!(
        requires_python(),
        "the stubborn agent needs /usr/bin/python3"
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    for binary in binaries() {
        let gateway = start(binary, &config, &["--dev"]);
        let (mut client, id) = joined(&gateway, None);
        client.run_turn(&id, "who");
        let first = client.turn_events(&id);
        let pid = pid_of(&delta_text(&first));
        // The same process hangs: cancelled at the timeout, killed after the grace.
        let began = Instant::now();
        let accepted = client.run_turn(&id, "hang");
        let events = client.turn_events(&id);
        let took = began.elapsed();
        let end = end_of(&events);
        assert_eq!(end["type"], "turn_error", "{binary}: {events:?}");
        assert_eq!(end["code"], "AGENT_UNRESPONSIVE", "{binary}: {end}");
        assert_eq!(end["turnId"], accepted["turnId"], "{binary}");
        assert_eq!(last_status(&events), "error", "{binary}: {events:?}");
        assert!(
            took >= Duration::from_millis(TIMEOUT_MS + GRACE_MS),
            "{binary}: ended after {took:?}"
        );
        // The process (which ignores SIGTERM) is gone: it was killed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "{binary}: agent {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        client.run_turn(&id, "who");
        let next = client.turn_events(&id);
        assert_eq!(end_of(&next)["type"], "turn_complete", "{binary}: {next:?}");
        assert_ne!(
            pid_of(&delta_text(&next)),
            pid,
            "{binary}: not a fresh process"
        );
    }
}

#[test]
fn stop_turn_on_a_hung_agent_ends_the_turn_within_the_grace() {
    assert!(
        requires_python(),
        "the stubborn agent needs /usr/bin/python3"
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    for binary in binaries() {
        // A long turn timeout: only the stop can end this turn.
        let gateway = start_with_timeout(binary, &config, 600_000, &["--dev"]);
        let (mut client, id) = joined(&gateway, None);
        let accepted = client.run_turn(&id, "hang");
        client.events_until(&id, |e| e["type"] == "turn_started");
        let began = Instant::now();
        let stopping = client.call(json!({"type": "stop_turn", "sessionId": id}));
        assert_eq!(stopping["type"], "turn_stopping", "{binary}: {stopping}");
        let events = client.turn_events(&id);
        let took = began.elapsed();
        let end = end_of(&events);
        assert_eq!(end["code"], "AGENT_UNRESPONSIVE", "{binary}: {events:?}");
        assert_eq!(end["turnId"], accepted["turnId"], "{binary}");
        assert!(
            took >= Duration::from_millis(GRACE_MS)
                && took < Duration::from_millis(GRACE_MS + 3000),
            "{binary}: ended after {took:?}"
        );
    }
}

#[test]
fn a_stopped_turn_the_agent_answers_with_an_error_ends_cancelled() {
    assert!(
        requires_python(),
        "the stubborn agent needs /usr/bin/python3"
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    for binary in binaries() {
        let gateway = start_with_timeout(binary, &config, 600_000, &["--dev"]);
        let (mut client, id) = joined(&gateway, None);
        client.run_turn(&id, "error-on-cancel");
        client.events_until(&id, |e| e["type"] == "turn_started");
        let stopping = client.call(json!({"type": "stop_turn", "sessionId": id}));
        assert_eq!(stopping["type"], "turn_stopping", "{binary}: {stopping}");
        let events = client.turn_events(&id);
        let end = end_of(&events);
        assert_eq!(end["type"], "turn_complete", "{binary}: {events:?}");
        assert_eq!(end["stopReason"], "cancelled", "{binary}: {end}");
        assert_eq!(last_status(&events), "ready", "{binary}: {events:?}");
        // The agent is still usable.
        client.run_turn(&id, "who");
        let next = client.turn_events(&id);
        assert_eq!(end_of(&next)["type"], "turn_complete", "{binary}: {next:?}");
    }
}

#[test]
fn a_hung_session_holds_the_only_agent_slot_no_longer_than_timeout_and_grace() {
    assert!(
        requires_python(),
        "the stubborn agent needs /usr/bin/python3"
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    for binary in binaries() {
        let gateway = start(
            binary,
            &config,
            &["--jwt-secret", SECRET, "--max-agents", "1"],
        );
        let token = |tenant: &str| {
            sign_hs256(SECRET, &claims("u", tenant, "owner", unix_now() + 3600)).expect("sign")
        };
        let hung_client = Client::authenticated(&gateway, &token("hung-tenant"));
        let (mut hung, hung_id) = joined(&gateway, Some(hung_client));
        let other_client = Client::authenticated(&gateway, &token("other-tenant"));
        let (mut other, other_id) = joined(&gateway, Some(other_client));
        let began = Instant::now();
        hung.run_turn(&hung_id, "hang");
        hung.events_until(&hung_id, |e| e["type"] == "turn_started");
        // The only slot is taken.
        let refused = other.call(json!({"type": "run_turn", "sessionId": other_id, "text": "who"}));
        assert_eq!(refused["code"], "AGENT_UNAVAILABLE", "{binary}: {refused}");
        let events = hung.turn_events(&hung_id);
        assert_eq!(
            end_of(&events)["code"],
            "AGENT_UNRESPONSIVE",
            "{binary}: {events:?}"
        );
        // Within timeout + grace (and the kill's reaping) the other tenant gets the slot.
        let limit = Duration::from_millis(TIMEOUT_MS + GRACE_MS) + Duration::from_secs(3);
        loop {
            let reply =
                other.call(json!({"type": "run_turn", "sessionId": other_id, "text": "who"}));
            if reply["type"] == "turn_accepted" {
                break;
            }
            assert_eq!(reply["code"], "AGENT_UNAVAILABLE", "{binary}: {reply}");
            assert!(
                began.elapsed() < limit,
                "{binary}: still refused after {:?}",
                began.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let done = other.turn_events(&other_id);
        assert_eq!(end_of(&done)["type"], "turn_complete", "{binary}: {done:?}");
    }
}
