//! The client file system (issue 13 item 8) on the simulated agent host: an agent type with
//! `fs = true` is offered `fs.readTextFile`/`fs.writeTextFile`; its `fs/*` requests become agent
//! commands (the core does no file I/O), the host's answers go back to the agent as JSON-RPC
//! results or errors, and every write is published as `file_changed`.

mod common;

use std::time::Instant;

use common::*;
use diminuendo_core::config::AgentOptions;
use diminuendo_core::sim::{client, AgentMode, Sim};
use diminuendo_core::{AgentId, ConnectionId, CoreConfig};
use serde_json::{json, Value};

fn config(fs: bool) -> CoreConfig {
    let mut config = CoreConfig {
        coalesce_deltas: false,
        ..dev()
    };
    config.agent_options.insert(
        "echo".to_owned(),
        AgentOptions {
            fs,
            ..AgentOptions::default()
        },
    );
    config
}

fn send(sim: &mut Sim, id: ConnectionId, message: Value) {
    sim.send(id, &client::text(&message.to_string()));
}

/// A joined session of type `echo` with a turn running on a manual agent that finished its
/// handshake; returns the session id and the agent.
fn running_turn(sim: &mut Sim, id: ConnectionId) -> (String, AgentId) {
    send(
        sim,
        id,
        json!({"type": "create_session", "agentType": "echo", "requestId": "c"}),
    );
    let created = sim
        .take_messages(id)
        .into_iter()
        .find(|m| m["requestId"] == "c")
        .unwrap_or(Value::Null);
    let session_id = created["session"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!session_id.is_empty(), "{created}");
    send(
        sim,
        id,
        json!({"type": "join_session", "sessionId": session_id}),
    );
    send(
        sim,
        id,
        json!({"type": "run_turn", "sessionId": session_id, "text": "work"}),
    );
    let agent = sim.agent_of(&session_id).expect("an agent was started");
    sim.agent_send(agent, &json!({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": {}}}));
    sim.agent_send(
        agent,
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
    );
    sim.take_messages(id);
    (session_id, agent)
}

/// The last line the gateway wrote to the agent.
fn last_written(sim: &Sim, agent: AgentId) -> Value {
    sim.agents[&agent]
        .written
        .last()
        .cloned()
        .unwrap_or(Value::Null)
}

fn fs_request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[test]
fn an_fs_agent_type_is_offered_the_file_system_and_served_from_its_workspace() {
    let mut sim = Sim::new(config(true), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let (session_id, agent) = running_turn(&mut sim, id);
    let initialize = &sim.agents[&agent].written[0];
    assert_eq!(initialize["method"], "initialize");
    assert_eq!(
        initialize["params"]["clientCapabilities"]["fs"],
        json!({"readTextFile": true, "writeTextFile": true})
    );
    let workspace = sim.agents[&agent].workspace.clone();
    sim.files.insert(
        format!("{workspace}/notes.txt"),
        "one\ntwo\nthree\n".to_owned(),
    );

    // A read with line/limit: the host's text goes back as the result.
    let path = format!("{workspace}/notes.txt");
    sim.agent_send(
        agent,
        &fs_request(
            7,
            "fs/read_text_file",
            json!({"sessionId": "s", "path": path, "line": 2, "limit": 1}),
        ),
    );
    assert_eq!(
        last_written(&sim, agent),
        json!({"jsonrpc": "2.0", "id": 7, "result": {"content": "two\n"}})
    );

    // A write: answered, stored, and published as file_changed with the relative path.
    sim.agent_send(
        agent,
        &fs_request(
            8,
            "fs/write_text_file",
            json!({"sessionId": "s", "path": format!("{workspace}/out/new.txt"), "content": "hello"}),
        ),
    );
    assert_eq!(
        last_written(&sim, agent),
        json!({"jsonrpc": "2.0", "id": 8, "result": {}})
    );
    assert_eq!(
        sim.files.get(&format!("{workspace}/out/new.txt")),
        Some(&"hello".to_owned())
    );
    let messages = sim.take_messages(id);
    let changed: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "file_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{messages:?}");
    assert_eq!(changed[0]["path"], "out/new.txt");
    assert_eq!(changed[0]["sessionId"], session_id.as_str());
    assert!(changed[0]["turnId"].is_string(), "{messages:?}");

    // Outside the workspace: a JSON-RPC error, nothing written, nothing published.
    for (request, path) in [
        (9, "/etc/passwd".to_owned()),
        (10, format!("{workspace}/../other/secret")),
    ] {
        sim.agent_send(
            agent,
            &fs_request(
                request,
                "fs/write_text_file",
                json!({"sessionId": "s", "path": path, "content": "x"}),
            ),
        );
        let answer = last_written(&sim, agent);
        assert_eq!(answer["id"], request);
        assert_eq!(answer["error"]["code"], -32602, "{answer}");
        assert_eq!(
            answer["error"]["message"],
            "the path is outside the session's workspace"
        );
    }
    // A missing file: resource not found.
    sim.agent_send(
        agent,
        &fs_request(
            11,
            "fs/read_text_file",
            json!({"sessionId": "s", "path": format!("{workspace}/missing.txt")}),
        ),
    );
    assert_eq!(last_written(&sim, agent)["error"]["code"], -32002);
    assert_eq!(sim.files.len(), 2);
    let messages = sim.take_messages(id);
    assert!(
        messages.iter().all(|m| m["type"] != "file_changed"),
        "{messages:?}"
    );
}

#[test]
fn without_fs_the_agent_is_not_offered_the_file_system_and_no_host_command_is_emitted() {
    let mut sim = Sim::new(config(false), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let (_, agent) = running_turn(&mut sim, id);
    let initialize = &sim.agents[&agent].written[0];
    assert_eq!(
        initialize["params"]["clientCapabilities"]["fs"],
        json!({"readTextFile": false, "writeTextFile": false})
    );
    let workspace = sim.agents[&agent].workspace.clone();
    sim.agent_send(
        agent,
        &fs_request(
            7,
            "fs/write_text_file",
            json!({"sessionId": "s", "path": format!("{workspace}/a.txt"), "content": "x"}),
        ),
    );
    assert_eq!(last_written(&sim, agent)["error"]["code"], -32601);
    assert!(sim.files.is_empty());
}

#[test]
fn a_file_answer_after_the_agent_exited_goes_nowhere() {
    // The agent asks, then dies before the host answers: the answer is dropped, the turn fails
    // once, nothing is published for the write.
    let mut sim = Sim::new(config(true), 1, Instant::now());
    sim.agent_mode = AgentMode::Manual;
    let id = open_ws(&mut sim);
    let (_, agent) = running_turn(&mut sim, id);
    sim.agent_exit(agent);
    let workspace = sim.agents[&agent].workspace.clone();
    let before = sim.agents[&agent].written.len();
    sim.agent_send(
        agent,
        &fs_request(
            7,
            "fs/write_text_file",
            json!({"sessionId": "s", "path": format!("{workspace}/a.txt"), "content": "x"}),
        ),
    );
    assert_eq!(sim.agents[&agent].written.len(), before);
    assert!(sim.files.is_empty());
    let messages = sim.take_messages(id);
    assert_eq!(
        messages
            .iter()
            .filter(|m| m["type"] == "turn_error")
            .count(),
        1,
        "{messages:?}"
    );
    assert!(messages.iter().all(|m| m["type"] != "file_changed"));
}
