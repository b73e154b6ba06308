//! Every metric the worker exports, in one place. The guide's names first (`worker_tasks_total`,
//! `worker_task_latency_ms`, `worker_resource_usage`, `worker_pool_queue_depth`), then what an
//! operator pages on. Hot-path counters are resolved to their label children once at start,
//! so counting a task takes no lock and no allocation.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::blocks::BlockKind;
use crate::contract::{ErrorCode, Status};

const STATUSES: [Status; 4] = [
    Status::Success,
    Status::Error,
    Status::Timeout,
    Status::Cancelled,
];

/// Latency buckets in ms; include the guide's 100 and 500.
pub const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0,
];

/// Outcomes of taking an assignment off NATS.
#[derive(Debug, Clone, Copy)]
pub enum Intake {
    Received,
    Accepted,
    Rejected,
    Deduplicated,
    Unparseable,
    Overloaded,
}

impl Intake {
    const ALL: [Intake; 6] = [
        Intake::Received,
        Intake::Accepted,
        Intake::Rejected,
        Intake::Deduplicated,
        Intake::Unparseable,
        Intake::Overloaded,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Intake::Received => "received",
            Intake::Accepted => "accepted",
            Intake::Rejected => "rejected",
            Intake::Deduplicated => "deduplicated",
            Intake::Unparseable => "unparseable",
            Intake::Overloaded => "overloaded",
        }
    }
}

/// The worker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tasks: Vec<[IntCounter; 4]>,
    latency: Vec<Histogram>,
    pub resource_usage: prometheus::GaugeVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    intake: Vec<IntCounter>,
    dlq: IntCounterVec,
    retries: Vec<IntCounter>,
    pub nats_connected: IntGauge,
    pub nats_reconnects: IntCounter,
    pub js_redeliveries: IntCounter,
    pub js_consumer_recreated: IntCounter,
    pub publish_failures: IntCounterVec,
    pub approvals_pending: IntGauge,
    pub approval_decisions_ignored: IntCounter,
    pub cancels: IntCounterVec,
    pub fs_backend: IntGaugeVec,
    pub gpu_devices: IntGauge,
    pub spans_dropped: IntCounter,
    pub panics: IntCounter,
    /// Log lines dropped by the background log writer (queue full); synced at each render.
    pub log_lines_dropped: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Registers every metric. Names are constants, so registration cannot fail at run time.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let tasks_vec = counter_vec(
            &r,
            "worker_tasks_total",
            "Tasks finished, by block type and result status",
            &["type", "status"],
        );
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "worker_task_latency_ms",
                "Task latency from receipt to result, ms",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
            &["type"],
        )
        .expect("valid metric");
        r.register(Box::new(latency_vec.clone()))
            .expect("unique metric");
        let tasks = BlockKind::ALL
            .iter()
            .map(|k| STATUSES.map(|s| tasks_vec.with_label_values(&[k.as_str(), s.as_str()])))
            .collect();
        let latency = BlockKind::ALL
            .iter()
            .map(|k| latency_vec.with_label_values(&[k.as_str()]))
            .collect();
        let resource_usage = prometheus::GaugeVec::new(
            Opts::new(
                "worker_resource_usage",
                "Process resource usage (cpu_time_ms, memory_mb)",
            ),
            &["type"],
        )
        .expect("valid metric");
        r.register(Box::new(resource_usage.clone()))
            .expect("unique metric");
        let queue_depth = gauge_vec(
            &r,
            "worker_pool_queue_depth",
            "Tasks waiting in each pool's queue",
            &["pool"],
        );
        let in_flight = gauge_vec(
            &r,
            "worker_pool_in_flight",
            "Tasks executing in each pool",
            &["pool"],
        );
        for pool in ["cpu", "io", "gpu"] {
            queue_depth.with_label_values(&[pool]).set(0);
            in_flight.with_label_values(&[pool]).set(0);
        }
        let intake_vec = counter_vec(
            &r,
            "worker_assignments_total",
            "Assignments taken off NATS, by what became of them",
            &["outcome"],
        );
        let intake = Intake::ALL
            .iter()
            .map(|i| intake_vec.with_label_values(&[i.as_str()]))
            .collect();
        let retries_vec = counter_vec(
            &r,
            "worker_retries_total",
            "Block retries, by error code",
            &["code"],
        );
        let retries = ErrorCode::ALL
            .iter()
            .map(|c| retries_vec.with_label_values(&[&c.code().to_string()]))
            .collect();
        let dlq = counter_vec(
            &r,
            "worker_dlq_published_total",
            "DLQ entries published, by reason",
            &["reason"],
        );
        let publish_failures = counter_vec(
            &r,
            "worker_publish_failures_total",
            "Publishes that failed (and were retried or nak'ed), by message kind",
            &["kind"],
        );
        let cancels = counter_vec(
            &r,
            "worker_cancel_requests_total",
            "Cancel requests, by effect",
            &["effect"],
        );
        // Series exist from the start (at 0), so absent() alerts and rate() see them.
        use crate::contract::wire::dlq_reason as why;
        for reason in [
            why::UNPARSEABLE,
            why::INVALID_ASSIGNMENT,
            why::NON_RETRYABLE,
            why::RETRIES_EXHAUSTED,
            why::OVERLOADED,
            why::QUOTA_EXCEEDED,
        ] {
            dlq.with_label_values(&[reason]);
        }
        for kind in ["ack", "result", "dlq"] {
            publish_failures.with_label_values(&[kind]);
        }
        for effect in ["cancelled", "remembered", "malformed"] {
            cancels.with_label_values(&[effect]);
        }
        Metrics {
            tasks,
            latency,
            resource_usage,
            queue_depth,
            in_flight,
            intake,
            dlq,
            retries,
            nats_connected: gauge(
                &r,
                "worker_nats_connected",
                "1 while the NATS connection is up",
            ),
            nats_reconnects: counter(&r, "worker_nats_reconnects_total", "NATS reconnections"),
            js_redeliveries: counter(
                &r,
                "worker_jetstream_redeliveries_total",
                "Assignments JetStream delivered more than once",
            ),
            js_consumer_recreated: counter(
                &r,
                "worker_jetstream_consumer_recreated_total",
                "Times the pull consumer was rebound after it stopped yielding messages",
            ),
            publish_failures,
            approvals_pending: gauge(
                &r,
                "worker_approvals_pending",
                "Approval requests awaiting a decision",
            ),
            approval_decisions_ignored: counter(
                &r,
                "worker_approval_decisions_ignored_total",
                "Approval decisions ignored (approver not listed, unknown or malformed)",
            ),
            cancels,
            fs_backend: gauge_vec(
                &r,
                "worker_fs_backend",
                "File backend in use (1 for the active one)",
                &["backend"],
            ),
            gpu_devices: gauge(
                &r,
                "worker_gpu_devices",
                "GPU devices discovered (0: CPU fallback)",
            ),
            spans_dropped: counter(
                &r,
                "worker_spans_dropped_total",
                "Trace spans dropped (exporter down or queue full)",
            ),
            panics: counter(
                &r,
                "worker_block_panics_total",
                "Blocks that panicked (answered with 4001)",
            ),
            log_lines_dropped: counter(
                &r,
                "worker_log_lines_dropped_total",
                "Log lines dropped because the background log writer's queue was full",
            ),
            registry: r,
        }
    }

    pub fn task_done(&self, kind: BlockKind, status: Status, latency_ms: u64) {
        let s = STATUSES.iter().position(|x| *x == status).unwrap_or(1);
        self.tasks[kind.index()][s].inc();
        self.latency[kind.index()].observe(latency_ms as f64);
    }

    pub fn intake(&self, what: Intake) {
        self.intake[what as usize].inc();
    }

    pub fn retry(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.retries[i].inc();
        }
    }

    pub fn dlq(&self, reason: &str) {
        self.dlq.with_label_values(&[reason]).inc();
    }

    /// Reads CPU time and RSS of this process into `worker_resource_usage`.
    pub fn sample_process(&self) {
        if let Some((cpu_ms, rss_bytes)) = process_usage() {
            self.resource_usage
                .with_label_values(&["cpu_time_ms"])
                .set(cpu_ms as f64);
            self.resource_usage
                .with_label_values(&["memory_mb"])
                .set(rss_bytes as f64 / (1024.0 * 1024.0));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.sample_process();
        let dropped = crate::telemetry::logs::dropped_lines();
        let seen = self.log_lines_dropped.get();
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// (CPU time in ms, resident set in bytes) of this process, from /proc.
pub fn process_usage() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100u64; // USER_HZ is 100 on Linux.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(((utime + stime) * 1000 / ticks, rss_pages * 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_guides_names_and_labels() {
        let m = Metrics::new();
        m.task_done(BlockKind::Http, Status::Success, 42);
        let text = m.render();
        for needle in [
            "worker_tasks_total{status=\"success\",type=\"http.request\"} 1",
            "worker_task_latency_ms_bucket{type=\"http.request\",le=\"100\"} 1",
            "worker_task_latency_ms_bucket{type=\"http.request\",le=\"500\"} 1",
            "worker_resource_usage{type=\"cpu_time_ms\"}",
            "worker_resource_usage{type=\"memory_mb\"}",
            "worker_pool_queue_depth{pool=\"cpu\"} 0",
            "worker_pool_queue_depth{pool=\"io\"} 0",
            "worker_pool_queue_depth{pool=\"gpu\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
