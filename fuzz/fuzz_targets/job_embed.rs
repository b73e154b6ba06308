//! `cargo +nightly fuzz run job_embed`: the `ai.embed` decoder on arbitrary bytes taken
//! as the job's JSON.
//! Must never panic; every input decodes or is rejected with a contract code.
#![no_main]

use beamline_worker::blocks::BlockKind;

mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(
    check::Target::Job(BlockKind::Embed),
    data
));
