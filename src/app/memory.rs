//! The memory watcher: the process's RSS against `--max-memory-mb`; and the process's
//! page size policy ([`no_huge_pages`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;

/// Samples RSS; over `--max-memory-mb` the worker stops pulling (JetStream) or answers
/// 4002 (core) until it is back under 90 % of the budget.
pub(super) async fn watch_memory(shared: Arc<Shared>, stop: CancellationToken) {
    let budget = shared.config.max_memory_mb << 20;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((_, rss)) = crate::telemetry::metrics::process_usage() else {
            continue;
        };
        let over = shared.over_memory.load(Ordering::Relaxed);
        if !over && rss > budget {
            tracing::warn!(
                rss_mb = rss >> 20,
                budget_mb = budget >> 20,
                "over the memory budget: intake paused"
            );
            shared.over_memory.store(true, Ordering::Relaxed);
        } else if over && rss < budget / 10 * 9 {
            tracing::info!(
                rss_mb = rss >> 20,
                "back under the memory budget: intake resumed"
            );
            shared.over_memory.store(false, Ordering::Relaxed);
        }
    }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), unless
/// `MIMALLOC_ALLOW_THP` is set (then the allocator's own setting stands). Call first in
/// `main`, before the pools start; returns whether it did.
///
/// Why: mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), and with the common
/// `defrag = madvise` setting a fault in such a region zeroes 2 MiB at once, and may first
/// compact memory, on the CPU thread that touched it. While a fresh worker's dedupe store
/// and buffers grow (its first seconds under load), those stalls made a fresh worker's
/// first 5 s at 20 000 fs.get/s end with a result p99 of 6.4–7.0 ms, against 2.3–2.5 ms
/// with THP off (`bench/results/issue12-r3/thp-*.log`); the CPU per task did not change
/// measurably (`flat-*.log`).
pub fn no_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    // A flag of the process's memory map (inherited by children), despite rustix's
    // "thread" in the name.
    rustix::thread::disable_transparent_huge_pages(true).is_ok()
}
