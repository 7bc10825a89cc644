//! The bundled echo agent: a real ACP v1 agent over stdio (JSON-RPC 2.0, one message per line),
//! deterministic and fast, driven by the prompt text. See README.md for the commands.
//!
//! One thread reads stdin into a channel; the main thread runs every session's turn as a queue
//! of steps, sleeping only until the next `slow` chunk is due, so `session/cancel` and permission
//! answers are read while a turn runs. Standard output is buffered and flushed after each batch.
//!
//! Each session remembers its conversation (the prompts, and the text of each answer) in
//! `.echo-agent/<sessionId>.jsonl` under the session's `cwd` (the gateway's workspace; the
//! process's working directory if `cwd` is no directory here), so a later process serves
//! `session/load` (replay, then answer) and `session/resume` (no replay) for it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufWriter, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod blocks;
mod controls;
mod memory;
mod script;

use blocks::describe_blocks;
use controls::Controls;
use memory::{memory_base, remember_answer, valid_session_id, Memory, Role};
use script::{script, text_chunk};

/// `stream` chunks written before input is looked at again (so a cancel is noticed).
const STREAM_SLICE: u64 = 64;
/// The largest `stream` chunk; larger sizes are echoed as text instead.
pub(crate) const MAX_CHUNK: usize = 16 << 20;
/// The longest `slow` interval (a day), so the wake-up time cannot overflow.
pub(crate) const MAX_SLOW_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// The exit status of the `exit` command.
pub(crate) const EXIT_STATUS: i32 = 3;
/// The directory, under a session's `cwd`, of the conversation files.
pub const MEMORY_DIR: &str = ".echo-agent";
/// The argument that makes the agent one that can neither load nor resume a session: it
/// advertises neither `loadSession` nor `sessionCapabilities.resume` and refuses both methods
/// (`-32601`), like an agent with no memory of its own (the gateway's transcript is then its
/// only memory).
pub const NO_RESTORE_FLAG: &str = "--no-restore";
/// The most of an answer's text remembered per turn (a `stream` turn can be gigabytes).
pub(crate) const MAX_REMEMBERED_ANSWER: usize = 4096;

enum Input {
    Line(Vec<u8>),
    Eof,
}

/// Runs the agent on this process's stdin and stdout until stdin ends (or `exit`). Every gateway
/// binary can run it as `<binary> echo-agent`, so the default `echo` agent type needs nothing
/// built or installed beside the gateway.
pub fn run() {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sender.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sender.send(Input::Eof);
    });
    let out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut agent = Agent::new(out);
    agent.restore = !std::env::args().any(|arg| arg == NO_RESTORE_FLAG);
    let status = agent.run(&receiver);
    std::process::exit(status);
}

pub(crate) enum Step {
    /// A `session/update` with this update object.
    Update(Value),
    /// `left` text chunks of `size` bytes of the repeating alphabet, starting at `position`.
    Stream {
        left: u64,
        size: usize,
        position: u64,
    },
    /// Chunk `index` of `count`, the next one `every` later.
    Slow {
        index: u64,
        count: u64,
        every: Duration,
    },
    /// `session/request_permission` for this tool call.
    AskPermission { tool_call_id: String },
    /// A line that is not JSON.
    Garbage,
    /// Never go on (until cancelled).
    Hang,
    /// Exit the process with this status.
    Exit(i32),
    /// Answer the prompt with this stop reason.
    Finish(&'static str),
}

struct Turn {
    prompt_id: Value,
    /// The answer's text so far (the `agent_message_chunk`s), cut at `MAX_REMEMBERED_ANSWER`.
    answer: String,
    steps: VecDeque<Step>,
    /// Sleeping until then (a `slow` turn).
    wake_at: Option<Instant>,
    /// Waiting for the answer to our request with this id.
    waiting_for: Option<u64>,
    hanging: bool,
}

impl Turn {
    fn runnable(&self, now: Instant) -> bool {
        !self.hanging
            && self.waiting_for.is_none()
            && self.wake_at.is_none_or(|at| at <= now)
            && !self.steps.is_empty()
    }
}

/// One session: its memory and its running turn, if any.
struct Session {
    memory: Memory,
    turn: Option<Turn>,
    /// Its mode and configuration option.
    controls: Controls,
}

struct Agent<W: Write> {
    out: W,
    next_session: u64,
    /// Session id → the session.
    sessions: BTreeMap<String, Session>,
    next_request: u64,
    next_tool_call: u64,
    /// Set when a write failed: the client is gone.
    broken: bool,
    /// Advertise and serve `session/load` and `session/resume` (not with `--no-restore`).
    restore: bool,
}

impl<W: Write> Agent<W> {
    fn new(out: W) -> Self {
        Agent {
            out,
            next_session: 1,
            sessions: BTreeMap::new(),
            next_request: 0,
            next_tool_call: 1,
            broken: false,
            restore: true,
        }
    }

    /// Serves until stdin closes (status 0), a write fails (0) or `exit` (3).
    fn run(&mut self, input: &Receiver<Input>) -> i32 {
        loop {
            let busy = match self.advance(Instant::now()) {
                Ok(busy) => busy,
                Err(status) => {
                    let _ = self.out.flush();
                    return status;
                }
            };
            if self.out.flush().is_err() || self.broken {
                return 0;
            }
            let next = if busy {
                match input.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Input::Eof),
                }
            } else {
                let wake_at = self
                    .sessions
                    .values()
                    .filter_map(|session| session.turn.as_ref())
                    .filter(|turn| !turn.hanging && turn.waiting_for.is_none())
                    .filter_map(|turn| turn.wake_at)
                    .min();
                match wake_at {
                    None => Some(input.recv().unwrap_or(Input::Eof)),
                    Some(at) => {
                        match input.recv_timeout(at.saturating_duration_since(Instant::now())) {
                            Ok(input) => Some(input),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => Some(Input::Eof),
                        }
                    }
                }
            };
            match next {
                Some(Input::Line(line)) => self.handle_line(&line),
                Some(Input::Eof) => {
                    let _ = self.out.flush();
                    return 0;
                }
                None => {}
            }
        }
    }

    /// Runs every runnable turn until it blocks (a `stream` yields after a slice). `Ok(true)` when
    /// some turn can go on at once; `Err(status)` to exit.
    fn advance(&mut self, now: Instant) -> Result<bool, i32> {
        let mut busy = false;
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for session_id in ids {
            let Some(mut turn) = self
                .sessions
                .get_mut(&session_id)
                .and_then(|session| session.turn.take())
            else {
                continue;
            };
            let mut budget = STREAM_SLICE;
            let mut finished = false;
            while turn.runnable(now) && budget > 0 && !finished {
                let Some(step) = turn.steps.pop_front() else {
                    break;
                };
                match step {
                    Step::Update(update) => {
                        if update.get("sessionUpdate").and_then(Value::as_str)
                            == Some("agent_message_chunk")
                        {
                            if let Some(text) =
                                update.pointer("/content/text").and_then(Value::as_str)
                            {
                                remember_answer(&mut turn.answer, text);
                            }
                        }
                        self.update(&session_id, update)
                    }
                    Step::Stream {
                        left,
                        size,
                        position,
                    } => {
                        let text: String = (0..size as u64)
                            .map(|offset| char::from(b'a' + ((position + offset) % 26) as u8))
                            .collect();
                        remember_answer(&mut turn.answer, &text);
                        self.update(&session_id, text_chunk("agent_message_chunk", &text));
                        budget -= 1;
                        if left > 1 {
                            turn.steps.push_front(Step::Stream {
                                left: left - 1,
                                size,
                                position: position + size as u64,
                            });
                        }
                    }
                    Step::Slow {
                        index,
                        count,
                        every,
                    } => {
                        let text = format!("chunk {index} of {count}\n");
                        remember_answer(&mut turn.answer, &text);
                        self.update(&session_id, text_chunk("agent_message_chunk", &text));
                        if index < count {
                            turn.wake_at = Some(Instant::now() + every);
                            turn.steps.push_front(Step::Slow {
                                index: index + 1,
                                count,
                                every,
                            });
                        }
                    }
                    Step::AskPermission { tool_call_id } => {
                        let id = self.next_request;
                        self.next_request += 1;
                        turn.waiting_for = Some(id);
                        self.write(&json!({
                            "jsonrpc": "2.0",
                            "id": id,
                            "method": "session/request_permission",
                            "params": {
                                "sessionId": session_id,
                                "toolCall": {
                                    "toolCallId": tool_call_id,
                                    "title": "Write echo.txt",
                                    "kind": "edit",
                                    "status": "pending",
                                    "rawInput": {"path": "echo.txt", "content": "echo"},
                                },
                                "options": [
                                    {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
                                    {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
                                ],
                            },
                        }));
                    }
                    Step::Garbage => self.write_raw(b"this line is not JSON {{{\n"),
                    Step::Hang => turn.hanging = true,
                    Step::Exit(status) => return Err(status),
                    Step::Finish(stop_reason) => {
                        self.finish(&session_id, &turn, stop_reason);
                        finished = true;
                    }
                }
            }
            if !finished {
                busy |= turn.runnable(now);
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.turn = Some(turn);
                }
            }
        }
        Ok(busy)
    }

    fn handle_line(&mut self, line: &[u8]) {
        if line.trim_ascii().is_empty() {
            return;
        }
        let Ok(Value::Object(mut message)) = serde_json::from_slice::<Value>(line) else {
            return self.write(&json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32700, "message": "Parse error"},
            }));
        };
        let params = message.remove("params").unwrap_or(Value::Null);
        match (message.remove("method"), message.remove("id")) {
            (Some(Value::String(method)), Some(id)) => self.handle_request(id, &method, &params),
            (Some(Value::String(method)), None) if method == "session/cancel" => {
                if let Some(session_id) = params.get("sessionId").and_then(Value::as_str) {
                    self.cancel(session_id);
                }
            }
            (None, Some(id)) => self.handle_response(&id, &message),
            _ => {}
        }
    }

    fn handle_request(&mut self, id: Value, method: &str, params: &Value) {
        match method {
            "initialize" => self.respond(
                &id,
                json!({
                    "protocolVersion": 1,
                    "agentCapabilities": {
                        "loadSession": self.restore,
                        "promptCapabilities": {"image": true, "audio": false, "embeddedContext": true},
                        "sessionCapabilities": if self.restore { json!({"resume": {}}) } else { json!({}) },
                    },
                    "authMethods": [],
                    "agentInfo": {"name": "diminuendo-echo-agent", "version": env!("CARGO_PKG_VERSION")},
                }),
            ),
            "authenticate" => self.respond(&id, json!({})),
            "session/new" => self.new_session(&id, params),
            "session/load" if self.restore => self.open_session(&id, params, true),
            "session/resume" if self.restore => self.open_session(&id, params, false),
            "session/prompt" => self.prompt(id, params),
            "session/set_mode" | "session/set_config_option" => self.set_control(&id, method, params),
            _ => self.respond_error(&id, -32601, "Method not found"),
        }
    }

    /// `session/new`: `echo-N` with the first N (from the process's counter) whose conversation
    /// file does not exist under `cwd`, so a new session never inherits an old conversation. The
    /// empty file is created at once (if `cwd` is writable).
    fn new_session(&mut self, id: &Value, params: &Value) {
        let cwd = params
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let base = memory_base(cwd);
        let created = fs::create_dir_all(base.join(MEMORY_DIR));
        let (session_id, file) = loop {
            let session_id = format!("echo-{}", self.next_session);
            self.next_session += 1;
            if self.sessions.contains_key(&session_id) {
                continue;
            }
            if created.is_err() {
                break (session_id, None);
            }
            let path = Memory::path(&base, &session_id);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => break (session_id, Some(path)),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    eprintln!("echo-agent: cannot remember in {}: {error}", path.display());
                    break (session_id, None);
                }
            }
        };
        let memory = Memory {
            file,
            messages: Vec::new(),
        };
        self.sessions.insert(
            session_id.clone(),
            Session {
                memory,
                turn: None,
                controls: Controls::default(),
            },
        );
        let result = Controls::default().session_result(json!({ "sessionId": session_id }));
        self.respond(id, result);
    }

    /// `session/load` (`replay`: every remembered message as a `user_message_chunk` or
    /// `agent_message_chunk`, then the answer) and `session/resume` (just the answer). The
    /// conversation is this process's if it has the session, else its file under `cwd`; neither:
    /// error `-32002` (resource not found).
    fn open_session(&mut self, id: &Value, params: &Value, replay: bool) {
        let Some(session_id) = params.get("sessionId").and_then(Value::as_str) else {
            return self.respond_error(id, -32602, "Invalid params: sessionId is needed");
        };
        let cwd = params
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let session_id = session_id.to_owned();
        match self.sessions.get(&session_id) {
            Some(session) if session.turn.is_some() => {
                return self.respond_error(
                    id,
                    -32602,
                    "Invalid params: a prompt is running in this session",
                )
            }
            Some(_) => {}
            None => {
                let memory = valid_session_id(&session_id)
                    .then(|| Memory::read(Memory::path(&memory_base(cwd), &session_id)))
                    .flatten();
                let Some(memory) = memory else {
                    return self.write(&json!({
                        "jsonrpc": "2.0",
                        "id": id,
                        "error": {"code": -32002, "message": "Resource not found", "data": {"sessionId": session_id}},
                    }));
                };
                self.sessions.insert(
                    session_id.clone(),
                    Session {
                        memory,
                        turn: None,
                        controls: Controls::default(),
                    },
                );
            }
        }
        if replay {
            let messages = self
                .sessions
                .get(&session_id)
                .map(|session| session.memory.messages.clone())
                .unwrap_or_default();
            for (role, text) in messages {
                let kind = match role {
                    Role::User => "user_message_chunk",
                    Role::Agent => "agent_message_chunk",
                };
                self.update(&session_id, text_chunk(kind, &text));
            }
        }
        let result = self.sessions.get(&session_id).map_or_else(
            || json!({}),
            |session| session.controls.session_result(json!({})),
        );
        self.respond(id, result);
    }

    /// `session/set_mode` and `session/set_config_option`: the answer, or error `-32602`.
    fn set_control(&mut self, id: &Value, method: &str, params: &Value) {
        let session_id = params
            .get("sessionId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(session) = self.sessions.get_mut(session_id) else {
            return self.respond_error(id, -32602, "Invalid params: unknown sessionId");
        };
        let result = if method == "session/set_mode" {
            session.controls.set_mode(params).map(|()| json!({}))
        } else {
            session.controls.set_config_option(params)
        };
        match result {
            Ok(result) => self.respond(id, result),
            Err(message) => self.respond_error(id, -32602, &message),
        }
    }

    fn prompt(&mut self, id: Value, params: &Value) {
        let session_id = params
            .get("sessionId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match self.sessions.get(&session_id) {
            None => return self.respond_error(&id, -32602, "Invalid params: unknown sessionId"),
            Some(session) if session.turn.is_some() => {
                return self.respond_error(
                    &id,
                    -32602,
                    "Invalid params: a prompt is already running",
                )
            }
            Some(_) => {}
        }
        let text: String = params
            .get("prompt")
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|block| block.get("text").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let tool_call_id = format!("echo-tool-{}", self.next_tool_call);
        self.next_tool_call += 1;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut steps = script(&text, &tool_call_id, &session.memory);
        if text.split_whitespace().collect::<Vec<_>>() == ["blocks"] {
            let blocks = params.get("prompt").and_then(Value::as_array);
            let answer = describe_blocks(blocks.map(Vec::as_slice).unwrap_or_default());
            steps = VecDeque::from([
                Step::Update(text_chunk("agent_message_chunk", &answer)),
                Step::Finish("end_turn"),
            ]);
        }
        if text.split_whitespace().collect::<Vec<_>>() == ["controls"] {
            for (index, update) in session.controls.announce().into_iter().enumerate() {
                steps.insert(index, Step::Update(update));
            }
        }
        session.memory.remember(Role::User, &text);
        session.turn = Some(Turn {
            prompt_id: id,
            answer: String::new(),
            steps,
            wake_at: None,
            waiting_for: None,
            hanging: false,
        });
    }

    /// `session/cancel`: the running prompt ends at once with `cancelled`; a permission answer
    /// still to come is ignored.
    fn cancel(&mut self, session_id: &str) {
        if let Some(turn) = self
            .sessions
            .get_mut(session_id)
            .and_then(|session| session.turn.take())
        {
            self.finish(session_id, &turn, "cancelled");
        }
    }

    fn handle_response(&mut self, id: &Value, message: &serde_json::Map<String, Value>) {
        let Some(id) = id.as_u64() else {
            return;
        };
        let Some(turn) = self
            .sessions
            .values_mut()
            .filter_map(|session| session.turn.as_mut())
            .find(|turn| turn.waiting_for == Some(id))
        else {
            return;
        };
        turn.waiting_for = None;
        let (text, stop_reason) = match message.get("result") {
            Some(result) => match result.pointer("/outcome/outcome").and_then(Value::as_str) {
                Some("selected") => {
                    let option = result
                        .pointer("/outcome/optionId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    (format!("permission: {option}"), "end_turn")
                }
                Some("cancelled") => ("permission: cancelled".to_owned(), "cancelled"),
                _ => ("permission: unknown outcome".to_owned(), "end_turn"),
            },
            None => {
                let error = message
                    .get("error")
                    .and_then(|error| error.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no message");
                (format!("permission: error: {error}"), "end_turn")
            }
        };
        turn.steps
            .push_back(Step::Update(text_chunk("agent_message_chunk", &text)));
        turn.steps.push_back(Step::Finish(stop_reason));
    }

    fn update(&mut self, session_id: &str, update: Value) {
        self.write(&json!({
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session_id, "update": update},
        }));
    }

    /// Answers the prompt, after remembering the answer's text (if any).
    fn finish(&mut self, session_id: &str, turn: &Turn, stop_reason: &str) {
        if !turn.answer.is_empty() {
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.memory.remember(Role::Agent, &turn.answer);
            }
        }
        self.respond(&turn.prompt_id, json!({ "stopReason": stop_reason }));
    }

    fn respond(&mut self, id: &Value, result: Value) {
        self.write(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn respond_error(&mut self, id: &Value, code: i64, message: &str) {
        self.write(&json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": code, "message": message},
        }));
    }

    fn write(&mut self, message: &Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.write_raw(&line);
    }

    fn write_raw(&mut self, line: &[u8]) {
        if self.out.write_all(line).is_err() {
            self.broken = true;
        }
    }
}

#[cfg(test)]
mod tests;
