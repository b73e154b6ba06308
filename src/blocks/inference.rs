//! `ai.inference` block: a feed-forward network from the tenant's files, run by the GPU
//! pool (`beamline_gpu::Scheduler`) on a CUDA device or on its CPU fallback.
//!
//! Job fields: `model` (required; a `.safetensors` path under the tenant's FS root, as for
//! `fs.get`; format in `gpu/README.md`), `inputs` (required; a non-empty array of rows,
//! each an array of numbers of the model's input width), `device` (`"auto"` (default):
//! a GPU when there is one, else the CPU; `"cuda"`: a GPU or error 2002; `"cpu"`),
//! `priority` (optional number; higher runs first when the pool is busy).
//!
//! Result: `{"outputs": [[...], ...], "batch_size": n}`, one output row per input row,
//! where `batch_size` is the number of rows of the device batch the job ran in (its own
//! rows plus those of other jobs for the same model batched with it). `metadata.device`
//! is `"cuda:N"` or `"cpu"`.
//!
//! Errors: missing model file 2002; path leaving the tenant root 2003; malformed file,
//! inconsistent layer shapes, input rows of the wrong width, non-finite inputs 1001;
//! `device: "cuda"` with no device 2002 (before the ack); a model over the memory budget
//! 2004; a device failure 2002, retried (`auto` jobs fall back to the CPU instead).
//!
//! Model files are opened with the same sandbox as `fs.get` (`beamline_io::open_beneath`:
//! `openat2(RESOLVE_BENEATH)`, files with more than one hard link refused), read from that
//! descriptor off the CPU thread (tokio's blocking pool) and parsed once: the scheduler
//! caches them by the opened file's identity (device, inode) and version (mtime, size)
//! under the memory budget, never by path. A path leaving the tenant root (`..`
//! above it, a symlink out, a hard link) is 2003 like `fs.get`; an absolute path is
//! tenant-relative, as for `fs.get`.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use beamline_gpu::{DevicePref, ErrorKind, InferError, Model, ModelKey, Request, Scheduler};
use beamline_io::{cputime, FsError, FsErrorKind, OpenBeneath, OpenedFile};
use serde_json::{json, Value};
use simd_json::prelude::*;

use crate::config::Config;
use crate::contract::{ErrorCode, Fields, TaskError};

use super::{Block, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

/// Rows one job may send.
pub const MAX_ROWS: usize = 65_536;
/// Input (and output) values one job may send (or get back).
pub const MAX_VALUES: usize = 1 << 22;

#[derive(Debug)]
pub struct InferenceBlock {
    gpu: Arc<Scheduler>,
    root: PathBuf,
    max_model_bytes: u64,
}

/// A decoded `ai.inference` job.
#[derive(Debug)]
pub struct InferenceJob<'a> {
    model: &'a str,
    /// Row-major `[rows, width]`, shared with every attempt's request.
    inputs: Arc<[f32]>,
    rows: usize,
    width: usize,
    device: DevicePref,
    priority: i64,
}

impl<'a> InferenceJob<'a> {
    /// The model file, relative to the tenant's FS root.
    pub fn model(&self) -> &'a str {
        self.model
    }

    /// The input rows, row-major: `rows() × width()` values.
    pub fn inputs(&self) -> &[f32] {
        &self.inputs
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn device(&self) -> DevicePref {
        self.device
    }

    pub fn priority(&self) -> i64 {
        self.priority
    }
}

impl InferenceBlock {
    /// `gpu` is the worker's one scheduler (shared by every CPU thread's block);
    /// `fs_root` the FS root in use (tenant files under `<fs_root>/<tenant_id>/`).
    pub fn new(
        config: &Config,
        gpu: Arc<Scheduler>,
        fs_root: PathBuf,
    ) -> Result<InferenceBlock, BuildError> {
        Ok(InferenceBlock {
            gpu,
            root: fs_root,
            max_model_bytes: config.gpu_memory_budget_mb << 20,
        })
    }
}

fn decode_inputs(job: &Fields<'_, '_>) -> Result<(Vec<f32>, usize, usize), TaskError> {
    let rows = job
        .opt_array("inputs")?
        .ok_or_else(|| TaskError::missing("job.inputs"))?;
    if rows.is_empty() {
        return Err(TaskError::invalid(
            "job.inputs",
            "must hold at least one row",
        ));
    }
    if rows.len() > MAX_ROWS {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!("{} input rows; at most {MAX_ROWS} per job", rows.len()),
        ));
    }
    let not_rows = || TaskError::format("job.inputs", "an array of rows, each an array of numbers");
    let width = rows[0].as_array().ok_or_else(not_rows)?.len();
    if width == 0 {
        return Err(TaskError::invalid("job.inputs", "rows must not be empty"));
    }
    if rows.len().saturating_mul(width) > MAX_VALUES {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "{} × {width} input values; at most {MAX_VALUES} per job",
                rows.len()
            ),
        ));
    }
    let mut flat = Vec::with_capacity(rows.len() * width);
    for (r, row) in rows.iter().enumerate() {
        let row = row.as_array().ok_or_else(not_rows)?;
        if row.len() != width {
            return Err(TaskError::invalid(
                "job.inputs",
                format!("row {r} has {} values but row 0 has {width}; all rows must have the same width", row.len()),
            ));
        }
        for (c, v) in row.iter().enumerate() {
            let x = v.cast_f64().ok_or_else(not_rows)? as f32;
            if !x.is_finite() {
                return Err(TaskError::invalid(
                    "job.inputs",
                    format!("row {r}, column {c} is not a finite number (NaN, infinite, or beyond the f32 range)"),
                ));
            }
            flat.push(x);
        }
    }
    Ok((flat, rows.len(), width))
}

/// `job.device` and `job.priority` of a GPU-pool block (`ai.inference`, `ai.embed`):
/// `device: "cuda"` on a worker without CUDA is 2002 before the ack (`no_cuda` says why).
pub(super) fn decode_placement(
    job: &Fields<'_, '_>,
    no_cuda: Option<&str>,
) -> Result<(DevicePref, f64), TaskError> {
    let device = match job.opt_str("device")? {
        None => DevicePref::Auto,
        Some(d) => DevicePref::parse(d).ok_or_else(|| {
            TaskError::invalid(
                "job.device",
                format!("{d:?} is not one of \"auto\", \"cuda\", \"cpu\""),
            )
        })?,
    };
    if let (DevicePref::Cuda, Some(why)) = (device, no_cuda) {
        return Err(TaskError::new(
            ErrorCode::ResourceUnavailable,
            format!("no CUDA device on this worker ({why}); use \"device\": \"auto\" or \"cpu\""),
        ));
    }
    let priority = job.opt_f64("priority")?.unwrap_or(0.0);
    if !priority.is_finite() {
        return Err(TaskError::invalid(
            "job.priority",
            "must be a finite number",
        ));
    }
    Ok((device, priority))
}

/// Reads and validates an `ai.inference` job: what [`Block::decode`] does, without the
/// scheduler. `no_cuda` is `None` when the worker has a CUDA device, else why it has
/// none (then `device: "cuda"` is 2002 before the ack).
pub fn decode_job<'a>(
    job: Fields<'a, 'a>,
    no_cuda: Option<&str>,
) -> Result<InferenceJob<'a>, TaskError> {
    let model = job.req_nonempty("model")?;
    if model.contains('\0') {
        return Err(TaskError::invalid("job.model", "contains a NUL byte"));
    }
    if model.ends_with('/') || model.trim_start_matches('/').is_empty() {
        return Err(TaskError::invalid(
            "job.model",
            "must name a file, not a directory",
        ));
    }
    let (device, priority) = decode_placement(&job, no_cuda)?;
    let (inputs, rows, width) = decode_inputs(&job)?;
    Ok(InferenceJob {
        model,
        inputs: inputs.into(),
        rows,
        width,
        device,
        priority: priority as i64,
    })
}

impl Block for InferenceBlock {
    type Job<'a> = InferenceJob<'a>;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        InferenceBlock::new(ctx.config, ctx.gpu.clone(), ctx.fs_root.to_path_buf())
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        _assignment_id: &str,
    ) -> Result<InferenceJob<'a>, TaskError> {
        decode_job(job, settings.no_cuda.as_deref())
    }

    fn decode<'a>(
        &self,
        job: Fields<'a, 'a>,
        _ctx: &ExecCtx<'_>,
    ) -> Result<InferenceJob<'a>, TaskError> {
        let no_cuda = (!self.gpu.has_cuda()).then(|| self.gpu.cpu_fallback_reason());
        decode_job(job, no_cuda)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        let model = {
            let (gpu, root, rel, max) = (
                self.gpu.clone(),
                self.root.join(ctx.tenant),
                job.model.to_owned(),
                self.max_model_bytes,
            );
            let (loaded, cpu_ns) = tokio::task::spawn_blocking(move || {
                cputime::measured(|| load_model(&gpu, &root, &rel, max))
            })
            .await
            .map_err(|e| TaskError::internal(format!("loading the model: {e}")))?;
            cputime::charge(cpu_ns); // the blocking thread's work for this assignment
            loaded?
        };
        if job.width != model.input_dim() {
            return Err(TaskError::invalid(
                "job.inputs",
                format!(
                    "rows have {} values but model `{}` takes {}",
                    job.width,
                    job.model,
                    model.input_dim()
                ),
            ));
        }
        if job.rows.saturating_mul(model.output_dim()) > MAX_VALUES {
            return Err(TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} × {} output values; at most {MAX_VALUES} per job",
                    job.rows,
                    model.output_dim()
                ),
            ));
        }
        let req = Request {
            model,
            inputs: job.inputs.clone(),
            rows: job.rows,
            device: job.device,
            priority: job.priority,
            deadline: Some(ctx.deadline),
        };
        let done = self
            .gpu
            .submit(req)
            .map_err(infer_error)?
            .await
            .map_err(infer_error)?;
        cputime::charge(done.cpu_ns); // its share of the GPU pool's batch
        let outputs: Vec<Value> = (0..done.rows)
            .map(|r| Value::Array(done.row(r).iter().map(|&v| number(v)).collect()))
            .collect();
        let mut out = Output::new(json!({"outputs": outputs, "batch_size": done.batch_rows}));
        out.device = Some(done.device.to_string());
        Ok(out)
    }
}

/// An f32 as the JSON number with its shortest decimal form (0.1, not 0.10000000149011612).
fn number(v: f32) -> Value {
    let shortest: f64 = v.to_string().parse().unwrap_or(v as f64);
    serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}

/// Opens `rel` beneath the tenant root with the IO crate's sandboxed open (the rule of
/// `fs.get`: `openat2(RESOLVE_BENEATH)`, no file with more than one hard link), then
/// returns the cached model for what was opened or reads and parses it from that open
/// descriptor. Nothing is looked up by path after the open, so a name swapped for a
/// symlink (or a directory on the way swapped) between two steps cannot redirect the
/// read. Blocking.
fn load_model(
    gpu: &Scheduler,
    root: &Path,
    rel: &str,
    max_bytes: u64,
) -> Result<Arc<Model>, TaskError> {
    let OpenedFile { file, metadata } =
        beamline_io::open_beneath(root, rel, OpenBeneath::default()).map_err(model_open_error)?;
    let key = model_key(&metadata);
    if let Some(m) = gpu.cached_model(&key) {
        return Ok(m);
    }
    if metadata.len() > max_bytes {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "model file `{rel}` is {} MiB, over the {} MiB memory budget",
                metadata.len() >> 20,
                max_bytes >> 20
            ),
        ));
    }
    let read_error = |e: std::io::Error| {
        TaskError::new(
            ErrorCode::ExecutionFailed,
            format!("model file `{rel}`: {e}"),
        )
    };
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // One byte over the budget is enough to tell that the file grew past it.
    (&file)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max_bytes {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "model file `{rel}` grew over the {} MiB memory budget",
                max_bytes >> 20
            ),
        ));
    }
    let model = Model::from_safetensors(&bytes)
        .map_err(|e| TaskError::invalid("job.model", format!("`{rel}`: {e}")))?;
    // Cached only when the file did not change while it was read: the key must describe
    // the bytes parsed.
    match file.metadata() {
        Ok(after) if model_key(&after) == key && after.len() == bytes.len() as u64 => {
            Ok(gpu.cache_model(key, model))
        }
        _ => Ok(Arc::new(model)),
    }
}

/// The cache key of an opened model file: which file it is (device, inode) and its
/// version (mtime, size). Never a path: two names of one file share an entry, and one
/// name of two files over time does not.
fn model_key(m: &std::fs::Metadata) -> ModelKey {
    ModelKey {
        // `ModelKey` names the file by a path; here that "path" is the file's identity.
        path: PathBuf::from(format!("inode:{}:{}", m.dev(), m.ino())),
        modified: m.modified().ok(),
        len: m.len(),
    }
}

/// A sandboxed open's error → the contract's code, as `fs.get` answers it.
fn model_open_error(e: FsError) -> TaskError {
    let msg = match &e.source {
        Some(why) => format!("model file `{}`: {} ({why})", e.path, e.kind),
        None => format!("model file `{}`: {}", e.path, e.kind),
    };
    match e.kind {
        FsErrorKind::NotFound => TaskError::new(
            ErrorCode::ResourceUnavailable,
            format!("model file `{}` not found", e.path),
        ),
        FsErrorKind::Escape => TaskError::new(
            ErrorCode::PermissionDenied,
            format!("{msg} (path leaves the tenant root)"),
        ),
        FsErrorKind::PermissionDenied | FsErrorKind::ReadOnlyFs => {
            TaskError::new(ErrorCode::PermissionDenied, msg)
        }
        FsErrorKind::TooLarge | FsErrorKind::NoSpace => {
            TaskError::new(ErrorCode::QuotaExceeded, msg)
        }
        FsErrorKind::IsADirectory | FsErrorKind::InvalidPath => {
            TaskError::invalid("job.model", msg)
        }
        FsErrorKind::Overloaded | FsErrorKind::Shutdown => {
            TaskError::retryable(ErrorCode::SystemOverload, msg)
        }
        _ => TaskError::new(ErrorCode::ExecutionFailed, msg),
    }
}

/// The scheduler's error → the contract's code.
fn infer_error(e: InferError) -> TaskError {
    let InferError { kind, message } = e;
    match kind {
        ErrorKind::InvalidInput => TaskError::new(ErrorCode::InvalidInput, message),
        ErrorKind::NoDevice => TaskError::new(ErrorCode::ResourceUnavailable, message),
        ErrorKind::TooLarge => TaskError::new(ErrorCode::QuotaExceeded, message),
        ErrorKind::Device => TaskError::retryable(ErrorCode::ResourceUnavailable, message),
        ErrorKind::NonFinite => TaskError::new(ErrorCode::ExecutionFailed, message),
        ErrorKind::Deadline => TaskError::new(ErrorCode::CancelledByTimeout, message),
        ErrorKind::Shutdown => TaskError::retryable(ErrorCode::SystemOverload, message),
    }
}
