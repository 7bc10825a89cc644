//! ACP `session/update` → gateway event (PROTOCOL section 6's table).
//!
//! The update is read with the protocol's own types (`agent-client-protocol-schema`): its
//! `sessionUpdate` tag selects the payload type (`ContentChunk`'s `TextContent`, `ToolCall`, `ToolCallUpdate`,
//! `Plan`, `UsageUpdate`, ...), which must deserialize for the update to map to its event. The
//! schema's scalar fields come from the typed value (`toolCallId`, `title`, `kind` and `status` by
//! their wire names, `used`, `size`, the chunk's text); the JSON the gateway forwards without
//! interpreting it (`rawInput` as `input`, `rawOutput`, a plan's `entries`,
//! `cost`) is forwarded as the agent wrote it, so the published bytes do not depend on how the
//! schema types re-serialize (they drop `null`s and unknown fields, and skip invalid list items).
//! A tool call's `content` and `locations` are published as the schema types read them (so they
//! have ACP's shape: text, `diff` with `path`/`oldText`/`newText`, `terminal` references).
//!
//! A known kind whose payload does not have the shape the gateway event needs (a non-text content
//! chunk, a `tool_call` without a `toolCallId`, a `usage_update` whose numbers are missing, ...)
//! is kept whole as `agent_update`, exactly like an unknown kind: nothing the agent says is
//! dropped. `current_mode_update`, `available_commands_update` and `config_option_update` are
//! returned as a typed [`StateChange`] (the client surfaces them as `ControlEvent`s, and the
//! session publishes its typed events); they are not published as `agent_update` (one that
//! does not deserialize still is).
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

/// The bound of each of a tool call's opaque fields (`content`, `locations`, `input`,
/// `rawOutput`): about this many bytes of JSON. A field over it is cut (see [`bound`]) and the
/// event carries `truncated: true`.
pub(crate) const MAX_TOOL_FIELD_BYTES: usize = 64 * 1024;

/// ACP `ToolCall`: `toolCallId` and `title` are required; `kind` defaults to `other` and
/// `status` to `pending` (the schema's defaults, also for a value it does not know); `content`
/// and `locations` are published as the schema types read them (an invalid item is skipped),
/// when not empty; `rawInput` becomes `input`, and `rawOutput` is published as the agent wrote
/// both. Each of these is bounded ([`MAX_TOOL_FIELD_BYTES`]).
fn tool_call(update: &Value) -> Option<Mapped> {
    let call: ToolCall = typed(update)?;
    let id = call.tool_call_id.0.to_string();
    let mut fields = Map::new();
    fields.insert("toolCallId".into(), Value::String(id.clone()));
    fields.insert("title".into(), Value::String(call.title.clone()));
    fields.insert("kind".into(), Value::String(wire_name(&call.kind)));
    fields.insert("status".into(), Value::String(wire_name(&call.status)));
    let mut truncated = false;
    if !call.content.is_empty() {
        insert_bounded(
            &mut fields,
            "content",
            to_json(&call.content),
            &mut truncated,
        );
    }
    if !call.locations.is_empty() {
        insert_bounded(
            &mut fields,
            "locations",
            to_json(&call.locations),
            &mut truncated,
        );
    }
    raw_fields(update, &mut fields, &mut truncated);
    if truncated {
        fields.insert("truncated".into(), Value::Bool(true));
    }
    let mut mapped = event("tool_call", fields);
    mapped.tool_title = Some((id, call.title));
    Some(mapped)
}

/// ACP `ToolCallUpdate`: only `toolCallId` is required; every other field is optional and, when
/// present, replaces the call's value (`content` and `locations` as whole lists). `kind` and
/// `status` are published when the schema knows them; the rest as for [`tool_call`].
fn tool_call_update(update: &Value) -> Option<Mapped> {
    let call: ToolCallUpdate = typed(update)?;
    let mut fields = Map::new();
    fields.insert(
        "toolCallId".into(),
        Value::String(call.tool_call_id.0.to_string()),
    );
    if let Some(title) = call.fields.title {
        fields.insert("title".into(), Value::String(title));
    }
    if let Some(kind) = call.fields.kind {
        fields.insert("kind".into(), Value::String(wire_name(&kind)));
    }
    if let Some(status) = call.fields.status {
        fields.insert("status".into(), Value::String(wire_name(&status)));
    }
    let mut truncated = false;
    if let Some(content) = call.fields.content {
        insert_bounded(&mut fields, "content", to_json(&content), &mut truncated);
    }
    if let Some(locations) = call.fields.locations {
        insert_bounded(
            &mut fields,
            "locations",
            to_json(&locations),
            &mut truncated,
        );
    }
    raw_fields(update, &mut fields, &mut truncated);
    if truncated {
        fields.insert("truncated".into(), Value::Bool(true));
    }
    Some(event("tool_call_update", fields))
}

/// `rawInput` (as `input`) and `rawOutput`, as the agent wrote them, bounded; absent if absent
/// or `null`.
fn raw_fields(update: &Value, fields: &mut Map<String, Value>, truncated: &mut bool) {
    for (key, as_key) in [("rawInput", "input"), ("rawOutput", "rawOutput")] {
        match update.get(key) {
            None | Some(Value::Null) => {}
            Some(value) => insert_bounded(fields, as_key, value.clone(), truncated),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn insert_bounded(
    fields: &mut Map<String, Value>,
    key: &str,
    mut value: Value,
    truncated: &mut bool,
) {
    *truncated |= bound_hard(&mut value);
    fields.insert(key.into(), value);
}

/// Cuts `value` to about `budget` bytes of JSON, keeping its shape (so a cut value still has
/// its schema's shape): strings are cut (at a character boundary) to what is left, and once
/// nothing is left the remaining items of lists are dropped; object keys are kept (their values
/// cut the same way). Returns whether anything was cut.
pub(crate) fn bound(value: &mut Value, budget: &mut usize) -> bool {
    match value {
        Value::String(text) => {
            if text.len() + 2 <= *budget {
                *budget -= text.len() + 2;
                return false;
            }
            let mut end = budget.saturating_sub(2).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            *budget = 0;
            true
        }
        Value::Array(items) => {
            let mut cut = false;
            let mut keep = items.len();
            for (index, item) in items.iter_mut().enumerate() {
                if *budget == 0 {
                    keep = index;
                    break;
                }
                *budget = budget.saturating_sub(1);
                cut |= bound(item, budget);
            }
            cut |= keep < items.len();
            items.truncate(keep);
            cut
        }
        Value::Object(entries) => {
            let mut cut = false;
            for (key, entry) in entries.iter_mut() {
                *budget = budget.saturating_sub(key.len() + 3);
                cut |= bound(entry, budget);
            }
            cut
        }
        scalar => {
            *budget = budget.saturating_sub(scalar.to_string().len());
            false
        }
    }
}

/// [`bound`], then, if the value is still over twice the bound (an object of very many keys:
/// only the agent's opaque `rawInput`/`rawOutput` can be one), its JSON text cut to the bound,
/// as a string. Returns whether anything was cut.
fn bound_hard(value: &mut Value) -> bool {
    let mut budget = MAX_TOOL_FIELD_BYTES;
    let cut = bound(value, &mut budget);
    if budget > 0 {
        return cut;
    }
    let mut text = value.to_string();
    if text.len() <= 2 * MAX_TOOL_FIELD_BYTES {
        return cut;
    }
    let mut end = MAX_TOOL_FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    *value = Value::String(text);
    true
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
