//! The JSON Schema of the protocol (PROTOCOL sections 3 to 6), generated from the protocol's
//! types and committed at `docs/protocol.schema.json`, which clients are generated from.
//!
//! One document (draft 2020-12): `$defs/ClientMessage` is every message a client may send (a
//! [`ClientRequest`] with the envelope's optional `requestId`), `$defs/ServerMessage` every
//! message the server sends (one of [`SERVER_ROOTS`]); the document itself accepts either.
//! Keys are sorted, so the file only changes when the protocol does.
//!
//! Regenerate the committed file with `UPDATE_SCHEMA=1 cargo test -p diminuendo-core schema`;
//! the test `the_committed_schema_is_current` fails while it is stale.

use schemars::{generate::SchemaSettings, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::protocol::event::SessionEvent;
use crate::protocol::request::ClientRequest;
use crate::protocol::session_reply::SessionReply;
use crate::protocol::{ServerMessage, MAX_REQUEST_ID_LEN, PROTOCOL_VERSION};

/// Where the schema is committed, relative to the workspace root.
pub const SCHEMA_PATH: &str = "docs/protocol.schema.json";

/// The types whose union is `ServerMessage`: each an enum of tagged messages (or one tagged
/// message). Adding a family of server messages to the schema is one line here.
pub const SERVER_ROOTS: &[fn(&mut SchemaGenerator) -> Schema] = &[
    |generator| generator.subschema_for::<ServerMessage<'static>>(),
    |generator| generator.subschema_for::<SessionReply<'static>>(),
    |generator| generator.subschema_for::<SessionEvent<'static>>(),
];

/// The schema document, keys sorted.
pub fn protocol_schema() -> Value {
    // Requests are what the gateway deserializes, replies what it serializes: a field it skips
    // when empty is optional in a reply, a field with a default is optional in a request.
    let mut requests = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let client_request = requests.subschema_for::<ClientRequest>();
    let mut replies = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let server_roots: Vec<Schema> = SERVER_ROOTS.iter().map(|root| root(&mut replies)).collect();

    let mut defs = requests.take_definitions(true);
    for (name, schema) in replies.take_definitions(true) {
        // One name, one type: a type both sides use has the same schema on both.
        if let Some(previous) = defs.get(&name) {
            if *previous != schema {
                defs.insert(format!("{name}Reply"), schema);
                continue;
            }
        }
        defs.insert(name, schema);
    }
    defs.insert(
        "Envelope".into(),
        json!({
            "description": "Fields every client message may carry besides its own.",
            "type": "object",
            "properties": {
                "requestId": {
                    "description": "Echoed in the reply; `null` counts as absent.",
                    "type": ["string", "null"],
                    "maxLength": MAX_REQUEST_ID_LEN,
                }
            }
        }),
    );
    defs.insert(
        "ClientMessage".into(),
        json!({
            "description": "A message a client sends: one request type with the envelope's fields. Fields not named are ignored.",
            "allOf": [client_request.to_value(), { "$ref": "#/$defs/Envelope" }],
        }),
    );
    defs.insert(
        "ServerMessage".into(),
        json!({
            "description": "A message the server sends.",
            "oneOf": server_roots.into_iter().map(Schema::to_value).collect::<Vec<_>>(),
        }),
    );
    sorted(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Diminuendo gateway protocol",
        "description": format!(
            "The messages of the Diminuendo gateway protocol, version {PROTOCOL_VERSION}, on /ws \
             (UTF-8 JSON objects in WebSocket text messages). Generated from the gateway's types; \
             see docs/PROTOCOL.md."
        ),
        "oneOf": [
            { "$ref": "#/$defs/ClientMessage" },
            { "$ref": "#/$defs/ServerMessage" },
        ],
        "$defs": Value::Object(defs),
    }))
}

/// The schema document as committed: pretty, keys sorted, a final newline.
pub fn protocol_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&protocol_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// `value` with the keys of every object in sorted order (whatever the map type keeps).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The schema of `T` alone (for tests that look at one type).
#[cfg(test)]
pub(crate) fn schema_of<T: schemars::JsonSchema>(deserialize: bool) -> Value {
    let settings = SchemaSettings::draft2020_12();
    let settings = if deserialize {
        settings.for_deserialize()
    } else {
        settings.for_serialize()
    };
    settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

#[cfg(test)]
mod tests;
