//! The CPU cost of the in-memory dedupe store per task, apart from everything else a task
//! does (issue 12): per iteration a fresh `TaskKey`, `begin_key` (first sight), an ack and
//! a result the size of the `fs.get` bench's (1 KiB of content, base64) allocated, and the
//! guard completed with them, on a store sized as the worker sizes it at its defaults
//! (100 000 entries, a sixteenth of the default 2 GiB). The baseline loop makes the same
//! key, ack and result and drops them without the store: the difference is the store's
//! cost, its lock and the frees of the evicted entries included. Run on one thread, then
//! on two sharing the store (the worker's two CPU threads on a 2-vCPU host). Prints the
//! thread CPU time per iteration (`CLOCK_THREAD_CPUTIME_ID`), the median of each thread's
//! rounds after a warm-up that fills the store.
//!
//!   cargo run --release --example dedupe_cost

use std::time::Duration;

use beamline_worker::runtime::dedupe::{Begin, Dedupe, Record};
use beamline_worker::runtime::key::TaskKey;
use bytes::Bytes;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 7;
const PER_ROUND: u32 = 200_000;
/// The worker's at its defaults (`app/build.rs`): 100 000 entries, 2 GiB / 16 bytes.
const CAPACITY: usize = 100_000;
const BUDGET: usize = (2048 << 20) / 16;
/// About the `fs.get` bench's ack and result (1 KiB of content, base64, in JSON).
const ACK_LEN: usize = 260;
const RESULT_LEN: usize = 1_750;

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn record(i: u64) -> Record {
    let mut ack = vec![b'a'; ACK_LEN];
    let mut result = vec![b'r'; RESULT_LEN];
    ack[..8].copy_from_slice(&i.to_le_bytes());
    result[..8].copy_from_slice(&i.to_le_bytes());
    Record {
        ack: Bytes::from(ack),
        result: Bytes::from(result),
    }
}

fn key(thread: usize, i: u64) -> TaskKey {
    TaskKey::new(
        "tenant-acme",
        &format!("a7f3c2e1-5b4d-4e8a-{thread:04x}-{i:012x}"),
    )
}

/// One task's dedupe work; `None` is the baseline (the same allocations, no store).
fn one(store: Option<&Dedupe>, thread: usize, i: u64) {
    let key = key(thread, i);
    let record = record(i);
    let Some(store) = store else {
        drop((key, record));
        return;
    };
    match futures::executor::block_on(store.begin_key(&key)) {
        Begin::New(guard) => {
            let stored = futures::executor::block_on(guard.complete(record));
            assert_eq!(stored.ack.len(), ACK_LEN);
        }
        other => panic!("a fresh key was not new: {other:?}"),
    }
}

/// Median µs per task of `ROUNDS` rounds on `threads` threads (each thread's rounds).
fn run(store: Option<&Dedupe>, threads: usize, offset: u64) -> Vec<f64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut i = offset;
                    // Warm-up: the store fills to its bound, so every round below evicts.
                    for _ in 0..PER_ROUND {
                        one(store, t, i);
                        i += 1;
                    }
                    let mut per = Vec::new();
                    for _ in 0..ROUNDS {
                        let t0 = thread_cpu();
                        for _ in 0..PER_ROUND {
                            one(store, t, i);
                            i += 1;
                        }
                        let spent = thread_cpu() - t0;
                        per.push(spent.as_nanos() as f64 / f64::from(PER_ROUND) / 1000.0);
                    }
                    per.sort_by(f64::total_cmp);
                    per[ROUNDS / 2]
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread panicked"))
            .collect()
    })
}

fn main() {
    for threads in [1, 2] {
        let base = run(None, threads, 0);
        let store = Dedupe::new(None, Duration::from_secs(86_400), CAPACITY, BUDGET);
        let with = run(Some(&store), threads, 1 << 40);
        let held = store.len();
        let base_med = base.iter().sum::<f64>() / base.len() as f64;
        let with_med = with.iter().sum::<f64>() / with.len() as f64;
        println!(
            "threads {threads}: baseline {base:.3?} us/task, with the store {with:.3?} us/task; \
             the store's cost {:.3} us/task (means of the threads' medians); entries held {held}, bytes {}",
            with_med - base_med,
            store.bytes()
        );
    }
}
