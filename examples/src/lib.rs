//! Embedding the Diminuendo core in a program of your own. The examples are binaries of this
//! package (`cargo run -p diminuendo-examples --bin NAME`), so that `cargo test` builds them and
//! its tests (`tests/`) run them:
//!
//! - `in_memory`: a deterministic in-memory driver ([`diminuendo_core::sim::Sim`]) runs a whole
//!   conversation (connect, create, join, a turn against a scripted agent, a heartbeat) on a
//!   virtual clock and prints every frame exchanged.
//! - `std_poll_loop`: a single-threaded loop over std's non-blocking sockets and `poll(2)`, with
//!   no async runtime, serving the real protocol on a TCP port.
