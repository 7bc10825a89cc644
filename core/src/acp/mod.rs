//! The Agent Client Protocol client (PROTOCOL section 9): one `AcpClient` per session drives one
//! agent process over JSON-RPC 2.0 lines. Pure: it consumes the agent's stdout lines and emits the
//! lines to write to its stdin and the events the session layer publishes.
//!
//! INTERFACE (the session layer is written against it; the implementation may add, not change):
//!
//! ```ignore
//! impl AcpClient {
//!     pub fn new(config: AcpConfig) -> Self;
//!     pub fn start(&mut self, cwd: &str, now: Instant);            // initialize, then session/new
//!     pub fn prompt(&mut self, text: &str, now: Instant) -> Result<(), AcpError>;
//!     pub fn cancel(&mut self, now: Instant);                       // session/cancel + pending permissions cancelled
//!     pub fn answer_permission(&mut self, question_id: &str, option_id: Option<&str>) -> Result<(), AcpError>;
//!     pub fn handle_line(&mut self, line: &[u8], now: Instant);
//!     pub fn handle_exit(&mut self, now: Instant);
//!     pub fn handle_timeout(&mut self, now: Instant);
//!     pub fn poll_timeout(&self) -> Option<Instant>;
//!     pub fn poll_write(&mut self) -> Option<Bytes>;                // one line with its '\n'
//!     pub fn poll_event(&mut self) -> Option<AgentEvent>;
//! }
//! ```
