//! The CPU path: each layer is one SIMD GEMM (`gemm` crate) with the bias pre-loaded into
//! the destination, then the activation in place. Large products run multi-threaded on
//! the scheduler's CPU thread pool; small ones stay on the calling thread, where spreading
//! them would cost more than it saves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gemm::Parallelism;
use rayon::prelude::*;

use crate::model::{softmax_in_place, Activation, Layer, Model, ModelError};

/// Multiply-adds under which a layer runs single-threaded.
const PARALLEL_FLOPS: usize = 1 << 20;
/// Output values under which the activation pass runs single-threaded.
const PARALLEL_ELEMS: usize = 1 << 15;

/// The CPU fallback's threads (a rayon pool sized by the worker's CPU pool).
#[derive(Debug)]
pub(crate) struct CpuPool {
    pool: rayon::ThreadPool,
    threads: usize,
    /// The CPU-time clock of each pool thread (registered by the thread as it starts).
    clocks: Arc<Mutex<Vec<libc::clockid_t>>>,
    /// Batches using the pool now (for [`CpuPool::busy`]).
    users: AtomicUsize,
}

fn read_clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call; an invalid clock id (a
    // thread that has exited) makes the call fail with EINVAL, nothing else.
    let r = unsafe { libc::clock_gettime(id, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The calling thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`, a system call).
pub(crate) fn thread_cpu_ns() -> u64 {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The calling thread's CPU-time clock, for other threads to read.
fn own_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` is the calling thread, alive for the call; `id` is a valid,
    // writable clockid_t.
    let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (r == 0).then_some(id)
}

impl CpuPool {
    pub(crate) fn new(threads: usize) -> Result<CpuPool, String> {
        let threads = threads.max(1);
        let clocks = Arc::new(Mutex::new(Vec::with_capacity(threads)));
        let register = clocks.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gpu-cpu-{i}"))
            .start_handler(move |_| {
                if let Some(id) = own_clock() {
                    register.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                }
            })
            .build()
            .map_err(|e| format!("CPU inference pool: {e}"))?;
        Ok(CpuPool {
            pool,
            threads,
            clocks,
            users: AtomicUsize::new(0),
        })
    }

    /// CPU time (ns) the pool's threads have used since they started; 0 for a pool of one
    /// thread, which never runs anything (everything then runs on the caller's thread).
    pub(crate) fn cpu_ns(&self) -> u64 {
        if self.threads <= 1 {
            return 0;
        }
        let clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        clocks.iter().map(|&id| read_clock(id)).sum()
    }

    /// Marks a batch as using the pool until the guard drops; the guard tells how many
    /// batches shared it (the most seen at its start and end), to split the pool's time.
    pub(crate) fn busy(&self) -> PoolUse<'_> {
        let at_start = self.users.fetch_add(1, Ordering::AcqRel) + 1;
        PoolUse {
            pool: self,
            at_start,
        }
    }

    pub(crate) fn forward(&self, model: &Model, inputs: &[f32], rows: usize) -> Vec<f32> {
        forward(model, inputs, rows, Some(self))
    }
}

/// A batch's use of the [`CpuPool`] (see [`CpuPool::busy`]).
#[derive(Debug)]
pub(crate) struct PoolUse<'a> {
    pool: &'a CpuPool,
    at_start: usize,
}

impl PoolUse<'_> {
    /// Batches that used the pool at once with this one, itself included (≥ 1).
    pub(crate) fn sharers(&self) -> usize {
        self.at_start
            .max(self.pool.users.load(Ordering::Acquire))
            .max(1)
    }
}

impl Drop for PoolUse<'_> {
    fn drop(&mut self) {
        self.pool.users.fetch_sub(1, Ordering::AcqRel);
    }
}

// The CPU entry point of `Model` lives beside the path it runs, so that `model.rs` (the
// network and its format) depends on nothing here and the dependency runs one way.
impl Model {
    /// Runs the network on the calling thread (single-threaded SIMD GEMM). `inputs` is
    /// row-major `[rows, input_dim]`; the result is row-major `[rows, output_dim]`.
    pub fn forward_cpu(&self, inputs: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        if inputs.len() != rows * self.input_dim() {
            return Err(ModelError(format!(
                "{} input values for {rows} rows of width {}",
                inputs.len(),
                self.input_dim()
            )));
        }
        Ok(forward(self, inputs, rows, None))
    }
}

/// `inputs` is row-major `[rows, model.input_dim()]` (checked by the caller).
pub(crate) fn forward(
    model: &Model,
    inputs: &[f32],
    rows: usize,
    pool: Option<&CpuPool>,
) -> Vec<f32> {
    let mut x: Option<Vec<f32>> = None;
    for layer in model.layers() {
        let input = x.as_deref().unwrap_or(inputs);
        x = Some(layer_forward(layer, input, rows, pool));
    }
    x.unwrap_or_default()
}

fn layer_forward(layer: &Layer, x: &[f32], rows: usize, pool: Option<&CpuPool>) -> Vec<f32> {
    let (k, n) = (layer.in_dim(), layer.out_dim());
    debug_assert_eq!(x.len(), rows * k);
    // The bias goes into the destination first; the GEMM then accumulates onto it.
    let mut y = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        y.extend_from_slice(layer.bias());
    }
    let big = rows * n * k >= PARALLEL_FLOPS;
    match pool {
        Some(p) if big && p.threads > 1 => p
            .pool
            .install(|| gemm_into(&mut y, x, layer, rows, Parallelism::Rayon(p.threads))),
        _ => gemm_into(&mut y, x, layer, rows, Parallelism::None),
    }
    let act = layer.activation();
    let apply = |row: &mut [f32]| match act {
        Activation::None => {}
        Activation::Softmax => softmax_in_place(row),
        a => row.iter_mut().for_each(|v| *v = a.apply(*v)),
    };
    match pool {
        Some(p) if rows * n >= PARALLEL_ELEMS && rows > 1 && act != Activation::None => {
            p.pool.install(|| y.par_chunks_mut(n).for_each(apply))
        }
        _ => y.chunks_mut(n).for_each(apply),
    }
    y
}

/// `y[rows, n] += x[rows, k] · Wᵀ` where `W` is row-major `[n, k]`.
fn gemm_into(y: &mut [f32], x: &[f32], layer: &Layer, rows: usize, par: Parallelism) {
    let (k, n) = (layer.in_dim(), layer.out_dim());
    let w = layer.weight();
    assert!(
        y.len() == rows * n && x.len() == rows * k && w.len() == n * k,
        "GEMM operand sizes"
    );
    // SAFETY: the assert above bounds every access: dst is [rows, n] with row stride n and
    // column stride 1; lhs is [rows, k] with row stride k; rhs is Wᵀ ([k, n]) read from
    // row-major W [n, k], so its row stride is 1 and its column stride k. `y` is borrowed
    // mutably and does not alias `x` or `w`.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// A strided view of a matrix inside a slice: element `(i, j)` is
/// `data[off + i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) off: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// `dst[m, n] = (accumulate ? dst : 0) + scale · lhs[m, k] · rhs[k, n]`, where `dst` is
/// row-major with row stride `dst_rs` from `dst_off` (column stride 1) and the operands
/// are arbitrary strided views: what the encoder needs for its projections (bias and
/// residual pre-loaded into `dst`) and for attention on one head's columns of the fused
/// QKV matrix without copying them out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_view(
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    accumulate: bool,
    scale: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The furthest element each view addresses must lie inside its slice; dst rows must
    // not overlap (row stride at least the row length), so parallel writes are disjoint.
    let last = |v: &View<'_>, rows: usize, cols: usize| {
        v.off + (rows.max(1) - 1) * v.rs + (cols.max(1) - 1) * v.cs
    };
    assert!(dst_rs >= n, "GEMM destination rows overlap");
    assert!(
        dst_off + (m - 1) * dst_rs + (n - 1) < dst.len(),
        "GEMM destination out of bounds"
    );
    if k > 0 {
        assert!(last(&lhs, m, k) < lhs.data.len(), "GEMM lhs out of bounds");
        assert!(last(&rhs, k, n) < rhs.data.len(), "GEMM rhs out of bounds");
    }
    let stride = |s: usize| isize::try_from(s).expect("strides fit isize (slice lengths do)");
    // SAFETY: the asserts above bound every element the three views address inside their
    // slices (m·n of dst, m·k of lhs, k·n of rhs at the given strides); dst rows are
    // disjoint, and dst is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            stride(dst_rs),
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            stride(lhs.cs),
            stride(lhs.rs),
            rhs.data.as_ptr().add(rhs.off),
            stride(rhs.cs),
            stride(rhs.rs),
            1.0f32,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

impl CpuPool {
    /// Runs `f` on the pool's threads; the GEMM parallelism that suits a product of
    /// `flops` multiply-adds (single-threaded when small, as for the FFN layers).
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    pub(crate) fn par_for(&self, flops: usize) -> Parallelism {
        if flops >= PARALLEL_FLOPS && self.threads > 1 {
            Parallelism::Rayon(self.threads)
        } else {
            Parallelism::None
        }
    }
}
