//! `diminuendo-echo-agent`: the bundled echo agent as a binary of its own (see README.md).

fn main() {
    diminuendo_echo_agent::run();
}
