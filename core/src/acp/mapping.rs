//! ACP `session/update` → gateway event (PROTOCOL section 6's table).
//!
//! A known kind whose payload does not have the shape the gateway event needs (a non-text content
//! chunk, a `tool_call` without a `toolCallId`, a `usage_update` whose numbers are missing, ...)
//! is kept whole as `agent_update`, exactly like an unknown kind: nothing the agent says is
//! dropped.

use serde_json::{Map, Value};

/// The gateway event type and its extra fields for one ACP `update` object.
pub(crate) fn map_update(update: Value) -> (&'static str, Map<String, Value>) {
    let Value::Object(mut update) = update else {
        return agent_update(update);
    };
    let kind = match update.get("sessionUpdate").and_then(Value::as_str) {
        Some("agent_message_chunk") => {
            take_text_chunk(&mut update).map(|text| ("text_delta", text))
        }
        Some("agent_thought_chunk") => {
            take_text_chunk(&mut update).map(|text| ("thinking_delta", text))
        }
        Some("tool_call") => tool_call(&mut update).map(|fields| ("tool_call", fields)),
        Some("tool_call_update") => {
            tool_call_update(&mut update).map(|fields| ("tool_call_update", fields))
        }
        Some("plan") => plan(&mut update).map(|fields| ("plan", fields)),
        Some("usage_update") => usage(&mut update).map(|fields| ("usage", fields)),
        _ => None,
    };
    match kind {
        Some((kind, fields)) => (kind, fields),
        None => agent_update(Value::Object(update)),
    }
}

fn agent_update(update: Value) -> (&'static str, Map<String, Value>) {
    let mut fields = Map::new();
    fields.insert("update".into(), update);
    ("agent_update", fields)
}

/// `{content: {type: "text", text}}` → `{text}`; `None` (and `update` untouched) for any other
/// content block.
fn take_text_chunk(update: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    let content = update.get_mut("content")?.as_object_mut()?;
    if content.get("type").and_then(Value::as_str) != Some("text") {
        return None;
    }
    let Some(Value::String(text)) = content.get_mut("text") else {
        return None;
    };
    let mut fields = Map::new();
    fields.insert("text".into(), Value::String(std::mem::take(text)));
    Some(fields)
}

/// ACP `ToolCall`: `toolCallId` and `title` are required; `kind` defaults to `other` and
/// `status` to `pending` (the schema's defaults); `rawInput` becomes `input`.
fn tool_call(update: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    if !update.get("toolCallId").is_some_and(Value::is_string) {
        return None;
    }
    let mut fields = Map::new();
    move_field(update, &mut fields, "toolCallId", "toolCallId");
    let title = match update.remove("title") {
        Some(Value::String(title)) => title,
        _ => String::new(),
    };
    fields.insert("title".into(), Value::String(title));
    let kind = match update.remove("kind") {
        Some(Value::String(kind)) => kind,
        _ => "other".into(),
    };
    fields.insert("kind".into(), Value::String(kind));
    let status = match update.remove("status") {
        Some(Value::String(status)) => status,
        _ => "pending".into(),
    };
    fields.insert("status".into(), Value::String(status));
    move_field(update, &mut fields, "rawInput", "input");
    Some(fields)
}

/// ACP `ToolCallUpdate`: only `toolCallId` is required; every other field is optional.
fn tool_call_update(update: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    if !update.get("toolCallId").is_some_and(Value::is_string) {
        return None;
    }
    let mut fields = Map::new();
    move_field(update, &mut fields, "toolCallId", "toolCallId");
    if update.get("status").is_some_and(Value::is_string) {
        move_field(update, &mut fields, "status", "status");
    }
    move_field(update, &mut fields, "content", "content");
    Some(fields)
}

fn plan(update: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    if !update.get("entries").is_some_and(Value::is_array) {
        return None;
    }
    let mut fields = Map::new();
    move_field(update, &mut fields, "entries", "entries");
    Some(fields)
}

/// ACP v1 `usage_update`: `used` (tokens in context) and `size` (context window) are required,
/// `cost` (`{amount, currency}`, cumulative for the session) optional; passed through as given.
fn usage(update: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    if !update.get("used").is_some_and(Value::is_number)
        || !update.get("size").is_some_and(Value::is_number)
    {
        return None;
    }
    let mut fields = Map::new();
    move_field(update, &mut fields, "used", "used");
    move_field(update, &mut fields, "size", "size");
    move_field(update, &mut fields, "cost", "cost");
    Some(fields)
}

/// Moves `from[key]` to `to[as_key]` unless it is absent or `null` (an optional field may be
/// either).
fn move_field(from: &mut Map<String, Value>, to: &mut Map<String, Value>, key: &str, as_key: &str) {
    match from.remove(key) {
        None | Some(Value::Null) => {}
        Some(value) => {
            to.insert(as_key.into(), value);
        }
    }
}
