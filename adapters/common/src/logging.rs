//! Structured logs: human-readable in dev mode, JSON lines otherwise. `RUST_LOG` filters them
//! (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(dev_mode: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests that start several gateways in one process) is harmless.
    let _ = if dev_mode {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
