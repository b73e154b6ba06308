//! One module per block type, each behind [`Block`]. The table below is the one list of
//! blocks: the `registry!` macro (`registry.rs`) makes [`BlockKind`] (names, aliases, pool,
//! [`BlockKind::ALL`]), the per-thread [`Blocks`], the decoder dispatch [`decode_job`] and
//! the execution dispatch [`Blocks::run`] from it. A new block is one module and one entry
//! here; "How to add a block" in `docs/ARCHITECTURE.md` says what else (fuzz target,
//! docs), and `tests/add_a_block.rs` fails until it is there. This module is a leaf: it imports nothing from the runtime,
//! telemetry, transport or app (`human.rs` defines the [`human::ApprovalPort`] it needs).

#[macro_use]
mod registry;

pub mod embed;
pub mod fs;
pub mod http;
pub mod human;
pub mod inference;
pub mod sql;

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use simd_json::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::contract::wire::ResultBody;
use crate::contract::{Fields, TaskError};
use crate::policy::ssrf::SsrfPolicy;

pub use registry::Pool;

registry! {
    /// `http.request`: outbound HTTP(S) behind the SSRF policy.
    http: http::HttpBlock {
        Http = "http.request" => Cpu,
    },
    /// `fs.put` / `fs.get`: tenant files on the io_uring shards.
    fs: fs::FsBlock {
        FsPut = "fs.put" | "fs.blob_put" => Io,
        FsGet = "fs.get" | "fs.blob_get" => Io,
    },
    /// `sql.query`: read-only SQLite per tenant, on the CPU thread.
    sql: sql::SqlBlock {
        Sql = "sql.query" => Cpu,
    },
    /// `human.approval`: a request out, a decision back.
    human: human::HumanBlock {
        Human = "human.approval" => Cpu,
    },
    /// `ai.inference`: feed-forward models on the GPU pool.
    inference: inference::InferenceBlock {
        Inference = "ai.inference" => Gpu,
    },
    /// `ai.embed`: sentence embeddings on the GPU pool.
    embed: embed::EmbedBlock {
        Embed = "ai.embed" => Gpu,
    },
}

/// What the runtime lends a CPU thread's blocks when it builds them ([`Block::build`]).
#[derive(Debug)]
pub struct BuildContext<'a> {
    pub config: &'a Config,
    /// The io_uring shards (`fs.*`, model files).
    pub io: &'a beamline_io::IoPool,
    /// The FS root in use (a throw-away one in sandbox mode).
    pub fs_root: &'a Path,
    /// The GPU pool, one for the process.
    pub gpu: &'a Arc<beamline_gpu::Scheduler>,
    /// `human.approval`'s way out to the approvers (implemented by the runtime).
    pub approvals: Rc<dyn human::ApprovalPort>,
}

/// What the runtime does with the block a kind runs on, whichever block that is:
/// [`Blocks::run`] picks the block and calls [`RunBlock::run`] with it, so the caller holds
/// no match over kinds.
pub trait RunBlock<'b> {
    type Output;
    fn run<B: Block>(self, block: &'b B) -> Self::Output;
}

/// What one attempt of a block gives back on success.
#[derive(Debug)]
pub struct Output {
    /// The result object (`ExecResult.result`).
    pub result: ResultBody,
    /// What the block reports it cost (0 unless it knows better).
    pub cost: f64,
    /// Where it ran (`metadata.device`), for device-bound blocks.
    pub device: Option<String>,
}

impl Output {
    pub fn new(result: serde_json::Value) -> Self {
        Output::from_body(ResultBody::Value(result))
    }

    /// A result object the block wrote as JSON itself ([`ResultBody::Json`]).
    pub fn written(json: Vec<u8>) -> Self {
        Output::from_body(ResultBody::Json(json))
    }

    fn from_body(result: ResultBody) -> Self {
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

/// Why a block could not be built from the configuration (at start, once per CPU thread):
/// what it was setting up, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct BuildError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl BuildError {
    /// Maps an error to a `BuildError` about `what`.
    pub fn of<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> BuildError {
        let what = what.into();
        move |e| BuildError {
            what,
            source: e.into(),
        }
    }
}

/// One block type. Futures are `!Send` by design: each runs on the CPU thread that took
/// the assignment (thread-per-core), next to its connection pools and caches.
#[allow(async_fn_in_trait)]
pub trait Block: Sized {
    /// The job as this block reads it, borrowing from the assignment's buffer.
    type Job<'a>;

    /// Whether the block calls out and so wants [`ExecCtx::traceparent`] (made per
    /// assignment, with a fresh span id, only for blocks that send it).
    const SENDS_TRACEPARENT: bool = false;

    /// Builds this block for the calling CPU thread (once per thread).
    fn build(ctx: &BuildContext) -> Result<Self, BuildError>;

    /// Reads and validates `job` with only the worker's limits and policy, no block built:
    /// the same checks as [`Block::decode`], for [`decode_job`].
    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        assignment_id: &str,
    ) -> Result<Self::Job<'a>, TaskError>;

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
/// with (no pools, connections, files or network). For [`decode_job`] and
/// [`Block::decode_with`].
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

/// [`decode_job`] on a job given as JSON text, parsed in place as the pipeline parses an
/// assignment: text that is not JSON (or nested too deep) gets the code the parser gives
/// it, and JSON that is not an object, or holds a lone surrogate escape, is 1003, as `job`
/// inside an assignment would be.
pub fn decode_job_json(
    kind: BlockKind,
    json: &mut [u8],
    assignment_id: &str,
    settings: &DecodeSettings,
) -> Result<(), TaskError> {
    let parsed = crate::contract::assignment::parse_value(json).map_err(|u| u.error)?;
    if let Some(mended) = parsed.mended {
        return Err(mended);
    }
    if !parsed.value.is_object() {
        return Err(TaskError::format("job", "an object"));
    }
    decode_job(
        kind,
        Fields::new(&parsed.value, "job"),
        assignment_id,
        settings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_every_name_parses_back() {
        for (i, kind) in BlockKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(BlockKind::parse(kind.as_str()), Some(kind));
            for alias in kind.aliases() {
                assert_eq!(BlockKind::parse(alias), Some(kind), "{alias}");
            }
        }
        assert_eq!(BlockKind::parse("quantum.compute"), None);
        assert_eq!(BlockKind::parse(""), None);
    }

    #[test]
    fn no_name_is_given_twice() {
        let mut names: Vec<&str> = BlockKind::ALL
            .iter()
            .flat_map(|k| std::iter::once(k.as_str()).chain(k.aliases().iter().copied()))
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a job.type names two kinds");
    }

    #[test]
    fn kinds_of_one_block_share_its_pool() {
        for a in BlockKind::ALL {
            for b in BlockKind::ALL.iter().filter(|b| b.block() == a.block()) {
                assert_eq!(a.pool(), b.pool(), "{a:?} and {b:?} run on one block");
            }
        }
    }
}
