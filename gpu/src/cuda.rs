//! The CUDA side, all through cudarc with dynamic loading: device discovery, per-device
//! weight copies, and per-slot streams running cuBLAS SGEMM plus two NVRTC kernels (fused
//! bias + activation, row softmax). The sentence encoder (`ai.embed`) is `cuda/embed.rs`.
//!
//! Nothing here may take the process down on a machine without CUDA: the libraries are
//! probed with `is_culib_present()` before any driver call (cudarc panics on a missing
//! library), and every driver call made at start-up or per batch runs under
//! `catch_unwind` in the scheduler, so a failure is a CPU fallback, never a crash.

use std::collections::HashMap;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::model::{Activation, Model};
use crate::DeviceInfo;

mod embed;

/// Compiled once per process by NVRTC (no fast-math: the GPU must agree with the CPU
/// path within 1e-4). `n` is passed in so the index never overflows in the kernel.
const KERNELS: &str = r#"
extern "C" __global__ void bias_act(float* y, const float* b, unsigned int n, unsigned int cols, int act) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i] + b[i % cols];
    if (act == 1) {
        v = fmaxf(v, 0.0f);
    } else if (act == 2) {
        v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    } else if (act == 3) {
        v = tanhf(v);
    }
    y[i] = v;
}

// One block of 256 threads per row.
extern "C" __global__ void softmax_rows(float* y, unsigned int rows, unsigned int cols) {
    __shared__ float red[256];
    unsigned int r = blockIdx.x;
    if (r >= rows) return;
    float* row = y + (unsigned long long)r * cols;
    unsigned int t = threadIdx.x;
    float m = __int_as_float(0xff800000);
    for (unsigned int c = t; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
    red[t] = m;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red[t] = fmaxf(red[t], red[t + s]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (unsigned int c = t; c < cols; c += blockDim.x) {
        float e = expf(row[c] - m);
        row[c] = e;
        sum += e;
    }
    red[t] = sum;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    float inv = 1.0f / red[0];
    for (unsigned int c = t; c < cols; c += blockDim.x) row[c] *= inv;
}
"#;

const SOFTMAX_THREADS: u32 = 256;
const BIAS_THREADS: u32 = 256;

fn e(what: &str, err: impl std::fmt::Debug) -> String {
    format!("{what}: {err:?}")
}

/// One device's copy of a model's weights.
#[derive(Debug)]
struct DeviceLayer {
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    in_dim: usize,
    out_dim: usize,
    act: Activation,
}

#[derive(Debug)]
struct DeviceModel {
    layers: Vec<DeviceLayer>,
}

type WeightCell = Arc<Mutex<Option<Arc<DeviceModel>>>>;

/// A device found at start-up, with its kernels loaded.
#[derive(Debug)]
pub(crate) struct CudaDevice {
    pub(crate) info: DeviceInfo,
    ctx: Arc<CudaContext>,
    bias_act: CudaFunction,
    softmax: CudaFunction,
    /// Uploaded weights by model id. What is resident is decided by the scheduler's
    /// ledger for this device (LRU under the memory budget); this map only holds them.
    weights: Mutex<HashMap<u64, WeightCell>>,
    /// The encoder kernels; `None` when they did not compile or load (then `ai.embed`
    /// batches fail on this device and `auto` jobs fall back to the CPU).
    embed: Option<embed::EmbedFns>,
    /// Uploaded encoders by id, under the same ledger as `weights`.
    encoders: Mutex<HashMap<u64, embed::EncoderCell>>,
}

/// One slot: a stream of its own and a cuBLAS handle bound to it.
#[derive(Debug)]
pub(crate) struct CudaSlot {
    pub(crate) device: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// What discovery found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) devices: Vec<CudaDevice>,
    pub(crate) slots: Vec<CudaSlot>,
    /// Why there is no device, when there is none.
    pub(crate) note: String,
}

/// Whether the CUDA driver library can be opened at all.
pub fn driver_present() -> bool {
    // SAFETY: dlopens libcuda (running its initialisers) and closes it again; no symbol
    // is called. This is the probe cudarc offers for exactly this purpose.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Finds the devices and opens `slots` streams spread over them. Never panics.
pub(crate) fn discover(slots: usize, budget: u64) -> Found {
    let none = |note: String| Found {
        note,
        ..Found::default()
    };
    if slots == 0 {
        return none("GPU pool disabled (--gpu-pool-size 0)".into());
    }
    if !driver_present() {
        return none("no CUDA driver (libcuda not found)".into());
    }
    // SAFETY: as above, for libcublas and libnvrtc.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return none("CUDA driver present but libcublas not found (add the CUDA toolkit's lib directory to LD_LIBRARY_PATH)".into());
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return none("CUDA driver present but libnvrtc not found (add the CUDA toolkit's lib directory to LD_LIBRARY_PATH)".into());
    }
    match catch_unwind(|| open_all(slots, budget)) {
        Ok(Ok(found)) => found,
        Ok(Err(msg)) => none(msg),
        Err(_) => none("the CUDA driver panicked while probing devices".into()),
    }
}

fn open_all(slots: usize, budget: u64) -> Result<Found, String> {
    let count =
        CudaContext::device_count().map_err(|err| e("cuInit/cuDeviceGetCount failed", err))?;
    if count <= 0 {
        return Err("CUDA driver present but it reports no device".into());
    }
    let ptx = cudarc::nvrtc::compile_ptx(KERNELS)
        .map_err(|err| e("NVRTC could not compile the kernels", err))?;
    // The encoder's kernels apart: should they fail, ai.inference still runs on the GPU.
    let embed_ptx = match cudarc::nvrtc::compile_ptx(embed::EMBED_KERNELS) {
        Ok(p) => Some(p),
        Err(err) => {
            tracing::warn!(error = ?err, "NVRTC could not compile the encoder kernels; ai.embed runs on the CPU");
            None
        }
    };
    let mut devices = Vec::new();
    for ordinal in 0..count as usize {
        match open_device(ordinal, &ptx, embed_ptx.as_ref(), budget) {
            Ok(d) => devices.push(d),
            Err(msg) => tracing::warn!(ordinal, error = %msg, "CUDA device unusable; skipped"),
        }
    }
    if devices.is_empty() {
        return Err("no CUDA device could be opened".into());
    }
    let mut out = Vec::new();
    for i in 0..slots {
        let d = i % devices.len();
        match open_slot(&devices[d], d) {
            Ok(s) => {
                devices[d].info.slots += 1;
                out.push(s)
            }
            Err(msg) => {
                tracing::warn!(ordinal = devices[d].info.ordinal, error = %msg, "GPU slot could not be opened")
            }
        }
    }
    if out.is_empty() {
        return Err("no GPU slot could be opened".into());
    }
    // A device that got no slot is of no use.
    let keep: Vec<bool> = devices.iter().map(|d| d.info.slots > 0).collect();
    if keep.iter().any(|k| !k) {
        let mut remap = Vec::new();
        let mut kept = Vec::new();
        for (d, k) in devices.into_iter().zip(&keep) {
            remap.push(kept.len());
            if *k {
                kept.push(d);
            }
        }
        for s in &mut out {
            s.device = remap[s.device];
        }
        devices = kept;
    }
    Ok(Found {
        devices,
        slots: out,
        note: String::new(),
    })
}

fn open_device(
    ordinal: usize,
    ptx: &cudarc::nvrtc::Ptx,
    embed_ptx: Option<&cudarc::nvrtc::Ptx>,
    budget: u64,
) -> Result<CudaDevice, String> {
    let ctx = CudaContext::new(ordinal).map_err(|err| e("creating the context", err))?;
    let name = ctx
        .name()
        .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
    let (free, total) = ctx.mem_get_info().map_err(|err| e("cuMemGetInfo", err))?;
    let cc = ctx.compute_capability().unwrap_or((0, 0));
    let module = ctx
        .load_module(ptx.clone())
        .map_err(|err| e("loading the kernels", err))?;
    let bias_act = module
        .load_function("bias_act")
        .map_err(|err| e("bias_act", err))?;
    let softmax = module
        .load_function("softmax_rows")
        .map_err(|err| e("softmax_rows", err))?;
    let embed = embed_ptx.and_then(|p| {
        let loaded = ctx
            .load_module(p.clone())
            .map_err(|err| e("loading the encoder kernels", err))
            .and_then(|m| embed::EmbedFns::load(&m));
        loaded
            .map_err(|msg| tracing::warn!(ordinal, error = %msg, "encoder kernels unusable; ai.embed runs on the CPU"))
            .ok()
    });
    // Leave a tenth of what is free for the driver, cuBLAS workspaces and other tenants.
    let usable = (free as u64) / 10 * 9;
    Ok(CudaDevice {
        info: DeviceInfo {
            ordinal,
            name,
            total_memory: total as u64,
            budget: budget.min(usable),
            compute_capability: cc,
            slots: 0,
        },
        ctx,
        bias_act,
        softmax,
        weights: Mutex::new(HashMap::new()),
        embed,
        encoders: Mutex::new(HashMap::new()),
    })
}

fn open_slot(dev: &CudaDevice, index: usize) -> Result<CudaSlot, String> {
    let stream = dev
        .ctx
        .new_stream()
        .map_err(|err| e("creating a stream", err))?;
    let blas = CudaBlas::new(stream.clone()).map_err(|err| e("creating the cuBLAS handle", err))?;
    Ok(CudaSlot {
        device: index,
        stream,
        blas,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CudaDevice {
    /// Frees the device copy of a model (the ledger evicted it).
    pub(crate) fn evict(&self, model_id: u64) {
        lock(&self.weights).remove(&model_id);
        lock(&self.encoders).remove(&model_id);
    }

    /// The device copy of `model`, uploaded on `stream` the first time. Two slots asking
    /// at once upload it once (the second waits on the cell).
    fn weights_for(
        &self,
        model: &Model,
        stream: &Arc<CudaStream>,
    ) -> Result<(Arc<DeviceModel>, bool), String> {
        let cell = lock(&self.weights).entry(model.id()).or_default().clone();
        let mut slot = lock(&cell);
        if let Some(m) = &*slot {
            return Ok((m.clone(), false));
        }
        let mut layers = Vec::with_capacity(model.layers().len());
        for l in model.layers() {
            layers.push(DeviceLayer {
                w: stream
                    .clone_htod(l.weight())
                    .map_err(|err| e("uploading weights", err))?,
                b: stream
                    .clone_htod(l.bias())
                    .map_err(|err| e("uploading biases", err))?,
                in_dim: l.in_dim(),
                out_dim: l.out_dim(),
                act: l.activation(),
            });
        }
        // Other slots' streams read these buffers: make them complete before publishing.
        stream
            .synchronize()
            .map_err(|err| e("synchronizing the upload", err))?;
        let m = Arc::new(DeviceModel { layers });
        *slot = Some(m.clone());
        Ok((m, true))
    }
}

impl CudaSlot {
    /// Runs `rows` rows through `model` on this slot's stream. Returns the outputs and
    /// whether the weights had to be uploaded first.
    pub(crate) fn forward(
        &self,
        dev: &CudaDevice,
        model: &Model,
        input: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, bool), String> {
        let too_big = |v: usize| v > i32::MAX as usize;
        if too_big(rows)
            || model
                .layers()
                .iter()
                .any(|l| too_big(l.in_dim()) || too_big(l.out_dim()) || too_big(rows * l.out_dim()))
        {
            return Err("batch too large for 32-bit GEMM dimensions".into());
        }
        let (dm, uploaded) = dev.weights_for(model, &self.stream)?;
        let s = &self.stream;
        let mut x = s
            .clone_htod(input)
            .map_err(|err| e("copying inputs", err))?;
        for l in &dm.layers {
            let mut y = s
                .alloc_zeros::<f32>(rows * l.out_dim)
                .map_err(|err| e("allocating activations", err))?;
            // Row-major y[rows, out] = x[rows, in] · Wᵀ, seen column-major by cuBLAS as
            // yᶜ[out, rows] = op(W)[out, in] · xᶜ[in, rows], where W's buffer read
            // column-major is [in, out], hence the transpose.
            let cfg = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_T,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: l.out_dim as c_int,
                n: rows as c_int,
                k: l.in_dim as c_int,
                alpha: 1.0f32,
                lda: l.in_dim as c_int,
                ldb: l.in_dim as c_int,
                beta: 0.0f32,
                ldc: l.out_dim as c_int,
            };
            // SAFETY: w holds out·in values, x rows·in, y rows·out, exactly what the
            // dimensions and leading dimensions above address; y does not alias x or w.
            unsafe { self.blas.gemm(cfg, &l.w, &x, &mut y) }
                .map_err(|err| e("cuBLAS SGEMM", err))?;
            let n = (rows * l.out_dim) as u32;
            let cols = l.out_dim as u32;
            let act = l.act.kernel_code();
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(BIAS_THREADS), 1, 1),
                block_dim: (BIAS_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = s.launch_builder(&dev.bias_act);
            launch.arg(&mut y).arg(&l.b).arg(&n).arg(&cols).arg(&act);
            // SAFETY: the arguments match `bias_act(float*, const float*, unsigned, unsigned,
            // int)`; y holds n values and b holds cols; threads past n return at once.
            unsafe { launch.launch(cfg) }.map_err(|err| e("bias_act launch", err))?;
            if l.act == Activation::Softmax {
                let rows_u = rows as u32;
                let cfg = LaunchConfig {
                    grid_dim: (rows_u, 1, 1),
                    block_dim: (SOFTMAX_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut launch = s.launch_builder(&dev.softmax);
                launch.arg(&mut y).arg(&rows_u).arg(&cols);
                // SAFETY: matches `softmax_rows(float*, unsigned, unsigned)`; one block of
                // SOFTMAX_THREADS (the kernel's shared array size) per row of y.
                unsafe { launch.launch(cfg) }.map_err(|err| e("softmax launch", err))?;
            }
            x = y;
        }
        let out = s.clone_dtoh(&x).map_err(|err| e("copying outputs", err))?;
        // A copy into pageable memory may still be in flight when the call returns.
        s.synchronize()
            .map_err(|err| e("synchronizing the stream", err))?;
        Ok((out, uploaded))
    }
}

/// Runs `f` and turns a panic inside the driver bindings into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("the CUDA bindings panicked".into()))
}

#[cfg(test)]
mod tests {
    /// NVRTC needs no GPU: wherever libnvrtc can be loaded (a CUDA toolkit, or the pip
    /// wheel `nvidia-cuda-nvrtc` on LD_LIBRARY_PATH) the kernels must compile.
    #[test]
    fn kernels_compile_with_nvrtc_when_present() {
        // SAFETY: dlopens libnvrtc and closes it again; no symbol is called.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: skipped");
            return;
        }
        let ptx = cudarc::nvrtc::compile_ptx(super::KERNELS).expect("kernels compile");
        let src = ptx.to_src();
        assert!(
            src.contains(".entry bias_act") && src.contains(".entry softmax_rows"),
            "{src}"
        );
        let ptx = cudarc::nvrtc::compile_ptx(super::embed::EMBED_KERNELS)
            .expect("encoder kernels compile");
        let src = ptx.to_src();
        for k in [
            "embed_gather",
            "bias_residual_ln",
            "split_heads",
            "merge_heads",
            "masked_softmax",
            "bias_gelu",
            "mean_pool",
        ] {
            assert!(src.contains(&format!(".entry {k}")), "{k} missing: {src}");
        }
    }
}
