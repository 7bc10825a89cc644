//! The gateway protocol's messages (PROTOCOL sections 3 to 5): client requests parsed once into
//! typed values (`request`, `parse`), the server's messages as typed values (`reply`), each
//! encoded straight into a WebSocket text frame by one encoder (`frame`), and the JSON Schema
//! generated from those types (`schema`, committed at `docs/protocol.schema.json`).

pub mod event;
mod frame;
pub mod parse;
pub mod refusal;
pub mod reply;
pub mod request;
pub mod schema;
pub mod session_reply;
pub use frame::{encode_frame, encode_frame_with_payload};
pub use parse::{parse_client_message, ClientMessage, EnvelopeError, Parsed};
pub use reply::{ErrorCode, Identity, ServerMessage, SessionMeta};
pub use request::{role_allows, ClientRequest, Permission, RequestContext, RequestKind};

/// The protocol version `welcome` announces (`protocolVersion`).
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest `requestId` accepted, in Unicode characters (not bytes).
pub const MAX_REQUEST_ID_LEN: usize = 64;
