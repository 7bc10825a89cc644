//! Every JSON message the tests send and receive on `/ws` is validated against the committed
//! protocol schema, `docs/protocol.schema.json` (compiled once per process).
//!
//! The check sits in the harness's socket ([`Tapped`]): every connection the harness opens
//! watches its own bytes, and once it is a WebSocket on `/ws` it reassembles the text messages of
//! both directions and validates each. A server message that violates the schema, or whose
//! `type` the schema does not know, fails the test with the message and the error; so does a
//! client message, unless the test said it sends that one as invalid on purpose
//! ([`Tapped::expect_invalid`], [`crate::Client::call_invalid`], [`crate::request_invalid`]):
//! then the schema must reject it (the schema is no looser than the gateway). A client text that
//! is not JSON (or not UTF-8) is a test of the transport and is not validated.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::wire;

/// The committed schema.
const SCHEMA: &str = include_str!("../../docs/protocol.schema.json");

struct Schemas {
    client: jsonschema::Validator,
    server: jsonschema::Validator,
    /// Every `type` the server part of the schema describes.
    server_types: HashSet<String>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let document: Value = serde_json::from_str(SCHEMA)
            .unwrap_or_else(|error| panic!("docs/protocol.schema.json is not JSON: {error}"));
        let part = |name: &str| {
            let mut schema = document.clone();
            if let Some(root) = schema.as_object_mut() {
                root.remove("oneOf");
                root.insert("$ref".into(), json!(format!("#/$defs/{name}")));
            }
            jsonschema::validator_for(&schema)
                .unwrap_or_else(|error| panic!("docs/protocol.schema.json ({name}): {error}"))
        };
        let mut server_types = HashSet::new();
        collect_types(
            &document,
            &document["$defs"]["ServerMessage"],
            &mut HashSet::new(),
            &mut server_types,
        );
        assert!(
            !server_types.is_empty(),
            "no server message types in the schema"
        );
        Schemas {
            client: part("ClientMessage"),
            server: part("ServerMessage"),
            server_types,
        }
    })
}

/// The `type` constants reachable from `schema`, following `$ref`s into `$defs`.
fn collect_types(
    document: &Value,
    schema: &Value,
    seen: &mut HashSet<String>,
    types: &mut HashSet<String>,
) {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("properties")
                .and_then(|properties| properties.get("type"))
                .and_then(|kind| kind.get("const"))
                .and_then(Value::as_str)
            {
                types.insert(name.to_owned());
            }
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                if seen.insert(reference.to_owned()) {
                    let target = document.pointer(reference.trim_start_matches('#'));
                    if let Some(target) = target {
                        collect_types(document, target, seen, types);
                    }
                }
            }
            for value in map.values() {
                collect_types(document, value, seen, types);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_types(document, item, seen, types);
            }
        }
        _ => {}
    }
}

fn violations(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|error| format!("{error} (at {})", error.instance_path()))
        .collect()
}

/// Checks a message the server sent on `/ws`: JSON, a known `type`, valid against the schema.
pub fn check_server_message(text: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| format!("the server sent a text message that is not JSON ({error})"))?;
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err("the server sent a message without a string `type`".into());
    };
    let schemas = schemas();
    if schemas.server_types.contains(kind) {
        let errors = violations(&schemas.server, &value);
        if errors.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "the server's `{kind}` violates docs/protocol.schema.json: {}",
            errors.join("; ")
        ));
    }
    Err(format!(
        "the server sent `{kind}`, a type docs/protocol.schema.json does not describe"
    ))
}

/// What a client message is to the schema.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientVerdict {
    Valid,
    /// The schema rejects it, for these reasons.
    Invalid(String),
    /// Not JSON: not a protocol message at all.
    NotJson,
}

/// Checks a message a client sends on `/ws` against the schema's `ClientMessage`.
pub fn check_client_message(text: &str) -> ClientVerdict {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ClientVerdict::NotJson;
    };
    let errors = violations(&schemas().client, &value);
    if errors.is_empty() {
        ClientVerdict::Valid
    } else {
        ClientVerdict::Invalid(errors.join("; "))
    }
}

/// A TCP stream that validates the protocol messages going through it (see the module docs).
pub struct Tapped {
    stream: TcpStream,
    sent: Direction,
    received: Direction,
    /// How many of the next client messages the test sends as invalid on purpose.
    expect_invalid: u32,
}

impl Tapped {
    pub fn new(stream: TcpStream) -> Tapped {
        Tapped {
            stream,
            sent: Direction::default(),
            received: Direction::default(),
            expect_invalid: 0,
        }
    }

    /// The socket (e.g. to change its read timeout).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// The next message sent is invalid on purpose: the schema must reject it.
    pub fn expect_invalid(&mut self) {
        self.expect_invalid += 1;
    }

    fn client_messages(&mut self, messages: Vec<Vec<u8>>) {
        for message in messages {
            let Ok(text) = String::from_utf8(message) else {
                continue;
            };
            let verdict = check_client_message(&text);
            if self.expect_invalid > 0 && verdict != ClientVerdict::NotJson {
                self.expect_invalid -= 1;
                assert!(
                    verdict != ClientVerdict::Valid,
                    "a test sends {text} as invalid, but docs/protocol.schema.json accepts it"
                );
            } else if let ClientVerdict::Invalid(errors) = verdict {
                panic!(
                    "a test sends {text}, which violates docs/protocol.schema.json: {errors} \
                     (send it with call_invalid/request_invalid if that is the point)"
                );
            }
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        // A message announced as invalid must have gone out and been checked.
        if self.expect_invalid > 0 && !std::thread::panicking() {
            panic!(
                "a test announced {} invalid message(s) that never went out on /ws",
                self.expect_invalid
            );
        }
    }
}

impl Deref for Tapped {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl DerefMut for Tapped {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl Read for Tapped {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.stream.read(buffer)?;
        let bytes = &buffer[..read];
        if self.received.state == State::Head && self.sent.state == State::Pending {
            // The answer to a `/ws` upgrade: a `101` makes both directions WebSocket frames.
            match self.received.head(bytes) {
                Some(first) if first.starts_with("HTTP/1.1 101") => {
                    self.received.state = State::Frames;
                    self.sent.state = State::Frames;
                    let messages = self.sent.frames();
                    self.client_messages(messages);
                }
                Some(_) => {
                    self.received.turn_off();
                    self.sent.turn_off();
                }
                None => return Ok(read),
            }
        } else if self.received.state == State::Head {
            // Not a `/ws` upgrade (or its request is not whole yet, which a client never does).
            self.received.turn_off();
        } else {
            self.received.buffer.extend_from_slice(bytes);
        }
        for message in self.received.frames() {
            let text = String::from_utf8_lossy(&message);
            if let Err(error) = check_server_message(&text) {
                panic!("{error}\n  the message: {text}");
            }
        }
        Ok(read)
    }
}

impl Write for Tapped {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.stream.write(buffer)?;
        let bytes = &buffer[..written];
        match self.sent.state {
            State::Off => {}
            State::Head => match self.sent.head(bytes) {
                Some(first) if first.starts_with("GET /ws ") || first.starts_with("GET /ws?") => {
                    self.sent.state = State::Pending;
                }
                Some(_) => self.sent.turn_off(),
                None => {}
            },
            State::Pending => self.sent.buffer.extend_from_slice(bytes),
            State::Frames => {
                self.sent.buffer.extend_from_slice(bytes);
                let messages = self.sent.frames();
                self.client_messages(messages);
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the HTTP head (the request for the client, the response for the server).
    #[default]
    Head,
    /// The client asked for `/ws`; the server's answer decides.
    Pending,
    /// WebSocket frames of `/ws`.
    Frames,
    /// Anything else (plain HTTP, `/echo`, a refused upgrade): not watched.
    Off,
}

/// One direction of a connection: its bytes, parsed into whole text messages.
#[derive(Default)]
struct Direction {
    state: State,
    buffer: Vec<u8>,
    /// Where the unparsed bytes of `buffer` start.
    offset: usize,
    /// The fragments of a text message still being received.
    partial: Option<Vec<u8>>,
}

impl Direction {
    /// Adds bytes of the HTTP head; once it is whole, returns its first line and keeps only
    /// the bytes after it.
    fn head(&mut self, bytes: &[u8]) -> Option<String> {
        self.buffer.extend_from_slice(bytes);
        let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buffer.len() > 64 * 1024 {
                self.turn_off();
            }
            return None;
        };
        let first = String::from_utf8_lossy(&self.buffer[..end])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        self.buffer.drain(..end + 4);
        Some(first)
    }

    /// The text messages the buffered frames complete.
    fn frames(&mut self) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        if self.state != State::Frames {
            return messages;
        }
        while let Some((frame, len)) = wire::parse_frame(&self.buffer[self.offset..]) {
            self.offset += len;
            match (frame.opcode, self.partial.as_mut()) {
                (1, _) if frame.fin => {
                    self.partial = None;
                    messages.push(frame.payload);
                }
                (1, _) => self.partial = Some(frame.payload),
                (0, Some(partial)) => {
                    partial.extend_from_slice(&frame.payload);
                    if frame.fin {
                        messages.extend(self.partial.take());
                    }
                }
                (2, _) => self.partial = None,
                _ => {}
            }
        }
        if self.offset > 0 && self.offset * 2 >= self.buffer.len() {
            self.buffer.drain(..self.offset);
            self.offset = 0;
        }
        messages
    }

    fn turn_off(&mut self) {
        self.state = State::Off;
        self.buffer = Vec::new();
        self.offset = 0;
        self.partial = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_knows_the_gateways_own_messages_and_rejects_bad_ones() {
        assert_eq!(
            check_server_message(r#"{"type":"pong","ts":1,"requestId":"r"}"#),
            Ok(())
        );
        assert!(check_server_message(r#"{"type":"pong"}"#).is_err());
        assert!(check_server_message(r#"{"type":"error","code":"NOPE","message":"m"}"#).is_err());
        assert!(check_server_message(r#"{"type":"no_such_message"}"#).is_err());
        assert!(check_server_message("not json").is_err());
        assert_eq!(
            check_client_message(r#"{"type":"run_turn","sessionId":"s","text":"t","x":1}"#),
            ClientVerdict::Valid
        );
        assert!(matches!(
            check_client_message(r#"{"type":"run_turn","sessionId":"s"}"#),
            ClientVerdict::Invalid(_)
        ));
        assert!(matches!(
            check_client_message(r#"{"type":"ping","requestId":5}"#),
            ClientVerdict::Invalid(_)
        ));
        assert_eq!(check_client_message("nope"), ClientVerdict::NotJson);
    }

    #[test]
    fn every_server_message_type_is_in_the_schema() {
        for kind in [
            "welcome",
            "connected",
            "authenticated",
            "pong",
            "heartbeat",
            "error",
            "server_shutdown",
            "session_list",
            "session_created",
            "session_updated",
            "session_deleted",
            "session_joined",
            "session_left",
            "events",
            "history",
            "turn_accepted",
            "turn_stopping",
            "question_answered",
            "session_state",
            "turn_started",
            "text_delta",
            "thinking_delta",
            "tool_call",
            "tool_call_update",
            "plan",
            "usage",
            "agent_update",
            "permission_requested",
            "permission_resolved",
            "turn_complete",
            "turn_error",
        ] {
            assert!(
                schemas().server_types.contains(kind),
                "{kind} is not in the schema"
            );
        }
    }
}
