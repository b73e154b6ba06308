//! `ai.embed` block: sentence embeddings from an encoder model the operator installed under
//! `--models-dir` (one directory per model, named as jobs address it; e.g.
//! `all-MiniLM-L6-v2/` as `scripts/ensure-model.sh` lays it out), run by the GPU pool
//! (`beamline_gpu::Scheduler`) on a CUDA device or on its CPU fallback. Models are never
//! fetched at run time.
//!
//! Job fields: `model` (required; a model directory's name), `inputs` (required; a
//! non-empty array of strings; the empty string is allowed), `normalize` (optional bool,
//! default `true`: L2-normalised embeddings, as sentence-transformers gives for this
//! model), `device` (`"auto"` (default), `"cuda"`, `"cpu"`, as for `ai.inference`),
//! `priority` (optional number; higher runs first when the pool is busy).
//!
//! Result: `{"model", "dim", "embeddings": [[...], ...], "tokens": N, "truncated":
//! [indices], "device": "cuda:0"|"cpu"}`: one embedding per input in input order;
//! `tokens` the tokens encoded over all inputs (`[CLS]` and `[SEP]` included, after
//! truncation); `truncated` the indices of inputs cut at the model's `max_seq_length`
//! (256 for all-MiniLM-L6-v2). `metadata.device` says the same as `device`.
//!
//! Errors: a model name that is not a plain directory name, or names no directory under
//! `--models-dir` 1001; more than [`MAX_INPUTS`] inputs or an input over
//! [`MAX_INPUT_CHARS`] characters 2004 (before the ack); `device: "cuda"` with no device
//! 2002 (before the ack); a model directory that cannot be loaded 2002; a device failure
//! 2002, retried (`auto` jobs fall back to the CPU instead); a deadline passed in the
//! queue 5002. The result must also fit the NATS `max_payload` (each embedding is about
//! 4 KiB of JSON for 384 dimensions), else 2004 as for any block.

use std::path::PathBuf;
use std::sync::Arc;

use beamline_gpu::{DevicePref, EmbedRequest, Encoder, ErrorKind, InferError, Scheduler};
use beamline_io::cputime;
use serde_json::{json, Value};

use crate::config::Config;
use crate::contract::{ErrorCode, Fields, TaskError};

use super::{Block, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

/// Inputs one job may send.
pub const MAX_INPUTS: usize = 1024;
/// Characters one input may have (the model reads at most 256 tokens; this bounds the
/// tokenizer's work, not what the model sees).
pub const MAX_INPUT_CHARS: usize = 16_384;
/// Longest model name.
const MAX_NAME: usize = 128;

#[derive(Debug)]
pub struct EmbedBlock {
    gpu: Arc<Scheduler>,
    models_dir: PathBuf,
}

/// A decoded `ai.embed` job.
#[derive(Debug)]
pub struct EmbedJob<'a> {
    model: &'a str,
    inputs: Vec<&'a str>,
    normalize: bool,
    device: DevicePref,
    priority: i64,
}

impl<'a> EmbedJob<'a> {
    pub fn model(&self) -> &'a str {
        self.model
    }
    pub fn inputs(&self) -> &[&'a str] {
        &self.inputs
    }
    pub fn normalize(&self) -> bool {
        self.normalize
    }
    pub fn device(&self) -> DevicePref {
        self.device
    }
    pub fn priority(&self) -> i64 {
        self.priority
    }
}

impl EmbedBlock {
    /// `gpu` is the worker's one scheduler (it also keeps the loaded encoders, so every
    /// CPU thread's block shares one copy).
    pub fn new(config: &Config, gpu: Arc<Scheduler>) -> EmbedBlock {
        EmbedBlock {
            gpu,
            models_dir: config.models_dir.clone(),
        }
    }
}

/// A model name is one plain path component: letters, digits, `.`, `_`, `-`, not
/// starting with `.` (so never `..`, never a hidden directory, never a path).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads and validates an `ai.embed` job: what [`Block::decode`] does, without the
/// scheduler. `no_cuda` is `None` when the worker has a CUDA device, else why it has
/// none (then `device: "cuda"` is 2002 before the ack).
pub fn decode_job<'a>(
    job: Fields<'a, 'a>,
    no_cuda: Option<&str>,
) -> Result<EmbedJob<'a>, TaskError> {
    let model = job.req_nonempty("model")?;
    if !valid_name(model) {
        return Err(TaskError::invalid(
            "job.model",
            format!(
                "{model:?} is not a model name (letters, digits, '.', '_', '-'; at most {MAX_NAME})"
            ),
        ));
    }
    let inputs = job
        .opt_str_list("inputs")?
        .ok_or_else(|| TaskError::missing("job.inputs"))?;
    if inputs.is_empty() {
        return Err(TaskError::invalid(
            "job.inputs",
            "must hold at least one string",
        ));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!("{} inputs; at most {MAX_INPUTS} per job", inputs.len()),
        ));
    }
    for (i, s) in inputs.iter().enumerate() {
        // Bytes bound characters from above: count only when the bytes could be over.
        if s.len() > MAX_INPUT_CHARS && s.chars().count() > MAX_INPUT_CHARS {
            return Err(TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "input {i} has {} characters; at most {MAX_INPUT_CHARS} per input",
                    s.chars().count()
                ),
            ));
        }
    }
    let normalize = job.opt_bool("normalize")?.unwrap_or(true);
    let (device, priority) = super::inference::decode_placement(&job, no_cuda)?;
    Ok(EmbedJob {
        model,
        inputs,
        normalize,
        device,
        priority: priority as i64,
    })
}

/// A job made ready to run: the encoder, each input's token ids, the truncated inputs.
struct Prepared {
    encoder: Arc<Encoder>,
    seqs: Vec<Vec<u32>>,
    truncated: Vec<usize>,
}

/// Loads (or finds loaded) the named encoder and tokenizes the inputs. Blocking.
fn prepare(
    gpu: &Scheduler,
    models_dir: &std::path::Path,
    name: &str,
    inputs: &[String],
) -> Result<Prepared, TaskError> {
    let dir = models_dir.join(name);
    if !dir.join("config.json").is_file() {
        return Err(TaskError::invalid(
            "job.model",
            format!(
                "unknown model {name:?}: no model directory of that name under the worker's --models-dir"
            ),
        ));
    }
    let enc = gpu.encoder(&dir, name).map_err(|e| {
        TaskError::new(
            ErrorCode::ResourceUnavailable,
            format!("model {name:?} cannot be loaded: {e}"),
        )
    })?;
    let mut seqs = Vec::with_capacity(inputs.len());
    let mut truncated = Vec::new();
    for (i, text) in inputs.iter().enumerate() {
        let t = enc.tokenize(text).map_err(|e| {
            TaskError::invalid("job.inputs", format!("input {i} cannot be tokenized: {e}"))
        })?;
        if t.truncated {
            truncated.push(i);
        }
        seqs.push(t.ids);
    }
    Ok(Prepared {
        encoder: enc,
        seqs,
        truncated,
    })
}

impl Block for EmbedBlock {
    type Job<'a> = EmbedJob<'a>;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        Ok(EmbedBlock::new(ctx.config, ctx.gpu.clone()))
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        _assignment_id: &str,
    ) -> Result<EmbedJob<'a>, TaskError> {
        decode_job(job, settings.no_cuda.as_deref())
    }

    fn decode<'a>(
        &self,
        job: Fields<'a, 'a>,
        _ctx: &ExecCtx<'_>,
    ) -> Result<EmbedJob<'a>, TaskError> {
        let no_cuda = (!self.gpu.has_cuda()).then(|| self.gpu.cpu_fallback_reason());
        decode_job(job, no_cuda)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        // Loading a model (the first time) and tokenizing are CPU work that must not hold
        // this CPU thread's other assignments up: tokio's blocking pool does them.
        let Prepared {
            encoder: enc,
            seqs,
            truncated,
        } = {
            let (gpu, dir, name) = (
                self.gpu.clone(),
                self.models_dir.clone(),
                job.model.to_owned(),
            );
            let inputs: Vec<String> = job.inputs.iter().map(|s| (*s).to_owned()).collect();
            let (prepared, cpu_ns) = tokio::task::spawn_blocking(move || {
                cputime::measured(|| prepare(&gpu, &dir, &name, &inputs))
            })
            .await
            .map_err(|e| TaskError::internal(format!("loading the model: {e}")))?;
            cputime::charge(cpu_ns); // the blocking thread's work for this assignment
            prepared?
        };
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let req = EmbedRequest {
            encoder: enc.clone(),
            inputs: seqs,
            normalize: job.normalize,
            device: job.device,
            priority: job.priority,
            deadline: Some(ctx.deadline),
        };
        let done = self
            .gpu
            .submit_embed(req)
            .map_err(infer_error)?
            .wait()
            .await
            .map_err(infer_error)?;
        cputime::charge(done.cpu_ns); // its share of the GPU pool's batches
        if done.vectors.iter().any(|v| !v.is_finite()) {
            return Err(TaskError::new(
                ErrorCode::ExecutionFailed,
                "the encoder produced a non-finite value",
            ));
        }
        let embeddings: Vec<Value> = (0..done.n)
            .map(|r| Value::Array(done.row(r).iter().map(|&v| number(v)).collect()))
            .collect();
        let device = done.device.to_string();
        let mut out = Output::new(json!({
            "model": job.model,
            "dim": done.dim,
            "embeddings": embeddings,
            "tokens": tokens,
            "truncated": truncated,
            "device": device,
        }));
        out.device = Some(device);
        Ok(out)
    }
}

/// An f32 as the JSON number with its shortest decimal form.
fn number(v: f32) -> Value {
    let shortest: f64 = v.to_string().parse().unwrap_or(v as f64);
    serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}

/// The scheduler's error → the contract's code (as `ai.inference` maps them).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_one_plain_component() {
        for ok in ["all-MiniLM-L6-v2", "e5_small.v2", "m"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a\0b",
            "naïve",
            &"x".repeat(129),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
