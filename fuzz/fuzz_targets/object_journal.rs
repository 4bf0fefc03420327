#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hosepipe::fuzzing::object_journal(data));
