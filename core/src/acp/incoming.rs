//! What the agent writes: its notifications, its requests and its answers to ours.

use std::time::Instant;

use agent_client_protocol_schema::v1::{
    InitializeResponse, LoadSessionRequest, LoadSessionResponse, NewSessionRequest,
    NewSessionResponse, PromptResponse, ReadTextFileRequest, RequestPermissionRequest,
    ResumeSessionRequest, ResumeSessionResponse, SessionConfigOption, SessionModeState,
    SetSessionConfigOptionResponse, SetSessionModeResponse, WriteTextFileRequest,
    CLIENT_METHOD_NAMES,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::mapping::{self, StateChange};
use super::rpc::{error_text, parse, truncate};
use super::{
    AcpClient, AgentEvent, AgentFeatures, ControlEvent, FileRequest, FileRequestId, Pending,
    PermissionOption, Question, SessionOrigin, State, ACP_PROTOCOL_VERSION, AGENT_ERROR,
    INTERNAL_ERROR, INVALID_PARAMS, MAX_PENDING_FILE_REQUESTS, MAX_REMEMBERED_TOOL_CALLS,
    METHOD_NOT_FOUND,
};

impl AcpClient {
    pub(super) fn handle_notification(&mut self, method: &str, mut params: Value, now: Instant) {
        if method != CLIENT_METHOD_NAMES.session_update {
            return;
        }
        let update = params
            .as_object_mut()
            .and_then(|params| params.remove("update"))
            .unwrap_or(Value::Null);
        let mapped = mapping::map_update(update);
        let is_state = mapped.state.is_some();
        if let Some(change) = mapped.state {
            self.apply_state(change);
        }
        if self.replaying {
            // session/load's replay of the conversation: the gateway has its own history.
            self.replayed += 1;
            self.state = State::Handshake {
                deadline: now.checked_add(self.config.init_timeout),
            };
            return;
        }
        if is_state {
            // Surfaced as a ControlEvent (poll_control), published as its typed event.
            return;
        }
        if let Some((id, title)) = mapped.tool_title {
            self.remember_title(id, title);
        }
        self.events.push_back(AgentEvent::Update {
            kind: mapped.kind,
            fields: mapped.fields,
        });
    }

    pub(super) fn apply_state(&mut self, change: StateChange) {
        let event = match change {
            StateChange::Mode(mode_id) => {
                self.current_mode = Some(mode_id.clone());
                ControlEvent::ModeChanged { mode_id }
            }
            StateChange::Commands(commands) => {
                self.commands = Some(commands.clone());
                ControlEvent::CommandsChanged { commands }
            }
            StateChange::ConfigOptions(options) => {
                self.config_options = Some(options.clone());
                ControlEvent::ConfigOptionsChanged { options }
            }
        };
        let kind = std::mem::discriminant(&event);
        self.controls
            .retain(|waiting| std::mem::discriminant(waiting) != kind);
        self.controls.push_back(event);
    }

    pub(super) fn remember_title(&mut self, id: String, title: String) {
        if self.tool_titles.len() < MAX_REMEMBERED_TOOL_CALLS || self.tool_titles.contains_key(&id)
        {
            self.tool_titles.insert(id, title);
        }
    }

    pub(super) fn handle_request(&mut self, id: Value, method: &str, params: Value) {
        if method == CLIENT_METHOD_NAMES.session_request_permission {
            return self.permission_request(id, &params);
        }
        let read = method == CLIENT_METHOD_NAMES.fs_read_text_file;
        let write = method == CLIENT_METHOD_NAMES.fs_write_text_file;
        if !(self.config.fs_capability && (read || write)) {
            return self.respond_error(&id, METHOD_NOT_FOUND, "Method not found");
        }
        if self.files.len() >= MAX_PENDING_FILE_REQUESTS {
            return self.respond_error(&id, INTERNAL_ERROR, "Too many file requests pending");
        }
        let request = FileRequestId(self.next_file_request);
        let event = if read {
            let Ok(read) = ReadTextFileRequest::deserialize(&params) else {
                return self.respond_error(
                    &id,
                    INVALID_PARAMS,
                    "Invalid params: fs/read_text_file needs sessionId and path",
                );
            };
            ControlEvent::ReadTextFile {
                request,
                path: read.path,
                line: read.line,
                limit: read.limit,
            }
        } else {
            let Ok(written) = WriteTextFileRequest::deserialize(&params) else {
                return self.respond_error(
                    &id,
                    INVALID_PARAMS,
                    "Invalid params: fs/write_text_file needs sessionId, path and content",
                );
            };
            ControlEvent::WriteTextFile {
                request,
                path: written.path,
                content: written.content,
            }
        };
        self.next_file_request += 1;
        self.files.push(FileRequest {
            id: request,
            request_id: id,
            write,
        });
        self.controls.push_back(event);
    }

    /// `session/request_permission`: `{toolCall: {toolCallId, title?}, options: [{optionId, name,
    /// kind}]}`. ACP v1 types `toolCall` as a `ToolCallUpdate`, so its title is optional: a
    /// missing one is taken from the `tool_call` update of the same id, else empty.
    pub(super) fn permission_request(&mut self, id: Value, params: &Value) {
        let Ok(request) = RequestPermissionRequest::deserialize(params) else {
            return self.respond_error(
                &id,
                INVALID_PARAMS,
                "Invalid params: session/request_permission needs toolCall.toolCallId and options[{optionId, name, kind}]",
            );
        };
        let tool_call_id = request.tool_call.tool_call_id.0.to_string();
        let title = match request.tool_call.fields.title {
            Some(title) => title,
            None => self
                .tool_titles
                .get(&tool_call_id)
                .cloned()
                .unwrap_or_default(),
        };
        let options: Vec<PermissionOption> = request
            .options
            .iter()
            .map(|option| PermissionOption {
                option_id: option.option_id.0.to_string(),
                name: option.name.clone(),
                kind: mapping::wire_name(&option.kind),
            })
            .collect();
        let question_id = format!("q{}", self.next_question);
        self.next_question += 1;
        self.questions.push(Question {
            question_id: question_id.clone(),
            request_id: id,
            options: options.clone(),
        });
        self.events.push_back(AgentEvent::PermissionRequested {
            question_id,
            tool_call_id,
            title,
            options,
        });
    }

    pub(super) fn handle_response(&mut self, mut message: Map<String, Value>, now: Instant) {
        let id = message.get("id").and_then(Value::as_u64);
        let Some(kind) = id.and_then(|id| self.pending.get(&id).cloned()) else {
            let shown = message.get("id").map_or("none".into(), Value::to_string);
            return self.fail(format!(
                "the agent answered a request that was never sent (id {})",
                truncate(&shown)
            ));
        };
        let error_code = message
            .get("error")
            .and_then(|error| error.get("code"))
            .and_then(Value::as_i64);
        let outcome = if let Some(error) = message.get("error") {
            Err(error_text(error))
        } else if let Some(result) = message.remove("result") {
            Ok(result)
        } else {
            return self.fail("the agent sent a response with neither result nor error".into());
        };
        let request = id.unwrap_or_default();
        self.pending.remove(&request);
        match (kind, outcome) {
            (Pending::Initialize, Err(message)) => {
                self.fail(format!("the agent refused initialize: {message}"))
            }
            (Pending::Initialize, Ok(result)) => {
                let response = match parse::<InitializeResponse>(result, "initialize") {
                    Ok(response) => response,
                    Err(message) => return self.fail(message),
                };
                let version = response.protocol_version.as_u16();
                if u64::from(version) != ACP_PROTOCOL_VERSION {
                    return self.fail(format!(
                        "the agent speaks ACP version {version}, the gateway version {ACP_PROTOCOL_VERSION}"
                    ));
                }
                self.capabilities = Some(response.agent_capabilities);
                self.open_session(now);
            }
            (Pending::NewSession, Err(message)) => {
                self.fail(format!("the agent refused session/new: {message}"))
            }
            (Pending::NewSession, Ok(result)) => {
                match parse::<NewSessionResponse>(result, "session/new") {
                    Ok(response) => {
                        self.session_state(response.modes, response.config_options);
                        self.ready(response.session_id.0.to_string(), SessionOrigin::New);
                    }
                    Err(message) => self.fail(message),
                }
            }
            (kind @ (Pending::ResumeSession | Pending::LoadSession), outcome) => {
                self.replaying = false;
                let opened = match (&kind, outcome) {
                    (_, Err(message)) => Err(message),
                    (Pending::ResumeSession, Ok(result)) => {
                        parse::<ResumeSessionResponse>(result, "session/resume")
                            .map(|response| (response.modes, response.config_options))
                    }
                    (_, Ok(result)) => parse::<LoadSessionResponse>(result, "session/load")
                        .map(|response| (response.modes, response.config_options)),
                };
                let restored = self.restore.take().unwrap_or_default();
                match opened {
                    Ok((modes, options)) => {
                        self.session_state(modes, options);
                        let origin = if kind == Pending::ResumeSession {
                            SessionOrigin::Resumed
                        } else {
                            SessionOrigin::Loaded
                        };
                        self.ready(restored, origin);
                    }
                    Err(message) => {
                        // The agent no longer has the session: start afresh rather than fail.
                        self.restore_error = Some(message);
                        self.open_session(now);
                    }
                }
            }
            (Pending::Prompt, outcome) => {
                self.turn = None;
                // A question still open when the turn ended can no longer matter.
                self.cancel_questions();
                let event = match outcome {
                    Ok(result) => match parse::<PromptResponse>(result, "session/prompt") {
                        Ok(response) => AgentEvent::TurnComplete {
                            stop_reason: mapping::wire_name(&response.stop_reason),
                        },
                        Err(message) => AgentEvent::TurnError {
                            code: AGENT_ERROR.into(),
                            message,
                            agent_code: None,
                        },
                    },
                    Err(message) => AgentEvent::TurnError {
                        code: AGENT_ERROR.into(),
                        message,
                        agent_code: error_code,
                    },
                };
                self.events.push_back(event);
            }
            (Pending::SetMode { mode_id }, outcome) => {
                let result = outcome.and_then(|result| {
                    parse::<SetSessionModeResponse>(result, "session/set_mode").map(|_| ())
                });
                if result.is_ok() {
                    self.current_mode = Some(mode_id.clone());
                }
                self.controls.push_back(ControlEvent::ModeSet {
                    request,
                    mode_id,
                    result,
                });
            }
            (Pending::SetConfigOption, outcome) => {
                let result = outcome.and_then(|result| {
                    parse::<SetSessionConfigOptionResponse>(result, "session/set_config_option")
                        .map(|response| response.config_options)
                });
                if let Ok(options) = &result {
                    self.config_options = Some(options.clone());
                }
                self.controls
                    .push_back(ControlEvent::ConfigOptionSet { request, result });
            }
        }
    }

    /// After `initialize` (or a refused resume/load): the request that opens the session.
    pub(super) fn open_session(&mut self, now: Instant) {
        self.state = State::Handshake {
            deadline: now.checked_add(self.config.init_timeout),
        };
        let features = self
            .capabilities
            .as_ref()
            .map(AgentFeatures::of)
            .unwrap_or_default();
        match self.restore.clone() {
            Some(session_id) if features.resume_session => {
                let params = ResumeSessionRequest::new(session_id, self.cwd.clone());
                self.request(Pending::ResumeSession, params);
            }
            Some(session_id) if features.load_session => {
                self.replaying = true;
                let params = LoadSessionRequest::new(session_id, self.cwd.clone());
                self.request(Pending::LoadSession, params);
            }
            _ => {
                self.restore = None;
                let params = NewSessionRequest::new(self.cwd.clone());
                self.request(Pending::NewSession, params);
            }
        }
    }

    pub(super) fn session_state(
        &mut self,
        modes: Option<SessionModeState>,
        options: Option<Vec<SessionConfigOption>>,
    ) {
        if let Some(modes) = modes {
            self.current_mode = Some(modes.current_mode_id.0.to_string());
            self.available_modes = modes.available_modes;
        }
        if options.is_some() {
            self.config_options = options;
        }
    }

    pub(super) fn ready(&mut self, session_id: String, origin: SessionOrigin) {
        self.state = State::Ready { session_id };
        self.origin = Some(origin);
        self.events.push_back(AgentEvent::Ready);
    }
}
