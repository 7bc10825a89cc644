//! A client text message parsed once (PROTOCOL section 3): the envelope (`type`, `requestId`),
//! then the fields of its type, checked in the order the protocol answers them, then the typed
//! [`ClientRequest`].
//!
//! The error messages are the protocol's (`"sessionId must be a string"`, ...), not serde's: each
//! type's fields are checked against [`field_rules`] first (the first offending field in that
//! order is named), and only a message that passed is deserialized. Unknown extra fields are
//! ignored; `null` counts as absent for every optional field.

use serde_json::{Map, Value};

use crate::protocol::request::{ClientRequest, RequestKind};
use crate::protocol::MAX_REQUEST_ID_LEN;

/// A client message after its envelope was checked.
#[derive(Debug)]
pub struct ClientMessage {
    /// The well-formed `requestId`, echoed in the reply.
    pub request_id: Option<String>,
    /// The request, or why its type or fields were refused.
    pub body: Parsed,
}

/// What the message asks, or why it cannot be handled. The dispatcher checks authentication and
/// the role on the type before it answers a field error.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed request.
    Request(ClientRequest),
    /// A known type whose fields are wrong: `reason` names the first offending field.
    Invalid {
        /// The message's type.
        kind: RequestKind,
        /// The `INVALID_MESSAGE` text, e.g. `"sessionId must be a string"`.
        reason: String,
    },
    /// A `type` the protocol does not have.
    Unknown,
}

/// Why a client message was refused before its type was looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON at all.
    InvalidJson,
    /// JSON, but not an object with a string `type` and a well-formed `requestId`. Carries the
    /// request id when it was well-formed, so the reply can echo it.
    InvalidMessage {
        /// The `INVALID_MESSAGE` text.
        reason: &'static str,
        /// The message's `requestId`, if it was well-formed.
        request_id: Option<String>,
    },
}

/// How a field is checked, and the protocol's message when it does not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRule {
    /// A string, required.
    String,
    /// A string, `null` or absent.
    OptionalString,
    /// A boolean, `null` or absent.
    OptionalBool,
    /// A non-negative integer (up to 2^64 - 1), required.
    U64,
    /// A non-negative integer, `null` or absent.
    OptionalU64,
    /// A string or a boolean, required.
    StringOrBool,
    /// An array of prompt content blocks, `null` or absent (`run_turn`'s `content`; each block
    /// checked by [`content::check`], which names the first offending part).
    OptionalContent,
}

impl FieldRule {
    /// Whether the field must be present (and not `null`).
    pub fn is_required(self) -> bool {
        matches!(
            self,
            FieldRule::String | FieldRule::U64 | FieldRule::StringOrBool
        )
    }

    fn check(self, value: Option<&Value>) -> bool {
        match (self, value) {
            (FieldRule::String | FieldRule::OptionalString, Some(Value::String(_))) => true,
            (FieldRule::OptionalBool, Some(Value::Bool(_))) => true,
            (FieldRule::StringOrBool, Some(Value::String(_) | Value::Bool(_))) => true,
            (FieldRule::U64 | FieldRule::OptionalU64, Some(Value::Number(number))) => {
                number.as_u64().is_some()
            }
            (
                FieldRule::OptionalString
                | FieldRule::OptionalBool
                | FieldRule::OptionalU64
                | FieldRule::OptionalContent,
                None | Some(Value::Null),
            ) => true,
            (FieldRule::OptionalContent, Some(value)) => content::check(value).is_ok(),
            _ => false,
        }
    }

    fn reason(self, name: &str) -> String {
        match self {
            FieldRule::String | FieldRule::OptionalString => format!("{name} must be a string"),
            FieldRule::OptionalBool => format!("{name} must be a boolean"),
            FieldRule::StringOrBool => format!("{name} must be a string or a boolean"),
            FieldRule::U64 | FieldRule::OptionalU64 => {
                format!("{name} must be a non-negative integer")
            }
            FieldRule::OptionalContent => format!("{name} must be an array of content blocks"),
        }
    }

    /// Checks the field: `Err` with the protocol's message for it.
    fn validate(self, value: Option<&Value>, name: &str) -> Result<(), String> {
        match (self, value) {
            (FieldRule::OptionalContent, Some(value)) if !value.is_null() => content::check(value),
            _ if self.check(value) => Ok(()),
            _ => Err(self.reason(name)),
        }
    }
}

/// The fields of each type, in the order they are checked (the order the handlers checked them
/// before the protocol was typed). A unit test holds this table to the `ClientRequest` schema.
pub fn field_rules(kind: RequestKind) -> &'static [(&'static str, FieldRule)] {
    use FieldRule::*;
    use RequestKind as K;
    const SESSION: &[(&str, FieldRule)] = &[("sessionId", String)];
    match kind {
        K::Ping => &[],
        K::Authenticate => &[("token", String)],
        K::ListSessions => &[("includeArchived", OptionalBool)],
        K::CreateSession => &[("agentType", String), ("name", OptionalString)],
        K::RenameSession => &[("sessionId", String), ("name", String)],
        K::ArchiveSession | K::UnarchiveSession | K::DeleteSession => SESSION,
        K::LeaveSession | K::StopTurn => SESSION,
        K::JoinSession => &[
            ("sessionId", String),
            ("afterSeq", OptionalU64),
            ("epoch", OptionalString),
        ],
        K::GetEvents => &[
            ("sessionId", String),
            ("afterSeq", U64),
            ("limit", OptionalU64),
        ],
        K::GetHistory => &[
            ("sessionId", String),
            ("beforeTurn", OptionalString),
            ("limit", OptionalU64),
        ],
        K::RunTurn | K::Steer => &[
            ("sessionId", String),
            ("text", String),
            ("content", OptionalContent),
        ],
        K::AnswerQuestion => &[
            ("sessionId", String),
            ("questionId", String),
            ("optionId", OptionalString),
            ("cancelled", OptionalBool),
        ],
        K::SetMode => &[("sessionId", String), ("modeId", String)],
        K::SetConfigOption => &[
            ("sessionId", String),
            ("configId", String),
            ("value", StringOrBool),
        ],
    }
}

/// Parses a client text message: the envelope, then its type's fields.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, EnvelopeError> {
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
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => RequestKind::from_name(kind),
        _ => {
            return Err(EnvelopeError::InvalidMessage {
                reason: "type must be a string",
                request_id,
            })
        }
    };
    let body = match kind {
        None => Parsed::Unknown,
        Some(kind) => typed(kind, fields),
    };
    Ok(ClientMessage { request_id, body })
}

/// The request of `kind` from its fields (`type` still among them).
fn typed(kind: RequestKind, fields: Map<String, Value>) -> Parsed {
    for (name, rule) in field_rules(kind) {
        if let Err(reason) = rule.validate(fields.get(*name), name) {
            return Parsed::Invalid { kind, reason };
        }
    }
    match serde_json::from_value::<ClientRequest>(Value::Object(fields)) {
        Ok(request) => Parsed::Request(request),
        // The rules above accept exactly what the types do (a unit test holds them together);
        // should they ever disagree, the client still gets an answer.
        Err(_) => Parsed::Invalid {
            kind,
            reason: format!("invalid {} message", kind.name()),
        },
    }
}

mod content;
#[cfg(test)]
mod tests;
