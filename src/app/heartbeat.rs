//! Heartbeats on `<prefix>.worker.heartbeat.v1`: status, resources and load, every
//! `--heartbeat-interval-ms`, on the control connection.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::probe::WorkerProbe;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::transport::Publisher;

/// Publishes a heartbeat every interval until `stop`.
pub(super) async fn heartbeats(
    cfg: Arc<Config>,
    publisher: Publisher,
    rt: Arc<Runtime>,
    probe: Arc<WorkerProbe>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = heartbeat(&cfg, &rt, probe.healthy());
        let _ = publisher
            .publish_core(
                &cfg.subjects.heartbeat,
                bytes::Bytes::from(body.to_string()),
            )
            .await;
    }
}

/// `degraded` when health fails, `busy` at 80 % of the CPU pool's in-flight capacity,
/// else `ready`.
fn status(healthy: bool, in_flight: usize, capacity: usize) -> &'static str {
    if !healthy {
        "degraded"
    } else if in_flight * 10 >= capacity * 8 {
        "busy"
    } else {
        "ready"
    }
}

/// One heartbeat's body.
fn heartbeat(cfg: &Config, rt: &Runtime, healthy: bool) -> serde_json::Value {
    let in_flight = rt.in_flight();
    let capacity = cfg.cpu_pool_size * cfg.max_in_flight;
    let rss = crate::telemetry::metrics::process_usage().map_or(0, |(_, r)| r);
    serde_json::json!({
        "version": "1",
        "worker_id": cfg.worker_id,
        "timestamp": crate::contract::wire::iso_now(),
        "status": status(healthy, in_flight, capacity),
        "resources": {
            "cpu": cfg.cpu_pool_size,
            "gpu": rt.shared().gpu.devices().len(),
            "mem_bytes": rss,
            "jobs_in_flight": in_flight,
        },
        "metadata": {
            "consumer": format!("{:?}", cfg.consumer).to_lowercase(),
            "io_pool_size": cfg.io_pool_size,
            "max_memory_mb": cfg.max_memory_mb,
            "queue_depth": rt.queue_depth(),
            "version": env!("CARGO_PKG_VERSION"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::status;

    #[test]
    fn status_is_busy_from_eighty_percent_and_degraded_when_unhealthy() {
        assert_eq!(status(true, 79, 100), "ready");
        assert_eq!(status(true, 80, 100), "busy");
        assert_eq!(status(false, 0, 100), "degraded");
    }
}
