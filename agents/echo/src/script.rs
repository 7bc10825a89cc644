//! The prompt's first word is a command: the steps of a turn for each (README.md, "Commands").

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};

use crate::memory::Memory;
use crate::{Step, EXIT_STATUS, MAX_CHUNK, MAX_SLOW_MILLIS};

pub(crate) fn text_chunk(kind: &str, text: &str) -> Value {
    json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}})
}

/// The steps of a turn for this prompt text.
pub(crate) fn script(text: &str, tool_call_id: &str, memory: &Memory) -> VecDeque<Step> {
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
        "recall" if args.is_empty() => vec![
            Step::Update(text_chunk("agent_message_chunk", &memory.recall())),
            Step::Finish("end_turn"),
        ],
        "hang" => vec![Step::Hang],
        // The updates come from the session's controls (lib.rs): here only the turn's end.
        "controls" if args.is_empty() => vec![Step::Finish("end_turn")],
        "diff" if args.is_empty() => diff(tool_call_id),
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

/// The `diff` command: an edit with a location, a diff and a terminal, and its raw output.
fn diff(tool_call_id: &str) -> Vec<Step> {
    let diff = json!({"type": "diff", "path": "echo.txt", "oldText": "old\n", "newText": "new\n"});
    vec![
        Step::Update(json!({
            "sessionUpdate": "tool_call",
            "toolCallId": tool_call_id,
            "title": "Edit echo.txt",
            "kind": "edit",
            "status": "in_progress",
            "locations": [{"path": "echo.txt", "line": 1}],
            "content": [diff],
            "rawInput": {"path": "echo.txt", "newText": "new\n"},
        })),
        Step::Update(json!({
            "sessionUpdate": "tool_call_update",
            "toolCallId": tool_call_id,
            "status": "completed",
            "content": [diff, {"type": "terminal", "terminalId": "echo-terminal"}],
            "rawOutput": {"written": 4},
        })),
        Step::Finish("end_turn"),
    ]
}
