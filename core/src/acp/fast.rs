//! The hot path: a `session/update` text chunk (`agent_message_chunk`, `agent_thought_chunk`),
//! the line agents write most, read without building a `serde_json::Value` tree. With serde_json's
//! `preserve_order` on (the schema crate turns it on), every JSON object in a `Value` is an
//! `IndexMap`, which makes a tree noticeably dearer to build than the `BTreeMap` it was.
//!
//! The result is exactly what the general path (`handle_message`, then `mapping.rs`) reports for
//! the same line, or `None` and the general path takes the line: every level must be a JSON
//! object (serde's derived structs would also read arrays), field names must be unique (a
//! duplicate is an error here, so the general path decides), and the strings compared must be
//! written without escapes. The content is read as ACP's own `ContentBlock`; a chunk's other
//! fields (`messageId`, `_meta`) read as absent when invalid in ACP's `ContentChunk`, so they
//! cannot make it invalid and are not read.

use agent_client_protocol_schema::v1::ContentBlock;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::AgentEvent;

// Each level has a flattened `Rest`: serde then reads the struct as a JSON object only (a derived
// struct without one would also read an array), and the line is read in one pass.

#[derive(Deserialize)]
struct Line<'a> {
    jsonrpc: &'a str,
    method: &'a str,
    /// Present at all (even `null`): a request, not a notification.
    #[serde(default, deserialize_with = "present")]
    id: bool,
    #[serde(borrow)]
    params: Params<'a>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    update: Chunk<'a>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(rename = "sessionUpdate")]
    kind: &'a str,
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(flatten)]
    _rest: Rest,
}

/// Whatever else an object holds, skipped.
#[derive(Deserialize)]
struct Rest {}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// The `text_delta`/`thinking_delta` update of a text chunk line; `None` for any other line.
pub(super) fn text_update(line: &[u8]) -> Option<AgentEvent> {
    // Any other line (a tool call, a response, ...) is not parsed twice: the tags this path
    // takes are written without escapes, so they end in these bytes.
    if !line.windows(7).any(|window| window == b"_chunk\"") {
        return None;
    }
    let line: Line = serde_json::from_slice(line).ok()?;
    if line.jsonrpc != "2.0" || line.method != "session/update" || line.id {
        return None;
    }
    let chunk = line.params.update;
    let kind = match chunk.kind {
        "agent_message_chunk" => "text_delta",
        "agent_thought_chunk" => "thinking_delta",
        _ => return None,
    };
    // ContentBlock is internally tagged, and serde reads those from arrays too.
    if !chunk.content.get().starts_with('{') {
        return None;
    }
    let ContentBlock::Text(text) = serde_json::from_str(chunk.content.get()).ok()? else {
        return None;
    };
    let mut fields = Map::new();
    fields.insert("text".into(), Value::String(text.text));
    Some(AgentEvent::Update { kind, fields })
}
