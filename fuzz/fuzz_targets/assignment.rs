//! `cargo +nightly fuzz run assignment`: the parser and validator on arbitrary bytes,
//! with arbitrary NATS header values. Must never panic.
#![no_main]

mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(check::Target::Assignment, data));
