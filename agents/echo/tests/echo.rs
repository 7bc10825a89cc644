//! Spawns the built agent and talks JSON-RPC to it over its stdio. Reads are bounded (a reader
//! thread and `recv_timeout`), never sleeps; every child is killed and waited for.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use diminuendo_core::acp::{AcpClient, AcpConfig, AgentEvent, SessionOrigin};
use serde_json::{json, Value};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(20);

enum Out {
    Line(String),
    Eof,
}

struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Out>,
    /// The sessions' `cwd` and the process's working directory, like a gateway's workspace.
    workspace: String,
}

impl Agent {
    fn spawn() -> (Agent, TempDir) {
        let dir = tempfile::tempdir().expect("a temporary workspace");
        (Agent::spawn_in(dir.path()), dir)
    }

    /// An agent whose workspace is `workspace` (a second process for the same one).
    fn spawn_in(workspace: &Path) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diminuendo-echo-agent"))
            .current_dir(workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the echo agent starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if sender.send(Out::Line(line)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sender.send(Out::Eof);
        });
        Agent {
            child,
            stdin,
            lines,
            workspace: workspace.to_str().expect("a UTF-8 path").to_owned(),
        }
    }

    fn send_raw(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line).expect("write to the agent");
        stdin.flush().expect("flush to the agent");
    }

    fn send(&mut self, message: Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// The next raw line (with its newline), or `None` at end of output.
    fn next_raw(&self) -> Option<String> {
        match self.lines.recv_timeout(WAIT) {
            Ok(Out::Line(line)) => Some(line),
            Ok(Out::Eof) | Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("the agent wrote nothing for {WAIT:?}"),
        }
    }

    fn next(&self) -> Value {
        let line = self.next_raw().expect("a line, not the end of output");
        assert!(line.ends_with('\n'));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}));
        let response = self.next();
        assert_eq!(response["id"], json!(id), "{response}");
        response
    }

    /// initialize + session/new; returns the session id.
    fn handshake(&mut self) -> String {
        let init = self.request(
            0,
            "initialize",
            json!({"protocolVersion":1,"clientCapabilities":{"fs":{"readTextFile":false,"writeTextFile":false},"terminal":false}}),
        );
        assert_eq!(init["result"]["protocolVersion"], json!(1));
        let cwd = self.workspace.clone();
        let new = self.request(1, "session/new", json!({"cwd":cwd,"mcpServers":[]}));
        new["result"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    fn prompt(&mut self, id: u64, session: &str, text: &str) {
        self.send(
            json!({"jsonrpc":"2.0","id":id,"method":"session/prompt","params":{
            "sessionId":session,"prompt":[{"type":"text","text":text}]}}),
        );
    }

    /// The next message, which must be a session/update of `session`; returns the update.
    fn update(&self, session: &str) -> Value {
        let message = self.next();
        assert_eq!(message["method"], json!("session/update"), "{message}");
        assert_eq!(message["params"]["sessionId"], json!(session));
        message["params"]["update"].clone()
    }

    fn chunk_text(&self, session: &str) -> String {
        let update = self.update(session);
        assert_eq!(
            update["sessionUpdate"],
            json!("agent_message_chunk"),
            "{update}"
        );
        assert_eq!(update["content"]["type"], json!("text"));
        update["content"]["text"].as_str().expect("text").to_owned()
    }

    fn stop_reason(&self, id: u64) -> String {
        let response = self.next();
        assert_eq!(response["id"], json!(id), "{response}");
        response["result"]["stopReason"]
            .as_str()
            .unwrap_or_else(|| panic!("no stopReason in {response}"))
            .to_owned()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            // Its stdout has closed (the caller saw Eof), so the exit is imminent: yield, not
            // a synchronizing sleep.
            thread::yield_now();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alphabet(from: usize, len: usize) -> String {
    (from..from + len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

#[test]
fn handshake_and_many_sessions() {
    let (mut agent, _workspace) = Agent::spawn();
    assert_eq!(agent.handshake(), "echo-1");
    let cwd = agent.workspace.clone();
    let second = agent.request(2, "session/new", json!({"cwd":cwd,"mcpServers":[]}));
    assert_eq!(second["result"]["sessionId"], json!("echo-2"));
    let auth = agent.request(3, "authenticate", json!({"methodId":"none"}));
    assert_eq!(auth["result"], json!({}));
}

#[test]
fn plain_text_is_echoed() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "hello, echo  world");
    assert_eq!(agent.chunk_text(&session), "hello, echo  world");
    assert_eq!(agent.stop_reason(2), "end_turn");
    // Malformed commands are echoed too.
    agent.prompt(3, &session, "stream many");
    assert_eq!(agent.chunk_text(&session), "stream many");
    assert_eq!(agent.stop_reason(3), "end_turn");
}

#[test]
fn stream_sends_n_chunks_of_size_bytes() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "stream 300 100");
    let mut all = String::new();
    for _ in 0..300 {
        let text = agent.chunk_text(&session);
        assert_eq!(text.len(), 100);
        all.push_str(&text);
    }
    assert_eq!(all, alphabet(0, 300 * 100));
    assert_eq!(agent.stop_reason(2), "end_turn");
    agent.prompt(3, &session, "stream 0 10");
    assert_eq!(agent.stop_reason(3), "end_turn");
}

#[test]
fn think_sends_a_thought_then_the_message() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "think about it");
    let thought = agent.update(&session);
    assert_eq!(
        thought,
        json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"about it"}})
    );
    assert_eq!(agent.chunk_text(&session), "about it");
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn tools_sends_a_tool_call_and_its_updates() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "tools");
    let call = agent.update(&session);
    assert_eq!(call["sessionUpdate"], json!("tool_call"));
    assert_eq!(call["status"], json!("pending"));
    assert_eq!(call["rawInput"], json!({"path":"README.md"}));
    let id = call["toolCallId"].clone();
    assert!(id.is_string());
    let running = agent.update(&session);
    assert_eq!(
        running,
        json!({"sessionUpdate":"tool_call_update","toolCallId":id,"status":"in_progress"})
    );
    let done = agent.update(&session);
    assert_eq!(done["sessionUpdate"], json!("tool_call_update"));
    assert_eq!(done["toolCallId"], id);
    assert_eq!(done["status"], json!("completed"));
    assert_eq!(
        done["content"],
        json!([{"type":"content","content":{"type":"text","text":"# Echo\n"}}])
    );
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn plan_sends_three_entries() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "plan");
    let plan = agent.update(&session);
    assert_eq!(plan["sessionUpdate"], json!("plan"));
    let entries = plan["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    for entry in entries {
        assert!(entry["content"].is_string() && entry["priority"].is_string());
        assert!(entry["status"].is_string());
    }
    assert_eq!(agent.stop_reason(2), "end_turn");
}

fn expect_permission_request(agent: &Agent, session: &str) -> Value {
    let call = agent.update(session);
    assert_eq!(call["sessionUpdate"], json!("tool_call"));
    let request = agent.next();
    assert_eq!(
        request["method"],
        json!("session/request_permission"),
        "{request}"
    );
    assert_eq!(request["params"]["sessionId"], json!(session));
    assert_eq!(
        request["params"]["toolCall"]["toolCallId"],
        call["toolCallId"]
    );
    assert_eq!(
        request["params"]["options"],
        json!([
            {"optionId":"allow","name":"Allow","kind":"allow_once"},
            {"optionId":"reject","name":"Reject","kind":"reject_once"}
        ])
    );
    request["id"].clone()
}

#[test]
fn permission_reports_the_chosen_option() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    for (prompt_id, option) in [(2, "allow"), (3, "reject")] {
        agent.prompt(prompt_id, &session, "permission");
        let id = expect_permission_request(&agent, &session);
        agent.send(json!({"jsonrpc":"2.0","id":id,"result":{"outcome":{"outcome":"selected","optionId":option}}}));
        assert_eq!(agent.chunk_text(&session), format!("permission: {option}"));
        assert_eq!(agent.stop_reason(prompt_id), "end_turn");
    }
}

#[test]
fn a_cancelled_permission_cancels_the_turn() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "permission");
    let id = expect_permission_request(&agent, &session);
    agent.send(json!({"jsonrpc":"2.0","id":id,"result":{"outcome":{"outcome":"cancelled"}}}));
    assert_eq!(agent.chunk_text(&session), "permission: cancelled");
    assert_eq!(agent.stop_reason(2), "cancelled");
}

#[test]
fn session_cancel_during_a_permission_ends_the_turn_cancelled() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "permission");
    let id = expect_permission_request(&agent, &session);
    agent.send(json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":session}}));
    agent.send(json!({"jsonrpc":"2.0","id":id,"result":{"outcome":{"outcome":"cancelled"}}}));
    assert_eq!(agent.stop_reason(2), "cancelled");
    // The late answer was ignored; the session takes the next prompt.
    agent.prompt(3, &session, "again");
    assert_eq!(agent.chunk_text(&session), "again");
    assert_eq!(agent.stop_reason(3), "end_turn");
}

#[test]
fn usage_sends_a_usage_update() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "usage");
    assert_eq!(
        agent.update(&session),
        json!({"sessionUpdate":"usage_update","used":1234,"size":200000,"cost":{"amount":0.0123,"currency":"USD"}})
    );
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn exit_leaves_mid_turn_with_status_3() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "exit");
    assert_eq!(agent.chunk_text(&session), "exiting");
    assert_eq!(agent.next_raw(), None, "no answer to the prompt");
    assert_eq!(agent.wait_exit().code(), Some(3));
}

#[test]
fn garbage_writes_a_line_that_is_not_json() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "garbage");
    let line = agent.next_raw().expect("a line");
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line:?}");
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn hang_answers_only_when_cancelled() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "hang");
    // A later request is answered, and the prompt still is not: it hangs.
    let other = agent.request(3, "no/such_method", json!({}));
    assert_eq!(other["error"]["code"], json!(-32601));
    agent.send(json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":session}}));
    assert_eq!(agent.stop_reason(2), "cancelled");
}

#[test]
fn slow_paces_its_chunks() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    let started = Instant::now();
    agent.prompt(2, &session, "slow 3 40");
    for i in 1..=3 {
        assert_eq!(agent.chunk_text(&session), format!("chunk {i} of 3\n"));
    }
    assert_eq!(agent.stop_reason(2), "end_turn");
    assert!(started.elapsed() >= Duration::from_millis(80));
}

#[test]
fn slow_can_be_cancelled() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "slow 1000 1000");
    assert_eq!(agent.chunk_text(&session), "chunk 1 of 1000\n");
    agent.send(json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":session}}));
    assert_eq!(agent.stop_reason(2), "cancelled");
}

#[test]
fn unknown_sends_an_unknown_update_kind() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "unknown");
    assert_eq!(
        agent.update(&session)["sessionUpdate"],
        json!("echo_unknown_kind")
    );
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn protocol_errors_are_answered() {
    let (mut agent, _workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.send_raw(b"not json\n");
    let error = agent.next();
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error["error"]["code"], json!(-32700));
    let unknown = agent.request(5, "fs/read_text_file", json!({}));
    assert_eq!(unknown["error"]["code"], json!(-32601));
    let bad_session = agent.request(
        6,
        "session/prompt",
        json!({"sessionId":"nope","prompt":[{"type":"text","text":"x"}]}),
    );
    assert_eq!(bad_session["error"]["code"], json!(-32602));
    agent.prompt(7, &session, "hang");
    let busy = agent.request(
        8,
        "session/prompt",
        json!({"sessionId":session,"prompt":[{"type":"text","text":"x"}]}),
    );
    assert_eq!(busy["error"]["code"], json!(-32602));
}

#[test]
fn closing_stdin_exits_cleanly() {
    let (mut agent, _workspace) = Agent::spawn();
    agent.handshake();
    agent.stdin = None;
    assert_eq!(agent.next_raw(), None);
    assert_eq!(agent.wait_exit().code(), Some(0));
}

/// Pumps lines between a real echo agent and an `AcpClient` until `done` says so.
struct Driven {
    agent: Agent,
    client: AcpClient,
    workspace: Option<TempDir>,
}

impl Driven {
    fn start() -> Driven {
        let (agent, workspace) = Agent::spawn();
        let mut driven = Driven {
            client: AcpClient::new(AcpConfig::default()),
            workspace: Some(workspace),
            agent,
        };
        let cwd = driven.agent.workspace.clone();
        driven.client.start(&cwd, Instant::now());
        assert_eq!(driven.until_event(), AgentEvent::Ready);
        driven
    }

    /// A new agent process in `workspace`, its client reopening `session_id`.
    fn restart(workspace: &Path, session_id: &str) -> Driven {
        let agent = Agent::spawn_in(workspace);
        let mut driven = Driven {
            client: AcpClient::new(AcpConfig::default()),
            workspace: None,
            agent,
        };
        let cwd = driven.agent.workspace.clone();
        driven
            .client
            .start_with_session(&cwd, session_id, Instant::now());
        assert_eq!(driven.until_event(), AgentEvent::Ready);
        driven
    }

    /// Prompts and collects the turn's text until it ends.
    fn turn_text(&mut self, prompt: &str) -> String {
        self.client.prompt(prompt, Instant::now()).expect("ready");
        let mut text = String::new();
        loop {
            match self.until_event() {
                AgentEvent::Update {
                    kind: "text_delta",
                    fields,
                } => text.push_str(fields["text"].as_str().unwrap_or_default()),
                AgentEvent::TurnComplete { stop_reason } => {
                    assert_eq!(stop_reason, "end_turn");
                    return text;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn flush(&mut self) {
        while let Some(line) = self.client.poll_write() {
            self.agent.send_raw(&line);
        }
    }

    /// Feeds agent output to the client until it emits an event.
    fn until_event(&mut self) -> AgentEvent {
        loop {
            self.flush();
            if let Some(event) = self.client.poll_event() {
                return event;
            }
            match self.agent.next_raw() {
                Some(line) => self.client.handle_line(line.as_bytes(), Instant::now()),
                None => self.client.handle_exit(Instant::now()),
            }
        }
    }
}

#[test]
fn the_acp_client_drives_a_full_turn() {
    let mut driven = Driven::start();
    driven
        .client
        .prompt("stream 50 7", Instant::now())
        .expect("ready");
    let mut text = String::new();
    let stop = loop {
        match driven.until_event() {
            AgentEvent::Update { kind, fields } => {
                assert_eq!(kind, "text_delta");
                text.push_str(fields["text"].as_str().unwrap_or_default());
            }
            AgentEvent::TurnComplete { stop_reason } => break stop_reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(stop, "end_turn");
    assert_eq!(text, alphabet(0, 350));

    // A permission round trip through the client.
    driven
        .client
        .prompt("permission", Instant::now())
        .expect("ready");
    assert!(matches!(
        driven.until_event(),
        AgentEvent::Update {
            kind: "tool_call",
            ..
        }
    ));
    let AgentEvent::PermissionRequested {
        question_id,
        options,
        ..
    } = driven.until_event()
    else {
        panic!("expected a permission request");
    };
    assert_eq!(options.len(), 2);
    driven
        .client
        .answer_permission(&question_id, Some("allow"))
        .expect("offered");
    match driven.until_event() {
        AgentEvent::Update {
            kind: "text_delta",
            fields,
        } => {
            assert_eq!(fields["text"], json!("permission: allow"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        driven.until_event(),
        AgentEvent::TurnComplete {
            stop_reason: "end_turn".into()
        }
    );

    // Cancelling a question: the client answers it, the agent ends the turn cancelled.
    driven
        .client
        .prompt("permission", Instant::now())
        .expect("ready");
    driven.until_event();
    assert!(matches!(
        driven.until_event(),
        AgentEvent::PermissionRequested { .. }
    ));
    driven.client.cancel(Instant::now());
    assert!(matches!(
        driven.until_event(),
        AgentEvent::PermissionCancelled { .. }
    ));
    assert_eq!(
        driven.until_event(),
        AgentEvent::TurnComplete {
            stop_reason: "cancelled".into()
        }
    );
}

#[test]
fn the_acp_client_fails_on_exit_and_garbage() {
    let mut driven = Driven::start();
    driven.client.prompt("exit", Instant::now()).expect("ready");
    assert!(matches!(
        driven.until_event(),
        AgentEvent::Update {
            kind: "text_delta",
            ..
        }
    ));
    match driven.until_event() {
        AgentEvent::Failed { message } => assert!(message.contains("mid-turn"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(driven.agent.wait_exit().code(), Some(3));

    let mut driven = Driven::start();
    driven
        .client
        .prompt("garbage", Instant::now())
        .expect("ready");
    assert!(matches!(driven.until_event(), AgentEvent::Failed { .. }));
}

/// initialize, and the `agentCapabilities` it answers.
fn initialize(agent: &mut Agent) -> Value {
    let init = agent.request(0, "initialize", json!({"protocolVersion":1}));
    init["result"]["agentCapabilities"].clone()
}

#[test]
fn initialize_advertises_load_and_resume() {
    let (mut agent, _workspace) = Agent::spawn();
    let capabilities = initialize(&mut agent);
    assert_eq!(capabilities["loadSession"], json!(true));
    assert_eq!(capabilities["sessionCapabilities"]["resume"], json!({}));
}

/// A workspace whose session `echo-1` was told `hello` and `think deep`, by a process now gone.
fn remembered_workspace() -> (TempDir, String) {
    let (mut agent, workspace) = Agent::spawn();
    let session = agent.handshake();
    agent.prompt(2, &session, "hello");
    assert_eq!(agent.chunk_text(&session), "hello");
    assert_eq!(agent.stop_reason(2), "end_turn");
    agent.prompt(3, &session, "think deep");
    let thought = agent.update(&session);
    assert_eq!(thought["sessionUpdate"], json!("agent_thought_chunk"));
    assert_eq!(agent.chunk_text(&session), "deep");
    assert_eq!(agent.stop_reason(3), "end_turn");
    drop(agent);
    (workspace, session)
}

#[test]
fn the_conversation_is_kept_in_a_file_in_the_workspace() {
    let (workspace, session) = remembered_workspace();
    let file = workspace
        .path()
        .join(".echo-agent")
        .join(format!("{session}.jsonl"));
    let text = std::fs::read_to_string(&file).expect("the conversation file");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON lines"))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"role":"user","text":"hello"}),
            json!({"role":"agent","text":"hello"}),
            json!({"role":"user","text":"think deep"}),
            json!({"role":"agent","text":"deep"}),
        ]
    );
}

#[test]
fn session_load_replays_the_conversation_then_answers() {
    let (workspace, session) = remembered_workspace();
    let mut agent = Agent::spawn_in(workspace.path());
    initialize(&mut agent);
    let cwd = agent.workspace.clone();
    agent.send(
        json!({"jsonrpc":"2.0","id":1,"method":"session/load","params":{
        "sessionId":session,"cwd":cwd,"mcpServers":[]}}),
    );
    let mut replay = Vec::new();
    for _ in 0..4 {
        let update = agent.update(&session);
        replay.push((
            update["sessionUpdate"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            update["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let pairs: Vec<(&str, &str)> = replay
        .iter()
        .map(|(kind, text)| (kind.as_str(), text.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("user_message_chunk", "hello"),
            ("agent_message_chunk", "hello"),
            ("user_message_chunk", "think deep"),
            ("agent_message_chunk", "deep"),
        ]
    );
    let answer = agent.next();
    assert_eq!(answer["id"], json!(1), "{answer}");
    // The answer carries the session's modes and options (README, "Modes and options").
    assert_eq!(answer["result"]["modes"]["currentModeId"], json!("ask"));
    assert_eq!(answer["result"]["configOptions"][0]["id"], json!("speed"));
    // The loaded session takes prompts and remembers on.
    agent.prompt(2, &session, "recall");
    assert_eq!(
        agent.chunk_text(&session),
        "I remember 2 prompts:\n1. hello\n2. think deep"
    );
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn session_resume_answers_without_replay() {
    let (workspace, session) = remembered_workspace();
    let mut agent = Agent::spawn_in(workspace.path());
    initialize(&mut agent);
    let cwd = agent.workspace.clone();
    let answer = agent.request(1, "session/resume", json!({"sessionId":session,"cwd":cwd}));
    assert!(
        answer.get("result").is_some(),
        "no update came before it: {answer}"
    );
    assert_eq!(answer["result"]["modes"]["currentModeId"], json!("ask"));
    agent.prompt(2, &session, "recall");
    assert_eq!(
        agent.chunk_text(&session),
        "I remember 2 prompts:\n1. hello\n2. think deep"
    );
    assert_eq!(agent.stop_reason(2), "end_turn");
}

#[test]
fn an_unknown_session_is_not_found_and_a_new_one_forgets() {
    let (workspace, session) = remembered_workspace();
    let mut agent = Agent::spawn_in(workspace.path());
    initialize(&mut agent);
    let cwd = agent.workspace.clone();
    for (id, session_id) in [(1, "echo-99"), (2, "../../etc/passwd"), (3, "other")] {
        for method in ["session/load", "session/resume"] {
            let answer = agent.request(
                id,
                method,
                json!({"sessionId":session_id,"cwd":cwd,"mcpServers":[]}),
            );
            assert_eq!(answer["error"]["code"], json!(-32002), "{answer}");
        }
    }
    // A new session in the same workspace gets an id of its own, and an empty memory.
    let new = agent.request(4, "session/new", json!({"cwd":cwd,"mcpServers":[]}));
    let fresh = new["result"]["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(fresh, session);
    assert_eq!(fresh, "echo-2");
    agent.prompt(5, &fresh, "recall");
    assert_eq!(agent.chunk_text(&fresh), "I remember no prompts.");
    assert_eq!(agent.stop_reason(5), "end_turn");
}

#[test]
fn the_acp_client_resumes_the_echo_agents_memory_across_processes() {
    let mut driven = Driven::start();
    assert_eq!(driven.client.session_origin(), Some(SessionOrigin::New));
    let features = driven.client.agent_features().unwrap_or_default();
    assert!(features.load_session && features.resume_session);
    let session = driven.client.session_id().unwrap_or_default().to_owned();
    assert_eq!(driven.turn_text("first"), "first");
    assert_eq!(driven.turn_text("second"), "second");
    let workspace = driven.workspace.take().expect("the workspace");
    drop(driven);

    let mut again = Driven::restart(workspace.path(), &session);
    assert_eq!(again.client.session_origin(), Some(SessionOrigin::Resumed));
    assert_eq!(again.client.session_id(), Some(session.as_str()));
    assert_eq!(
        again.turn_text("recall"),
        "I remember 2 prompts:\n1. first\n2. second"
    );
}
