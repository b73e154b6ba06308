//! What every fuzz target asserts, shared with the replay test (`tests/fuzz_replay.rs`
//! includes this file), so CI replays the corpora and regressions with the same checks,
//! without nightly.

// Each fuzz target builds one variant of `Target`; the replay test uses both.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use beamline_worker::blocks::{decode_job_json, BlockKind, DecodeSettings};
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::assignment::{
    parse_value, Assignment, AssignmentHeaders, ParseLimits,
};

/// What a target feeds its input to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The parser and validator; the first 16 bytes become the NATS header values.
    Assignment,
    /// One block's decoder, the input taken as the job's JSON.
    Job(BlockKind),
}

fn settings() -> &'static DecodeSettings {
    static SETTINGS: OnceLock<DecodeSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config = Config::resolve(Cli::default()).expect("default configuration");
        DecodeSettings::from_config(&config)
    })
}

/// Panics (the fuzzer's finding) when `data` breaks a promise: the parser and decoders
/// never panic, and a decoder answers Ok or a non-retryable rejection with one of the
/// codes it may give before the ack (1001–1003, 2002–2004).
pub(crate) fn check(target: Target, data: &[u8]) {
    match target {
        Target::Assignment => assignment(data),
        Target::Job(kind) => job(kind, data),
    }
}

fn assignment(data: &[u8]) {
    let (head, body) = data.split_at(data.len().min(16));
    let text = String::from_utf8_lossy(head).into_owned();
    let headers = AssignmentHeaders {
        tenant_id: Some(text.clone()),
        version: Some(text.clone()),
        trace_id: None,
        traceparent: Some(text),
    };
    let limits = ParseLimits {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(3600),
    };
    let mut buf = body.to_vec();
    if let Ok(v) = parse_value(&mut buf) {
        let _ = Assignment::read(&v, &headers, limits);
    };
}

fn job(kind: BlockKind, data: &[u8]) {
    let mut buf = data.to_vec();
    if let Err(e) = decode_job_json(kind, &mut buf, "fuzz-assignment", settings()) {
        let code = e.code.code();
        assert!(
            matches!(code, 1001..=1003 | 2002..=2004),
            "{} decoder gave {code}: {e}",
            kind.as_str()
        );
        assert!(!e.retryable, "a rejection is never retryable: {e}");
    }
}
