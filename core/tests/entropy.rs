//! Every id the core hands out comes from the `Entropy` its caller supplies (issue 11, item 8):
//! a gateway gives it the OS CSPRNG, so ids cannot be predicted from the start time and pid.

mod common;

use common::*;
use diminuendo_core::rng::Entropy;
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::Gateway;
use serde_json::{json, Value};
use std::time::Instant;

/// A source that hands out a fixed byte and counts what was drawn.
struct Fixed {
    byte: u8,
    drawn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(self.byte);
        self.drawn
            .fetch_add(buf.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

fn reply(sim: &mut Sim, id: diminuendo_core::ConnectionId, message: Value) -> Value {
    sim.send(id, &client::text(&message.to_string()));
    sim.take_messages(id)
        .into_iter()
        .find(|m| m["requestId"] == "r")
        .unwrap_or(Value::Null)
}

#[test]
fn client_and_session_ids_and_epochs_come_from_the_callers_entropy() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let drawn = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = Fixed {
        byte: 0xab,
        drawn: drawn.clone(),
    };
    sim.gateway = Gateway::with_entropy(dev(), Box::new(source), sim.now(), SIM_START_UNIX_MS);
    let id = open(&mut sim, "/ws");
    let greeting = sim.take_messages(id);
    let uuid = "abababab-abab-4bab-abab-abababababab";
    assert_eq!(greeting[1]["type"], "connected", "{greeting:?}");
    assert_eq!(greeting[1]["clientId"], uuid);
    let created = reply(
        &mut sim,
        id,
        json!({"type": "create_session", "agentType": "echo", "requestId": "r"}),
    );
    assert_eq!(created["session"]["id"], uuid, "{created}");
    // 16 bytes for the client id, 16 for the session id, 8 for its epoch.
    assert_eq!(drawn.load(std::sync::atomic::Ordering::Relaxed), 40);
    let joined = reply(
        &mut sim,
        id,
        json!({"type": "join_session", "sessionId": uuid, "requestId": "r"}),
    );
    assert_eq!(joined["epoch"], "abababababababab", "{joined}");
}
