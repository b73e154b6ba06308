//! The thread-per-core runtime. `cpu_pool_size` OS threads, each pinned to its core and
//! each running its own current-thread tokio runtime, own the assignments they take:
//! receive them on the thread's own NATS connection (its intake lane), parse, execute
//! (HTTP and SQL on the thread itself, files through the pinned io_uring shards of
//! `beamline_io`), publish on that same connection. Each thread's queue is bounded;
//! JetStream intake is bounded by a count and a byte budget so a full worker stops pulling.

pub mod approvals;
pub mod cancel;
mod cpu_thread;
mod cputime;
pub mod dedupe;
pub mod fair;
pub mod key;
mod lane;
mod pipeline;
pub mod quota;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blocks::{BlockKind, BuildContext, Pool};
use crate::config::Config;
use crate::contract::ParseLimits;
use crate::telemetry::Metrics;
use crate::transport::{Control, IntakeBudget, JetStreamHandles, LaneScale, Publisher};

pub use approvals::{ApprovalPort, Approvals, Decision};
pub use cancel::Cancels;
pub use cpu_thread::StartError;
pub use dedupe::Dedupe;

use cpu_thread::{CpuQueue, CpuThread};

/// What every CPU thread shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
    pub dedupe: Dedupe,
    pub cancels: Cancels,
    pub approvals: Approvals,
    /// Key-value bucket for approval clocks (JetStream mode).
    pub approval_kv: Option<crate::transport::Bucket>,
    pub io: beamline_io::IoPool,
    /// The GPU pool (`ai.inference`), one for the process, shared by every CPU thread.
    pub gpu: Arc<beamline_gpu::Scheduler>,
    /// The FS root in use (a throw-away one in sandbox mode).
    pub fs_root: PathBuf,
    pub limits: ParseLimits,
    /// Cancelled when the worker stops taking work (SIGTERM/SIGINT).
    pub stopping: CancellationToken,
    /// Cancelled when the grace period after a stop request is over.
    pub hard_stop: CancellationToken,
    /// JetStream intake budget (assignments taken and not finished, and their bytes).
    pub intake: Arc<IntakeBudget>,
    /// Which lanes are in the core queue group (every one in JetStream mode).
    pub lanes: Arc<LaneScale>,
    /// Set while the process is over `--max-memory-mb` (sampled by the app).
    pub over_memory: std::sync::atomic::AtomicBool,
    /// Per-tenant concurrency quota.
    pub quotas: quota::Quotas,
}

impl Shared {
    pub fn approval_port(&self) -> ApprovalPort {
        ApprovalPort {
            approvals: self.approvals.clone(),
            publisher: self.publisher.clone(),
            kv: self.approval_kv.clone(),
            metrics: self.metrics.clone(),
            sandbox: self.config.sandbox,
        }
    }

    /// What a CPU thread's blocks are built from ([`Blocks::new`]).
    pub fn build_context(&self) -> BuildContext<'_> {
        BuildContext {
            config: &self.config,
            io: &self.io,
            fs_root: &self.fs_root,
            gpu: &self.gpu,
            approvals: Rc::new(self.approval_port()),
        }
    }
}

/// The CPU pool.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    /// One per CPU thread: its queue and counters.
    queues: Vec<CpuQueue>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Cancelled when the grace period is over: each CPU thread drops what it still holds
    /// and ends, whatever the broker does.
    abandon: CancellationToken,
}

/// Counts an assignment in `worker_pool_in_flight` of the pool its block runs on (fs.* on
/// the IO pool, ai.inference and ai.embed on the GPU pool) while it is held; the CPU pool's own count
/// is sampled from the threads.
pub(crate) struct PoolBusy<'a>(Option<&'a prometheus::IntGauge>);

impl<'a> PoolBusy<'a> {
    pub(crate) fn new(metrics: &'a crate::telemetry::Metrics, kind: BlockKind) -> PoolBusy<'a> {
        // The pool is `BlockKind::pool`'s: one list decides where a kind waits and counts.
        let g = match kind.pool() {
            Pool::Io => Some(&metrics.in_flight_io),
            Pool::Gpu => Some(&metrics.in_flight_gpu),
            Pool::Cpu => None,
        };
        if let Some(g) = g {
            g.inc();
        }
        PoolBusy(g)
    }
}

impl Drop for PoolBusy<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.dec();
        }
    }
}

impl Runtime {
    /// Starts the pinned CPU threads, each with its intake lane (`js`: the JetStream
    /// objects, in JetStream mode), and returns once every lane receives. Fails when a
    /// thread cannot build its blocks or its lane.
    pub fn start(
        shared: Arc<Shared>,
        js: Option<JetStreamHandles>,
    ) -> Result<Arc<Runtime>, StartError> {
        let cfg = shared.config.clone();
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
        let abandon = CancellationToken::new();
        // Every queue exists before any lane opens: a core lane whose queue is full hands
        // to another thread's (`lane.rs`).
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..cfg.cpu_pool_size)
            .map(|_| flume::bounded::<crate::transport::Delivery>(cfg.queue_capacity))
            .unzip();
        let txs: Arc<[_]> = txs.into();
        for (index, rx) in rxs.drain(..).enumerate() {
            let core =
                (!cfg.cpu_cores.is_empty()).then(|| cfg.cpu_cores[index % cfg.cpu_cores.len()]);
            let (queue, handle) = CpuThread::spawn(
                index,
                core,
                shared.clone(),
                js.clone(),
                (txs.clone(), rx),
                abandon.clone(),
                ready_tx.clone(),
            )?;
            queues.push(queue);
            threads.push(handle);
        }
        drop(ready_tx);
        for _ in 0..cfg.cpu_pool_size {
            ready_rx.recv().map_err(|_| StartError::Died)??;
        }
        Ok(Arc::new(Runtime {
            shared,
            queues,
            threads: std::sync::Mutex::new(threads),
            abandon,
        }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Tasks queued (not yet started) across the CPU threads, fair queues included.
    pub fn queue_depth(&self) -> usize {
        self.queues
            .iter()
            .map(|s| s.tx.len() + s.waiting.load(Ordering::Relaxed))
            .sum()
    }

    pub fn in_flight(&self) -> usize {
        self.queues
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every queue is at more than 90 % of its bound.
    pub fn saturated(&self) -> bool {
        let cap = self.shared.config.queue_capacity;
        self.queues.iter().all(|s| s.tx.len() * 10 > cap * 9)
    }

    /// The `resource_pools` health indicator: fine unless a pool's queue is full — every
    /// CPU queue over 90 %, the IO pool's queues over 90 % (queued and in flight, against
    /// `--queue-capacity` per IO thread), or the GPU pool's queue (unbounded in itself)
    /// longer than one CPU queue's bound.
    pub fn pools_indicator(&self) -> (bool, String) {
        let cap = self.shared.config.queue_capacity;
        let io = &self.shared.io;
        let (io_depth, io_cap) = (io.queue_depth(), io.threads() * cap);
        let gpu_depth = self.shared.gpu.queue_depth();
        let mut full = Vec::new();
        if self.saturated() {
            full.push(format!("cpu queues full ({} queued)", self.queue_depth()));
        }
        if io_depth * 10 > io_cap * 9 {
            full.push(format!("io queues full ({io_depth} of {io_cap})"));
        }
        if gpu_depth >= cap {
            full.push(format!("gpu queue full ({gpu_depth} of {cap})"));
        }
        if full.is_empty() {
            let m = &self.shared.metrics;
            (
                true,
                format!(
                    "cpu {} queued, {} running; io {io_depth} queued or running, {} tasks; gpu {gpu_depth} queued, {} tasks",
                    self.queue_depth(),
                    self.in_flight(),
                    m.in_flight_io.get(),
                    m.in_flight_gpu.get(),
                ),
            )
        } else {
            (false, full.join(", "))
        }
    }

    /// Updates the pool gauges (called on scrape).
    pub fn sample(&self) {
        let m = &self.shared.metrics;
        m.queue_depth
            .with_label_values(&["cpu"])
            .set(self.queue_depth() as i64);
        m.in_flight
            .with_label_values(&["cpu"])
            .set(self.in_flight() as i64);
        m.queue_depth
            .with_label_values(&["io"])
            .set(self.shared.io.queue_depth() as i64);
        m.queue_depth
            .with_label_values(&["gpu"])
            .set(self.shared.gpu.queue_depth() as i64);
        // in_flight io/gpu are live gauges (PoolBusy), not sampled.
        m.approvals_pending
            .set(self.shared.approvals.pending() as i64);
    }

    /// Stops taking work (every lane stops receiving) and waits for the threads to finish
    /// what they hold (queued work included) for most of `grace`; then cancels what is
    /// left (JetStream: nak'ed for redelivery, core: answered 4002) and gives that the
    /// rest of `grace`. Whatever is still held then (the broker is gone, a publish hangs)
    /// is dropped, logged and counted (`worker_stop_unanswered_total`; JetStream
    /// redelivers it after the ack wait), so this returns within `grace` (plus the time
    /// the threads take to drop their tasks) whatever the broker does. Returns how many
    /// assignments were dropped that way.
    pub fn shutdown(&self, grace: Duration) -> usize {
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let start = std::time::Instant::now();
        self.shared.stopping.cancel();
        let wait_until = |until: std::time::Instant| {
            while std::time::Instant::now() < until && threads.iter().any(|t| !t.is_finished()) {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // The last fifth (at most 2 s) of the grace is for answering what did not finish.
        let answer = (grace / 5).min(Duration::from_secs(2));
        wait_until(start + grace.saturating_sub(answer));
        let jetstream = self.shared.config.consumer == crate::config::ConsumerMode::Jetstream;
        let held = self.queue_depth() + self.in_flight();
        let broker_down = self
            .shared
            .metrics
            .connections
            .snapshot()
            .iter()
            .any(|c| !c.up);
        self.shared.hard_stop.cancel();
        self.shared.cancels.cancel_all(); // each running assignment's token (not children)
                                          // With the broker unreachable, the answers (core: 4002) or naks (JetStream) of what
                                          // is held now cannot reach it: they are lost with the process (core: the Router's
                                          // retry; JetStream: redelivered after the ack wait).
        let mut unanswered = if broker_down { held } else { 0 };
        if unanswered > 0 {
            tracing::warn!(
                held,
                redelivered = jetstream,
                "stop with the broker unreachable: assignments held could not be answered or handed back"
            );
        }
        wait_until(start + grace);
        if threads.iter().any(|t| !t.is_finished()) {
            let left = self.queue_depth() + self.in_flight();
            if unanswered == 0 {
                unanswered = left;
            }
            tracing::warn!(
                held = left,
                redelivered = jetstream,
                "grace period over: assignments that could not be answered or handed back are dropped"
            );
            self.abandon.cancel();
            wait_until(std::time::Instant::now() + Duration::from_secs(1));
        }
        self.shared
            .metrics
            .stop_unanswered
            .inc_by(unanswered as u64);
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a cpu thread did not end; leaving it to the process exit");
            }
        }
        unanswered
    }
}

impl Control for Runtime {
    fn cancel(&self, payload: &[u8], header_tenant: Option<&str>) {
        let m = &self.shared.metrics;
        match crate::contract::control::read_cancel(payload, header_tenant) {
            Ok(c) => {
                let reason = c.reason.as_deref().unwrap_or("cancel requested");
                let effect = self
                    .shared
                    .cancels
                    .cancel(&c.tenant_id, &c.assignment_id, reason);
                m.cancels.with_label_values(&[effect.as_str()]).inc();
                tracing::info!(assignment_id = %c.assignment_id, tenant_id = %c.tenant_id, effect = effect.as_str(), "cancel request");
            }
            Err(e) => {
                m.cancels.with_label_values(&["malformed"]).inc();
                tracing::warn!(error = %e, "malformed cancel request ignored");
            }
        }
    }

    fn decision(&self, payload: &[u8]) {
        let m = &self.shared.metrics;
        match crate::contract::control::read_decision(payload) {
            Ok(d) => {
                let id = d.assignment_id.clone();
                let routed = self.shared.approvals.decide(d);
                if routed == approvals::Routed::NotAnApprover {
                    m.approval_decisions_ignored.inc();
                    tracing::warn!(assignment_id = %id, "approval decision from someone not in approvers ignored");
                }
            }
            Err(e) => {
                m.approval_decisions_ignored.inc();
                tracing::warn!(error = %e, "malformed approval decision ignored");
            }
        }
    }
}
