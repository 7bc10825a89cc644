//! The JSON-RPC 2.0 framing: envelopes, error objects, and the helpers that read and write them.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::MAX_AGENT_MESSAGE;

#[derive(Serialize)]
pub(super) struct Request<'a, P: Serialize> {
    pub(super) jsonrpc: &'static str,
    pub(super) id: u64,
    pub(super) method: &'a str,
    pub(super) params: P,
}

#[derive(Serialize)]
pub(super) struct Notification<'a, P: Serialize> {
    pub(super) jsonrpc: &'static str,
    pub(super) method: &'a str,
    pub(super) params: P,
}

#[derive(Serialize)]
pub(super) struct Response<'a, R: Serialize> {
    pub(super) jsonrpc: &'static str,
    pub(super) id: &'a Value,
    pub(super) result: R,
}

#[derive(Serialize)]
pub(super) struct ErrorResponse<'a, E: Serialize> {
    pub(super) jsonrpc: &'static str,
    pub(super) id: &'a Value,
    pub(super) error: E,
}

#[derive(Serialize)]
pub(super) struct RpcError<'a> {
    pub(super) code: i64,
    pub(super) message: &'a str,
}

/// A result as its ACP type, or the message saying why it is not one.
pub(super) fn parse<T: DeserializeOwned>(result: Value, method: &str) -> Result<T, String> {
    serde_json::from_value(result)
        .map_err(|error| truncate(&format!("the agent's {method} result is invalid: {error}")))
}

pub(super) fn encode<T: Serialize>(message: &T) -> Bytes {
    // Serializing these messages cannot fail (string keys only, no I/O); should that ever change,
    // an empty object keeps the stream line-delimited JSON.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

/// A JSON-RPC error's `message`, with its `data` when that is a string or carries a string
/// `details` (the TypeScript SDK's `internalError({details})` puts the reason there).
pub(super) fn error_text(error: &Value) -> String {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    let data = error.get("data");
    let detail = data.and_then(Value::as_str).or_else(|| {
        data.and_then(|data| data.get("details"))
            .and_then(Value::as_str)
    });
    match detail {
        Some(detail) => truncate(&format!("{message}: {detail}")),
        None => truncate(message),
    }
}

pub(super) fn truncate(text: &str) -> String {
    if text.len() <= MAX_AGENT_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_AGENT_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
