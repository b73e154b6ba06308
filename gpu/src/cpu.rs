//! The CPU path: each layer is one SIMD GEMM (`gemm` crate) with the bias pre-loaded into
//! the destination, then the activation in place. Large products run multi-threaded on
//! the scheduler's CPU thread pool; small ones stay on the calling thread, where spreading
//! them would cost more than it saves.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::model::{softmax_in_place, Activation, Layer, Model};

/// Multiply-adds under which a layer runs single-threaded.
const PARALLEL_FLOPS: usize = 1 << 20;
/// Output values under which the activation pass runs single-threaded.
const PARALLEL_ELEMS: usize = 1 << 15;

/// The CPU fallback's threads (a rayon pool sized by the worker's CPU pool).
#[derive(Debug)]
pub(crate) struct CpuPool {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl CpuPool {
    pub(crate) fn new(threads: usize) -> Result<CpuPool, String> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gpu-cpu-{i}"))
            .build()
            .map_err(|e| format!("CPU inference pool: {e}"))?;
        Ok(CpuPool { pool, threads })
    }

    pub(crate) fn forward(&self, model: &Model, inputs: &[f32], rows: usize) -> Vec<f32> {
        forward(model, inputs, rows, Some(self))
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
