//! The sentence encoder on a CUDA device (`ai.embed`): the batch padded to its longest
//! sequence, the attention mask from each sequence's length. Every matrix product is
//! cuBLAS SGEMM (the projections) or strided-batched SGEMM (attention over all sequences
//! and heads at once); the rest are the NVRTC kernels below. No fast-math, so the device
//! agrees with the CPU path to rounding.
//!
//! Device buffers of one batch of `B` sequences padded to `L` tokens, hidden `H`, `nh`
//! heads of `d = H / nh`, FFN width `I` (the scheduler's admission counts them through
//! [`crate::Encoder::activation_bytes`]):
//! `x`, `a`, `tmp` `[B·L, H]`; `qkv` `[B·L, 3H]`; `q`, `k`, `v`, `ctx` `[B, nh, L, d]`;
//! `scores` `[B, nh, L, L]`; `up` `[B·L, I]`; ids and lengths; the output `[B, H]`.

use std::ffi::c_int;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use super::{e, lock, CudaDevice, CudaSlot};
use crate::encoder::Encoder;

/// Compiled once per process by NVRTC, beside the FFN kernels. Row kernels run one block
/// of `ROW_THREADS` threads per row (the shared arrays' size).
pub(super) const EMBED_KERNELS: &str = r#"
#define RT 128

// Sum over the block of one value per thread; every thread gets the total.
__device__ float block_sum(float v, float* red) {
    unsigned int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    float total = red[0];
    __syncthreads();
    return total;
}

// Layer norm of row `row` (h values) in place, two passes for the variance.
__device__ void layer_norm_row(float* row, const float* g, const float* b, unsigned int h, float eps, float* red) {
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) s += row[c];
    float mean = block_sum(s, red) / (float)h;
    float v = 0.0f;
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) {
        float t = row[c] - mean;
        v += t * t;
    }
    float var = block_sum(v, red) / (float)h;
    float inv = rsqrtf(var + eps);
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) row[c] = (row[c] - mean) * inv * g[c] + b[c];
}

// x[t] = LayerNorm(word[ids[t]] + pos[t % L] + type0), one block per token of the padded
// batch (padded positions hold id 0, [PAD]; they are masked later, never pooled).
extern "C" __global__ void embed_gather(float* x, const unsigned int* ids, const float* word,
        const float* pos, const float* type0, const float* g, const float* b,
        unsigned int tokens, unsigned int len, unsigned int h, float eps) {
    __shared__ float red[RT];
    unsigned int t = blockIdx.x;
    if (t >= tokens) return;
    float* row = x + (unsigned long long)t * h;
    const float* w = word + (unsigned long long)ids[t] * h;
    const float* p = pos + (unsigned long long)(t % len) * h;
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) row[c] = w[c] + p[c] + type0[c];
    __syncthreads();
    layer_norm_row(row, g, b, h, eps, red);
}

// y[t] = LayerNorm(y[t] + bias + resid[t]), one block per row.
extern "C" __global__ void bias_residual_ln(float* y, const float* bias, const float* resid,
        const float* g, const float* b, unsigned int rows, unsigned int h, float eps) {
    __shared__ float red[RT];
    unsigned int r = blockIdx.x;
    if (r >= rows) return;
    float* row = y + (unsigned long long)r * h;
    const float* res = resid + (unsigned long long)r * h;
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) row[c] += bias[c] + res[c];
    __syncthreads();
    layer_norm_row(row, g, b, h, eps, red);
}

// qkv [B·L, 3H] (+ bias) -> q, k, v [B, nh, L, d]; one thread per element of q.
extern "C" __global__ void split_heads(const float* qkv, const float* bias, float* q, float* k, float* v,
        unsigned int n, unsigned int len, unsigned int h, unsigned int d) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // i indexes [b, head, l, dd]
    unsigned int dd = i % d;
    unsigned int l = (i / d) % len;
    unsigned int bh = i / (d * len);
    unsigned int nh = h / d;
    unsigned int head = bh % nh;
    unsigned int bb = bh / nh;
    unsigned long long src = ((unsigned long long)bb * len + l) * 3 * h + head * d + dd;
    unsigned int col = head * d + dd;
    q[i] = qkv[src] + bias[col];
    k[i] = qkv[src + h] + bias[h + col];
    v[i] = qkv[src + 2 * h] + bias[2 * h + col];
}

// ctx [B, nh, L, d] -> out [B·L, H]; one thread per element.
extern "C" __global__ void merge_heads(const float* ctx, float* out, unsigned int n,
        unsigned int len, unsigned int h, unsigned int d) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int dd = i % d;
    unsigned int l = (i / d) % len;
    unsigned int bh = i / (d * len);
    unsigned int nh = h / d;
    unsigned int head = bh % nh;
    unsigned int bb = bh / nh;
    out[((unsigned long long)bb * len + l) * h + head * d + dd] = ctx[i];
}

// Softmax of each score row over the sequence's real keys (j < lens[b]); padded keys
// get probability 0. Rows are [B, nh, L] of L columns; one block per row.
extern "C" __global__ void masked_softmax(float* s, const unsigned int* lens, unsigned int rows,
        unsigned int len, unsigned int nh) {
    __shared__ float red[RT];
    unsigned int r = blockIdx.x;
    if (r >= rows) return;
    unsigned int bb = r / (nh * len);
    unsigned int real = lens[bb];
    float* row = s + (unsigned long long)r * len;
    unsigned int t = threadIdx.x;
    float m = __int_as_float(0xff800000);
    for (unsigned int c = t; c < real; c += blockDim.x) m = fmaxf(m, row[c]);
    red[t] = m;
    __syncthreads();
    for (unsigned int st = blockDim.x / 2; st > 0; st >>= 1) {
        if (t < st) red[t] = fmaxf(red[t], red[t + st]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (unsigned int c = t; c < len; c += blockDim.x) {
        float e = c < real ? expf(row[c] - m) : 0.0f;
        row[c] = e;
        sum += e;
    }
    float total = block_sum(sum, red);
    float inv = 1.0f / total;
    for (unsigned int c = t; c < len; c += blockDim.x) row[c] *= inv;
}

// Exact GELU after the bias, in place over [rows, cols].
extern "C" __global__ void bias_gelu(float* y, const float* b, unsigned int n, unsigned int cols) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i] + b[i % cols];
    y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}

// out[b] = mean of x over sequence b's real tokens, L2-normalised when norm[b]; one
// block per sequence.
extern "C" __global__ void mean_pool(const float* x, const unsigned int* lens, const unsigned int* norm,
        float* out, unsigned int seqs, unsigned int len, unsigned int h) {
    __shared__ float red[RT];
    unsigned int bb = blockIdx.x;
    if (bb >= seqs) return;
    unsigned int real = lens[bb];
    float inv_n = 1.0f / (float)(real > 0 ? real : 1);
    float* o = out + (unsigned long long)bb * h;
    float sq = 0.0f;
    for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) {
        float acc = 0.0f;
        for (unsigned int t = 0; t < real; t++) acc += x[((unsigned long long)bb * len + t) * h + c];
        float m = acc * inv_n;
        o[c] = m;
        sq += m * m;
    }
    float total = block_sum(sq, red);
    if (norm[bb]) {
        float inv = 1.0f / fmaxf(sqrtf(total), 1e-12f);
        for (unsigned int c = threadIdx.x; c < h; c += blockDim.x) o[c] *= inv;
    }
}
"#;

const ROW_THREADS: u32 = 128;
const ELEM_THREADS: u32 = 256;

/// The encoder kernels of one device.
#[derive(Debug)]
pub(super) struct EmbedFns {
    gather: CudaFunction,
    bias_residual_ln: CudaFunction,
    split_heads: CudaFunction,
    merge_heads: CudaFunction,
    masked_softmax: CudaFunction,
    bias_gelu: CudaFunction,
    mean_pool: CudaFunction,
}

impl EmbedFns {
    pub(super) fn load(module: &Arc<CudaModule>) -> Result<EmbedFns, String> {
        let f = |name: &str| module.load_function(name).map_err(|err| e(name, err));
        Ok(EmbedFns {
            gather: f("embed_gather")?,
            bias_residual_ln: f("bias_residual_ln")?,
            split_heads: f("split_heads")?,
            merge_heads: f("merge_heads")?,
            masked_softmax: f("masked_softmax")?,
            bias_gelu: f("bias_gelu")?,
            mean_pool: f("mean_pool")?,
        })
    }
}

#[derive(Debug)]
struct DeviceEncLayer {
    qkv_w: CudaSlice<f32>,
    qkv_b: CudaSlice<f32>,
    out_w: CudaSlice<f32>,
    out_b: CudaSlice<f32>,
    ln1_g: CudaSlice<f32>,
    ln1_b: CudaSlice<f32>,
    up_w: CudaSlice<f32>,
    up_b: CudaSlice<f32>,
    down_w: CudaSlice<f32>,
    down_b: CudaSlice<f32>,
    ln2_g: CudaSlice<f32>,
    ln2_b: CudaSlice<f32>,
}

/// One device's copy of an encoder's weights.
#[derive(Debug)]
pub(super) struct DeviceEncoder {
    word: CudaSlice<f32>,
    pos: CudaSlice<f32>,
    type0: CudaSlice<f32>,
    emb_ln_g: CudaSlice<f32>,
    emb_ln_b: CudaSlice<f32>,
    layers: Vec<DeviceEncLayer>,
}

pub(super) type EncoderCell = Arc<Mutex<Option<Arc<DeviceEncoder>>>>;

fn up(stream: &Arc<CudaStream>, v: &[f32]) -> Result<CudaSlice<f32>, String> {
    stream
        .clone_htod(v)
        .map_err(|err| e("uploading encoder weights", err))
}

impl CudaDevice {
    /// The device copy of `enc`, uploaded on `stream` the first time (once, however many
    /// slots ask at once).
    fn encoder_for(
        &self,
        enc: &Encoder,
        stream: &Arc<CudaStream>,
    ) -> Result<(Arc<DeviceEncoder>, bool), String> {
        let cell = lock(&self.encoders).entry(enc.id()).or_default().clone();
        let mut slot = lock(&cell);
        if let Some(m) = &*slot {
            return Ok((m.clone(), false));
        }
        let mut layers = Vec::with_capacity(enc.layers.len());
        for l in &enc.layers {
            layers.push(DeviceEncLayer {
                qkv_w: up(stream, &l.qkv_w)?,
                qkv_b: up(stream, &l.qkv_b)?,
                out_w: up(stream, &l.out_w)?,
                out_b: up(stream, &l.out_b)?,
                ln1_g: up(stream, &l.ln1_g)?,
                ln1_b: up(stream, &l.ln1_b)?,
                up_w: up(stream, &l.up_w)?,
                up_b: up(stream, &l.up_b)?,
                down_w: up(stream, &l.down_w)?,
                down_b: up(stream, &l.down_b)?,
                ln2_g: up(stream, &l.ln2_g)?,
                ln2_b: up(stream, &l.ln2_b)?,
            });
        }
        let m = Arc::new(DeviceEncoder {
            word: up(stream, &enc.word)?,
            pos: up(stream, &enc.pos)?,
            type0: up(stream, &enc.type0)?,
            emb_ln_g: up(stream, &enc.emb_ln_g)?,
            emb_ln_b: up(stream, &enc.emb_ln_b)?,
            layers,
        });
        // Other slots' streams read these buffers: complete the copies before publishing.
        stream
            .synchronize()
            .map_err(|err| e("synchronizing the upload", err))?;
        *slot = Some(m.clone());
        Ok((m, true))
    }
}

fn rows_cfg(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elems_cfg(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(ELEM_THREADS), 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaSlot {
    /// Row-major `y[rows, n] = x[rows, k] · Wᵀ` (no bias) with `W` row-major `[n, k]`:
    /// column-major `yᶜ[n, rows] = Wᶜᵀ · xᶜ` (see the FFN path in `cuda.rs`).
    fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (rows, k, n): (usize, usize, usize),
    ) -> Result<(), String> {
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as c_int,
            n: rows as c_int,
            k: k as c_int,
            alpha: 1.0f32,
            lda: k as c_int,
            ldb: k as c_int,
            beta: 0.0f32,
            ldc: n as c_int,
        };
        if w.len() < n * k || x.len() < rows * k || y.len() < rows * n {
            return Err("encoder GEMM operands smaller than their dimensions".into());
        }
        // SAFETY: checked just above: w holds n·k values, x rows·k, y rows·n, which is
        // what these dimensions and leading dimensions address; y aliases neither.
        unsafe { self.blas.gemm(cfg, w, x, y) }.map_err(|err| e("cuBLAS SGEMM", err))
    }

    /// Embeds `seqs` (each at most the encoder's `max_seq_length` tokens, ids within
    /// the vocabulary: checked on submit) on this slot's stream; row `i` L2-normalised
    /// when `normalize[i]`. Returns `[seqs, hidden]` and whether the weights were
    /// uploaded first.
    pub(crate) fn embed(
        &self,
        dev: &CudaDevice,
        enc: &Encoder,
        seqs: &[&[u32]],
        normalize: &[bool],
    ) -> Result<(Vec<f32>, bool), String> {
        let fns = dev.embed.as_ref().ok_or_else(|| {
            "the encoder kernels did not load on this device (see the start-up log)".to_owned()
        })?;
        let cfg = enc.config();
        let (h, nh, inter, eps) = (cfg.hidden, cfg.heads, cfg.intermediate, cfg.eps);
        let d = h / nh;
        let b = seqs.len();
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if b == 0 || len == 0 {
            return Ok((Vec::new(), false));
        }
        if len > enc.max_seq_length() || normalize.len() != b {
            return Err("encoder batch malformed".into());
        }
        let tokens = b * len;
        // Every size below is passed as a 32-bit count to a kernel or to cuBLAS.
        let biggest = (b * nh * len * len).max(tokens * inter).max(tokens * 3 * h);
        if biggest > i32::MAX as usize {
            return Err("encoder batch too large for 32-bit kernel indices".into());
        }
        let (dm, uploaded) = dev.encoder_for(enc, &self.stream)?;
        let s = &self.stream;
        let alloc = |n: usize| {
            s.alloc_zeros::<f32>(n)
                .map_err(|err| e("allocating encoder activations", err))
        };
        let mut ids = vec![0u32; tokens];
        for (i, q) in seqs.iter().enumerate() {
            ids[i * len..i * len + q.len()].copy_from_slice(q);
        }
        let lens_h: Vec<u32> = seqs.iter().map(|q| q.len() as u32).collect();
        let norm_h: Vec<u32> = normalize.iter().map(|&n| n as u32).collect();
        let ids_d = s
            .clone_htod(&ids)
            .map_err(|err| e("copying token ids", err))?;
        let lens_d = s
            .clone_htod(&lens_h)
            .map_err(|err| e("copying lengths", err))?;
        let norm_d = s
            .clone_htod(&norm_h)
            .map_err(|err| e("copying flags", err))?;

        let mut x = alloc(tokens * h)?;
        let mut qkv = alloc(tokens * 3 * h)?;
        let mut q = alloc(tokens * h)?;
        let mut k = alloc(tokens * h)?;
        let mut v = alloc(tokens * h)?;
        let mut scores = alloc(b * nh * len * len)?;
        let mut ctx = alloc(tokens * h)?;
        let mut merged = alloc(tokens * h)?;
        let mut a = alloc(tokens * h)?;
        let mut upa = alloc(tokens * inter)?;
        let mut out = alloc(b * h)?;

        let (tokens_u, len_u, h_u, d_u) = (tokens as u32, len as u32, h as u32, d as u32);
        {
            let mut l = s.launch_builder(&fns.gather);
            l.arg(&mut x)
                .arg(&ids_d)
                .arg(&dm.word)
                .arg(&dm.pos)
                .arg(&dm.type0)
                .arg(&dm.emb_ln_g)
                .arg(&dm.emb_ln_b)
                .arg(&tokens_u)
                .arg(&len_u)
                .arg(&h_u)
                .arg(&eps);
            // SAFETY: matches embed_gather's signature; x holds tokens·h, ids tokens
            // values < vocab (checked on submit), pos has max_positions ≥ len rows; one
            // block of ROW_THREADS (the kernel's shared array) per token.
            unsafe { l.launch(rows_cfg(tokens_u)) }.map_err(|err| e("embed_gather", err))?;
        }
        let heads_n = (tokens * h) as u32;
        let score_rows = (b * nh * len) as u32;
        let scale = 1.0f32 / (d as f32).sqrt();
        let nh_u = nh as u32;
        let batch = (b * nh) as c_int;
        for l in &dm.layers {
            self.linear(&x, &l.qkv_w, &mut qkv, (tokens, h, 3 * h))?;
            {
                let mut lb = s.launch_builder(&fns.split_heads);
                lb.arg(&qkv)
                    .arg(&l.qkv_b)
                    .arg(&mut q)
                    .arg(&mut k)
                    .arg(&mut v)
                    .arg(&heads_n)
                    .arg(&len_u)
                    .arg(&h_u)
                    .arg(&d_u);
                // SAFETY: matches split_heads; qkv holds tokens·3h, bias 3h, q/k/v
                // tokens·h each = heads_n, the thread count guarded in the kernel.
                unsafe { lb.launch(elems_cfg(heads_n)) }.map_err(|err| e("split_heads", err))?;
            }
            // Per (sequence, head): scoresᶜ[L, L] = Kᶜᵀ · Qᶜ (row-major S = Q Kᵀ), scaled.
            let sc = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_T,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: len as c_int,
                    n: len as c_int,
                    k: d as c_int,
                    alpha: scale,
                    lda: d as c_int,
                    ldb: d as c_int,
                    beta: 0.0f32,
                    ldc: len as c_int,
                },
                batch_size: batch,
                stride_a: (len * d) as i64,
                stride_b: (len * d) as i64,
                stride_c: (len * len) as i64,
            };
            // SAFETY: k and q hold b·nh matrices of len·d at stride len·d; scores holds
            // b·nh of len·len at stride len·len: exactly what the config addresses.
            unsafe { self.blas.gemm_strided_batched(sc, &k, &q, &mut scores) }
                .map_err(|err| e("cuBLAS attention scores", err))?;
            {
                let mut lb = s.launch_builder(&fns.masked_softmax);
                lb.arg(&mut scores)
                    .arg(&lens_d)
                    .arg(&score_rows)
                    .arg(&len_u)
                    .arg(&nh_u);
                // SAFETY: matches masked_softmax; scores holds score_rows rows of len,
                // lens holds b values; one block of ROW_THREADS per row.
                unsafe { lb.launch(rows_cfg(score_rows)) }
                    .map_err(|err| e("masked_softmax", err))?;
            }
            // ctxᶜ[d, L] = Vᶜ[d, L] · Pᶜ[L, L] (row-major ctx = P V).
            let cc = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_N,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: d as c_int,
                    n: len as c_int,
                    k: len as c_int,
                    alpha: 1.0f32,
                    lda: d as c_int,
                    ldb: len as c_int,
                    beta: 0.0f32,
                    ldc: d as c_int,
                },
                batch_size: batch,
                stride_a: (len * d) as i64,
                stride_b: (len * len) as i64,
                stride_c: (len * d) as i64,
            };
            // SAFETY: v and ctx hold b·nh matrices of len·d, scores b·nh of len·len, at
            // the strides given.
            unsafe { self.blas.gemm_strided_batched(cc, &v, &scores, &mut ctx) }
                .map_err(|err| e("cuBLAS attention context", err))?;
            {
                let mut lb = s.launch_builder(&fns.merge_heads);
                lb.arg(&ctx)
                    .arg(&mut merged)
                    .arg(&heads_n)
                    .arg(&len_u)
                    .arg(&h_u)
                    .arg(&d_u);
                // SAFETY: matches merge_heads; ctx and merged hold heads_n values each.
                unsafe { lb.launch(elems_cfg(heads_n)) }.map_err(|err| e("merge_heads", err))?;
            }
            self.linear(&merged, &l.out_w, &mut a, (tokens, h, h))?;
            {
                let mut lb = s.launch_builder(&fns.bias_residual_ln);
                lb.arg(&mut a)
                    .arg(&l.out_b)
                    .arg(&x)
                    .arg(&l.ln1_g)
                    .arg(&l.ln1_b)
                    .arg(&tokens_u)
                    .arg(&h_u)
                    .arg(&eps);
                // SAFETY: matches bias_residual_ln; a and x hold tokens·h, the vectors h.
                unsafe { lb.launch(rows_cfg(tokens_u)) }
                    .map_err(|err| e("bias_residual_ln", err))?;
            }
            self.linear(&a, &l.up_w, &mut upa, (tokens, h, inter))?;
            {
                let n = (tokens * inter) as u32;
                let cols = inter as u32;
                let mut lb = s.launch_builder(&fns.bias_gelu);
                lb.arg(&mut upa).arg(&l.up_b).arg(&n).arg(&cols);
                // SAFETY: matches bias_gelu; upa holds n values, up_b holds cols.
                unsafe { lb.launch(elems_cfg(n)) }.map_err(|err| e("bias_gelu", err))?;
            }
            self.linear(&upa, &l.down_w, &mut x, (tokens, inter, h))?;
            {
                let mut lb = s.launch_builder(&fns.bias_residual_ln);
                lb.arg(&mut x)
                    .arg(&l.down_b)
                    .arg(&a)
                    .arg(&l.ln2_g)
                    .arg(&l.ln2_b)
                    .arg(&tokens_u)
                    .arg(&h_u)
                    .arg(&eps);
                // SAFETY: as above, for x (the FFN output) with residual a.
                unsafe { lb.launch(rows_cfg(tokens_u)) }
                    .map_err(|err| e("bias_residual_ln", err))?;
            }
        }
        {
            let b_u = b as u32;
            let mut lb = s.launch_builder(&fns.mean_pool);
            lb.arg(&x)
                .arg(&lens_d)
                .arg(&norm_d)
                .arg(&mut out)
                .arg(&b_u)
                .arg(&len_u)
                .arg(&h_u);
            // SAFETY: matches mean_pool; x holds b·len·h, lens and norm b, out b·h; one
            // block of ROW_THREADS per sequence.
            unsafe { lb.launch(rows_cfg(b_u)) }.map_err(|err| e("mean_pool", err))?;
        }
        let host = s
            .clone_dtoh(&out)
            .map_err(|err| e("copying embeddings", err))?;
        // A copy into pageable memory may still be in flight when the call returns.
        s.synchronize()
            .map_err(|err| e("synchronizing the stream", err))?;
        Ok((host, uploaded))
    }
}
