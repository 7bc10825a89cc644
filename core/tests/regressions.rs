mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::CoreConfig;
use serde_json::json;

/// PROTOCOL section 8: "/readyz turns 503" on shutdown.
#[test]
fn readyz_answers_503_while_draining() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let _ws = open_ws(&mut sim); // a client still draining keeps the process up
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    let probe = sim.connect();
    sim.send(probe, &client::get("/readyz"));
    let response = sim
        .take_response(probe)
        .expect("a 503 response, not a reset");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("Connection"), Some("close"));
}

/// PROTOCOL section 8: "new upgrades get 503" on shutdown.
#[test]
fn upgrades_get_503_while_draining() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let _ws = open_ws(&mut sim);
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    let late = sim.connect();
    sim.send(late, &client::upgrade("/ws"));
    let response = sim
        .take_response(late)
        .expect("a 503 response, not a reset");
    assert_eq!(response.status, 503);
    assert!(response.header("Retry-After").is_some());
}

/// PROTOCOL section 3: requestId is "a string, at most 64 chars".
#[test]
fn a_request_id_of_64_non_ascii_chars_is_accepted() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let request_id = "é".repeat(64);
    sim.send(
        id,
        &text_json(&json!({"type": "ping", "requestId": request_id})),
    );
    assert_eq!(
        sim.take_messages(id),
        [json!({"type": "pong", "ts": SIM_START_UNIX_MS, "requestId": request_id})]
    );
}

/// A client that pipelines requests and never reads must not make the server queue without bound.
#[test]
fn pipelined_requests_from_a_client_that_never_reads_are_bounded() {
    let config = CoreConfig {
        outbound_queue_limit: 64 * 1024,
        ..dev()
    };
    let limit = config.outbound_queue_limit;
    let mut sim = Sim::new(config, 1, Instant::now());
    let id = sim.connect();
    sim.set_write_limit(id, Some(0));
    let batch: Vec<u8> = (0..100).flat_map(|_| client::get("/metrics")).collect();
    for _ in 0..100 {
        sim.send(id, &batch);
        if sim.is_closed(id) {
            break;
        }
    }
    let queued = sim.gateway.outbound_len(id);
    assert!(
        sim.is_closed(id) || queued <= limit,
        "{queued} bytes queued for one HTTP connection that never reads"
    );
}

/// PROTOCOL section 4: "a connection that sent no frame for 2.5 intervals is closed with 4103".
#[test]
fn bytes_that_never_complete_a_frame_do_not_keep_a_connection_alive() {
    let mut sim = Sim::new(dev(), 1, Instant::now());
    let id = open_ws(&mut sim);
    let frame = masked(OP_TEXT, true, &[b' '; 100]);
    for byte in frame.iter().take(20) {
        sim.advance(Duration::from_secs(30));
        sim.send(id, &[*byte]);
    }
    // 600 s without a single whole frame.
    let frames = sim.take_frames(id);
    assert!(
        frames.iter().any(|f| f.close_code() == Some(4103)),
        "still open after {} heartbeats",
        frames.len() / 2
    );
}
