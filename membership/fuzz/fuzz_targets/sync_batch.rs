#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| membership::fuzzing::sync_batch(data));
