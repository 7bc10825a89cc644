//! Helpers shared by the integration tests: request builders, masked frames and the usual
//! configurations. Everything runs on the simulator's virtual clock.
#![allow(dead_code)]

use diminuendo_core::sim::{client, Sim};
use diminuendo_core::{ConnectionId, CoreConfig};

pub use diminuendo_core::sim::client::{Frame, HttpResponse};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub fn dev() -> CoreConfig {
    CoreConfig {
        dev_mode: true,
        ..CoreConfig::default()
    }
}

pub fn prod() -> CoreConfig {
    CoreConfig::default()
}

/// `METHOD path HTTP/1.1` with a Host header and the given extra header lines (each ending in
/// `\r\n`).
pub fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").into_bytes()
}

/// An upgrade request whose header lines are given in full (each ending in `\r\n`).
pub fn raw_upgrade(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes()
}

/// A valid upgrade request with extra header lines.
pub fn upgrade_with(path: &str, extra: &str) -> Vec<u8> {
    raw_upgrade(
        path,
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}",
            client::KEY
        ),
    )
}

/// Connects, sends `bytes` in one read and takes one whole response (GET semantics).
pub fn one_response(sim: &mut Sim, bytes: &[u8]) -> (ConnectionId, HttpResponse) {
    let id = sim.connect();
    sim.send(id, bytes);
    let response = sim
        .take_response(id)
        .unwrap_or_else(|| panic!("no whole response to {:?}", String::from_utf8_lossy(bytes)));
    (id, response)
}

/// Opens a WebSocket on `path` and checks the 101.
pub fn open(sim: &mut Sim, path: &str) -> ConnectionId {
    let id = sim.connect();
    sim.send(id, &client::upgrade(path));
    let response = sim.take_response(id).expect("a response to the upgrade");
    assert_eq!(response.status, 101, "upgrade to {path}: {response:?}");
    id
}

/// Opens a `/ws` connection and drops the greeting.
pub fn open_ws(sim: &mut Sim) -> ConnectionId {
    let id = open(sim, "/ws");
    let greeting = sim.take_messages(id);
    assert!(!greeting.is_empty());
    assert!(sim.take_received(id).is_empty());
    id
}

/// A masked client frame with a fixed, non-trivial key.
pub fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    client::frame(opcode, fin, payload, [0xa1, 0x5b, 0x0c, 0xf7])
}

pub fn text_json(value: &serde_json::Value) -> Vec<u8> {
    client::text(&value.to_string())
}

/// Every whole frame in `bytes`; panics if bytes remain that do not make a whole frame.
pub fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while let Some((frame, len)) = client::parse_frame(&bytes[offset..]) {
        frames.push(frame);
        offset += len;
    }
    assert_eq!(
        offset,
        bytes.len(),
        "trailing bytes that are not a whole frame"
    );
    frames
}

pub fn json(frame: &Frame) -> serde_json::Value {
    assert_eq!(frame.opcode, OP_TEXT, "not a text frame: {frame:?}");
    serde_json::from_slice(&frame.payload).expect("a JSON text frame")
}

/// Unblocks `id` until the server has nothing left to write to it (or it is closed).
pub fn drain(sim: &mut Sim, id: ConnectionId) {
    let mut rounds = 0;
    while sim.gateway.outbound_len(id) > 0 && !sim.is_closed(id) {
        sim.unblock(id);
        rounds += 1;
        assert!(rounds < 1_000_000, "the connection never drained");
    }
}

/// Sends a request with a requestId; returns its reply and everything else that arrived.
pub fn call(
    sim: &mut Sim,
    id: ConnectionId,
    mut message: serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    message["requestId"] = serde_json::json!("r");
    sim.send(id, &client::text(&message.to_string()));
    let mut reply = serde_json::Value::Null;
    let mut others = Vec::new();
    for received in sim.take_messages(id) {
        if reply.is_null() && received["requestId"] == "r" {
            reply = received;
        } else {
            others.push(received);
        }
    }
    (reply, others)
}
