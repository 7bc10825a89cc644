//! Black-box tests of every gateway binary (see `diminuendo_tests::binaries`), over loopback.
//! Each test starts its own process(es) with the flags it needs, so tests run in parallel.

mod acp;
mod agents;
mod auth;
mod client_fs;
mod console;
mod controls;
mod heartbeat;
mod http;
mod limits;
mod memory;
mod metrics;
mod prompts;
mod real_agent;
mod resume;
mod sandbox;
mod schema;
mod sessions;
mod shutdown;
mod shutdown_under_load;
mod storage_health;
mod tenants;
mod turn_end;
mod upgrade;
mod websocket;

use diminuendo_tests::{binaries, Gateway};

/// Runs `test` against a fresh gateway of every binary, started with `args`.
fn with_each_gateway(args: &[&str], test: impl Fn(&mut Gateway)) {
    for binary in binaries() {
        let mut gateway = Gateway::start(binary, args);
        test(&mut gateway);
    }
}
