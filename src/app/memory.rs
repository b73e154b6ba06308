//! The memory watcher: the process's RSS against `--max-memory-mb`.

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
