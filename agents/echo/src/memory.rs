//! What the echo agent remembers of a session: its conversation, in memory and in a file in
//! the workspace (README.md, "Memory").

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{MAX_REMEMBERED_ANSWER, MEMORY_DIR};

/// Who said a remembered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    User,
    Agent,
}

/// A session's conversation: in memory, and appended to its file (when the `cwd` is writable).
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub(crate) file: Option<PathBuf>,
    pub(crate) messages: Vec<(Role, String)>,
}

impl Memory {
    /// The conversation file of `session_id` under `cwd`.
    pub(crate) fn path(cwd: &Path, session_id: &str) -> PathBuf {
        cwd.join(MEMORY_DIR).join(format!("{session_id}.jsonl"))
    }

    /// Reads a conversation file; `None` if it does not exist (or cannot be read). Lines that
    /// are not a remembered message are skipped.
    pub(crate) fn read(path: PathBuf) -> Option<Memory> {
        let text = fs::read_to_string(&path).ok()?;
        let messages = text
            .lines()
            .filter_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                let role = match entry.get("role").and_then(Value::as_str)? {
                    "user" => Role::User,
                    "agent" => Role::Agent,
                    _ => return None,
                };
                Some((role, entry.get("text")?.as_str()?.to_owned()))
            })
            .collect();
        Some(Memory {
            file: Some(path),
            messages,
        })
    }

    /// Remembers a message, and appends it to the file. A write that fails is reported on stderr
    /// and otherwise ignored: the session goes on, remembered by this process only.
    pub(crate) fn remember(&mut self, role: Role, text: &str) {
        self.messages.push((role, text.to_owned()));
        let Some(path) = &self.file else {
            return;
        };
        let role = match role {
            Role::User => "user",
            Role::Agent => "agent",
        };
        let mut line = json!({"role": role, "text": text}).to_string();
        line.push('\n');
        let written = OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            eprintln!("echo-agent: cannot remember in {}: {error}", path.display());
        }
    }

    /// The `recall` answer: the prompts received before, one per line.
    pub(crate) fn recall(&self) -> String {
        let prompts: Vec<&str> = self
            .messages
            .iter()
            .filter(|(role, _)| *role == Role::User)
            .map(|(_, text)| text.as_str())
            .collect();
        if prompts.is_empty() {
            return "I remember no prompts.".to_owned();
        }
        let noun = if prompts.len() == 1 {
            "prompt"
        } else {
            "prompts"
        };
        let mut text = format!("I remember {} {noun}:", prompts.len());
        for (index, prompt) in prompts.iter().enumerate() {
            text.push_str(&format!("\n{}. {prompt}", index + 1));
        }
        text
    }
}

/// Where a session's conversation file lives: under its `cwd` when that is a directory here,
/// else under the process's working directory (a sandbox may show the agent its workspace at
/// another path than the one the client names).
pub(crate) fn memory_base(cwd: &str) -> PathBuf {
    let cwd = Path::new(cwd);
    if cwd.is_dir() {
        return cwd.to_owned();
    }
    std::env::current_dir().unwrap_or_else(|_| cwd.to_owned())
}

/// A session id this agent could have made (`echo-N`), so it can name a file.
pub(crate) fn valid_session_id(session_id: &str) -> bool {
    session_id
        .strip_prefix("echo-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Adds `text` to a turn's remembered answer, up to `MAX_REMEMBERED_ANSWER` bytes.
pub(crate) fn remember_answer(answer: &mut String, text: &str) {
    let room = MAX_REMEMBERED_ANSWER.saturating_sub(answer.len());
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    answer.push_str(&text[..end]);
}
