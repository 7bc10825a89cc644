//! The bodies of the fuzz targets (`fuzz/`), kept in the core so that the regression test that
//! replays each target's corpus on the stable toolchain runs the very same code.

use std::time::{Duration, Instant};

use crate::sim::{client, Sim};
use crate::ws::{Decoder, DecoderConfig};
use crate::CoreConfig;

/// The frame decoder fed arbitrary bytes, split where the first byte says.
pub fn frame_decoder(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut input = rest.to_vec();
    let (first, second) = input.split_at_mut((split as usize).min(rest.len()));
    for accept_binary in [false, true] {
        let config = DecoderConfig {
            max_message_size: 64 * 1024,
            accept_binary,
        };
        let mut decoder = Decoder::new();
        let (mut a, mut b) = (first.to_vec(), second.to_vec());
        for chunk in [&mut a[..], &mut b[..]] {
            let mut chunk = chunk;
            while !chunk.is_empty() {
                let (consumed, event) = decoder.decode(&config, &mut *chunk);
                if let Some(Ok(crate::ws::Message::Text(text))) = event {
                    assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                }
                if consumed == 0 {
                    break;
                }
                chunk = &mut std::mem::take(&mut chunk)[consumed..];
            }
        }
    }
}

/// The HTTP request-head parser on arbitrary bytes.
pub fn http_request(data: &[u8]) {
    let _ = crate::http::parse_head(data, 16 * 1024);
}

/// A whole connection fed arbitrary bytes: first as HTTP, then (after a valid upgrade) as
/// WebSocket frames, in reads of sizes drawn from the input, with the clock moving on from
/// `start` (the caller's `Instant::now()`: the core reads no clock).
pub fn connection(data: &[u8], start: Instant) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = CoreConfig {
        dev_mode: mode & 1 == 0,
        conformance_echo: true,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, u64::from(mode), start);
    let id = sim.connect();
    if mode & 2 != 0 {
        let path = if mode & 4 != 0 { "/echo" } else { "/ws" };
        sim.send(id, &client::upgrade(path));
    }
    if mode & 8 != 0 {
        sim.set_write_limit(id, Some(7));
    }
    let mut offset = 0;
    let mut step = 0usize;
    while offset < rest.len() && !sim.is_closed(id) {
        let size = 1 + (rest[offset] as usize % 61) * (1 + step % 5);
        let end = (offset + 1 + size).min(rest.len());
        sim.send(id, &rest[(offset + 1).min(end)..end]);
        offset = end;
        step += 1;
        if mode & 8 != 0 {
            sim.unblock(id);
        }
        if step.is_multiple_of(7) {
            sim.advance(Duration::from_secs(3));
        }
    }
    sim.advance(Duration::from_secs(120));
    let _ = sim.take_received(id);
}

/// An `/acp` client's messages (docs/ACP.md) in the in-memory driver, dev mode. Byte 0 is the
/// mode: bit 0 skips the opening `initialize` and `session/new`, bit 1 makes the agent manual
/// (lines starting `A:` are then written by the agent, e.g. a permission request), bit 2
/// limits writes to 7 bytes. The rest is one message per line, sent as a text message, with
/// `$SID` replaced by the session `session/new` created; time moves on every few lines.
pub fn acp_messages(data: &[u8], start: Instant) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = CoreConfig {
        dev_mode: true,
        coalesce_deltas: false,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(config, u64::from(mode), start);
    if mode & 2 != 0 {
        sim.agent_mode = crate::sim::AgentMode::Manual;
    }
    let id = sim.connect();
    sim.send(id, &client::upgrade("/acp"));
    let _ = sim.take_response(id);
    let mut session_id = String::new();
    if mode & 1 == 0 {
        let init =
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1}}"#;
        sim.send(id, &client::text(init));
        let new = r#"{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/","mcpServers":[]}}"#;
        sim.send(id, &client::text(new));
        for message in sim.take_messages(id) {
            if let Some(created) = message
                .pointer("/result/sessionId")
                .and_then(serde_json::Value::as_str)
            {
                session_id = created.to_owned();
            }
        }
    }
    if mode & 4 != 0 {
        sim.set_write_limit(id, Some(7));
    }
    for (index, line) in rest.split(|&byte| byte == b'\n').enumerate() {
        if sim.is_closed(id) {
            break;
        }
        let text = String::from_utf8_lossy(line).replace("$SID", &session_id);
        match text.strip_prefix("A:") {
            Some(agent_line) => {
                if let Some(agent) = sim.agent_of(&session_id) {
                    sim.agent_send_raw(agent, agent_line.as_bytes());
                }
            }
            None => sim.send(id, &client::text(&text)),
        }
        if mode & 4 != 0 {
            sim.unblock(id);
        }
        if index % 5 == 4 {
            sim.advance(Duration::from_secs(3));
        }
        let _ = sim.take_received(id);
    }
    sim.advance(Duration::from_secs(120));
    let _ = sim.take_received(id);
}
