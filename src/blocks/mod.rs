//! One module per block type, each behind [`Block`]. [`BlockKind`] is the closed list; the
//! runtime dispatches with an exhaustive `match`, so a new block is one module, one enum
//! arm, and whatever the compiler then points at (metric labels, docs, fixtures).

pub mod embed;
pub mod fs;
pub mod http;
pub mod human;
pub mod inference;
pub mod sql;

use std::time::Instant;

use simd_json::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::contract::{Fields, TaskError};
use crate::policy::ssrf::SsrfPolicy;

/// The block types this worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    Http,
    FsPut,
    FsGet,
    Sql,
    Human,
    Inference,
    Embed,
}

impl BlockKind {
    pub const ALL: [BlockKind; 7] = [
        BlockKind::Http,
        BlockKind::FsPut,
        BlockKind::FsGet,
        BlockKind::Sql,
        BlockKind::Human,
        BlockKind::Inference,
        BlockKind::Embed,
    ];

    /// `job.type` → kind; the original worker's names are accepted too.
    pub fn parse(job_type: &str) -> Option<BlockKind> {
        Some(match job_type {
            "http.request" => BlockKind::Http,
            "fs.put" | "fs.blob_put" => BlockKind::FsPut,
            "fs.get" | "fs.blob_get" => BlockKind::FsGet,
            "sql.query" => BlockKind::Sql,
            "human.approval" => BlockKind::Human,
            "ai.inference" => BlockKind::Inference,
            "ai.embed" => BlockKind::Embed,
            _ => return None,
        })
    }

    /// The canonical name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Http => "http.request",
            BlockKind::FsPut => "fs.put",
            BlockKind::FsGet => "fs.get",
            BlockKind::Sql => "sql.query",
            BlockKind::Human => "human.approval",
            BlockKind::Inference => "ai.inference",
            BlockKind::Embed => "ai.embed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Which pool's queue this kind waits in (`worker_pool_queue_depth{pool}`).
    pub fn pool(self) -> &'static str {
        match self {
            BlockKind::FsPut | BlockKind::FsGet => "io",
            BlockKind::Inference | BlockKind::Embed => "gpu",
            _ => "cpu",
        }
    }
}

/// What one attempt of a block gives back on success.
#[derive(Debug)]
pub struct Output {
    /// The result object (`ExecResult.result`).
    pub result: serde_json::Value,
    /// What the block reports it cost (0 unless it knows better).
    pub cost: f64,
    /// Where it ran (`metadata.device`), for device-bound blocks.
    pub device: Option<String>,
}

impl Output {
    pub fn new(result: serde_json::Value) -> Self {
        Output {
            result,
            cost: 0.0,
            device: None,
        }
    }
}

/// What a block sees of the assignment it runs for. Blocks get everything else (config,
/// pools, publishers) when they are built, once per CPU thread.
#[derive(Debug)]
pub struct ExecCtx<'a> {
    pub tenant: &'a str,
    pub assignment_id: &'a str,
    pub trace_id: Option<&'a str>,
    /// W3C `traceparent` to send upstream (from the assignment's trace).
    pub traceparent: Option<&'a str>,
    /// The whole job's deadline (retries included); an attempt must not run past it.
    pub deadline: Instant,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Cancelled when `caf.exec.cancel.v1` names this assignment or the worker stops.
    pub cancel: &'a CancellationToken,
    /// Whether this is a redelivery (JetStream) of an assignment seen before.
    pub redelivered: bool,
}

impl ExecCtx<'_> {
    /// Time left before the job's deadline.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// One block type. Futures are `!Send` by design: each runs on the CPU thread that took
/// the assignment (thread-per-core), next to its connection pools and caches.
#[allow(async_fn_in_trait)]
pub trait Block {
    /// The job as this block reads it, borrowing from the assignment's buffer.
    type Job<'a>;

    /// Reads and validates `job` (1001/1002/1003 on bad input). Runs before the ack, so a
    /// job that cannot run is rejected, not accepted and then failed.
    fn decode<'a>(
        &self,
        job: Fields<'a, 'a>,
        ctx: &ExecCtx<'_>,
    ) -> Result<Self::Job<'a>, TaskError>;

    /// One attempt. Retryable errors are retried by the runtime with backoff while the
    /// deadline allows; the block itself never sleeps between attempts.
    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError>;
}

/// What decoding a job needs of the worker: its limits and policy, and nothing it runs
/// with (no pools, connections, files or network). For [`decode_job`].
#[derive(Debug, Clone)]
pub struct DecodeSettings {
    /// Judges `http.request` URLs (allow-list, IP literals); DNS is not consulted.
    pub ssrf: SsrfPolicy,
    /// `--fs-max-bytes`: larger `fs.put` content is 2004.
    pub fs_max_bytes: u64,
    /// `--sql-max-rows`: the most a `sql.query` job may ask for.
    pub sql_max_rows: usize,
    /// `None` when the worker has a CUDA device, else why not (`device: "cuda"` → 2002).
    pub no_cuda: Option<String>,
}

impl DecodeSettings {
    /// The configuration's limits and policy, answering as a worker without a CUDA device
    /// (no device is probed).
    pub fn from_config(config: &Config) -> Self {
        DecodeSettings {
            ssrf: SsrfPolicy::from_config(config),
            fs_max_bytes: config.fs_max_bytes,
            sql_max_rows: config.sql_max_rows.max(1),
            no_cuda: Some("no device probed".to_owned()),
        }
    }
}

/// Decodes `job` as block `kind` does before the ack, through the same per-block
/// `decode_job` functions that [`Block::decode`] calls, and drops the decoded job. Builds
/// no block: for fuzz targets and property tests, and anything else that wants to judge a
/// job without running it.
pub fn decode_job(
    kind: BlockKind,
    job: Fields<'_, '_>,
    assignment_id: &str,
    settings: &DecodeSettings,
) -> Result<(), TaskError> {
    match kind {
        BlockKind::Http => http::decode_job(job, &settings.ssrf, assignment_id).map(drop),
        BlockKind::FsPut | BlockKind::FsGet => fs::decode_job(job, settings.fs_max_bytes).map(drop),
        BlockKind::Sql => sql::decode_job(job, settings.sql_max_rows).map(drop),
        BlockKind::Human => human::decode_job(job).map(drop),
        BlockKind::Inference => inference::decode_job(job, settings.no_cuda.as_deref()).map(drop),
        BlockKind::Embed => embed::decode_job(job, settings.no_cuda.as_deref()).map(drop),
    }
}

/// [`decode_job`] on a job given as JSON text, parsed in place as the pipeline parses an
/// assignment: text that is not JSON (or nested too deep) gets the code the parser gives
/// it, and JSON that is not an object is 1003, as `job` inside an assignment would be.
pub fn decode_job_json(
    kind: BlockKind,
    json: &mut [u8],
    assignment_id: &str,
    settings: &DecodeSettings,
) -> Result<(), TaskError> {
    let value = crate::contract::assignment::parse_value(json).map_err(|u| u.error)?;
    if !value.is_object() {
        return Err(TaskError::format("job", "an object"));
    }
    decode_job(kind, Fields::new(&value, "job"), assignment_id, settings)
}
