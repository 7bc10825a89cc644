#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| diminuendo_core::fuzzing::connection(data, std::time::Instant::now()));
