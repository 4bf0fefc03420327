#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hosepipe::fuzzing::jetstream_batch(data));
