//! The simulated agent processes: what the driver does with the core's agent commands, and the
//! built-in ACP echo agent.

use std::path::{Component, Path};

use crate::{AgentCommand, AgentId, FileError, FileErrorKind};

use super::Sim;

/// A simulated agent's report, held until the drain that produced it is over.
#[derive(Debug)]
pub(super) enum AgentInput {
    Spawned(AgentId, String),
    SpawnFailed(AgentId),
    Line(AgentId, String),
    FileRead(AgentId, u64, Result<String, FileError>),
    FileWritten(AgentId, u64, Result<String, FileError>),
    Exited(AgentId),
}

/// How simulated agents behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// A built-in ACP echo agent: answers the handshake, echoes each prompt as one chunk and ends
    /// the turn; the text `stream N` streams N chunks `c0`, `c1`, ...
    Echo,
    /// Nothing answers: the test reads `SimAgent::written` and injects lines with `agent_send`.
    Manual,
    /// Spawning fails.
    FailToStart,
}

/// One simulated agent process.
#[derive(Debug, Default)]
pub struct SimAgent {
    /// The session the agent was spawned for.
    pub session_id: String,
    /// Lines the gateway wrote to the agent's stdin.
    pub written: Vec<serde_json::Value>,
    /// Spawned and not exited or killed.
    pub alive: bool,
    /// Its workspace directory.
    pub workspace: String,
}

impl Sim {
    /// Carries out one agent command as the agent host would, queueing the reports it gives rise
    /// to (fed to the core after the drain).
    pub(super) fn agent_command(&mut self, command: AgentCommand) {
        match command {
            AgentCommand::Spawn {
                agent, session_id, ..
            } => {
                if self.agent_mode == AgentMode::FailToStart {
                    self.agent_inputs.push_back(AgentInput::SpawnFailed(agent));
                    return;
                }
                let workspace = format!("/sim/sessions/{session_id}/workspace");
                self.agents.insert(
                    agent,
                    SimAgent {
                        session_id,
                        written: Vec::new(),
                        alive: true,
                        workspace: workspace.clone(),
                    },
                );
                if self.hold_spawns {
                    self.held_spawns.push((agent, workspace));
                } else {
                    self.agent_inputs
                        .push_back(AgentInput::Spawned(agent, workspace));
                }
            }
            AgentCommand::Write { agent, line } => {
                let Some(sim_agent) = self.agents.get_mut(&agent) else {
                    return;
                };
                let Ok(message) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    return;
                };
                sim_agent.written.push(message.clone());
                if self.agent_mode == AgentMode::Echo && sim_agent.alive {
                    for reply in echo_agent_replies(&message) {
                        self.agent_inputs
                            .push_back(AgentInput::Line(agent, reply.to_string()));
                    }
                }
            }
            AgentCommand::ReadTextFile {
                agent,
                request,
                path,
                line,
                limit,
            } => {
                let Some(sim_agent) = self.agents.get(&agent) else {
                    return;
                };
                let workspace = &sim_agent.workspace;
                let result = confined(workspace, &path).and_then(|relative| {
                    let text = self
                        .files
                        .get(&format!("{workspace}/{relative}"))
                        .ok_or_else(|| FileError::new(FileErrorKind::NotFound, "no such file"))?;
                    let skip = line.map_or(0, |line| line.saturating_sub(1)) as usize;
                    let take = limit.map_or(usize::MAX, |limit| limit as usize);
                    Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
                });
                self.agent_inputs
                    .push_back(AgentInput::FileRead(agent, request, result));
            }
            AgentCommand::WriteTextFile {
                agent,
                request,
                path,
                content,
            } => {
                let Some(sim_agent) = self.agents.get(&agent) else {
                    return;
                };
                let workspace = &sim_agent.workspace;
                let result = confined(workspace, &path).map(|relative| {
                    self.files
                        .insert(format!("{workspace}/{relative}"), content);
                    relative
                });
                self.agent_inputs
                    .push_back(AgentInput::FileWritten(agent, request, result));
            }
            AgentCommand::Stop { agent } | AgentCommand::Kill { agent } => {
                if let Some(sim_agent) = self.agents.get_mut(&agent) {
                    if sim_agent.alive {
                        sim_agent.alive = false;
                        self.agent_inputs.push_back(AgentInput::Exited(agent));
                    }
                }
            }
        }
    }
}

/// The simulated host's confinement: `path` must lie in `workspace`, without `..` (the real
/// host also resolves symlinks; the simulation has none). The path relative to the workspace.
fn confined(workspace: &str, path: &Path) -> Result<String, FileError> {
    let refused = || {
        FileError::new(
            FileErrorKind::Refused,
            "the path is outside the session's workspace",
        )
    };
    let relative = path.strip_prefix(workspace).map_err(|_| refused())?;
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(refused()),
        }
    }
    if parts.is_empty() {
        return Err(refused());
    }
    Ok(parts.join("/"))
}

/// The built-in echo agent's answers to one message from the gateway.
fn echo_agent_replies(message: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::json;
    let id = message.get("id").cloned();
    let method = message
        .get("method")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    match (method, id) {
        ("initialize", Some(id)) => {
            vec![
                json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": 1, "agentCapabilities": {}}}),
            ]
        }
        ("session/new", Some(id)) => {
            vec![json!({"jsonrpc": "2.0", "id": id, "result": {"sessionId": "sim-session"}})]
        }
        ("session/prompt", Some(id)) => {
            let text = message
                .pointer("/params/prompt/0/text")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned();
            let chunks: Vec<String> = match text
                .strip_prefix("stream ")
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                Some(count) => (0..count).map(|index| format!("c{index} ")).collect(),
                None => vec![text],
            };
            let mut replies: Vec<serde_json::Value> = chunks
                .into_iter()
                .map(|chunk| {
                    json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "sim-session",
                        "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": chunk}}}})
                })
                .collect();
            replies.push(json!({"jsonrpc": "2.0", "id": id, "result": {"stopReason": "end_turn"}}));
            replies
        }
        _ => Vec::new(),
    }
}
