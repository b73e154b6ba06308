//! One block run the way a CPU thread runs it, without the worker around it: the job
//! parsed as the worker parses it (simd-json), decoded, one attempt (tests of a single
//! block: tests/inference.rs, sandbox_models.rs, sql_block.rs, sql_tenants.rs).

use std::time::{Duration, Instant};

use beamline_worker::blocks::{Block, ExecCtx, Output};
use beamline_worker::contract::{Fields, TaskError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What an attempt's future runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// A current-thread tokio runtime with IO and time (blocks that use tokio's pools).
    Tokio,
    /// `futures::executor::block_on`: no runtime at all (blocks that need none).
    Plain,
}

/// The context of a first attempt of `assignment_id` for `tenant`, without a trace.
pub fn exec_ctx<'a>(
    tenant: &'a str,
    assignment_id: &'a str,
    deadline: Instant,
    cancel: &'a CancellationToken,
) -> ExecCtx<'a> {
    ExecCtx {
        tenant,
        assignment_id,
        trace_id: None,
        traceparent: None,
        deadline,
        attempt: 1,
        cancel,
        redelivered: false,
    }
}

/// [`run_with`] for a first attempt of assignment `a-1` of `tenant`, due `within` from
/// now, never cancelled.
pub fn run<B: Block>(
    block: &B,
    tenant: &str,
    job: &Value,
    within: Duration,
    on: Executor,
) -> Result<Output, TaskError> {
    let cancel = CancellationToken::new();
    let ctx = exec_ctx(tenant, "a-1", Instant::now() + within, &cancel);
    run_with(block, job, &ctx, on)
}

/// Parses `job` with simd-json, decodes it with `block`, and runs one attempt on `on`.
pub fn run_with<B: Block>(
    block: &B,
    job: &Value,
    ctx: &ExecCtx<'_>,
    on: Executor,
) -> Result<Output, TaskError> {
    let mut bytes = serde_json::to_vec(job).expect("json");
    let value = simd_json::to_borrowed_value(&mut bytes).expect("parse");
    run_parsed(block, &value, ctx, on)
}

/// [`run_with`] on a job already parsed (or built in memory: values JSON cannot carry).
pub fn run_parsed<B: Block>(
    block: &B,
    value: &simd_json::BorrowedValue<'_>,
    ctx: &ExecCtx<'_>,
    on: Executor,
) -> Result<Output, TaskError> {
    let decoded = block.decode(Fields::new(value, "job"), ctx)?;
    match on {
        Executor::Tokio => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(block.attempt(&decoded, ctx)),
        Executor::Plain => futures::executor::block_on(block.attempt(&decoded, ctx)),
    }
}
