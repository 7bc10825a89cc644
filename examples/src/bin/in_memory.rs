//! Embedding the core, deterministically: no sockets, no threads, no real clock. The core's own
//! simulator (`diminuendo_core::sim::Sim`) plays the adapter: it feeds bytes to the `Gateway`,
//! drains every output after every input, applies storage commands to an in-memory store and
//! answers agent commands with a scripted ACP echo agent. Time moves only when we say so, so
//! the transcript this prints is the same on every run.
//!
//! `cargo run -p diminuendo-examples --bin in_memory`

use std::time::{Duration, Instant};

use diminuendo_core::sim::client::{self, Frame};
use diminuendo_core::sim::Sim;
use diminuendo_core::{ConnectionId, CoreConfig};
use serde_json::{json, Value};

/// Prints each frame with the virtual time it was exchanged at.
struct Transcript {
    start: Instant,
}

impl Transcript {
    fn at(&self, sim: &Sim) -> String {
        format!("{:>6} ms", sim.now().duration_since(self.start).as_millis())
    }

    /// The client sends one text message.
    fn send(&self, sim: &mut Sim, id: ConnectionId, message: &Value) {
        println!("{}  client -> {message}", self.at(sim));
        sim.send(id, &client::text(&message.to_string()));
    }

    /// Prints every frame the server wrote since the last call; returns the text messages.
    fn receive(&self, sim: &mut Sim, id: ConnectionId) -> Vec<Value> {
        let mut messages = Vec::new();
        for frame in sim.take_frames(id) {
            println!("{}  server <- {}", self.at(sim), describe(&frame));
            if frame.opcode == 1 {
                if let Ok(message) = serde_json::from_slice(&frame.payload) {
                    messages.push(message);
                }
            }
        }
        messages
    }
}

fn describe(frame: &Frame) -> String {
    match frame.opcode {
        1 => String::from_utf8_lossy(&frame.payload).into_owned(),
        8 => format!("[close {}]", frame.close_code().unwrap_or(1005)),
        9 => "[ping]".to_owned(),
        10 => "[pong]".to_owned(),
        other => format!("[opcode {other}, {} bytes]", frame.payload.len()),
    }
}

fn main() {
    let config = CoreConfig {
        dev_mode: true,
        ..CoreConfig::default()
    };
    let heartbeat = config.heartbeat_interval;
    // A fixed seed: client ids, session ids and turn ids are the same on every run.
    let mut sim = Sim::new(config, 2026, Instant::now());
    let transcript = Transcript { start: sim.now() };

    let id = sim.connect();
    println!(
        "{}  client connects (connection {})",
        transcript.at(&sim),
        id.0
    );
    sim.send(id, &client::upgrade("/ws"));
    let Some(response) = sim.take_response(id) else {
        eprintln!("no upgrade response");
        std::process::exit(1);
    };
    println!(
        "{}  client -> GET /ws (Upgrade: websocket)",
        transcript.at(&sim)
    );
    println!(
        "{}  server <- HTTP {}",
        transcript.at(&sim),
        response.status
    );
    transcript.receive(&mut sim, id);

    transcript.send(
        &mut sim,
        id,
        &json!({"type": "create_session", "requestId": "r1", "agentType": "echo", "name": "demo"}),
    );
    let created = transcript.receive(&mut sim, id);
    let Some(session_id) = created
        .iter()
        .find(|message| message["type"] == "session_created")
        .and_then(|message| message["session"]["id"].as_str())
        .map(str::to_owned)
    else {
        eprintln!("no session_created");
        std::process::exit(1);
    };

    transcript.send(
        &mut sim,
        id,
        &json!({"type": "join_session", "requestId": "r2", "sessionId": session_id}),
    );
    transcript.receive(&mut sim, id);

    transcript.send(
        &mut sim,
        id,
        &json!({"type": "run_turn", "requestId": "r3", "sessionId": session_id, "text": "hello, agent"}),
    );
    transcript.receive(&mut sim, id);
    // Deltas are coalesced for up to 10 ms: move the virtual clock past that deadline.
    sim.advance(Duration::from_millis(20));
    transcript.receive(&mut sim, id);

    // A quiet connection gets a heartbeat and a ping once the interval passes; the client's
    // pong shows it is alive.
    sim.advance(heartbeat);
    transcript.receive(&mut sim, id);
    println!("{}  client -> [pong]", transcript.at(&sim));
    sim.send(id, &client::frame(10, true, b"", [9, 9, 9, 9]));

    println!("{}  client -> [close 1000]", transcript.at(&sim));
    sim.send(id, &client::close(1000));
    transcript.receive(&mut sim, id);
    println!(
        "{}  connection closed by the server: {}",
        transcript.at(&sim),
        sim.is_closed(id)
    );
}
