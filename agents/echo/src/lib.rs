//! The bundled echo agent: a real ACP v1 agent over stdio (JSON-RPC 2.0, one message per line),
//! deterministic and fast, driven by the prompt text. See README.md for the commands.
//!
//! One thread reads stdin into a channel; the main thread runs every session's turn as a queue
//! of steps, sleeping only until the next `slow` chunk is due, so `session/cancel` and permission
//! answers are read while a turn runs. Standard output is buffered and flushed after each batch.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufWriter, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `stream` chunks written before input is looked at again (so a cancel is noticed).
const STREAM_SLICE: u64 = 64;
/// The largest `stream` chunk; larger sizes are echoed as text instead.
const MAX_CHUNK: usize = 16 << 20;
/// The longest `slow` interval (a day), so the wake-up time cannot overflow.
const MAX_SLOW_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// The exit status of the `exit` command.
const EXIT_STATUS: i32 = 3;

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
    let status = Agent::new(out).run(&receiver);
    std::process::exit(status);
}

enum Step {
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

struct Agent<W: Write> {
    out: W,
    next_session: u64,
    /// Session id → its running turn, if any.
    sessions: BTreeMap<String, Option<Turn>>,
    next_request: u64,
    next_tool_call: u64,
    /// Set when a write failed: the client is gone.
    broken: bool,
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
                    .flatten()
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
            let Some(Some(mut turn)) = self.sessions.get_mut(&session_id).map(Option::take) else {
                continue;
            };
            let mut budget = STREAM_SLICE;
            let mut finished = false;
            while turn.runnable(now) && budget > 0 && !finished {
                let Some(step) = turn.steps.pop_front() else {
                    break;
                };
                match step {
                    Step::Update(update) => self.update(&session_id, update),
                    Step::Stream {
                        left,
                        size,
                        position,
                    } => {
                        let text: String = (0..size as u64)
                            .map(|offset| char::from(b'a' + ((position + offset) % 26) as u8))
                            .collect();
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
                        self.finish(&turn.prompt_id, stop_reason);
                        finished = true;
                    }
                }
            }
            if !finished {
                busy |= turn.runnable(now);
                if let Some(slot) = self.sessions.get_mut(&session_id) {
                    *slot = Some(turn);
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
                        "loadSession": false,
                        "promptCapabilities": {"image": false, "audio": false, "embeddedContext": false},
                    },
                    "authMethods": [],
                    "agentInfo": {"name": "diminuendo-echo-agent", "version": env!("CARGO_PKG_VERSION")},
                }),
            ),
            "authenticate" => self.respond(&id, json!({})),
            "session/new" => {
                let session_id = format!("echo-{}", self.next_session);
                self.next_session += 1;
                self.sessions.insert(session_id.clone(), None);
                self.respond(&id, json!({ "sessionId": session_id }));
            }
            "session/prompt" => self.prompt(id, params),
            _ => self.respond_error(&id, -32601, "Method not found"),
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
            Some(Some(_)) => {
                return self.respond_error(
                    &id,
                    -32602,
                    "Invalid params: a prompt is already running",
                )
            }
            Some(None) => {}
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
        let steps = script(&text, &tool_call_id);
        self.sessions.insert(
            session_id,
            Some(Turn {
                prompt_id: id,
                steps,
                wake_at: None,
                waiting_for: None,
                hanging: false,
            }),
        );
    }

    /// `session/cancel`: the running prompt ends at once with `cancelled`; a permission answer
    /// still to come is ignored.
    fn cancel(&mut self, session_id: &str) {
        if let Some(slot) = self.sessions.get_mut(session_id) {
            if let Some(turn) = slot.take() {
                self.finish(&turn.prompt_id, "cancelled");
            }
        }
    }

    fn handle_response(&mut self, id: &Value, message: &serde_json::Map<String, Value>) {
        let Some(id) = id.as_u64() else {
            return;
        };
        let Some(turn) = self
            .sessions
            .values_mut()
            .flatten()
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

    fn finish(&mut self, prompt_id: &Value, stop_reason: &str) {
        self.respond(prompt_id, json!({ "stopReason": stop_reason }));
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

fn text_chunk(kind: &str, text: &str) -> Value {
    json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}})
}

/// The steps of a turn for this prompt text.
fn script(text: &str, tool_call_id: &str) -> VecDeque<Step> {
    let mut words = text.split_whitespace();
    let command = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let number = |index: usize| args.get(index).and_then(|arg| arg.parse::<u64>().ok());
    let steps = match command {
        "stream" => match (number(0), number(1)) {
            (Some(count), Some(size)) if size as usize <= MAX_CHUNK => {
                let mut steps = Vec::new();
                if count > 0 {
                    steps.push(Step::Stream {
                        left: count,
                        size: size as usize,
                        position: 0,
                    });
                }
                steps.push(Step::Finish("end_turn"));
                steps
            }
            _ => echo(text),
        },
        "slow" => match (number(0), number(1)) {
            (Some(count), Some(millis)) => {
                let mut steps = Vec::new();
                if count > 0 {
                    steps.push(Step::Slow {
                        index: 1,
                        count,
                        every: Duration::from_millis(millis.min(MAX_SLOW_MILLIS)),
                    });
                }
                steps.push(Step::Finish("end_turn"));
                steps
            }
            _ => echo(text),
        },
        "think" => {
            let thought = text
                .trim_start()
                .strip_prefix("think")
                .unwrap_or_default()
                .trim_start();
            vec![
                Step::Update(text_chunk("agent_thought_chunk", thought)),
                Step::Update(text_chunk("agent_message_chunk", thought)),
                Step::Finish("end_turn"),
            ]
        }
        "tools" => vec![
            Step::Update(json!({
                "sessionUpdate": "tool_call",
                "toolCallId": tool_call_id,
                "title": "Read README.md",
                "kind": "read",
                "status": "pending",
                "locations": [{"path": "README.md"}],
                "rawInput": {"path": "README.md"},
            })),
            Step::Update(json!({
                "sessionUpdate": "tool_call_update",
                "toolCallId": tool_call_id,
                "status": "in_progress",
            })),
            Step::Update(json!({
                "sessionUpdate": "tool_call_update",
                "toolCallId": tool_call_id,
                "status": "completed",
                "content": [{"type": "content", "content": {"type": "text", "text": "# Echo\n"}}],
                "rawOutput": {"bytes": 7},
            })),
            Step::Finish("end_turn"),
        ],
        "plan" => vec![
            Step::Update(json!({
                "sessionUpdate": "plan",
                "entries": [
                    {"content": "Read the prompt", "priority": "high", "status": "completed"},
                    {"content": "Echo it back", "priority": "medium", "status": "in_progress"},
                    {"content": "End the turn", "priority": "low", "status": "pending"},
                ],
            })),
            Step::Finish("end_turn"),
        ],
        "permission" => vec![
            Step::Update(json!({
                "sessionUpdate": "tool_call",
                "toolCallId": tool_call_id,
                "title": "Write echo.txt",
                "kind": "edit",
                "status": "pending",
                "rawInput": {"path": "echo.txt", "content": "echo"},
            })),
            Step::AskPermission {
                tool_call_id: tool_call_id.to_owned(),
            },
        ],
        "usage" => vec![
            Step::Update(json!({
                "sessionUpdate": "usage_update",
                "used": 1234,
                "size": 200000,
                "cost": {"amount": 0.0123, "currency": "USD"},
            })),
            Step::Finish("end_turn"),
        ],
        "exit" => vec![
            Step::Update(text_chunk("agent_message_chunk", "exiting")),
            Step::Exit(EXIT_STATUS),
        ],
        "garbage" => vec![Step::Garbage, Step::Finish("end_turn")],
        "hang" => vec![Step::Hang],
        "unknown" => vec![
            Step::Update(json!({
                "sessionUpdate": "echo_unknown_kind",
                "detail": "an update kind no client knows",
            })),
            Step::Finish("end_turn"),
        ],
        _ => echo(text),
    };
    steps.into()
}

fn echo(text: &str) -> Vec<Step> {
    vec![
        Step::Update(text_chunk("agent_message_chunk", text)),
        Step::Finish("end_turn"),
    ]
}
