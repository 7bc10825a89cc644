//! ACP `session/update` → gateway event (PROTOCOL section 6's table).
//!
//! The update is read with the protocol's own types (`agent-client-protocol-schema`): its
//! `sessionUpdate` tag selects the payload type (`ContentChunk`'s `TextContent`, `ToolCall`, `ToolCallUpdate`,
//! `Plan`, `UsageUpdate`, ...), which must deserialize for the update to map to its event. The
//! schema's scalar fields come from the typed value (`toolCallId`, `title`, `kind` and `status` by
//! their wire names, `used`, `size`, the chunk's text); the JSON the gateway forwards without
//! interpreting it (`rawInput` as `input`, a tool call update's `content`, a plan's `entries`,
//! `cost`) is forwarded as the agent wrote it, so the published bytes do not depend on how the
//! schema types re-serialize (they drop `null`s and unknown fields, and skip invalid list items).
//!
//! A known kind whose payload does not have the shape the gateway event needs (a non-text content
//! chunk, a `tool_call` without a `toolCallId`, a `usage_update` whose numbers are missing, ...)
//! is kept whole as `agent_update`, exactly like an unknown kind: nothing the agent says is
//! dropped. `current_mode_update`, `available_commands_update` and `config_option_update` are
//! published as `agent_update` too (as before), and their typed content is returned beside the
//! event as a [`StateChange`].
//!
//! Key order: the schema crate turns on serde_json's `preserve_order`, so a `Map` keeps insertion
//! order. The gateway has always published these fields, and the agent's JSON inside them, with
//! sorted keys (a `BTreeMap`); every mapped value is sorted here so the bytes stay the same.

use agent_client_protocol_schema::v1::{
    AvailableCommand, AvailableCommandsUpdate, ConfigOptionUpdate, CurrentModeUpdate, Plan,
    SessionConfigOption, TextContent, ToolCall, ToolCallUpdate, UsageUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Typed session state carried by an update, besides its gateway event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StateChange {
    /// `current_mode_update`: the session's mode id.
    Mode(String),
    /// `available_commands_update`: the commands the agent offers now.
    Commands(Vec<AvailableCommand>),
    /// `config_option_update`: the session's configuration options now.
    ConfigOptions(Vec<SessionConfigOption>),
}

/// One mapped `update`.
#[derive(Debug)]
pub(crate) struct Mapped {
    /// The gateway event type.
    pub(crate) kind: &'static str,
    /// Its extra fields, keys sorted.
    pub(crate) fields: Map<String, Value>,
    /// The typed state the update carries, if it is one of the state kinds.
    pub(crate) state: Option<StateChange>,
    /// A `tool_call`'s id and title (to title a later permission request that has none).
    pub(crate) tool_title: Option<(String, String)>,
}

/// The gateway event type and its extra fields for one ACP `update` object.
pub(crate) fn map_update(update: Value) -> Mapped {
    let mut mapped = match update.get("sessionUpdate").and_then(Value::as_str) {
        Some("agent_message_chunk") => text_chunk(&update, "text_delta"),
        Some("agent_thought_chunk") => text_chunk(&update, "thinking_delta"),
        Some("tool_call") => tool_call(&update),
        Some("tool_call_update") => tool_call_update(&update),
        Some("plan") => plan(&update),
        Some("usage_update") => usage(&update),
        Some("current_mode_update") => state(&update, |typed: CurrentModeUpdate| {
            StateChange::Mode(typed.current_mode_id.0.to_string())
        }),
        Some("available_commands_update") => state(&update, |typed: AvailableCommandsUpdate| {
            StateChange::Commands(typed.available_commands)
        }),
        Some("config_option_update") => state(&update, |typed: ConfigOptionUpdate| {
            StateChange::ConfigOptions(typed.config_options)
        }),
        _ => None,
    }
    .unwrap_or_else(|| Mapped {
        kind: "agent_update",
        fields: Map::new(),
        state: None,
        tool_title: None,
    });
    if mapped.kind == "agent_update" {
        mapped.fields.insert("update".into(), update);
    }
    let mut fields = Value::Object(std::mem::take(&mut mapped.fields));
    fields.sort_all_objects();
    if let Value::Object(fields) = fields {
        mapped.fields = fields;
    }
    mapped
}

/// The update as its payload type; `None` if it does not deserialize.
fn typed<'a, T: Deserialize<'a>>(update: &'a Value) -> Option<T> {
    T::deserialize(update).ok()
}

/// A unit enum's wire name (`ToolKind::Read` → `"read"`).
pub(crate) fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

fn event(kind: &'static str, fields: Map<String, Value>) -> Mapped {
    Mapped {
        kind,
        fields,
        state: None,
        tool_title: None,
    }
}

/// `{content: {type: "text", text}}` → `{text}`; `None` for any other content block.
///
/// A `ContentChunk` is valid exactly when its `content` is a valid `ContentBlock` (its other
/// fields read as absent when invalid), and a text block is a `TextContent`: reading that
/// directly is the same check without buffering the tagged enum (the hot path: every delta).
fn text_chunk(update: &Value, kind: &'static str) -> Option<Mapped> {
    let content = update.get("content")?;
    if content.get("type").and_then(Value::as_str) != Some("text") {
        return None;
    }
    let text: TextContent = typed(content)?;
    let mut fields = Map::new();
    fields.insert("text".into(), Value::String(text.text));
    Some(event(kind, fields))
}

/// ACP `ToolCall`: `toolCallId` and `title` are required; `kind` defaults to `other` and
/// `status` to `pending` (the schema's defaults, also for a value it does not know); `rawInput`
/// becomes `input`.
fn tool_call(update: &Value) -> Option<Mapped> {
    let call: ToolCall = typed(update)?;
    let id = call.tool_call_id.0.to_string();
    let mut fields = Map::new();
    fields.insert("toolCallId".into(), Value::String(id.clone()));
    fields.insert("title".into(), Value::String(call.title.clone()));
    fields.insert("kind".into(), Value::String(wire_name(&call.kind)));
    fields.insert("status".into(), Value::String(wire_name(&call.status)));
    if let Some(input) = call.raw_input.filter(|input| !input.is_null()) {
        fields.insert("input".into(), input);
    }
    let mut mapped = event("tool_call", fields);
    mapped.tool_title = Some((id, call.title));
    Some(mapped)
}

/// ACP `ToolCallUpdate`: only `toolCallId` is required; every other field is optional. `status`
/// is published when the schema knows it; `content` as the agent wrote it.
fn tool_call_update(update: &Value) -> Option<Mapped> {
    let call: ToolCallUpdate = typed(update)?;
    let mut fields = Map::new();
    fields.insert(
        "toolCallId".into(),
        Value::String(call.tool_call_id.0.to_string()),
    );
    if let Some(status) = call.fields.status {
        fields.insert("status".into(), Value::String(wire_name(&status)));
    }
    copy_field(update, &mut fields, "content", "content");
    Some(event("tool_call_update", fields))
}

/// ACP `Plan`: `entries` must be a list (the schema's type would read anything else as empty).
fn plan(update: &Value) -> Option<Mapped> {
    let _: Plan = typed(update)?;
    if !update.get("entries").is_some_and(Value::is_array) {
        return None;
    }
    let mut fields = Map::new();
    copy_field(update, &mut fields, "entries", "entries");
    Some(event("plan", fields))
}

/// ACP v1 `usage_update`: `used` (tokens in context) and `size` (context window) are required,
/// `cost` (`{amount, currency}`, cumulative for the session) optional and passed through.
fn usage(update: &Value) -> Option<Mapped> {
    let usage: UsageUpdate = typed(update)?;
    let mut fields = Map::new();
    fields.insert("used".into(), Value::from(usage.used));
    fields.insert("size".into(), Value::from(usage.size));
    copy_field(update, &mut fields, "cost", "cost");
    Some(event("usage", fields))
}

/// A state kind: published as `agent_update` (the caller adds the raw update), its typed content
/// returned beside it. `None` (a plain `agent_update`) if it does not deserialize.
fn state<'a, T: Deserialize<'a>>(
    update: &'a Value,
    change: impl FnOnce(T) -> StateChange,
) -> Option<Mapped> {
    let mut mapped = event("agent_update", Map::new());
    mapped.state = Some(change(typed(update)?));
    Some(mapped)
}

/// Copies `from[key]` to `to[as_key]` unless it is absent or `null` (an optional field may be
/// either).
fn copy_field(from: &Value, to: &mut Map<String, Value>, key: &str, as_key: &str) {
    match from.get(key) {
        None | Some(Value::Null) => {}
        Some(value) => {
            to.insert(as_key.into(), value.clone());
        }
    }
}
