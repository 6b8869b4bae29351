#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| membership::fuzzing::entry_decode(data));
