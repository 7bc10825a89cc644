//! The JSON Schema of session events, written by hand where derive cannot say it: one object per
//! event type (`type` fixed, the header, then the body's fields), and the shapes of the ACP values
//! an event carries as opaque JSON (tool content and locations, commands, config options).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value};

use super::*;

impl JsonSchema for SessionEvent<'_> {
    fn schema_name() -> Cow<'static, str> {
        "SessionEvent".into()
    }

    /// `oneOf` an object per event type: `type` is the kind, then the header, then the body's
    /// own fields; nothing else (the server's messages are exactly known).
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let bodies: [(&str, Schema); 17] = [
            ("session_state", SessionState::json_schema(generator)),
            ("turn_started", TurnStarted::json_schema(generator)),
            ("text_delta", Delta::json_schema(generator)),
            ("thinking_delta", Delta::json_schema(generator)),
            ("tool_call", ToolCall::json_schema(generator)),
            ("tool_call_update", ToolCallUpdate::json_schema(generator)),
            ("plan", Plan::json_schema(generator)),
            ("usage", Usage::json_schema(generator)),
            ("agent_update", AgentUpdate::json_schema(generator)),
            (
                "permission_requested",
                PermissionRequested::json_schema(generator),
            ),
            (
                "permission_resolved",
                PermissionResolved::json_schema(generator),
            ),
            ("turn_complete", TurnComplete::json_schema(generator)),
            ("turn_error", TurnError::json_schema(generator)),
            ("file_changed", FileChanged::json_schema(generator)),
            (
                "available_commands_update",
                AvailableCommandsUpdate::json_schema(generator),
            ),
            (
                "current_mode_update",
                CurrentModeUpdate::json_schema(generator),
            ),
            (
                "config_option_update",
                ConfigOptionUpdate::json_schema(generator),
            ),
        ];
        let variants: Vec<Value> = bodies
            .into_iter()
            .map(|(kind, body)| event_schema(kind, body))
            .collect();
        json_schema!({ "oneOf": variants })
    }
}

/// One event type's object: the header's properties and the body's, `type` fixed to `kind`.
pub(super) fn event_schema(kind: &str, body: Schema) -> Value {
    let body = body.to_value();
    let mut properties = Map::new();
    properties.insert(
        "type".into(),
        serde_json::json!({ "type": "string", "const": kind }),
    );
    properties.insert(
        "sessionId".into(),
        serde_json::json!({ "type": "string", "description": "The session the event belongs to." }),
    );
    properties.insert(
        "seq".into(),
        serde_json::json!({ "type": "integer", "minimum": 1, "description": "Per-session sequence number, from 1, without gaps." }),
    );
    properties.insert(
        "ts".into(),
        serde_json::json!({ "type": "integer", "description": "Unix milliseconds." }),
    );
    properties.insert(
        "turnId".into(),
        serde_json::json!({ "type": "string", "description": "The turn the event belongs to; absent for events outside a turn." }),
    );
    let mut required: Vec<Value> = ["type", "sessionId", "seq", "ts"]
        .into_iter()
        .map(Value::from)
        .collect();
    if let Some(Value::Object(fields)) = body.get("properties") {
        properties.extend(fields.clone());
    }
    if let Some(Value::Array(fields)) = body.get("required") {
        required.extend(fields.iter().cloned());
    }
    let mut schema = serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    if let Some(description) = body.get("description") {
        schema["description"] = description.clone();
    }
    schema
}

/// A tool call's `content`: ACP `ToolCallContent` items.
pub(super) fn tool_content_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "type": { "const": "content" },
                        "content": { "type": "object", "description": "An ACP content block (`text`, `image`, `resource`, …)." }
                    },
                    "required": ["type", "content"]
                },
                {
                    "type": "object",
                    "properties": {
                        "type": { "const": "diff" },
                        "path": { "type": "string", "description": "The file's absolute path." },
                        "oldText": { "type": ["string", "null"], "description": "The text before; absent for a new file." },
                        "newText": { "type": "string", "description": "The text after." }
                    },
                    "required": ["type", "path", "newText"]
                },
                {
                    "type": "object",
                    "properties": {
                        "type": { "const": "terminal" },
                        "terminalId": { "type": "string", "description": "The agent's terminal." }
                    },
                    "required": ["type", "terminalId"]
                },
                {
                    "type": "object",
                    "properties": { "type": { "type": "string" } },
                    "required": ["type"],
                    "description": "Another ACP tool call content kind."
                }
            ]
        }
    })
}

/// A tool call's `locations`: ACP `ToolCallLocation` items.
pub(super) fn tool_locations_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "path": { "type": "string", "description": "A file's absolute path." },
                "line": { "type": "integer", "minimum": 0, "description": "A line in it, if known." }
            },
            "required": ["path"]
        }
    })
}

/// ACP `AvailableCommand`s.
pub(crate) fn commands_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "The command's name, without `/`." },
                "description": { "type": "string", "description": "What it does, for humans." },
                "input": { "type": ["object", "null"], "description": "`{hint}` when it takes text after its name." }
            },
            "required": ["name", "description"]
        }
    })
}

/// ACP `SessionConfigOption`s.
pub(crate) fn config_options_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "description": "The option's id, for `set_config_option`'s `configId`." },
                "name": { "type": "string", "description": "Its label, for humans." },
                "type": { "type": "string", "description": "`select` (with `options`) or `boolean`." },
                "currentValue": { "type": ["string", "boolean"], "description": "Its value now." }
            },
            "required": ["id", "name", "type", "currentValue"]
        }
    })
}
