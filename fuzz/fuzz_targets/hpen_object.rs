#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hosepipe::fuzzing::hpen_object(data));
