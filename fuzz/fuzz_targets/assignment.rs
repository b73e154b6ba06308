//! `cargo +nightly fuzz run assignment`: the parser and validator on arbitrary bytes,
//! with arbitrary NATS header values. Must never panic.
#![no_main]

use beamline_worker::contract::assignment::{parse_value, Assignment, AssignmentHeaders, ParseLimits};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(16));
    let text = String::from_utf8_lossy(head).into_owned();
    let headers = AssignmentHeaders {
        tenant_id: Some(text.clone()),
        version: Some(text.clone()),
        trace_id: None,
        traceparent: Some(text),
    };
    let limits = ParseLimits { default_timeout: Duration::from_secs(30), max_timeout: Duration::from_secs(3600) };
    let mut buf = body.to_vec();
    if let Ok(v) = parse_value(&mut buf) {
        let _ = Assignment::read(&v, &headers, limits);
    }
});
