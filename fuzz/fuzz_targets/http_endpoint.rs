#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hosepipe::fuzzing::http_endpoint(data));
