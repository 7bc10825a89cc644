//! The agent driven in-process (its output in a buffer), and its memory.

use std::fs;
use std::time::Instant;

use serde_json::{json, Value};

use crate::controls::Controls;
use crate::memory::{remember_answer, valid_session_id, Memory, Role};
use crate::{Agent, MAX_REMEMBERED_ANSWER};

/// An agent writing into a buffer, fed whole lines; returns what it wrote, as JSON.
fn exchange(agent: &mut Agent<Vec<u8>>, message: Value) -> Vec<Value> {
    agent.handle_line(message.to_string().as_bytes());
    let _ = agent.advance(Instant::now());
    let out = std::mem::take(&mut agent.out);
    out.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap_or(Value::Null))
        .collect()
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})
}

fn prompt(id: u64, session: &str, text: &str) -> Value {
    request(
        id,
        "session/prompt",
        json!({"sessionId":session,"prompt":[{"type":"text","text":text}]}),
    )
}

#[test]
fn recall_lists_the_earlier_prompts() {
    let mut memory = Memory::default();
    assert_eq!(memory.recall(), "I remember no prompts.");
    memory.remember(Role::User, "one");
    memory.remember(Role::Agent, "one");
    memory.remember(Role::User, "two words");
    assert_eq!(
        memory.recall(),
        "I remember 2 prompts:\n1. one\n2. two words"
    );
}

#[test]
fn a_remembered_answer_is_bounded_on_a_char_boundary() {
    let mut answer = String::new();
    remember_answer(&mut answer, &"a".repeat(MAX_REMEMBERED_ANSWER - 1));
    remember_answer(&mut answer, "éé");
    assert_eq!(
        answer.len(),
        MAX_REMEMBERED_ANSWER - 1,
        "é does not fit whole"
    );
    remember_answer(&mut answer, "b");
    assert_eq!(answer.len(), MAX_REMEMBERED_ANSWER);
    remember_answer(&mut answer, "more");
    assert_eq!(answer.len(), MAX_REMEMBERED_ANSWER);
}

#[test]
fn only_the_agents_own_ids_name_files() {
    assert!(valid_session_id("echo-1"));
    assert!(valid_session_id("echo-420"));
    for bad in ["echo-", "echo-1/../x", "../echo-1", "x", "echo-1a", ""] {
        assert!(!valid_session_id(bad), "{bad}");
    }
}

#[test]
fn a_conversation_file_skips_lines_it_does_not_understand() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("echo-1.jsonl");
    let text = "{\"role\":\"user\",\"text\":\"hi\"}\nnot json\n{\"role\":\"system\",\"text\":\"x\"}\n{\"role\":\"agent\",\"text\":\"hi\"}\n";
    fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let memory = Memory::read(path).unwrap_or_default();
    assert_eq!(
        memory.messages,
        vec![
            (Role::User, "hi".to_owned()),
            (Role::Agent, "hi".to_owned())
        ]
    );
    assert!(Memory::read(dir.path().join("missing.jsonl")).is_none());
}

#[test]
fn load_replays_resume_does_not_and_recall_answers_across_agents() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cwd = dir.path().to_str().unwrap_or_default().to_owned();
    let mut first = Agent::new(Vec::new());
    let init = exchange(
        &mut first,
        request(0, "initialize", json!({"protocolVersion":1})),
    );
    assert_eq!(
        init[0]["result"]["agentCapabilities"]["loadSession"],
        json!(true)
    );
    let new = exchange(
        &mut first,
        request(1, "session/new", json!({"cwd":cwd,"mcpServers":[]})),
    );
    assert_eq!(new[0]["result"]["sessionId"], json!("echo-1"));
    let out = exchange(&mut first, prompt(2, "echo-1", "stream 2 3"));
    assert_eq!(
        out.last().map(|m| m["result"].clone()),
        Some(json!({"stopReason":"end_turn"}))
    );

    // A second agent (a restart) loads it: the replay, then the answer.
    let mut second = Agent::new(Vec::new());
    let out = exchange(
        &mut second,
        request(
            1,
            "session/load",
            json!({"sessionId":"echo-1","cwd":cwd,"mcpServers":[]}),
        ),
    );
    let kinds: Vec<(&str, &str)> = out
        .iter()
        .map(|m| {
            (
                m.pointer("/params/update/sessionUpdate")
                    .and_then(Value::as_str)
                    .unwrap_or("answer"),
                m.pointer("/params/update/content/text")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("user_message_chunk", "stream 2 3"),
            ("agent_message_chunk", "abcdef"),
            ("answer", ""),
        ]
    );
    assert_eq!(out[2]["id"], json!(1));
    // A third resumes it: no replay; recall answers with the prompts of both processes.
    let mut third = Agent::new(Vec::new());
    let out = exchange(
        &mut third,
        request(1, "session/resume", json!({"sessionId":"echo-1","cwd":cwd})),
    );
    // The answer carries the session's controls (modes and options), nothing else.
    let opened = Controls::default().session_result(json!({}));
    assert_eq!(out, vec![json!({"jsonrpc":"2.0","id":1,"result":opened})]);
    let out = exchange(&mut third, prompt(2, "echo-1", "recall"));
    assert_eq!(
        out[0].pointer("/params/update/content/text"),
        Some(&json!("I remember 1 prompt:\n1. stream 2 3"))
    );
    // A cancelled turn is remembered with what was said before the cancel.
    let _ = exchange(&mut third, prompt(3, "echo-1", "hang"));
    agent_cancel(&mut third, "echo-1");
    let memory = Memory::read(Memory::path(dir.path(), "echo-1")).unwrap_or_default();
    let prompts: Vec<&str> = memory
        .messages
        .iter()
        .filter(|(role, _)| *role == Role::User)
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(prompts, vec!["stream 2 3", "recall", "hang"]);
}

fn agent_cancel(agent: &mut Agent<Vec<u8>>, session: &str) {
    let out = exchange(
        agent,
        json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":session}}),
    );
    assert_eq!(out[0]["result"], json!({"stopReason":"cancelled"}));
}

#[test]
fn an_unwritable_workspace_still_serves_the_session() {
    let mut agent = Agent::new(Vec::new());
    let new = exchange(
        &mut agent,
        request(1, "session/new", json!({"cwd":"/proc","mcpServers":[]})),
    );
    assert_eq!(new[0]["result"]["sessionId"], json!("echo-1"));
    let _ = exchange(&mut agent, prompt(2, "echo-1", "hi"));
    let out = exchange(&mut agent, prompt(3, "echo-1", "recall"));
    assert_eq!(
        out[0].pointer("/params/update/content/text"),
        Some(&json!("I remember 1 prompt:\n1. hi"))
    );
    // Remembered by this process only: resume works here, not elsewhere.
    let out = exchange(
        &mut agent,
        request(
            4,
            "session/resume",
            json!({"sessionId":"echo-1","cwd":"/proc"}),
        ),
    );
    assert_eq!(
        out[0]["result"],
        Controls::default().session_result(json!({}))
    );
    let mut other = Agent::new(Vec::new());
    let out = exchange(
        &mut other,
        request(
            1,
            "session/resume",
            json!({"sessionId":"echo-1","cwd":"/proc"}),
        ),
    );
    assert_eq!(out[0]["error"]["code"], json!(-32002));
}

#[test]
fn without_restore_it_advertises_and_serves_neither_load_nor_resume() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cwd = dir.path().to_str().unwrap_or_default().to_owned();
    let mut agent = Agent::new(Vec::new());
    agent.restore = false;
    let init = exchange(
        &mut agent,
        request(0, "initialize", json!({"protocolVersion":1})),
    );
    let capabilities = &init[0]["result"]["agentCapabilities"];
    assert_eq!(capabilities["loadSession"], json!(false));
    assert_eq!(capabilities["sessionCapabilities"], json!({}));
    let new = exchange(
        &mut agent,
        request(1, "session/new", json!({"cwd":cwd,"mcpServers":[]})),
    );
    assert_eq!(new[0]["result"]["sessionId"], json!("echo-1"));
    exchange(&mut agent, prompt(2, "echo-1", "hello"));
    for (id, method) in [(3, "session/load"), (4, "session/resume")] {
        let out = exchange(
            &mut agent,
            request(
                id,
                method,
                json!({"sessionId":"echo-1","cwd":cwd,"mcpServers":[]}),
            ),
        );
        assert_eq!(out[0]["error"]["code"], json!(-32601), "{method}: {out:?}");
    }
    // Its own session still remembers within the process.
    let out = exchange(&mut agent, prompt(5, "echo-1", "recall"));
    let text = out[0]["params"]["update"]["content"]["text"].clone();
    assert_eq!(text, json!("I remember 1 prompt:\n1. hello"));
}

/// An agent with session `echo-1` open in a fresh workspace (kept alive by the returned dir).
fn agent_with_session() -> (Agent<Vec<u8>>, tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cwd = dir.path().to_str().unwrap_or_default().to_owned();
    let mut agent = Agent::new(Vec::new());
    exchange(
        &mut agent,
        request(0, "initialize", json!({"protocolVersion":1})),
    );
    let new = exchange(
        &mut agent,
        request(1, "session/new", json!({"cwd":cwd,"mcpServers":[]})),
    );
    let result = new[0]["result"].clone();
    (agent, dir, result)
}

#[test]
fn sessions_offer_modes_and_an_option_that_set_mode_and_set_config_option_change() {
    let (mut agent, _dir, opened) = agent_with_session();
    assert_eq!(opened["modes"]["currentModeId"], json!("ask"));
    assert_eq!(
        opened["modes"]["availableModes"],
        json!([{"id":"ask","name":"Ask"},{"id":"code","name":"Code"}])
    );
    assert_eq!(opened["configOptions"][0]["id"], json!("speed"));
    assert_eq!(opened["configOptions"][0]["currentValue"], json!("normal"));

    let out = exchange(
        &mut agent,
        request(
            2,
            "session/set_mode",
            json!({"sessionId":"echo-1","modeId":"code"}),
        ),
    );
    assert_eq!(out, vec![json!({"jsonrpc":"2.0","id":2,"result":{}})]);
    let out = exchange(
        &mut agent,
        request(
            3,
            "session/set_mode",
            json!({"sessionId":"echo-1","modeId":"yolo"}),
        ),
    );
    assert_eq!(out[0]["error"]["code"], json!(-32602));
    assert_eq!(
        out[0]["error"]["message"],
        json!("Invalid params: no mode \"yolo\"")
    );

    let out = exchange(
        &mut agent,
        request(
            4,
            "session/set_config_option",
            json!({"sessionId":"echo-1","configId":"speed","value":"fast"}),
        ),
    );
    assert_eq!(
        out[0]["result"]["configOptions"][0]["currentValue"],
        json!("fast")
    );
    let out = exchange(
        &mut agent,
        request(
            5,
            "session/set_config_option",
            json!({"sessionId":"echo-1","configId":"color","value":"red"}),
        ),
    );
    assert_eq!(out[0]["error"]["code"], json!(-32602));
    let out = exchange(
        &mut agent,
        request(
            6,
            "session/set_mode",
            json!({"sessionId":"echo-9","modeId":"code"}),
        ),
    );
    assert_eq!(out[0]["error"]["code"], json!(-32602));

    // A resume reports the session's controls as they are now.
    let out = exchange(
        &mut agent,
        request(
            7,
            "session/resume",
            json!({"sessionId":"echo-1","cwd":"/","mcpServers":[]}),
        ),
    );
    assert_eq!(out[0]["result"]["modes"]["currentModeId"], json!("code"));
    assert_eq!(
        out[0]["result"]["configOptions"][0]["currentValue"],
        json!("fast")
    );
}

#[test]
fn controls_announces_commands_mode_and_options() {
    let (mut agent, _dir, _) = agent_with_session();
    let out = exchange(&mut agent, prompt(2, "echo-1", "controls"));
    let kinds: Vec<&str> = out
        .iter()
        .filter_map(|m| m["params"]["update"]["sessionUpdate"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "available_commands_update",
            "current_mode_update",
            "config_option_update"
        ]
    );
    assert_eq!(
        out[0]["params"]["update"]["availableCommands"][0]["name"],
        json!("recall")
    );
    assert_eq!(out[1]["params"]["update"]["currentModeId"], json!("code"));
    assert_eq!(
        out[2]["params"]["update"]["configOptions"][0]["currentValue"],
        json!("fast")
    );
    assert_eq!(out[3]["result"], json!({"stopReason":"end_turn"}));
}

#[test]
fn diff_reports_an_edit_in_full() {
    let (mut agent, _dir, _) = agent_with_session();
    let out = exchange(&mut agent, prompt(2, "echo-1", "diff"));
    let call = &out[0]["params"]["update"];
    assert_eq!(call["sessionUpdate"], json!("tool_call"));
    assert_eq!(call["kind"], json!("edit"));
    assert_eq!(call["locations"], json!([{"path":"echo.txt","line":1}]));
    assert_eq!(
        call["content"],
        json!([{"type":"diff","path":"echo.txt","oldText":"old\n","newText":"new\n"}])
    );
    let update = &out[1]["params"]["update"];
    assert_eq!(update["status"], json!("completed"));
    assert_eq!(
        update["content"][1],
        json!({"type":"terminal","terminalId":"echo-terminal"})
    );
    assert_eq!(update["rawOutput"], json!({"written": 4}));
    assert_eq!(out[2]["result"], json!({"stopReason":"end_turn"}));
}

#[test]
fn blocks_describes_each_non_text_block_of_the_prompt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut agent = Agent::new(Vec::new());
    let out = exchange(
        &mut agent,
        request(0, "initialize", json!({"protocolVersion":1})),
    );
    let caps = &out[0]["result"]["agentCapabilities"]["promptCapabilities"];
    assert_eq!(
        caps,
        &json!({"image": true, "audio": false, "embeddedContext": true})
    );
    let cwd = dir.path().to_string_lossy().into_owned();
    let out = exchange(
        &mut agent,
        request(1, "session/new", json!({"cwd": cwd, "mcpServers": []})),
    );
    let session = out[0]["result"]["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let answer = |agent: &mut Agent<Vec<u8>>, id: u64, prompt: Value| -> String {
        let out = exchange(
            agent,
            request(
                id,
                "session/prompt",
                json!({"sessionId": session, "prompt": prompt}),
            ),
        );
        assert_eq!(
            out.last().map(|m| m["result"]["stopReason"].clone()),
            Some(json!("end_turn"))
        );
        out[0]["params"]["update"]["content"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        answer(&mut agent, 2, json!([{"type":"text","text":"blocks"}])),
        "no blocks"
    );
    let prompt = json!([
        {"type":"text","text":"blocks"},
        {"type":"image","data":"AQID","mimeType":"image/png"},
        {"type":"resource_link","uri":"file:///w/a.rs","name":"a.rs"},
        {"type":"text","text":"\n"},
        {"type":"resource","resource":{"uri":"file:///w/b.txt","text":"hi"}},
        {"type":"resource","resource":{"uri":"file:///w/c.bin","blob":"AAAA"}},
        {"type":"audio","data":"!!","mimeType":"audio/wav"},
    ]);
    assert_eq!(
        answer(&mut agent, 3, prompt),
        "image image/png 3 bytes\nresource_link a.rs file:///w/a.rs\n\
         resource file:///w/b.txt text \"hi\"\nresource file:///w/c.bin blob 3 bytes\n\
         audio audio/wav invalid base64"
    );
}
