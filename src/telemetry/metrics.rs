//! Every metric the worker exports, in one place. The guide's names first (`worker_tasks_total`,
//! `worker_task_latency_ms`, `worker_resource_usage`, `worker_pool_queue_depth`), then what an
//! operator pages on. Hot-path counters are resolved to their label children once at start,
//! so counting a task takes no lock and no allocation.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::blocks::{BlockKind, Pool};
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

/// CPU time buckets in ms: tasks take microseconds of CPU, limits are seconds.
pub const CPU_TIME_BUCKETS_MS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0, 1000.0, 10000.0,
    60000.0,
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
    /// By [`BlockKind::index`]: one entry per kind, sized by the block registry.
    tasks: [[IntCounter; 4]; BlockKind::COUNT],
    latency: [Histogram; BlockKind::COUNT],
    pub resource_usage: prometheus::GaugeVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    intake: Vec<IntCounter>,
    dlq: IntCounterVec,
    retries: Vec<IntCounter>,
    /// `worker_nats_connected{connection}` and `worker_nats_reconnects_total{connection}`
    /// with the state health reads (control, lane-N): see [`Connections`].
    pub connections: Connections,
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
    /// CPU time each assignment used: its polls on its CPU thread plus its work on the
    /// IO, GPU and blocking pools (`worker_task_cpu_time_ms`).
    pub task_cpu_time: Histogram,
    /// Polls of assignments' futures on the CPU threads (per task: / `worker_tasks_total`).
    pub task_polls: IntCounter,
    /// Assignments a lane's subscription dropped (core mode, over its byte bound).
    pub intake_dropped: IntCounter,
    /// Assignments held at stop that could not be answered or handed back in the grace.
    pub stop_unanswered: IntCounter,
    /// `worker_pool_in_flight{pool="io"|"gpu"}`: assignments whose block runs on that pool
    /// (fs.*, ai.inference), from decode to result.
    pub in_flight_io: IntGauge,
    pub in_flight_gpu: IntGauge,
    /// Core mode: CPU threads' lanes in the queue group now (all of them in JetStream mode).
    pub lanes_active: IntGauge,
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
            .map(|k| STATUSES.map(|s| tasks_vec.with_label_values(&[k.as_str(), s.as_str()])));
        let latency = BlockKind::ALL.map(|k| latency_vec.with_label_values(&[k.as_str()]));
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
        for pool in Pool::ALL.map(Pool::as_str) {
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
        let (in_flight_io, in_flight_gpu) = (
            in_flight.with_label_values(&["io"]),
            in_flight.with_label_values(&["gpu"]),
        );
        Metrics {
            in_flight_io,
            in_flight_gpu,
            lanes_active: gauge(
                &r,
                "worker_intake_lanes_active",
                "Core mode: CPU threads whose lane is in the queue group now (every one in JetStream mode)",
            ),
            tasks,
            latency,
            resource_usage,
            queue_depth,
            in_flight,
            intake,
            dlq,
            retries,
            connections: Connections::new(
                gauge_vec(
                    &r,
                    "worker_nats_connected",
                    "1 while the NATS connection is up, per connection (control, lane-N)",
                    &["connection"],
                ),
                counter_vec(
                    &r,
                    "worker_nats_reconnects_total",
                    "NATS reconnections per connection (the first connect is not one)",
                    &["connection"],
                ),
            ),
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
            task_cpu_time: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "worker_task_cpu_time_ms",
                        "CPU time an assignment used (thread CPU clock: its polls on its CPU thread plus its work on the IO, GPU and blocking pools), ms",
                    )
                    .buckets(CPU_TIME_BUCKETS_MS.to_vec()),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            task_polls: counter(
                &r,
                "worker_task_polls_total",
                "Polls of assignments on the CPU threads (what CPU time accounting costs scales with it)",
            ),
            intake_dropped: counter(
                &r,
                "worker_intake_dropped_total",
                "Core-mode assignments dropped by a lane over its byte bound (slow consumer)",
            ),
            stop_unanswered: counter(
                &r,
                "worker_stop_unanswered_total",
                "Assignments held at stop that could not be answered or handed back in the grace period",
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

    /// How many assignments went `what` way since start.
    pub fn intake_count(&self, what: Intake) -> u64 {
        self.intake[what as usize].get()
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

/// The worker's NATS connections (control, lane-N): up or down since when, for the
/// `worker_nats_connected` gauge, the reconnect counter and the health check. Events are
/// rare (connects, disconnects), so a lock is fine.
#[derive(Debug)]
pub struct Connections {
    connected: IntGaugeVec,
    reconnects: IntCounterVec,
    state: std::sync::Mutex<Vec<Conn>>,
}

#[derive(Debug)]
struct Conn {
    name: String,
    up: bool,
    ever_up: bool,
    /// When it went up or down.
    since: std::time::Instant,
}

/// One connection as health sees it.
#[derive(Debug, Clone)]
pub struct ConnState {
    pub name: String,
    pub up: bool,
    /// How long it has been in that state.
    pub for_: std::time::Duration,
}

impl Connections {
    fn new(connected: IntGaugeVec, reconnects: IntCounterVec) -> Connections {
        // The control connection's series exist from the start (absent() alerts, ops test).
        connected.with_label_values(&["control"]).set(0);
        reconnects.with_label_values(&["control"]);
        Connections {
            connected,
            reconnects,
            state: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Conn) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let i = match st.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                st.push(Conn {
                    name: name.to_owned(),
                    up: false,
                    ever_up: false,
                    since: std::time::Instant::now(),
                });
                st.len() - 1
            }
        };
        f(&mut st[i])
    }

    /// A connection is being opened: down (not yet up) from now; its series exist at 0.
    pub fn opening(&self, name: &str) {
        self.with(name, |_| ());
        self.connected.with_label_values(&[name]).set(0);
        self.reconnects.with_label_values(&[name]);
    }

    /// Connected; counted as a reconnect unless it is the first time.
    pub fn up(&self, name: &str) {
        let again = self.with(name, |c| {
            let again = c.ever_up;
            if !c.up {
                c.since = std::time::Instant::now();
            }
            c.up = true;
            c.ever_up = true;
            again
        });
        self.connected.with_label_values(&[name]).set(1);
        if again {
            self.reconnects.with_label_values(&[name]).inc();
        }
    }

    pub fn down(&self, name: &str) {
        self.with(name, |c| {
            if c.up {
                c.since = std::time::Instant::now();
            }
            c.up = false;
        });
        self.connected.with_label_values(&[name]).set(0);
    }

    /// Every connection known, in the order they were opened.
    pub fn snapshot(&self) -> Vec<ConnState> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.iter()
            .map(|c| ConnState {
                name: c.name.clone(),
                up: c.up,
                for_: c.since.elapsed(),
            })
            .collect()
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

    #[test]
    fn connections_count_reconnects_not_the_first_connect() {
        let m = Metrics::new();
        let c = &m.connections;
        c.opening("lane-0");
        c.up("control");
        c.up("lane-0");
        let text = m.render();
        for needle in [
            "worker_nats_connected{connection=\"control\"} 1",
            "worker_nats_connected{connection=\"lane-0\"} 1",
            "worker_nats_reconnects_total{connection=\"control\"} 0",
            "worker_nats_reconnects_total{connection=\"lane-0\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        c.down("lane-0");
        let snap = c.snapshot();
        assert!(snap.iter().any(|s| s.name == "lane-0" && !s.up));
        assert!(snap.iter().any(|s| s.name == "control" && s.up));
        c.up("lane-0");
        let text = m.render();
        assert!(
            text.contains("worker_nats_reconnects_total{connection=\"lane-0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("worker_nats_reconnects_total{connection=\"control\"} 0"),
            "{text}"
        );
    }
}
