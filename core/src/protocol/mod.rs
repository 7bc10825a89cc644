//! The gateway protocol's messages (PROTOCOL sections 3 and 4): the client envelope and the
//! server messages, each encoded straight into a WebSocket text frame.

use serde::Serialize;
use serde_json::{Map, Value};

pub mod event;
mod frame;
pub mod refusal;
pub mod request;
pub mod session_reply;
pub use frame::{encode_frame, encode_frame_with_payload};

pub const PROTOCOL_VERSION: u32 = 1;
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The error codes of PROTOCOL section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    MessageTooLarge,
    RateLimited,
    NotAuthenticated,
    AuthFailed,
    AuthRateLimited,
    Forbidden,
    SessionNotFound,
    InvalidState,
    AgentUnavailable,
    ShuttingDown,
    Internal,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub user_id: String,
    pub email: String,
    pub tenant_id: String,
    pub role: String,
}

impl Identity {
    /// The identity every connection has in dev mode (PROTOCOL section 4).
    pub fn dev() -> Self {
        Identity {
            user_id: "dev-user-001".into(),
            email: "developer@example.com".into(),
            tenant_id: "dev".into(),
            role: "owner".into(),
        }
    }
}

/// Messages from the server.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage<'a> {
    Welcome {
        protocol_version: u32,
        requires_auth: bool,
    },
    Connected {
        client_id: &'a str,
        heartbeat_interval_ms: u64,
        ts: u64,
    },
    Authenticated {
        identity: &'a Identity,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Pong {
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Heartbeat {
        ts: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    ServerShutdown {
        reason: &'a str,
        reconnect_after_ms: u64,
    },
}

/// A client message's envelope, checked per PROTOCOL section 3.
#[derive(Debug)]
pub struct Envelope {
    pub kind: String,
    pub request_id: Option<String>,
    pub fields: Map<String, Value>,
}

/// Why a client message was refused before its type was looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON at all.
    InvalidJson,
    /// JSON, but not an object with a string `type` and a well-formed `requestId`. Carries the
    /// request id when it was well-formed, so the reply can echo it.
    InvalidMessage {
        reason: &'static str,
        request_id: Option<String>,
    },
}

pub fn parse_envelope(text: &str) -> Result<Envelope, EnvelopeError> {
    let value: Value = serde_json::from_str(text).map_err(|_| EnvelopeError::InvalidJson)?;
    let Value::Object(mut fields) = value else {
        return Err(EnvelopeError::InvalidMessage {
            reason: "a message must be a JSON object",
            request_id: None,
        });
    };
    let request_id = match fields.remove("requestId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.chars().count() <= MAX_REQUEST_ID_LEN => Some(id),
        Some(_) => {
            return Err(EnvelopeError::InvalidMessage {
                reason: "requestId must be a string of at most 64 characters",
                request_id: None,
            })
        }
    };
    match fields.remove("type") {
        Some(Value::String(kind)) => Ok(Envelope {
            kind,
            request_id,
            fields,
        }),
        _ => Err(EnvelopeError::InvalidMessage {
            reason: "type must be a string",
            request_id,
        }),
    }
}

/// The client message types of PROTOCOL section 5 that later work implements.
pub const SESSION_MESSAGE_TYPES: &[&str] = &[
    "list_sessions",
    "create_session",
    "rename_session",
    "archive_session",
    "unarchive_session",
    "delete_session",
    "join_session",
    "leave_session",
    "run_turn",
    "stop_turn",
    "steer",
    "answer_question",
    "get_events",
    "get_history",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::encoder::header_len;

    #[test]
    fn frames_are_well_formed_text_frames() {
        for size in [0usize, 100, 200, 70_000] {
            let text = "x".repeat(size);
            let frame = encode_frame(&ServerMessage::Error {
                code: ErrorCode::Internal,
                message: &text,
                request_id: Some("r1"),
                retry_after_ms: None,
            });
            let json = serde_json::to_vec(&ServerMessage::Error {
                code: ErrorCode::Internal,
                message: &text,
                request_id: Some("r1"),
                retry_after_ms: None,
            })
            .unwrap_or_default();
            assert_eq!(frame.len(), header_len(json.len()) + json.len());
            assert_eq!(&frame[frame.len() - json.len()..], &json[..]);
            assert_eq!(frame[0], 0x81);
        }
    }

    #[test]
    fn envelope_rules() {
        assert_eq!(
            parse_envelope("nope").err(),
            Some(EnvelopeError::InvalidJson)
        );
        assert!(matches!(
            parse_envelope("[1]"),
            Err(EnvelopeError::InvalidMessage { .. })
        ));
        assert!(matches!(
            parse_envelope(r#"{"type":"ping","requestId":5}"#),
            Err(EnvelopeError::InvalidMessage {
                request_id: None,
                ..
            })
        ));
        let long = "a".repeat(65);
        assert!(parse_envelope(&format!(r#"{{"type":"ping","requestId":"{long}"}}"#)).is_err());
        assert!(matches!(
            parse_envelope(r#"{"requestId":"r"}"#),
            Err(EnvelopeError::InvalidMessage { request_id: Some(id), .. }) if id == "r"
        ));
        let ok = parse_envelope(r#"{"type":"ping","requestId":null,"extra":1}"#);
        assert!(matches!(ok, Ok(Envelope { ref kind, request_id: None, .. }) if kind == "ping"));
    }

    #[test]
    fn server_messages_use_the_wire_names() {
        let json = serde_json::to_string(&ServerMessage::Connected {
            client_id: "c",
            heartbeat_interval_ms: 30000,
            ts: 5,
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            r#"{"type":"connected","clientId":"c","heartbeatIntervalMs":30000,"ts":5}"#
        );
        let json = serde_json::to_string(&ServerMessage::ServerShutdown {
            reason: "r",
            reconnect_after_ms: 1,
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            r#"{"type":"server_shutdown","reason":"r","reconnectAfterMs":1}"#
        );
    }
}
