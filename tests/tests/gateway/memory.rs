//! The agent's memory across activations (issue 13 item 1), against every binary: the bundled
//! echo agent (`loadSession` and `session/resume`, its conversation in its workspace) answers
//! `recall` with the prompts of earlier processes after a gateway restart (SIGTERM by PID, then
//! a new gateway on the same data directory) and after an idle deactivation; an agent that can
//! neither load nor resume (`echo-agent --no-restore`) gets the transcript of the earlier turns
//! before its next prompt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diminuendo_core::session::memory::{TRANSCRIPT_FOOTER, TRANSCRIPT_HEADER};
use diminuendo_tests::{binaries, binary_path, delta_text, parse, types, Client, Gateway};
use serde_json::{json, Value};

/// Runs `text` as a turn of `session_id` and returns its agent text (the turn must complete).
fn turn_text(client: &mut Client, session_id: &str, text: &str) -> String {
    client.run_turn(session_id, text);
    let events = client.turn_events(session_id);
    let kinds = types(&events);
    assert!(kinds.contains(&"turn_complete".to_owned()), "{kinds:?}");
    let end = events
        .iter()
        .map(|text| parse(text))
        .find(|event| event["type"] == "turn_complete")
        .unwrap_or(Value::Null);
    let streamed = delta_text(&events);
    assert_eq!(end["finalText"], streamed.as_str(), "{events:?}");
    streamed
}

/// Stops the gateway with SIGTERM (by its PID), waits for its exit, and starts the same binary
/// again on its data directory.
fn restart(mut gateway: Gateway, args: &[&str]) -> Gateway {
    gateway.signal(libc::SIGTERM);
    let status = gateway
        .wait_exit(Duration::from_secs(15))
        .expect("the gateway did not exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let binary = gateway.binary().to_owned();
    let data_dir = gateway.take_data_dir();
    drop(gateway);
    Gateway::start_in(&binary, args, data_dir)
}

fn session_id(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

#[test]
fn the_echo_agent_remembers_across_a_gateway_restart() {
    for binary in binaries() {
        let gateway = Gateway::start(binary, &["--dev"]);
        let mut client = Client::dev(&gateway);
        let id = session_id(&client.create_session("echo"));
        client.join(&id);
        assert_eq!(
            turn_text(&mut client, &id, "the banana is yellow"),
            "the banana is yellow"
        );
        // `recall` answers with the prompts before it.
        assert_eq!(
            turn_text(&mut client, &id, "recall"),
            "I remember 1 prompt:\n1. the banana is yellow",
            "{binary}"
        );
        drop(client);

        let gateway = restart(gateway, &["--dev"]);
        let mut client = Client::dev(&gateway);
        let joined = client.join(&id);
        assert_eq!(joined["session"]["status"], "inactive", "{joined}");
        // A fresh process resumes the agent's session: it remembers, and replays nothing.
        assert_eq!(
            turn_text(&mut client, &id, "recall"),
            "I remember 2 prompts:\n1. the banana is yellow\n2. recall",
            "{binary}"
        );
        assert_eq!(gateway.metrics()["diminuendo_agents_started_total"], 1.0);
    }
}

/// Reads until the tenant hears that `session_id` is `inactive`.
fn wait_inactive(client: &mut Client, session_id: &str) {
    for _ in 0..10_000 {
        let message = client.next_json();
        if message["type"] == "session_updated"
            && message["session"]["id"] == session_id
            && message["session"]["status"] == "inactive"
        {
            return;
        }
    }
    panic!("{session_id} never became inactive");
}

#[test]
fn the_echo_agent_remembers_across_an_idle_deactivation() {
    let args = ["--dev", "--idle-session-timeout-ms", "200"];
    for binary in binaries() {
        let gateway = Gateway::start(binary, &args);
        let mut client = Client::dev(&gateway);
        let id = session_id(&client.create_session("echo"));
        client.join(&id);
        turn_text(&mut client, &id, "the banana is yellow");
        let left = client.call(json!({"type": "leave_session", "sessionId": id}));
        assert_eq!(left["type"], "session_left", "{left}");
        wait_inactive(&mut client, &id);

        client.join(&id);
        assert_eq!(
            turn_text(&mut client, &id, "recall"),
            "I remember 1 prompt:\n1. the banana is yellow",
            "{binary}"
        );
        // A second process served it.
        assert_eq!(gateway.metrics()["diminuendo_agents_started_total"], 2.0);
    }
}

/// A config file with the agent type `forgetful`: the bundled echo agent of `binary` with
/// `--no-restore` (neither `loadSession` nor `session/resume`).
fn forgetful_config(dir: &Path, binary: &str) -> PathBuf {
    let config = format!(
        "[agents.forgetful]\ncommand = {command:?}\nargs = [\"echo-agent\", \"--no-restore\"]\n",
        command = binary_path(binary).display().to_string()
    );
    let path = dir.join(format!("forgetful-{binary}.toml"));
    std::fs::write(&path, config).expect("write the config");
    path
}

#[test]
fn an_agent_that_can_neither_load_nor_resume_gets_the_transcript() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    for binary in binaries() {
        let config = forgetful_config(scratch.path(), binary);
        let config = config.display().to_string();
        let args = ["--dev", "--config", config.as_str()];
        let gateway = Gateway::start(binary, &args);
        let mut client = Client::dev(&gateway);
        let id = session_id(&client.create_session("forgetful"));
        client.join(&id);
        turn_text(&mut client, &id, "the banana is yellow");
        drop(client);

        let gateway = restart(gateway, &args);
        let mut client = Client::dev(&gateway);
        client.join(&id);
        // The echo agent echoes its prompt: the transcript, then the new text.
        let expected = format!(
            "{TRANSCRIPT_HEADER}User: the banana is yellow\nAgent: the banana is yellow\n\n\
             {TRANSCRIPT_FOOTER}what colour is the banana"
        );
        assert_eq!(
            turn_text(&mut client, &id, "what colour is the banana"),
            expected,
            "{binary}"
        );
        // Once: the next prompt of the same process is the user's text alone.
        assert_eq!(
            turn_text(&mut client, &id, "recall"),
            format!("I remember 1 prompt:\n1. {expected}")
        );
        // History keeps what the user wrote.
        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let texts: Vec<&str> = history["turns"]
            .as_array()
            .map(|turns| {
                turns
                    .iter()
                    .filter_map(|t| t["userText"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            texts,
            [
                "the banana is yellow",
                "what colour is the banana",
                "recall"
            ],
            "{history}"
        );
    }
}
