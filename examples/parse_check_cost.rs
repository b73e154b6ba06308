//! The CPU cost of the checks every assignment goes through before simd-json parses it
//! (`contract::assignment`: `check_before_parse`, the nesting depth, and
//! `mend_lone_surrogates`, a surrogate escape without its other half, which simd-json would
//! read as U+0000), against the byte-at-a-time depth walk (`check_depth`) that every
//! assignment went through before, and now only one with more opening brackets than the
//! limit. Three payloads: the bench's `fs.get` assignment, the Router's golden assignment,
//! and an `http.request` whose body is 16 KiB of escaped JSON.
//! Prints the median of seven rounds of thread CPU time (`CLOCK_THREAD_CPUTIME_ID`) per
//! check, and the whole `parse_value` (check and parse) for scale.
//!
//!   cargo run --release --example parse_check_cost

use beamline_io::cputime::thread_cpu_ns;
use beamline_worker::contract::assignment::{
    check_before_parse, check_depth, mend_lone_surrogates, parse_value,
};

const ROUNDS: usize = 7;
/// About 256 MB of input per payload and check and round: long enough to time.
const BYTES_PER_ROUND: usize = 256 << 20;
const MAX_DEPTH: usize = 64;

/// Median thread CPU ns per call of `check` over `ROUNDS` rounds of `n` calls.
fn median_ns(n: usize, mut check: impl FnMut() -> bool) -> f64 {
    let mut passed = 0usize;
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = thread_cpu_ns();
            for _ in 0..n {
                passed += usize::from(check());
            }
            (thread_cpu_ns() - t) as f64 / n as f64
        })
        .collect();
    assert_eq!(passed, n * ROUNDS, "every payload passes both checks");
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let bench = br#"{"version":"1","assignment_id":"b-0000000042","tenant_id":"bench","request_id":"b-0000000042","job":{"type":"fs.get","path":"/bench/1k.bin"}}"#.to_vec();
    let golden = include_bytes!("../tests/fixtures/router-assignment.json").to_vec();
    let body = "{\\\"k\\\":\\\"v\\u00e9\\\"},".repeat(16 << 10 >> 4);
    let big = format!(
        r#"{{"version":"1","assignment_id":"h-1","tenant_id":"t","job":{{"type":"http.request","method":"POST","url":"https://example.com/","body":"[{body}0]"}}}}"#
    )
    .into_bytes();
    println!("payload          bytes  byte loop ns  checks ns  parse_value ns");
    for (name, raw) in [
        ("bench fs.get", &bench),
        ("router golden", &golden),
        ("16 KiB body", &big),
    ] {
        let n = BYTES_PER_ROUND / raw.len();
        let old = median_ns(n, || {
            check_depth(std::hint::black_box(raw), MAX_DEPTH).is_ok()
        });
        let mut unchanged = raw.clone();
        let new = median_ns(n, || {
            check_before_parse(std::hint::black_box(raw), MAX_DEPTH).is_ok()
                && mend_lone_surrogates(std::hint::black_box(&mut unchanged)).is_none()
        });
        let mut buf = raw.clone();
        let whole = median_ns(n / 8, || {
            buf.copy_from_slice(raw);
            parse_value(&mut buf).is_ok()
        });
        println!(
            "{name:<15} {:>6} {old:>13.1} {new:>9.1} {whole:>15.1}",
            raw.len()
        );
    }
}
