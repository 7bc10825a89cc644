//! JSON-RPC 2.0 on `/acp`: one message per text message, read into the protocol's own
//! envelope types, and the frames the gateway sends (responses, errors, notifications, its own
//! requests), each encoded once as a WebSocket text frame.

use std::sync::Arc;

use agent_client_protocol_schema::v1::{
    Error, JsonRpcMessage, Notification, Request, RequestId, Response,
};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::protocol::encode_frame;

/// JSON-RPC's own error codes.
pub(crate) mod code {
    /// The text is not JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a JSON-RPC 2.0 message (also a batch: not supported).
    pub const INVALID_REQUEST: i32 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// The params do not have the method's shape, or a field is refused.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Anything else.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// ACP's "authentication required".
    pub const AUTH_REQUIRED: i32 = -32000;
    /// ACP's "resource not found" (ACP answers an unknown session with it).
    pub const RESOURCE_NOT_FOUND: i32 = -32002;
}

/// One message from the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// A request: answered once, with the same `id`.
    Request {
        /// Its id.
        id: RequestId,
        /// Its method.
        method: String,
        /// Its params (`null` when absent).
        params: Value,
    },
    /// A notification: never answered.
    Notification {
        /// Its method.
        method: String,
        /// Its params (`null` when absent).
        params: Value,
    },
    /// The answer to one of the gateway's requests (a permission request).
    Response {
        /// The id of the gateway's request.
        id: RequestId,
        /// Its `result`, or its `error`.
        result: Result<Value, Value>,
    },
}

/// Reads one text message. A message that is not one JSON-RPC 2.0 message is the error to
/// answer, with the id it carried when it had a valid one (else `null`).
pub(crate) fn parse(text: &str) -> Result<Incoming, Box<(RequestId, Error)>> {
    let value: Value = serde_json::from_str(text).map_err(|_| {
        Box::new((
            RequestId::Null,
            Error::new(
                code::PARSE_ERROR,
                "Parse error: the message is not valid JSON",
            ),
        ))
    })?;
    let invalid = |id: RequestId, why: &str| {
        Err(Box::new((
            id,
            Error::new(code::INVALID_REQUEST, format!("Invalid Request: {why}")),
        )))
    };
    let Value::Object(mut object) = value else {
        if value.is_array() {
            return invalid(RequestId::Null, "batches are not supported on /acp");
        }
        return invalid(RequestId::Null, "a message must be an object");
    };
    let id = match object.remove("id") {
        None => None,
        Some(id) => match serde_json::from_value::<RequestId>(id) {
            Ok(id) => Some(id),
            Err(_) => return invalid(RequestId::Null, "id must be a string, a number or null"),
        },
    };
    let reply_id = id.clone().unwrap_or(RequestId::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(reply_id, "jsonrpc must be \"2.0\"");
    }
    let params = object.remove("params").unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
        return invalid(reply_id, "params must be an object or an array");
    }
    match (object.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Incoming::Request { id, method, params }),
        (Some(Value::String(method)), None) => Ok(Incoming::Notification { method, params }),
        (Some(_), _) => invalid(reply_id, "method must be a string"),
        (None, Some(id)) => match (object.remove("result"), object.remove("error")) {
            (Some(result), None) => Ok(Incoming::Response {
                id,
                result: Ok(result),
            }),
            (None, Some(error)) => Ok(Incoming::Response {
                id,
                result: Err(error),
            }),
            _ => invalid(reply_id, "a response has exactly one of result and error"),
        },
        (None, None) => invalid(reply_id, "a message needs a method or an id"),
    }
}

/// A successful response.
pub(crate) fn response<T: Serialize>(id: &RequestId, result: T) -> Bytes {
    encode_frame(&JsonRpcMessage::wrap(Response::<T, Error>::Result {
        id: id.clone(),
        result,
    }))
}

/// An error response.
pub(crate) fn error(id: &RequestId, error: Error) -> Bytes {
    encode_frame(&JsonRpcMessage::wrap(Response::<Value, Error>::Error {
        id: id.clone(),
        error,
    }))
}

/// A notification (`session/update`).
pub(crate) fn notification<T: Serialize>(method: &str, params: T) -> Bytes {
    encode_frame(&JsonRpcMessage::wrap(Notification {
        method: Arc::from(method),
        params: Some(params),
    }))
}

/// A request of the gateway to the client (`session/request_permission`).
pub(crate) fn request<T: Serialize>(id: i64, method: &str, params: T) -> Bytes {
    encode_frame(&JsonRpcMessage::wrap(Request {
        id: RequestId::Number(id),
        method: Arc::from(method),
        params: Some(params),
    }))
}

/// The JSON-RPC error for a gateway error (`error {code, message}` on `/ws`): `INVALID_MESSAGE`
/// is invalid params, `SESSION_NOT_FOUND` ACP's resource not found, the authentication codes
/// ACP's authentication required, `INTERNAL` internal error, and every other code of the
/// gateway one in -32040..=-32049 (docs/ACP.md). `data.code` is always the gateway's code.
pub(crate) fn gateway_error(
    gateway_code: &str,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Error {
    let rpc_code = match gateway_code {
        "INVALID_MESSAGE" => code::INVALID_PARAMS,
        "INVALID_JSON" => code::PARSE_ERROR,
        "SESSION_NOT_FOUND" => code::RESOURCE_NOT_FOUND,
        "NOT_AUTHENTICATED" | "AUTH_FAILED" => code::AUTH_REQUIRED,
        "FORBIDDEN" => -32040,
        "RATE_LIMITED" => -32041,
        "INVALID_STATE" => -32042,
        "AGENT_UNAVAILABLE" => -32043,
        "AGENT_REFUSED" => -32044,
        "SHUTTING_DOWN" => -32045,
        "TURN_TIMEOUT" => -32046,
        "AGENT_UNRESPONSIVE" => -32047,
        "AUTH_RATE_LIMITED" => -32048,
        "INTERRUPTED" => -32049,
        _ => code::INTERNAL_ERROR,
    };
    let mut data = json!({ "code": gateway_code });
    if let Some(retry_after_ms) = retry_after_ms {
        data["retryAfterMs"] = json!(retry_after_ms);
    }
    Error::new(rpc_code, message).data(data)
}

/// The payload of a WebSocket frame the gateway encoded (unmasked, one frame).
pub(crate) fn frame_payload(frame: &[u8]) -> &[u8] {
    let Some(&len) = frame.get(1) else {
        return &[];
    };
    let header = match len & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or(&[])
}
