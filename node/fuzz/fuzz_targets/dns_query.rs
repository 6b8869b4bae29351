#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| node::dns::fuzzing::dns_query(data));
