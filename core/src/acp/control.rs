//! Issue 13's additions, not yet called by the session layer: the session's modes and
//! configuration options, the agent's capabilities and how its session was opened, and the
//! agent's file requests.

use agent_client_protocol_schema::v1::{
    ReadTextFileResponse, SessionConfigOptionValue, SetSessionConfigOptionRequest,
    SetSessionModeRequest, WriteTextFileResponse,
};

use super::rpc::{encode, ErrorResponse};
use super::{
    schema, AcpClient, AcpError, AgentFeatures, FileRequest, FileRequestId, Pending, SessionOrigin,
    State,
};

impl AcpClient {
    /// Sends `session/set_mode`; its answer comes back as [`ControlEvent::ModeSet`](super::ControlEvent::ModeSet) with the
    /// returned request number (and, on success, [`AcpClient::current_mode`] is `mode_id`).
    /// Allowed once the session is open, in a turn or not.
    pub fn set_mode(&mut self, mode_id: &str) -> Result<u64, AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        let params = SetSessionModeRequest::new(session_id.clone(), mode_id.to_owned());
        Ok(self.request(
            Pending::SetMode {
                mode_id: mode_id.to_owned(),
            },
            params,
        ))
    }

    /// Sends `session/set_config_option`; its answer comes back as
    /// [`ControlEvent::ConfigOptionSet`](super::ControlEvent::ConfigOptionSet) with the returned request number (and, on success,
    /// [`AcpClient::config_options`] is the agent's new list). Allowed once the session is open.
    pub fn set_config_option(
        &mut self,
        config_id: &str,
        value: SessionConfigOptionValue,
    ) -> Result<u64, AcpError> {
        let State::Ready { session_id } = &self.state else {
            return Err(AcpError::NotReady);
        };
        let params =
            SetSessionConfigOptionRequest::new(session_id.clone(), config_id.to_owned(), value);
        Ok(self.request(Pending::SetConfigOption, params))
    }

    /// Answers a [`ControlEvent::ReadTextFile`](super::ControlEvent::ReadTextFile): the file's content, or an error (e.g.
    /// `schema::Error::resource_not_found(..)`, or `invalid_params` for a path outside the
    /// workspace).
    pub fn answer_read_text_file(
        &mut self,
        request: FileRequestId,
        result: Result<String, schema::Error>,
    ) -> Result<(), AcpError> {
        let file = self.take_file_request(request, false)?;
        match result {
            Ok(content) => self.respond(&file.request_id, ReadTextFileResponse::new(content)),
            Err(error) => self.writes.push_back(encode(&ErrorResponse {
                jsonrpc: "2.0",
                id: &file.request_id,
                error,
            })),
        }
        Ok(())
    }

    /// Answers a [`ControlEvent::WriteTextFile`](super::ControlEvent::WriteTextFile): written, or an error.
    pub fn answer_write_text_file(
        &mut self,
        request: FileRequestId,
        result: Result<(), schema::Error>,
    ) -> Result<(), AcpError> {
        let file = self.take_file_request(request, true)?;
        match result {
            Ok(()) => self.respond(&file.request_id, WriteTextFileResponse::new()),
            Err(error) => self.writes.push_back(encode(&ErrorResponse {
                jsonrpc: "2.0",
                id: &file.request_id,
                error,
            })),
        }
        Ok(())
    }

    /// Which request opened the session: set when `Ready` is reported, kept after.
    pub fn session_origin(&self) -> Option<SessionOrigin> {
        self.origin
    }

    /// Why the agent refused `session/resume` or `session/load` (its error message), when the
    /// client then fell back to `session/new`.
    pub fn restore_error(&self) -> Option<&str> {
        self.restore_error.as_deref()
    }

    /// How many `session/update`s the agent replayed during `session/load` (consumed, never
    /// reported as `AgentEvent::Update`).
    pub fn replayed_updates(&self) -> u64 {
        self.replayed
    }

    /// What the agent's `initialize` result advertised, in short; `None` before it answered.
    pub fn agent_features(&self) -> Option<AgentFeatures> {
        self.capabilities.as_ref().map(AgentFeatures::of)
    }

    /// The agent's whole `agentCapabilities`; `None` before it answered `initialize`.
    pub fn agent_capabilities(&self) -> Option<&schema::AgentCapabilities> {
        self.capabilities.as_ref()
    }

    /// The session's current mode: from the session's opening answer, then `current_mode_update`
    /// and successful `set_mode`s.
    pub fn current_mode(&self) -> Option<&str> {
        self.current_mode.as_deref()
    }

    /// The modes the agent offered when the session opened (empty if none).
    pub fn available_modes(&self) -> &[schema::SessionMode] {
        &self.available_modes
    }

    /// The session's configuration options: from the opening answer, then `config_option_update`
    /// and successful `set_config_option`s. `None` if the agent never sent any.
    pub fn config_options(&self) -> Option<&[schema::SessionConfigOption]> {
        self.config_options.as_deref()
    }

    /// The commands the agent offers (its latest `available_commands_update`), if it sent any.
    pub fn available_commands(&self) -> Option<&[schema::AvailableCommand]> {
        self.commands.as_deref()
    }

    pub(super) fn take_file_request(
        &mut self,
        request: FileRequestId,
        write: bool,
    ) -> Result<FileRequest, AcpError> {
        let index = self
            .files
            .iter()
            .position(|file| file.id == request && file.write == write)
            .ok_or(AcpError::UnknownRequest)?;
        Ok(self.files.remove(index))
    }
}
