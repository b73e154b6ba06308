//! The CPU cost of `fs.get`'s base64 of a binary file's content (issue 12, twelfth round):
//! the `base64` crate's `STANDARD` engine against `base64-simd` (which the block uses),
//! into a buffer sized for it, for 1 KiB (the bench's file), 16 KiB and 256 KiB. Checks
//! that both write the same bytes, then prints the median of seven rounds of thread CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`) per encoding.
//!
//!   cargo run --release --example base64_cost

use base64::Engine as _;
use beamline_io::cputime::thread_cpu_ns;

const ROUNDS: usize = 7;
/// About 2 GB of input per size and encoder and round: long enough to time.
const BYTES_PER_ROUND: usize = 256 << 20;

/// Median thread CPU ns per call of `encode` over `ROUNDS` rounds of `n` calls.
fn median_ns(n: usize, mut encode: impl FnMut() -> u8) -> f64 {
    let mut acc = 0u8;
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = thread_cpu_ns();
            for _ in 0..n {
                acc ^= encode();
            }
            (thread_cpu_ns() - t) as f64 / n as f64
        })
        .collect();
    std::hint::black_box(acc);
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    for size in [1usize << 10, 16 << 10, 256 << 10] {
        let data: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let len = base64_simd::STANDARD.encoded_length(size);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        let n = BYTES_PER_ROUND / size;
        let crate_ns = median_ns(n, || {
            let k = base64::engine::general_purpose::STANDARD
                .encode_slice(std::hint::black_box(&data), &mut a)
                .unwrap_or(0);
            a[k.saturating_sub(1)]
        });
        let simd_ns = median_ns(n, || {
            let out = base64_simd::Out::from_slice(&mut b);
            let s = base64_simd::STANDARD.encode(std::hint::black_box(&data), out);
            s[s.len() - 1]
        });
        assert_eq!(a, b, "the two encoders disagree for {size} bytes");
        println!(
            "{:>4} KiB: base64 {crate_ns:>8.0} ns, base64-simd {simd_ns:>7.0} ns per encoding ({:.1}x)",
            size >> 10,
            crate_ns / simd_ns
        );
    }
}
