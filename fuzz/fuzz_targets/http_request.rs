#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| diminuendo_core::fuzzing::http_request(data));
