#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| diminuendo_core::fuzzing::acp_messages(data, std::time::Instant::now()));
