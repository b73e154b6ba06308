//! One CPU thread: pinned to its core, running its own current-thread tokio runtime, it
//! opens its intake lane, takes what the lane queues in the per-tenant fair order, and runs
//! each assignment's pipeline as a local task while under `--max-in-flight`.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::blocks::Blocks;
use crate::contract::assignment::peek_assignment_id;
use crate::transport::{Delivery, JetStreamHandles, TransportError};

use super::{cputime, fair, lane, pipeline, Shared};

/// The longest a lane's last flush at stop waits for the server (the grace period's own
/// end, `abandon`, bounds it as well).
const STOP_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Why the CPU pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spawning cpu thread {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("building a cpu thread runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A block could not be built (its configuration: a TLS root file).
    #[error(transparent)]
    Blocks(#[from] crate::blocks::BuildError),
    #[error("cpu thread {index}: {source}")]
    Lane {
        index: usize,
        #[source]
        source: TransportError,
    },
    #[error("a cpu thread died while starting")]
    Died,
}

/// What the pool keeps of one CPU thread: its queue and its counters.
#[derive(Debug)]
pub(super) struct CpuQueue {
    /// The thread's queue (its lane submits into it); its length is queued work.
    pub(super) tx: flume::Sender<Delivery>,
    /// Taken off `tx` into the thread's fair queue, not started yet.
    pub(super) waiting: Arc<AtomicUsize>,
    /// Started and not finished.
    pub(super) in_flight: Arc<AtomicUsize>,
}

/// One CPU thread, as it runs on that thread.
pub(super) struct CpuThread {
    index: usize,
    shared: Arc<Shared>,
    rx: flume::Receiver<Delivery>,
    waiting: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
}

type Ready = mpsc::Sender<Result<(), StartError>>;

impl CpuThread {
    /// Spawns CPU thread `index` (pinned to `core` when given). It reports on `ready` once
    /// its lane receives, or why it could not start; it ends when the worker has stopped
    /// and its work is done, or at once when `abandon` is cancelled.
    /// `queues` holds every thread's queue (this one's at `index`), `rx` is this one's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        index: usize,
        core: Option<usize>,
        shared: Arc<Shared>,
        js: Option<JetStreamHandles>,
        (queues, rx): (Arc<[flume::Sender<Delivery>]>, flume::Receiver<Delivery>),
        abandon: CancellationToken,
        ready: Ready,
    ) -> Result<(CpuQueue, std::thread::JoinHandle<()>), StartError> {
        let queue = CpuQueue {
            tx: queues[index].clone(),
            waiting: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let thread = CpuThread {
            index,
            shared,
            rx,
            waiting: queue.waiting.clone(),
            in_flight: queue.in_flight.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("cpu-{index}"))
            .spawn(move || thread.run(core, js, queues, abandon, ready))
            .map_err(|source| StartError::Spawn { index, source })?;
        Ok((queue, handle))
    }

    /// The thread's body: pin, build the runtime, serve until done or abandoned.
    fn run(
        self,
        core: Option<usize>,
        js: Option<JetStreamHandles>,
        queues: Arc<[flume::Sender<Delivery>]>,
        abandon: CancellationToken,
        ready: Ready,
    ) {
        if let Some(id) = core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                tracing::warn!(core = id, "could not pin cpu thread");
            }
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(StartError::Runtime(e)));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        // Past the grace period the thread ends whatever its tasks wait for (a broker that
        // is gone); dropping the LocalSet drops them.
        local.block_on(&rt, async move {
            tokio::select! {
                _ = self.serve(js, queues, ready) => {}
                _ = abandon.cancelled() => {}
            }
        });
        drop(local);
        // Nothing of this thread's runtime may hold the process (a blocking DNS lookup).
        rt.shutdown_background();
    }

    /// Builds the thread's blocks and lane, then starts what its queue holds, fairly
    /// across tenants, while under `--max-in-flight`; returns once the worker stopped and
    /// every task of this thread finished.
    async fn serve(
        self,
        js: Option<JetStreamHandles>,
        queues: Arc<[flume::Sender<Delivery>]>,
        ready: Ready,
    ) {
        let shared = &self.shared;
        let blocks = match Blocks::new(&shared.build_context()) {
            Ok(b) => Rc::new(b),
            Err(e) => {
                let _ = ready.send(Err(StartError::Blocks(e)));
                return;
            }
        };
        let waiting = self.waiting.clone();
        let (intake, publisher) =
            match lane::open(shared, self.index, js.as_ref(), &queues, waiting).await {
                Ok(h) => h,
                Err(source) => {
                    let index = self.index;
                    let _ = ready.send(Err(StartError::Lane { index, source }));
                    return;
                }
            };
        let _ = ready.send(Ok(()));
        let max = shared.config.max_in_flight;
        let limit = Arc::new(Semaphore::new(max));
        // Start order fair across tenants (fair.rs). Half a queue more at most: while it is
        // full, deliveries stay in `rx` and the transport's back-pressure applies.
        let mut waiting = fair::FairQueue::new(shared.config.queue_capacity / 2);
        let mut intake = Some(intake);
        let mut cancels_seen = shared.cancels.remembered_count();
        loop {
            self.fill(&mut waiting);
            if shared.stopping.is_cancelled() {
                self.hand_back_waiting(&blocks, &mut waiting, &mut intake)
                    .await;
            }
            if waiting.is_empty() {
                let Some(d) = self.next(&mut intake).await else {
                    break;
                };
                let _ = waiting.push(d, fair::tenant_of); // empty: cannot be full
                continue;
            }
            // Made before the queue is searched, so a cancel between the two wakes it.
            let woken = shared.cancels.woken();
            self.start_cancelled(&blocks, &mut waiting, &mut cancels_seen);
            let permit = tokio::select! {
                biased;
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = woken => continue,
                _ = shared.stopping.cancelled() => continue,
            };
            // What arrived while every slot was busy takes its turn too.
            self.fill(&mut waiting);
            let d = waiting.pop();
            self.waiting.store(waiting.len(), Ordering::Relaxed);
            if let Some(d) = d {
                self.start(&blocks, d, Some(permit));
            }
        }
        let _ = limit.acquire_many(max as u32).await;
        // Tasks started without a slot (cancelled while queued, handed back at stop).
        while self.in_flight.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then what they published reaches the server before the runtime (and with it the
        // client's writer task) ends.
        if !publisher.flush(STOP_FLUSH_LIMIT).await {
            tracing::warn!(lane = self.index, "lane flush at stop failed or timed out");
        }
    }

    /// Stopping: what waits is started at once, without a slot, to be handed back
    /// unstarted (`pipeline`: JetStream nak, core 4002), not run into a grace period that
    /// may end before it does. Once every lane has stopped pulling: a nak while this
    /// lane's pull was still open came straight back to it.
    async fn hand_back_waiting(
        &self,
        blocks: &Rc<Blocks>,
        waiting: &mut fair::FairQueue<Delivery>,
        intake: &mut Option<JoinHandle<()>>,
    ) {
        self.end_intake(intake).await;
        self.fill(waiting);
        while let Some(d) = waiting.pop() {
            self.start(blocks, d, None);
        }
        self.waiting.store(0, Ordering::Relaxed);
    }

    /// Moves what the queue holds into the fair queue, while it has room.
    fn fill(&self, waiting: &mut fair::FairQueue<Delivery>) {
        while !waiting.is_full() {
            let Ok(d) = self.rx.try_recv() else { break };
            let _ = waiting.push(d, fair::tenant_of); // not full: checked above
        }
        self.waiting.store(waiting.len(), Ordering::Relaxed);
    }

    /// The next delivery when nothing waits; `None` once the worker stops and the queue is
    /// empty. Stopping: once every lane has stopped receiving, what is already queued still
    /// runs (within the grace period).
    async fn next(&self, intake: &mut Option<JoinHandle<()>>) -> Option<Delivery> {
        tokio::select! {
            biased;
            d = self.rx.recv_async() => d.ok(),
            _ = self.shared.stopping.cancelled() => {
                self.end_intake(intake).await;
                self.rx.try_recv().ok()
            }
        }
    }

    /// Stopping: waits until this thread's lane, and then every lane, has stopped taking
    /// (once; later calls return at once).
    async fn end_intake(&self, intake: &mut Option<JoinHandle<()>>) {
        if let Some(h) = intake.take() {
            let _ = h.await;
            // A core lane hands to other threads' queues when its own is full: until
            // every lane has stopped, one may still arrive here.
            self.shared.lanes.every_intake_ended().await;
        }
    }

    /// Starts at once, out of turn and without a slot, each queued assignment that a cancel
    /// remembered since `seen` names: it is answered `cancelled` without running, instead
    /// of when a slot frees (`cancel.rs`). Found by its tenant's line and its raw
    /// `assignment_id` (an id written with escapes is not found: it is answered when its
    /// turn comes, as before).
    fn start_cancelled(
        &self,
        blocks: &Rc<Blocks>,
        waiting: &mut fair::FairQueue<Delivery>,
        seen: &mut u64,
    ) {
        for key in self.shared.cancels.remembered_since(seen) {
            let named = |d: &Delivery| peek_assignment_id(&d.payload) == Some(key.id());
            if let Some(d) = waiting.take_from(key.tenant(), named) {
                self.waiting.store(waiting.len(), Ordering::Relaxed);
                self.start(blocks, d, None);
            }
        }
    }

    /// Runs one assignment's pipeline as a local task holding `permit` (none for one
    /// cancelled while queued). The delivery's intake share is given back as the pipeline
    /// drops it; its CPU time (its polls, and its work on the IO and GPU pools) is
    /// accounted (and limited) by `cputime`.
    fn start(&self, blocks: &Rc<Blocks>, d: Delivery, permit: Option<OwnedSemaphorePermit>) {
        let (shared, blocks) = (self.shared.clone(), blocks.clone());
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let cpu_limit = shared.config.max_job_time;
        let (cpu_time, polls) = (
            shared.metrics.task_cpu_time.clone(),
            shared.metrics.task_polls.clone(),
        );
        tokio::task::spawn_local(async move {
            cputime::metered(cpu_limit, pipeline::handle(shared, blocks, d), |ns, n| {
                cpu_time.observe(ns as f64 / 1e6);
                polls.inc_by(u64::from(n));
            })
            .await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
