//! The device scheduler: `gpu_slots` slots spread over the CUDA devices found (each slot
//! a thread owning a CUDA stream and a cuBLAS handle) plus `cpu_slots` CPU fallback slots.
//! Slots pull batches from one queue (see `queue.rs`): requests for the same model that
//! arrive within `max_queue_delay` run as one batch of at most `max_batch_size` rows, the
//! best priority first. A GPU batch is admitted only when its device has room for the
//! weights (unless already resident) and the activations under the memory budget; the
//! weights then stay resident, evicted least recently used first when room is needed.
//!
//! Bounded by: the queue is unbounded here and bounded by the worker's intake (every
//! request is an assignment holding an in-flight slot); the host model cache and each
//! device's weights by their byte budgets. Shut down by [`Scheduler::shutdown`] or drop:
//! queued requests get [`ErrorKind::Shutdown`], running batches finish, threads are joined.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures_channel::oneshot;

use crate::cache::Lru;
use crate::cpu::{self, CpuPool};
use crate::cuda::{self, CudaDevice, CudaSlot};
use crate::encoder::{self, Encoder};
use crate::error::{ErrorKind, InferError};
use crate::model::Model;
use crate::queue::{Admit, Class, Pending, Queue, Take, Work};

/// How the scheduler is sized. [`SchedulerConfig::default`] suits tests: no CUDA probing
/// beyond what `gpu_slots` asks for.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// GPU slots (CUDA streams), spread over the devices found. 0: CPU only, no probing.
    pub gpu_slots: usize,
    /// Batches the CPU fallback runs at once.
    pub cpu_slots: usize,
    /// Threads of the CPU fallback's GEMM pool.
    pub cpu_threads: usize,
    /// Rows in one batch at most (a single larger request runs in chunks of this size).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others for the same model.
    pub max_queue_delay: Duration,
    /// Bytes of device memory each device may use for weights and activations (capped
    /// at 90 % of what the device has free at start-up).
    pub device_memory_budget: u64,
    /// Bytes of parsed models kept in host memory (the CPU path's weights).
    pub host_cache_budget: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            gpu_slots: 0,
            cpu_slots: 1,
            cpu_threads: 1,
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(500),
            device_memory_budget: 4 << 30,
            host_cache_budget: 4 << 30,
        }
    }
}

/// Where a request may run (`job.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevicePref {
    /// A GPU when the worker has one, else the CPU; a model that cannot fit the device,
    /// or a device failure, falls back to the CPU.
    Auto,
    /// A GPU only: an error when there is none.
    Cuda,
    Cpu,
}

impl DevicePref {
    pub fn parse(s: &str) -> Option<DevicePref> {
        Some(match s {
            "auto" => DevicePref::Auto,
            "cuda" | "gpu" => DevicePref::Cuda,
            "cpu" => DevicePref::Cpu,
            _ => return None,
        })
    }
}

/// Where a batch ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// The CUDA ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    /// `"cpu"` or `"cuda:N"` (`result.metadata.device`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A CUDA device in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory: u64,
    /// Bytes this scheduler lets itself use on it.
    pub budget: u64,
    pub compute_capability: (i32, i32),
    /// Slots (streams) on it.
    pub slots: usize,
}

/// Identity of a model file: a changed file (mtime or size) is a different model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub path: PathBuf,
    pub modified: Option<SystemTime>,
    pub len: u64,
}

/// One inference request: `rows` rows of `model.input_dim()` values, row-major.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: Arc<Model>,
    pub inputs: Arc<[f32]>,
    pub rows: usize,
    pub device: DevicePref,
    /// Higher runs first when requests queue.
    pub priority: i64,
    /// Dropped from the queue (with [`ErrorKind::Deadline`]) when still queued then.
    pub deadline: Option<Instant>,
}

/// One request's share of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// Row-major `[rows, cols]`.
    pub outputs: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub device: Device,
    /// Rows of the device batch this request ran in (its own and others').
    pub batch_rows: usize,
    /// Dispatch order of that batch (0 first).
    pub batch_id: u64,
    /// CPU time (ns) the pool spent on this request: its share (by request, evenly) of
    /// the batch's CPU time on the slot thread (the CPU fallback's compute, or a GPU
    /// batch's host-side work) and on the CPU fallback's GEMM threads.
    pub cpu_ns: u64,
}

impl Inference {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.outputs[i * self.cols..(i + 1) * self.cols]
    }
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Device batches run (a request larger than `max_batch_size` counts once per chunk).
    pub batches_run: u64,
    pub requests_run: u64,
    pub rows_run: u64,
    /// Requests now queued.
    pub queue_depth: usize,
    /// `auto` requests moved to the CPU (model too big for the device, device error).
    pub cpu_fallbacks: u64,
    pub model_cache_hits: u64,
    /// Models parsed and inserted into the host cache.
    pub model_loads: u64,
    pub model_evictions: u64,
    pub models_cached: usize,
    pub model_cache_bytes: u64,
    /// Weight uploads to a device.
    pub device_uploads: u64,
    pub device_evictions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    rows: AtomicU64,
    cpu_fallbacks: AtomicU64,
    hits: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    uploads: AtomicU64,
    device_evictions: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug)]
struct State {
    queue: Queue,
    /// One per CUDA device: resident weights (by model id) and reserved activations.
    ledgers: Vec<Lru<u64, ()>>,
    held: bool,
    shutdown: bool,
    next_seq: u64,
    next_batch: u64,
}

#[derive(Debug)]
struct Inner {
    cfg: SchedulerConfig,
    devices: Vec<CudaDevice>,
    infos: Vec<DeviceInfo>,
    /// GPU slots opened (0: no GPU in use).
    gpu_slots: usize,
    note: String,
    cpu: CpuPool,
    state: Mutex<State>,
    wake: Condvar,
    models: Mutex<Lru<ModelKey, Arc<Model>>>,
    encoders: Mutex<std::collections::HashMap<PathBuf, EncoderCell>>,
    counters: Counters,
}

type EncoderCell = Arc<Mutex<Option<Arc<Encoder>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The GPU pool (and its CPU fallback). Share it with `Arc`.
#[derive(Debug)]
pub struct Scheduler {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The answer to [`Scheduler::submit`]: a future of the request's own rows. Dropping it
/// withdraws the request if it has not started.
#[derive(Debug)]
#[must_use = "a ticket does nothing unless awaited"]
pub struct Ticket {
    rx: oneshot::Receiver<Result<Inference, InferError>>,
}

impl std::future::Future for Ticket {
    type Output = Result<Inference, InferError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(InferError::new(
                    ErrorKind::Shutdown,
                    "the GPU scheduler stopped",
                ))
            })
        })
    }
}

enum SlotKind {
    Gpu(CudaSlot),
    Cpu,
}

impl Scheduler {
    /// Discovers CUDA devices (only when `gpu_slots > 0`) and starts the slot threads. No
    /// device, no driver, or a driver that fails is not an error: the CPU fallback runs
    /// everything, and the reason is logged once and kept in [`Scheduler::cpu_fallback_reason`].
    pub fn start(cfg: SchedulerConfig) -> Result<Scheduler, String> {
        Scheduler::start_pinned(cfg, Vec::new())
    }

    /// As [`Scheduler::start`], with GPU slot thread i pinned to `slot_cores[i % len]`
    /// (the worker's placement plan; empty: unpinned).
    pub fn start_pinned(cfg: SchedulerConfig, slot_cores: Vec<usize>) -> Result<Scheduler, String> {
        let mut cfg = cfg;
        cfg.max_batch_size = cfg.max_batch_size.max(1);
        cfg.cpu_slots = cfg.cpu_slots.max(1);
        let found = cuda::discover(cfg.gpu_slots, cfg.device_memory_budget);
        let infos: Vec<DeviceInfo> = found.devices.iter().map(|d| d.info.clone()).collect();
        if infos.is_empty() {
            tracing::info!(reason = %found.note, "no GPU in use: ai.inference runs on the CPU fallback");
        } else {
            for d in &infos {
                tracing::info!(
                    ordinal = d.ordinal,
                    name = %d.name,
                    total_mib = d.total_memory >> 20,
                    budget_mib = d.budget >> 20,
                    slots = d.slots,
                    compute_capability = ?d.compute_capability,
                    "GPU in use"
                );
            }
        }
        let ledgers = infos.iter().map(|d| Lru::new(d.budget)).collect();
        let inner = Arc::new(Inner {
            cpu: CpuPool::new(cfg.cpu_threads)?,
            models: Mutex::new(Lru::new(cfg.host_cache_budget)),
            encoders: Mutex::new(std::collections::HashMap::new()),
            state: Mutex::new(State {
                queue: Queue::default(),
                ledgers,
                held: false,
                shutdown: false,
                next_seq: 0,
                next_batch: 0,
            }),
            wake: Condvar::new(),
            counters: Counters::default(),
            gpu_slots: found.slots.len(),
            devices: found.devices,
            infos,
            note: found.note,
            cfg,
        });
        let mut threads = Vec::new();
        let kinds = found
            .slots
            .into_iter()
            .map(SlotKind::Gpu)
            .chain((0..inner.cfg.cpu_slots).map(|_| SlotKind::Cpu));
        for (i, kind) in kinds.enumerate() {
            let inner = inner.clone();
            let name = match &kind {
                SlotKind::Gpu(s) => format!("gpu-slot-{i}-dev{}", s.device),
                SlotKind::Cpu => format!("gpu-cpu-slot-{i}"),
            };
            let core = match &kind {
                SlotKind::Gpu(_) if !slot_cores.is_empty() => {
                    Some(slot_cores[i % slot_cores.len()])
                }
                _ => None,
            };
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if let Some(id) = core {
                        // false: the core is not allowed here; the slot then runs unpinned.
                        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    slot_loop(inner, kind)
                })
                .map_err(|e| format!("spawning a GPU pool thread: {e}"))?;
            threads.push(h);
        }
        Ok(Scheduler {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// CUDA devices in use (empty: everything runs on the CPU fallback).
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.inner.infos
    }

    /// Whether `device: "cuda"` can be served.
    pub fn has_cuda(&self) -> bool {
        self.inner.gpu_slots > 0
    }

    /// Why there is no GPU (empty when there is one).
    pub fn cpu_fallback_reason(&self) -> &str {
        &self.inner.note
    }

    /// Requests queued, not yet running (`worker_pool_queue_depth{pool="gpu"}`).
    pub fn queue_depth(&self) -> usize {
        lock(&self.inner.state).queue.len()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.cfg
    }

    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (models_cached, model_cache_bytes) = {
            let m = lock(&self.inner.models);
            (m.len(), m.used())
        };
        Stats {
            batches_run: get(&c.batches),
            requests_run: get(&c.requests),
            rows_run: get(&c.rows),
            queue_depth: self.queue_depth(),
            cpu_fallbacks: get(&c.cpu_fallbacks),
            model_cache_hits: get(&c.hits),
            model_loads: get(&c.loads),
            model_evictions: get(&c.evictions),
            models_cached,
            model_cache_bytes,
            device_uploads: get(&c.uploads),
            device_evictions: get(&c.device_evictions),
        }
    }

    /// The cached model for a file, if its identity (path, mtime, size) is unchanged.
    pub fn cached_model(&self, key: &ModelKey) -> Option<Arc<Model>> {
        let m = lock(&self.inner.models).get(key).cloned();
        if m.is_some() {
            bump(&self.inner.counters.hits, 1);
        }
        m
    }

    /// Caches a freshly parsed model under its file identity, evicting the least recently
    /// used models beyond the host budget. A model larger than the whole budget is
    /// returned uncached.
    pub fn cache_model(&self, key: ModelKey, model: Model) -> Arc<Model> {
        let model = Arc::new(model);
        bump(&self.inner.counters.loads, 1);
        let bytes = model.weight_bytes();
        if let Ok(evicted) = lock(&self.inner.models).insert(key, model.clone(), bytes) {
            bump(&self.inner.counters.evictions, evicted.len() as u64);
        }
        model
    }

    /// Whether a model of this file identity is in the host cache (no LRU touch).
    pub fn is_cached(&self, key: &ModelKey) -> bool {
        lock(&self.inner.models).contains(key)
    }

    /// Queues a request. Errors at once for what can be told now: a width that does not
    /// match the model, a non-finite input, `Cuda` with no GPU, a stopped scheduler.
    pub fn submit(&self, req: Request) -> Result<Ticket, InferError> {
        let width = req.model.input_dim();
        if req.rows == 0 {
            return Err(InferError::new(ErrorKind::InvalidInput, "no input rows"));
        }
        if req.inputs.len() != req.rows * width {
            return Err(InferError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} input values for {} rows; the model takes rows of {width}",
                    req.inputs.len(),
                    req.rows
                ),
            ));
        }
        if let Some(i) = req.inputs.iter().position(|v| !v.is_finite()) {
            return Err(InferError::new(
                ErrorKind::InvalidInput,
                format!(
                    "input row {}, column {} is not a finite number",
                    i / width,
                    i % width
                ),
            ));
        }
        let work = Work::Ffn {
            model: req.model,
            inputs: req.inputs,
        };
        let mut rxs = self.enqueue(
            vec![(work, req.rows)],
            req.device,
            req.priority,
            req.deadline,
        )?;
        let rx = rxs
            .pop()
            .ok_or_else(|| InferError::new(ErrorKind::Shutdown, "the GPU scheduler stopped"))?;
        Ok(Ticket { rx })
    }

    /// Queues the parts of one request (each part its own queue entry, so parts in
    /// different length buckets batch with their own kind), all or none.
    fn enqueue(
        &self,
        parts: Vec<(Work, usize)>,
        pref: DevicePref,
        priority: i64,
        deadline: Option<Instant>,
    ) -> Result<Vec<Answer>, InferError> {
        let mut st = lock(&self.inner.state);
        if st.shutdown {
            return Err(InferError::new(
                ErrorKind::Shutdown,
                "the GPU scheduler is shutting down",
            ));
        }
        let class = match pref {
            DevicePref::Cpu => Class::Cpu,
            DevicePref::Auto if self.inner.gpu_slots == 0 => Class::Cpu,
            DevicePref::Auto => Class::Gpu,
            DevicePref::Cuda if self.inner.gpu_slots == 0 => {
                return Err(no_cuda(&self.inner.note));
            }
            DevicePref::Cuda => Class::Gpu,
        };
        let now = Instant::now();
        let mut rxs = Vec::with_capacity(parts.len());
        for (work, rows) in parts {
            let (tx, rx) = oneshot::channel();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.queue.push(
                class,
                Pending {
                    seq,
                    priority,
                    enqueued: now,
                    deadline,
                    work,
                    rows,
                    pref,
                    reply: tx,
                },
            );
            rxs.push(rx);
        }
        drop(st);
        self.inner.wake.notify_all();
        Ok(rxs)
    }

    /// Queues the tokenized inputs of one `ai.embed` job. Inputs are split by padded
    /// length bucket ([`length_bucket`]); each bucket's share batches with other jobs'
    /// inputs of the same encoder and bucket. Errors at once for no inputs, a sequence
    /// the encoder cannot take, `Cuda` with no GPU, a stopped scheduler.
    pub fn submit_embed(&self, req: EmbedRequest) -> Result<EmbedTicket, InferError> {
        let enc = &req.encoder;
        if req.inputs.is_empty() {
            return Err(InferError::new(ErrorKind::InvalidInput, "no inputs"));
        }
        let vocab = enc.config().vocab;
        for (i, s) in req.inputs.iter().enumerate() {
            if s.is_empty() || s.len() > enc.max_seq_length() {
                return Err(InferError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "input {i} has {} tokens; the encoder takes 1..={}",
                        s.len(),
                        enc.max_seq_length()
                    ),
                ));
            }
            if s.iter().any(|&t| t as usize >= vocab) {
                return Err(InferError::new(
                    ErrorKind::InvalidInput,
                    format!("input {i} has a token id beyond the vocabulary ({vocab})"),
                ));
            }
        }
        let n = req.inputs.len();
        let mut by_bucket: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, s) in req.inputs.iter().enumerate() {
            let b = length_bucket(s.len(), enc.max_seq_length());
            match by_bucket.iter_mut().find(|(k, _)| *k == b) {
                Some((_, v)) => v.push(i),
                None => by_bucket.push((b, vec![i])),
            }
        }
        let mut inputs: Vec<Option<Vec<u32>>> = req.inputs.into_iter().map(Some).collect();
        let mut parts = Vec::with_capacity(by_bucket.len());
        let mut order = Vec::with_capacity(by_bucket.len());
        for (bucket, idx) in by_bucket {
            let seqs: Vec<Vec<u32>> = idx
                .iter()
                .map(|&i| inputs[i].take().unwrap_or_default())
                .collect();
            parts.push((
                Work::Embed {
                    encoder: req.encoder.clone(),
                    seqs: seqs.into(),
                    normalize: req.normalize,
                    bucket,
                },
                idx.len(),
            ));
            order.push(idx);
        }
        let rxs = self.enqueue(parts, req.device, req.priority, req.deadline)?;
        Ok(EmbedTicket {
            parts: order.into_iter().zip(rxs).collect(),
            n,
            dim: req.encoder.dim(),
        })
    }

    /// The encoder in model directory `dir`, loaded once and kept for the life of the
    /// scheduler (its weights count in the host cache's statistics, not its budget: an
    /// operator names these directories, a tenant cannot). Concurrent first calls for
    /// the same directory load it once. Blocking.
    pub fn encoder(&self, dir: &std::path::Path, name: &str) -> Result<Arc<Encoder>, String> {
        let cell = lock(&self.inner.encoders)
            .entry(dir.to_path_buf())
            .or_default()
            .clone();
        let mut slot = lock(&cell);
        if let Some(e) = &*slot {
            bump(&self.inner.counters.hits, 1);
            return Ok(e.clone());
        }
        let e = Arc::new(Encoder::load(dir, name).map_err(|e| e.0)?);
        bump(&self.inner.counters.loads, 1);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Stops dispatching: queued requests wait until [`Scheduler::release`] (maintenance,
    /// and tests that need a busy pool).
    pub fn hold(&self) {
        lock(&self.inner.state).held = true;
    }

    pub fn release(&self) {
        lock(&self.inner.state).held = false;
        self.inner.wake.notify_all();
    }

    /// Refuses new requests and answers queued ones with [`ErrorKind::Shutdown`]; running
    /// batches finish. Threads are joined on drop.
    pub fn shutdown(&self) {
        let drained = {
            let mut st = lock(&self.inner.state);
            st.shutdown = true;
            st.queue.drain()
        };
        for p in drained {
            p.answer(Err(InferError::new(
                ErrorKind::Shutdown,
                "the GPU scheduler is shutting down",
            )));
        }
        self.inner.wake.notify_all();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
        for h in lock(&self.threads).drain(..) {
            let _ = h.join();
        }
    }
}

fn no_cuda(note: &str) -> InferError {
    InferError::new(
        ErrorKind::NoDevice,
        format!("no CUDA device on this worker ({note})"),
    )
}

/// GPU admission on one device: room for the weights (unless resident) and the batch's
/// activations, evicting unpinned weights least recently used first.
fn admit_gpu(ledger: &mut Lru<u64, ()>, work: &Work, rows: usize, evicted: &mut Vec<u64>) -> Admit {
    let (id, w, act) = (
        work.model_id(),
        work.weight_bytes(),
        work.activation_bytes(rows),
    );
    if w + act > ledger.budget() {
        return Admit::Never;
    }
    let resident = ledger.contains(&id);
    if resident {
        ledger.pin(&id);
    }
    let need = act + if resident { 0 } else { w };
    match ledger.make_room(need) {
        None => {
            if resident {
                ledger.unpin(&id);
            }
            Admit::Wait
        }
        Some(ev) => {
            evicted.extend(ev.into_iter().map(|(k, ())| k));
            if !resident {
                // make_room just freed enough; the insert cannot fail.
                let _ = ledger.insert(id, (), w);
                ledger.pin(&id);
            }
            ledger.reserve(act);
            Admit::Go
        }
    }
}

fn slot_loop(inner: Arc<Inner>, kind: SlotKind) {
    let class = match &kind {
        SlotKind::Gpu(_) => Class::Gpu,
        SlotKind::Cpu => Class::Cpu,
    };
    let dev = match &kind {
        SlotKind::Gpu(s) => Some(s.device),
        SlotKind::Cpu => None,
    };
    let (max_batch, delay) = (inner.cfg.max_batch_size, inner.cfg.max_queue_delay);
    let mut st = lock(&inner.state);
    loop {
        if st.shutdown {
            return;
        }
        if st.held {
            st = inner.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let now = Instant::now();
        st.queue.prune(now);
        let mut evicted = Vec::new();
        let take = {
            let State { queue, ledgers, .. } = &mut *st;
            queue.take(class, now, max_batch, delay, |work, rows| match dev {
                Some(d) => admit_gpu(&mut ledgers[d], work, rows, &mut evicted),
                None => Admit::Go,
            })
        };
        if let Some(d) = dev {
            for id in &evicted {
                inner.devices[d].evict(*id);
            }
            bump(&inner.counters.device_evictions, evicted.len() as u64);
        }
        match take {
            Take::Batch(items) => {
                let batch_id = st.next_batch;
                let rows: usize = items.iter().map(|p| p.rows).sum();
                st.next_batch += rows.div_ceil(max_batch) as u64;
                drop(st);
                let (id, act) = (
                    items[0].work.model_id(),
                    items[0].work.activation_bytes(rows.min(max_batch)),
                );
                let outcome = run_batch(&inner, &kind, items, batch_id);
                st = lock(&inner.state);
                if let Some(d) = dev {
                    let ledger = &mut st.ledgers[d];
                    ledger.release(act);
                    ledger.unpin(&id);
                    if outcome.device_failed {
                        // The copy may be half made or the context damaged: drop it.
                        ledger.remove(&id);
                        inner.devices[d].evict(id);
                    }
                }
                for p in outcome.fallback {
                    st.queue.push(Class::Cpu, p);
                }
                inner.wake.notify_all();
            }
            Take::Never(items) => {
                let mut moved = false;
                for p in items {
                    if p.pref == DevicePref::Auto {
                        bump(&inner.counters.cpu_fallbacks, 1);
                        st.queue.push(Class::Cpu, p);
                        moved = true;
                    } else {
                        let msg = format!(
                            "the model ({} MiB of weights) and a batch's activations do not fit the device memory budget ({} MiB)",
                            p.work.weight_bytes() >> 20,
                            dev.map_or(0, |d| inner.infos[d].budget >> 20)
                        );
                        p.answer(Err(InferError::new(ErrorKind::TooLarge, msg)));
                    }
                }
                if moved {
                    inner.wake.notify_all();
                }
            }
            Take::WaitUntil(t) => {
                let wait = t
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(10));
                st = inner
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            Take::Idle => {
                st = inner.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

struct Outcome {
    /// `auto` requests to run again on the CPU.
    fallback: Vec<Pending>,
    device_failed: bool,
}

/// Runs one batch outside the lock and answers its requests, each with its share of the
/// batch's CPU time: the slot thread's (its CPU clock) and, on the CPU fallback, the GEMM
/// pool threads' (their clocks, divided among the batches that used the pool at once).
fn run_batch(inner: &Inner, kind: &SlotKind, items: Vec<Pending>, batch_id: u64) -> Outcome {
    let slot_start = cpu::thread_cpu_ns();
    let pool_use = matches!(kind, SlotKind::Cpu).then(|| inner.cpu.busy());
    let pool_start = pool_use.as_ref().map_or(0, |_| inner.cpu.cpu_ns());
    let max_batch = inner.cfg.max_batch_size;
    let total: usize = items.iter().map(|p| p.rows).sum();
    let (device, result, cols) = match &items[0].work {
        Work::Ffn { model, .. } => {
            let model = model.clone();
            let (device, result) = run_ffn(inner, kind, &items, &model, total);
            (device, result, model.output_dim())
        }
        Work::Embed { encoder, .. } => {
            let encoder = encoder.clone();
            let (device, result) = run_embed(inner, kind, &items, &encoder);
            (device, result, encoder.dim())
        }
    };
    let pool_ns = pool_use.map_or(0, |u| {
        inner.cpu.cpu_ns().saturating_sub(pool_start) / u.sharers() as u64
    });
    let spent = cpu::thread_cpu_ns().saturating_sub(slot_start) + pool_ns;
    let cpu_ns = spent / items.len().max(1) as u64;
    let c = &inner.counters;
    match result {
        Ok(out) => {
            bump(&c.batches, total.div_ceil(max_batch) as u64);
            bump(&c.requests, items.len() as u64);
            bump(&c.rows, total as u64);
            let batch_rows = total.min(max_batch);
            let mut at = 0;
            for p in items {
                let own = out[at * cols..(at + p.rows) * cols].to_vec();
                at += p.rows;
                if own.iter().any(|v| !v.is_finite()) {
                    p.answer(Err(InferError::new(
                        ErrorKind::NonFinite,
                        "the network produced a non-finite value (overflow in a layer)",
                    )));
                    continue;
                }
                let rows = p.rows;
                p.answer(Ok(Inference {
                    outputs: own,
                    rows,
                    cols,
                    device,
                    batch_rows,
                    batch_id,
                    cpu_ns,
                }));
            }
            Outcome {
                fallback: Vec::new(),
                device_failed: false,
            }
        }
        Err(msg) if matches!(kind, SlotKind::Cpu) => {
            tracing::error!(error = %msg, "CPU inference failed");
            for p in items {
                p.answer(Err(InferError::new(ErrorKind::Device, msg.clone())));
            }
            Outcome {
                fallback: Vec::new(),
                device_failed: false,
            }
        }
        Err(msg) => {
            tracing::warn!(device = %device, error = %msg, "GPU batch failed; auto requests fall back to the CPU");
            let mut fallback = Vec::new();
            for p in items {
                if p.pref == DevicePref::Auto {
                    bump(&c.cpu_fallbacks, 1);
                    fallback.push(p);
                } else {
                    p.answer(Err(InferError::new(
                        ErrorKind::Device,
                        format!("{device}: {msg}"),
                    )));
                }
            }
            Outcome {
                fallback,
                device_failed: true,
            }
        }
    }
}

/// The FFN batch: inputs concatenated, run in chunks of `max_batch_size` rows.
fn run_ffn(
    inner: &Inner,
    kind: &SlotKind,
    items: &[Pending],
    model: &Arc<Model>,
    total: usize,
) -> (Device, Result<Vec<f32>, String>) {
    let max_batch = inner.cfg.max_batch_size;
    let width = model.input_dim();
    let cols = model.output_dim();
    let mut input = Vec::with_capacity(total * width);
    for p in items {
        if let Work::Ffn { inputs, .. } = &p.work {
            input.extend_from_slice(inputs);
        }
    }
    match kind {
        SlotKind::Cpu => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut out = Vec::with_capacity(total * cols);
                for chunk in input.chunks(max_batch * width) {
                    out.extend(inner.cpu.forward(model, chunk, chunk.len() / width));
                }
                out
            }))
            .map_err(|_| "the CPU inference panicked".to_owned());
            (Device::Cpu, r)
        }
        SlotKind::Gpu(slot) => {
            let dev = &inner.devices[slot.device];
            let r = cuda::guarded(|| {
                let mut out = Vec::with_capacity(total * cols);
                for chunk in input.chunks(max_batch * width) {
                    let (y, uploaded) = slot.forward(dev, model, chunk, chunk.len() / width)?;
                    if uploaded {
                        bump(&inner.counters.uploads, 1);
                    }
                    out.extend(y);
                }
                Ok(out)
            });
            (Device::Cuda(dev.info.ordinal), r)
        }
    }
}

/// The encoder batch: every request's sequences (one length bucket), in chunks of
/// `max_batch_size` sequences, each request's normalisation flag per row.
fn run_embed(
    inner: &Inner,
    kind: &SlotKind,
    items: &[Pending],
    enc: &Arc<Encoder>,
) -> (Device, Result<Vec<f32>, String>) {
    let max_batch = inner.cfg.max_batch_size;
    let mut seqs: Vec<&[u32]> = Vec::new();
    let mut norm: Vec<bool> = Vec::new();
    for p in items {
        if let Work::Embed {
            seqs: s, normalize, ..
        } = &p.work
        {
            seqs.extend(s.iter().map(|v| v.as_slice()));
            norm.extend(std::iter::repeat_n(*normalize, s.len()));
        }
    }
    let dim = enc.dim();
    match kind {
        SlotKind::Cpu => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut out = Vec::with_capacity(seqs.len() * dim);
                for (chunk, flags) in seqs.chunks(max_batch).zip(norm.chunks(max_batch)) {
                    out.extend(encoder::embed_cpu(enc, chunk, flags, Some(&inner.cpu)));
                }
                out
            }))
            .map_err(|_| "the CPU encoder panicked".to_owned());
            (Device::Cpu, r)
        }
        SlotKind::Gpu(slot) => {
            let dev = &inner.devices[slot.device];
            let r = cuda::guarded(|| {
                let mut out = Vec::with_capacity(seqs.len() * dim);
                for (chunk, flags) in seqs.chunks(max_batch).zip(norm.chunks(max_batch)) {
                    let (y, uploaded) = slot.embed(dev, enc, chunk, flags)?;
                    if uploaded {
                        bump(&inner.counters.uploads, 1);
                    }
                    out.extend(y);
                }
                Ok(out)
            });
            (Device::Cuda(dev.info.ordinal), r)
        }
    }
}

/// The padded-length bucket of a sequence of `len` tokens: the next power of two from
/// 16, capped at the encoder's `max_seq`. A batch pads to its longest sequence, which
/// is within 2× of its shortest (bar the 16-token floor).
pub fn length_bucket(len: usize, max_seq: usize) -> usize {
    len.max(16).next_power_of_two().min(max_seq.max(1))
}

/// One `ai.embed` request: tokenized inputs (see [`Encoder::tokenize`]).
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub encoder: Arc<Encoder>,
    pub inputs: Vec<Vec<u32>>,
    /// L2-normalise each embedding.
    pub normalize: bool,
    pub device: DevicePref,
    pub priority: i64,
    pub deadline: Option<Instant>,
}

/// The embeddings of one [`EmbedRequest`], in its input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Row-major `[n, dim]`.
    pub vectors: Vec<f32>,
    pub n: usize,
    pub dim: usize,
    /// Where the first length bucket ran (every bucket runs on the same kind of slot;
    /// with several GPUs, buckets may run on different ordinals).
    pub device: Device,
    /// Sequences in the largest device batch a part of this request ran in.
    pub batch_rows: usize,
    /// CPU time (ns) the pool spent on this request, over its parts (see
    /// [`Inference::cpu_ns`]).
    pub cpu_ns: u64,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

type Answer = oneshot::Receiver<Result<Inference, InferError>>;

/// The answer to [`Scheduler::submit_embed`]. Dropping it withdraws what has not started.
#[derive(Debug)]
#[must_use = "a ticket does nothing unless awaited"]
pub struct EmbedTicket {
    /// Per length bucket: the request's input indices and the bucket's answer.
    parts: Vec<(Vec<usize>, Answer)>,
    n: usize,
    dim: usize,
}

impl EmbedTicket {
    /// Waits for every bucket and puts the rows back in input order.
    pub async fn wait(self) -> Result<Embeddings, InferError> {
        let mut vectors = vec![0.0f32; self.n * self.dim];
        let mut device = None;
        let mut batch_rows = 0;
        let mut cpu_ns = 0u64;
        for (idx, rx) in self.parts {
            let inf = rx.await.unwrap_or_else(|_| {
                Err(InferError::new(
                    ErrorKind::Shutdown,
                    "the GPU scheduler stopped",
                ))
            })?;
            if inf.cols != self.dim || inf.rows != idx.len() {
                return Err(InferError::new(
                    ErrorKind::Device,
                    "the encoder returned a batch of the wrong shape",
                ));
            }
            device.get_or_insert(inf.device);
            batch_rows = batch_rows.max(inf.batch_rows);
            cpu_ns = cpu_ns.saturating_add(inf.cpu_ns);
            for (r, &i) in idx.iter().enumerate() {
                vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(inf.row(r));
            }
        }
        Ok(Embeddings {
            vectors,
            n: self.n,
            dim: self.dim,
            device: device.unwrap_or(Device::Cpu),
            batch_rows,
            cpu_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Layer};

    /// A model of `n × n` weights (4·(n² + n) bytes).
    fn model(n: usize) -> Model {
        Model::new(vec![Layer::new(
            n,
            n,
            vec![0.0; n * n],
            vec![0.0; n],
            Activation::None,
        )
        .expect("layer")])
        .expect("model")
    }

    #[test]
    fn gpu_admission_by_device_memory() {
        let ffn = |m: &Arc<Model>| Work::Ffn {
            model: m.clone(),
            inputs: Arc::from(vec![0.0f32]),
        };
        let (ma, mb) = (Arc::new(model(64)), Arc::new(model(64))); // 16 640 bytes of weights each
        let (a, b) = (&*ma, &*mb);
        let (wa, wb) = (ffn(&ma), ffn(&mb));
        let act = a.activation_bytes(4); // 4 rows × (64 + 2·64) × 4 = 3 072
        let mut ledger: Lru<u64, ()> = Lru::new(a.weight_bytes() + b.weight_bytes() / 2 + 2 * act);
        let mut evicted = Vec::new();

        assert_eq!(admit_gpu(&mut ledger, &wa, 4, &mut evicted), Admit::Go);
        assert!(ledger.contains(&a.id()));
        // a is running (pinned, activations reserved): b's weights cannot fit beside it.
        assert_eq!(admit_gpu(&mut ledger, &wb, 4, &mut evicted), Admit::Wait);
        // a again (resident): only activations are needed.
        assert_eq!(admit_gpu(&mut ledger, &wa, 4, &mut evicted), Admit::Go);
        for _ in 0..2 {
            ledger.release(act);
            ledger.unpin(&a.id());
        }
        // Nothing running: b evicts a, least recently used.
        assert_eq!(admit_gpu(&mut ledger, &wb, 4, &mut evicted), Admit::Go);
        assert_eq!(evicted, vec![a.id()]);
        assert!(ledger.contains(&b.id()) && !ledger.contains(&a.id()));
        // A model larger than the whole budget never runs here.
        assert_eq!(
            admit_gpu(&mut ledger, &ffn(&Arc::new(model(200))), 1, &mut evicted),
            Admit::Never
        );
    }

    #[test]
    fn length_buckets_are_powers_of_two_from_16_capped_at_max_seq() {
        let b = |len| length_bucket(len, 256);
        assert_eq!([b(1), b(2), b(16)], [16, 16, 16]);
        assert_eq!([b(17), b(32), b(33), b(64)], [32, 32, 64, 64]);
        assert_eq!([b(65), b(129), b(200), b(256)], [128, 256, 256, 256]);
        // A max_seq_length that is not a power of two caps the last bucket.
        assert_eq!(length_bucket(300, 384), 384);
        assert_eq!(length_bucket(384, 384), 384);
        assert_eq!(length_bucket(100, 384), 128);
    }
}
