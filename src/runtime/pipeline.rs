//! One assignment, start to end: parse in place → dedupe → validate → ack → execute with
//! retries, deadline and cancel → store → publish result (and DLQ) → settle with the broker.
//! Runs on the CPU thread that took the assignment; nothing here blocks that thread.

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use simd_json::BorrowedValue;
use tracing::Instrument;

use crate::blocks::{self, Block, BlockKind, ExecCtx, Output};
use crate::contract::assignment::{parse_value, Unanswerable};
use crate::contract::wire::{
    dlq_reason, encode, now_ms, Ack, DeadLetter, ExecResult, Ids, Original, Outcome, WorkerFacts,
};
use crate::contract::{AckStatus, Assignment, ErrorCode, Fields, Status, TaskError};
use crate::telemetry::Intake;
use crate::transport::{Delivery, Kind};

use super::dedupe::{Begin, Guard, Record};
use super::Shared;

/// The blocks of one CPU thread (each holds that thread's pools and caches).
#[derive(Debug)]
pub struct Blocks {
    pub http: blocks::http::HttpBlock,
    pub fs: blocks::fs::FsBlock,
    pub sql: blocks::sql::SqlBlock,
    pub human: blocks::human::HumanBlock,
    pub inference: blocks::inference::InferenceBlock,
    pub embed: blocks::embed::EmbedBlock,
}

impl Blocks {
    pub fn new(shared: &Arc<Shared>) -> Result<Blocks, String> {
        let cfg = &shared.config;
        Ok(Blocks {
            http: blocks::http::HttpBlock::new(cfg)?,
            fs: blocks::fs::FsBlock::new(
                shared.io.clone(),
                shared.fs_root.clone(),
                cfg.fs_max_bytes,
            ),
            sql: blocks::sql::SqlBlock::new(cfg)?,
            human: blocks::human::HumanBlock::new(shared.approval_port()),
            inference: blocks::inference::InferenceBlock::new(
                cfg,
                shared.gpu.clone(),
                shared.fs_root.clone(),
            )?,
            embed: blocks::embed::EmbedBlock::new(cfg, shared.gpu.clone()),
        })
    }
}

const ACCEPTED: &str = "Assignment accepted for execution";

/// How the block run ended.
enum Finished {
    /// Decoding refused the job: rejected ack.
    Rejected(TaskError),
    Done {
        result: Option<serde_json::Value>,
        error: Option<TaskError>,
        attempts: u32,
        cost: f64,
        device: Option<String>,
        /// DLQ reason when the error is terminal.
        reason: &'static str,
    },
    /// The worker is stopping and the grace period is over: hand it back to the broker.
    Abandoned,
}

impl Finished {
    /// Ended with `e` after `attempts`; what the block produced anyway (an HTTP error
    /// response) stays in `result`.
    fn failed(mut e: TaskError, attempts: u32, reason: &'static str) -> Finished {
        Finished::Done {
            result: e.result.take().map(|b| *b),
            error: Some(e),
            attempts,
            cost: 0.0,
            device: None,
            reason,
        }
    }
}

/// The answer side of one assignment: ids, delivery, and what has been published.
struct Task<'a> {
    shared: &'a Arc<Shared>,
    d: &'a Delivery,
    ids: Ids<'a>,
    job_type: Option<&'a str>,
    value: &'a BorrowedValue<'a>,
    received: Instant,
    msg_id: String,
}

impl Task<'_> {
    fn worker(&self) -> WorkerFacts<'_> {
        WorkerFacts {
            worker_id: &self.shared.config.worker_id,
            sandbox: self.shared.config.sandbox,
        }
    }

    fn ack_body(&self, status: AckStatus, error: Option<&TaskError>) -> Bytes {
        let id = self.ids.assignment_id.unwrap_or_default();
        let message = error.map_or(ACCEPTED, |e| e.message.as_str());
        encode(&Ack::new(&self.ids, id, status, message, error, now_ms()))
    }

    fn original(&self) -> Option<Box<serde_json::value::RawValue>> {
        let text = simd_json::to_string(self.value).ok()?;
        serde_json::value::RawValue::from_string(text).ok()
    }

    /// Stores and publishes the result (and DLQ entry), then settles the delivery.
    async fn finish(&self, guard: Option<Guard>, ack: Bytes, kind: Option<BlockKind>, f: Finished) {
        let shared = self.shared;
        let m = &shared.metrics;
        let (result, error, attempts, cost, device, reason) = match f {
            Finished::Rejected(mut e) => {
                let reason = match e.code {
                    ErrorCode::SystemOverload => dlq_reason::OVERLOADED,
                    ErrorCode::QuotaExceeded => dlq_reason::QUOTA_EXCEEDED,
                    _ => dlq_reason::INVALID_ASSIGNMENT,
                };
                (e.result.take().map(|b| *b), Some(e), 0, 0.0, None, reason)
            }
            Finished::Done {
                result,
                error,
                attempts,
                cost,
                device,
                reason,
            } => (result, error, attempts, cost, device, reason),
            Finished::Abandoned => {
                drop(guard);
                self.d.nak(Duration::from_millis(100)).await;
                return;
            }
        };
        let status = error.as_ref().map_or(Status::Success, |e| e.code.status());
        let latency_ms = self.received.elapsed().as_millis() as u64;
        let now = now_ms();
        let mut outcome = Outcome {
            status,
            result: result.as_ref(),
            error: error.as_ref(),
            attempts,
            latency_ms,
            cost,
            device: device.as_deref(),
        };
        let mut body = encode(&ExecResult::new(
            &self.ids,
            self.job_type,
            &outcome,
            self.worker(),
            now,
        ));
        // A result the broker would refuse is replaced by a 2004 that says so.
        let too_big;
        let limit = self.d.publisher().max_payload().saturating_sub(1024);
        if limit > 0 && body.len() > limit {
            too_big = TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "result of {} bytes exceeds the NATS max_payload ({} bytes)",
                    body.len(),
                    limit + 1024
                ),
            );
            outcome.status = Status::Error;
            outcome.result = None;
            outcome.error = Some(&too_big);
            body = encode(&ExecResult::new(
                &self.ids,
                self.job_type,
                &outcome,
                self.worker(),
                now,
            ));
        }
        if let Some(g) = guard {
            let stored = g
                .complete(Record {
                    ack,
                    result: body.clone(),
                })
                .await;
            if stored.result != body {
                // Another delivery of this assignment stored its result first: publish
                // that one, so every copy of the result is the same bytes.
                if let Some(k) = kind {
                    m.task_done(k, outcome.status, latency_ms);
                }
                return republish(self, &stored).await;
            }
        }

        let span = if child_spans(shared) {
            tracing::info_span!(
                "worker.result.publish",
                tenant_id = self.ids.tenant_id,
                trace_id = self.ids.trace_id,
                run_id = self.ids.run_id,
                block_type = self.job_type,
                worker_id = shared.config.worker_id.as_str()
            )
        } else {
            tracing::Span::none()
        };
        let published = async {
            let r = self
                .d
                .publisher()
                .publish(Kind::Result, Some(&self.msg_id), body)
                .await;
            if outcome.status == Status::Error {
                let original = self.original();
                let dl = DeadLetter {
                    result: ExecResult::new(&self.ids, self.job_type, &outcome, self.worker(), now),
                    dlq_reason: reason,
                    worker_id: &shared.config.worker_id,
                    failed_at: now,
                    original: match &original {
                        Some(raw) => Original::Assignment(raw),
                        None => Original::Text(""),
                    },
                };
                m.dlq(reason);
                if let Err(e) = self
                    .d
                    .publisher()
                    .publish(Kind::Dlq, Some(&self.msg_id), encode(&dl))
                    .await
                {
                    tracing::error!(error = %e, "DLQ publish failed");
                }
            }
            r
        }
        .instrument(span)
        .await;
        match published {
            Ok(()) => self.d.ack().await,
            Err(e) => {
                tracing::error!(error = %e, assignment_id = self.ids.assignment_id, "result publish failed");
                // Stored for dedupe: the redelivery re-publishes it without running again.
                self.d.nak(Duration::from_secs(1)).await;
            }
        }
        if let Some(k) = kind {
            m.task_done(k, outcome.status, latency_ms);
        }
        let e = outcome.error;
        let fields_code = e.map(|e| e.code.code());
        if outcome.status == Status::Success {
            tracing::info!(
                assignment_id = self.ids.assignment_id,
                block_type = self.job_type,
                status = outcome.status.as_str(),
                latency_ms,
                attempts,
                tenant_id = self.ids.tenant_id,
                trace_id = self.ids.trace_id,
                run_id = self.ids.run_id,
                flow_id = self.ids.flow_id,
                step_id = self.ids.step_id,
                "Step execution completed"
            );
        } else {
            tracing::warn!(
                assignment_id = self.ids.assignment_id,
                block_type = self.job_type,
                status = outcome.status.as_str(),
                latency_ms,
                attempts,
                error_code = fields_code,
                error_message = e.map(|e| e.message.as_str()),
                tenant_id = self.ids.tenant_id,
                trace_id = self.ids.trace_id,
                run_id = self.ids.run_id,
                flow_id = self.ids.flow_id,
                step_id = self.ids.step_id,
                "Step execution failed"
            );
        }
    }
}

/// Whether the per-step child spans (`worker.block.execute`, `worker.result.publish`) are
/// made: only for a trace exporter. Without one a span is seen only by the log layer, which
/// lifts the correlation ids of an event's enclosing spans, and these two carry the same
/// ids as their parent `worker.assignment.receive`: they would cost two span records (and
/// their field allocations) per task and change no log line (issue 12).
fn child_spans(shared: &Shared) -> bool {
    shared.config.otlp_endpoint.is_some()
}

/// Handles one delivery to the end. Never panics on input.
pub(super) async fn handle(shared: Arc<Shared>, blocks: Rc<Blocks>, mut d: Delivery) {
    let received = Instant::now();
    let m = &shared.metrics;
    m.intake(Intake::Received);
    if d.redelivered() {
        m.js_redeliveries.inc();
    }
    let payload = std::mem::take(&mut d.payload);
    let (mut buf, pristine) = own_buffer(payload);
    // The error arm falls out of the match so that the buffer's borrow has ended.
    let u = match parse_value(&mut buf) {
        Ok(value) => return handle_parsed(&shared, &blocks, &d, &value, received).await,
        Err(u) => u,
    };
    unparseable(&shared, &d, u, pristine, buf).await
}

async fn handle_parsed(
    shared: &Arc<Shared>,
    blocks: &Rc<Blocks>,
    d: &Delivery,
    value: &BorrowedValue<'_>,
    received: Instant,
) {
    let (a, problem) = match Assignment::read(value, &d.headers, shared.limits) {
        Ok(x) => x,
        Err(u) => return no_id(shared, d, u, value).await,
    };
    let tenant = a.tenant_id.as_deref().unwrap_or("");
    let span = tracing::info_span!(
        "worker.assignment.receive",
        tenant_id = tenant,
        trace_id = a.trace_id.as_deref(),
        run_id = a.run_id,
        block_type = a.job_type,
        worker_id = shared.config.worker_id.as_str(),
        assignment_id = a.assignment_id
    );
    crate::telemetry::trace::continue_trace(&span, a.trace_id.as_deref());
    let task = Task {
        shared,
        d,
        ids: ids_of(&a),
        job_type: a.job_type,
        value,
        received,
        msg_id: format!("{tenant}:{}", a.assignment_id),
    };
    let guard = match shared
        .dedupe
        .begin(tenant, a.assignment_id)
        .instrument(span.clone())
        .await
    {
        Begin::New(g) => *g,
        Begin::Done(record) => return republish(&task, &record).await,
        Begin::Running(mut rx) => {
            // The same assignment is running here now: answer with its result when it lands.
            let record = loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    break Some(r);
                }
                if rx.changed().await.is_err() {
                    break None;
                }
            };
            match record {
                Some(r) => return republish(&task, &r).await,
                None => return d.nak(Duration::from_millis(200)).await,
            }
        }
    };

    if let Some(e) = problem {
        return reject(&task, Some(guard), None, e).instrument(span).await;
    }
    let job_type = a.job_type.unwrap_or_default();
    let Some(kind) = BlockKind::parse(job_type) else {
        let e = TaskError::invalid("job.type", format!("unknown block type {job_type:?}"));
        return reject(&task, Some(guard), None, e).instrument(span).await;
    };
    let Some(job) = a.job else {
        return reject(&task, Some(guard), Some(kind), TaskError::missing("job"))
            .instrument(span)
            .await;
    };
    let _quota = match shared.quotas.take(tenant) {
        Ok(slot) => slot,
        Err(e) => {
            // Not remembered for dedupe: the Router's later retry of it runs.
            drop(guard);
            return reject(&task, None, Some(kind), e).instrument(span).await;
        }
    };
    let reg = shared
        .cancels
        .register(tenant, a.assignment_id, &shared.hard_stop);
    let traceparent = a.trace_id.as_deref().and_then(traceparent_for);
    let ctx = ExecCtx {
        tenant,
        assignment_id: a.assignment_id,
        trace_id: a.trace_id.as_deref(),
        traceparent: traceparent.as_deref(),
        deadline: received + a.deadline,
        attempt: 0,
        cancel: &reg.token,
        redelivered: d.redelivered(),
    };
    let run = Run {
        task: &task,
        retry: a.retry,
        kind,
    };
    let exec_span = if child_spans(shared) {
        tracing::info_span!(parent: &span, "worker.block.execute",
            tenant_id = tenant, trace_id = a.trace_id.as_deref(), run_id = a.run_id,
            block_type = kind.as_str(), worker_id = shared.config.worker_id.as_str())
    } else {
        tracing::Span::none()
    };
    // Each block's run is its own allocation, sized for that block: inlined, every
    // assignment's task would carry the largest block's state (8.3 KiB per task instead
    // of 4.9 KiB, `-Zprint-type-sizes`).
    let _pool = super::PoolBusy::new(&shared.metrics, kind); // worker_pool_in_flight{pool}
    let (ack, finished) = async {
        match kind {
            BlockKind::Http => Box::pin(run.go(&blocks.http, job, ctx)).await,
            BlockKind::FsPut | BlockKind::FsGet => Box::pin(run.go(&blocks.fs, job, ctx)).await,
            BlockKind::Sql => Box::pin(run.go(&blocks.sql, job, ctx)).await,
            BlockKind::Human => Box::pin(run.go(&blocks.human, job, ctx)).await,
            BlockKind::Inference => Box::pin(run.go(&blocks.inference, job, ctx)).await,
            BlockKind::Embed => Box::pin(run.go(&blocks.embed, job, ctx)).await,
        }
    }
    .instrument(exec_span)
    .await;
    let finished = match finished {
        Finished::Done {
            error: Some(e),
            attempts,
            ..
        } if e.code == ErrorCode::CancelledByUser => {
            let reason = reg
                .reason()
                .unwrap_or_else(|| "cancel requested".to_owned());
            let e = TaskError::new(ErrorCode::CancelledByUser, format!("cancelled: {reason}"));
            Finished::failed(e, attempts, "")
        }
        f => f,
    };
    task.finish(Some(guard), ack, Some(kind), finished)
        .instrument(span)
        .await;
}

struct Run<'t, 'a> {
    task: &'t Task<'a>,
    retry: crate::contract::RetryPolicy,
    kind: BlockKind,
}

impl Run<'_, '_> {
    /// Decodes, acks, and runs the attempts. Returns the ack body sent and how it ended.
    async fn go<'j, B: Block>(
        &self,
        block: &B,
        job: Fields<'j, 'j>,
        mut ctx: ExecCtx<'_>,
    ) -> (Bytes, Finished) {
        let t = self.task;
        // A decoder that panics on some input is a worker bug (4001), answered like any
        // rejection, not a lost assignment that JetStream would redeliver forever.
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| block.decode(job, &ctx)))
            .unwrap_or_else(|_| {
                t.shared.metrics.panics.inc();
                Err(TaskError::internal(format!(
                    "the {} block panicked decoding the job",
                    self.kind.as_str()
                )))
            });
        let decoded = match decoded {
            Ok(j) => j,
            Err(e) => {
                let ack = t.ack_body(AckStatus::Rejected, Some(&e));
                publish_ack(t, ack.clone()).await;
                t.shared.metrics.intake(Intake::Rejected);
                return (ack, Finished::Rejected(e));
            }
        };
        let ack = t.ack_body(AckStatus::Accepted, None);
        t.shared.metrics.intake(Intake::Accepted);
        let progress = keep_alive(t);
        // The ack is handed to the connection before the block starts, so it precedes the
        // result on the wire; its publish-ack is awaited alongside the work.
        let (_, finished) = futures::join!(publish_ack(t, ack.clone()), async {
            tokio::select! {
                biased;
                f = self.attempts(block, &decoded, &mut ctx) => f,
                never = progress => match never {},
            }
        });
        (ack, finished)
    }

    async fn attempts<B: Block>(
        &self,
        block: &B,
        job: &B::Job<'_>,
        ctx: &mut ExecCtx<'_>,
    ) -> Finished {
        let shared = self.task.shared;
        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        let mut attempts = 0;
        loop {
            if ctx.cancel.is_cancelled() {
                return self.stopped(attempts);
            }
            attempts += 1;
            ctx.attempt = attempts;
            let r = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return self.stopped(attempts),
                _ = tokio::time::sleep_until(deadline) => return timed_out(attempts),
                r = AssertUnwindSafe(block.attempt(job, ctx)).catch_unwind() => r,
            };
            if let Some(e) = super::cputime::over_limit() {
                return Finished::failed(e, attempts, ""); // --max-cpu-time-ms (cputime.rs)
            }
            if ctx.cancel.is_cancelled() {
                // Whatever the block made of it, a cancel (or the hard stop) decides.
                return self.stopped(attempts);
            }
            let e = match r {
                Ok(Ok(Output {
                    result,
                    cost,
                    device,
                })) => {
                    return Finished::Done {
                        result: Some(result),
                        error: None,
                        attempts,
                        cost,
                        device,
                        reason: "",
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    shared.metrics.panics.inc();
                    TaskError::internal(format!("the {} block panicked", self.kind.as_str()))
                }
            };
            if e.code.status() != Status::Error {
                // Timeout or cancel from inside the block: terminal, never dead-lettered.
                return Finished::failed(e, attempts, "");
            }
            if !e.retryable || attempts >= self.retry.max_attempts {
                let reason = if e.retryable {
                    dlq_reason::RETRIES_EXHAUSTED
                } else {
                    dlq_reason::NON_RETRYABLE
                };
                return Finished::failed(with_attempts(e, attempts), attempts, reason);
            }
            let delay = self
                .retry
                .backoff(attempts + 1)
                .max(e.retry_after.unwrap_or_default());
            if tokio::time::Instant::now() + delay >= deadline {
                // Waiting would run into the deadline: return the last error instead.
                return Finished::failed(
                    with_attempts(e, attempts),
                    attempts,
                    dlq_reason::RETRIES_EXHAUSTED,
                );
            }
            shared.metrics.retry(e.code);
            tracing::debug!(
                code = e.code.code(),
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return self.stopped(attempts),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Cancelled: by a cancel request, or by the worker's hard stop.
    fn stopped(&self, attempts: u32) -> Finished {
        if self.task.shared.hard_stop.is_cancelled() && self.task.d.is_jetstream() {
            return Finished::Abandoned;
        }
        let e = if self.task.shared.hard_stop.is_cancelled() {
            TaskError::retryable(
                ErrorCode::SystemOverload,
                "worker shut down before the assignment finished",
            )
        } else {
            TaskError::new(ErrorCode::CancelledByUser, "cancelled")
        };
        let reason = if e.code == ErrorCode::SystemOverload {
            dlq_reason::OVERLOADED
        } else {
            ""
        };
        Finished::failed(e, attempts, reason)
    }
}

fn timed_out(attempts: u32) -> Finished {
    let e = TaskError::new(
        ErrorCode::CancelledByTimeout,
        format!("job deadline passed after {attempts} attempt(s)"),
    );
    Finished::failed(e, attempts, "")
}

fn with_attempts(mut e: TaskError, attempts: u32) -> TaskError {
    if attempts > 1 && !e.message.contains("attempts") {
        e.message = format!("{} after {attempts} attempts", e.message);
    }
    e
}

/// Sends in-progress acks while a JetStream task runs, so long tasks are not redelivered.
/// Never completes (hence `Infallible`).
async fn keep_alive(t: &Task<'_>) -> std::convert::Infallible {
    if !t.d.is_jetstream() {
        return futures::future::pending().await;
    }
    let every = t.shared.config.js.ack_wait / 3;
    loop {
        tokio::time::sleep(every).await;
        t.d.in_progress().await;
    }
}

async fn publish_ack(t: &Task<'_>, ack: Bytes) {
    if let Err(e) =
        t.d.publisher()
            .publish(Kind::Ack, Some(&t.msg_id), ack)
            .await
    {
        tracing::error!(error = %e, "ack publish failed");
    }
}

async fn reject(t: &Task<'_>, guard: Option<Guard>, kind: Option<BlockKind>, e: TaskError) {
    let ack = t.ack_body(AckStatus::Rejected, Some(&e));
    publish_ack(t, ack.clone()).await;
    t.shared.metrics.intake(Intake::Rejected);
    t.finish(guard, ack, kind, Finished::Rejected(e)).await;
}

/// A duplicate: the stored ack and result again, byte for byte.
async fn republish(t: &Task<'_>, r: &Record) {
    let p = t.d.publisher();
    t.shared.metrics.intake(Intake::Deduplicated);
    tracing::info!(
        assignment_id = t.ids.assignment_id,
        tenant_id = t.ids.tenant_id,
        "duplicate assignment; re-publishing its result"
    );
    let _ = p.publish(Kind::Ack, Some(&t.msg_id), r.ack.clone()).await;
    match p
        .publish(Kind::Result, Some(&t.msg_id), r.result.clone())
        .await
    {
        Ok(()) => t.d.ack().await,
        Err(_) => t.d.nak(Duration::from_secs(1)).await,
    }
}

/// The message's own buffer to parse in place (copied only when it is shared), and a
/// pristine copy when parsing could change it. simd-json unescapes strings in place; a
/// payload without a backslash is left as it was even when parsing fails.
fn own_buffer(payload: Bytes) -> (BytesMut, Option<Bytes>) {
    let pristine = memchr_backslash(&payload).then(|| payload.clone());
    match payload.try_into_mut() {
        Ok(buf) => (buf, pristine),
        // Shared with someone else: copy it, and keep the original for the DLQ.
        Err(shared) => (BytesMut::from(&shared[..]), Some(shared)),
    }
}

async fn unparseable(
    shared: &Arc<Shared>,
    d: &Delivery,
    u: Unanswerable,
    pristine: Option<Bytes>,
    buf: BytesMut,
) {
    let raw = pristine.unwrap_or_else(|| buf.freeze());
    unanswerable(shared, d, u, raw_original(&raw)).await
}

async fn no_id(shared: &Arc<Shared>, d: &Delivery, u: Unanswerable, value: &BorrowedValue<'_>) {
    let text = simd_json::to_string(value).unwrap_or_default();
    let raw = serde_json::value::RawValue::from_string(text).ok();
    let original = match &raw {
        Some(r) if u.parsed_object => Original::Assignment(r),
        Some(r) => Original::Text(r.get()),
        None => Original::Text(""),
    };
    unanswerable(shared, d, u, original).await
}

/// Core mode with every queue full: the assignment is answered 4002 (rejected ack, error
/// result, DLQ) without running. Not remembered for dedupe: the Router may retry it.
pub(super) async fn refuse(shared: Arc<Shared>, mut d: Delivery) {
    shared.metrics.intake(Intake::Received);
    shared.metrics.intake(Intake::Overloaded);
    let (mut buf, pristine) = own_buffer(std::mem::take(&mut d.payload));
    let u = match parse_value(&mut buf) {
        Ok(value) => return refuse_parsed(&shared, &d, &value).await,
        Err(u) => u,
    };
    unparseable(&shared, &d, u, pristine, buf).await
}

async fn refuse_parsed(shared: &Arc<Shared>, d: &Delivery, value: &BorrowedValue<'_>) {
    let (a, _) = match Assignment::read(value, &d.headers, shared.limits) {
        Ok(x) => x,
        Err(u) => return no_id(shared, d, u, value).await,
    };
    let tenant = a.tenant_id.as_deref().unwrap_or("");
    let task = Task {
        shared,
        d,
        ids: ids_of(&a),
        job_type: a.job_type,
        value,
        received: Instant::now(),
        msg_id: format!("{tenant}:{}", a.assignment_id),
    };
    let e = TaskError::retryable(
        ErrorCode::SystemOverload,
        "worker saturated: every queue is full; retry later",
    );
    let kind = a.job_type.and_then(BlockKind::parse);
    reject(&task, None, kind, e).await
}

fn ids_of<'a>(a: &'a Assignment<'a>) -> Ids<'a> {
    Ids {
        assignment_id: Some(a.assignment_id),
        request_id: a.request_id.as_deref(),
        tenant_id: a.tenant_id.as_deref(),
        trace_id: a.trace_id.as_deref(),
        run_id: a.run_id,
        flow_id: a.flow_id,
        step_id: a.step_id,
        provider_id: a.provider_id,
    }
}

/// Not answerable (not JSON, not an object, no usable id): a DLQ entry, nothing else.
async fn unanswerable(shared: &Arc<Shared>, d: &Delivery, u: Unanswerable, original: Original<'_>) {
    shared.metrics.intake(Intake::Unparseable);
    let now = now_ms();
    let outcome = Outcome {
        status: Status::Error,
        result: None,
        error: Some(&u.error),
        attempts: 0,
        latency_ms: 0,
        cost: 0.0,
        device: None,
    };
    let worker = WorkerFacts {
        worker_id: &shared.config.worker_id,
        sandbox: shared.config.sandbox,
    };
    let dl = DeadLetter {
        result: ExecResult::new(&Ids::default(), None, &outcome, worker, now),
        dlq_reason: dlq_reason::UNPARSEABLE,
        worker_id: &shared.config.worker_id,
        failed_at: now,
        original,
    };
    shared.metrics.dlq(dlq_reason::UNPARSEABLE);
    tracing::warn!(error = %u.error, "unanswerable assignment sent to the DLQ");
    match d.publisher().publish(Kind::Dlq, None, encode(&dl)).await {
        Ok(()) => d.ack().await,
        Err(_) => d.nak(Duration::from_secs(1)).await,
    }
}

fn raw_original(raw: &Bytes) -> Original<'_> {
    match std::str::from_utf8(raw) {
        Ok(s) => Original::Text(s),
        Err(_) => {
            use base64::Engine as _;
            Original::Base64(base64::engine::general_purpose::STANDARD.encode(raw))
        }
    }
}

fn memchr_backslash(b: &[u8]) -> bool {
    b.contains(&b'\\')
}

/// A W3C traceparent continuing the Router's trace (its id when it is one, else a hash).
fn traceparent_for(trace_id: &str) -> Option<String> {
    let hex32 = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    let trace = if hex32 {
        trace_id.to_ascii_lowercase()
    } else {
        // Not a W3C id: derive a stable one so the upstream still sees one trace per id.
        use std::hash::{Hash, Hasher};
        let mut h1 = std::collections::hash_map::DefaultHasher::new();
        trace_id.hash(&mut h1);
        let a = h1.finish();
        (a, trace_id.len()).hash(&mut h1);
        format!("{a:016x}{:016x}", h1.finish())
    };
    let span: u64 = rand_u64();
    Some(format!("00-{trace}-{span:016x}-01"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ now_ms() as u128);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_parse_leaves_an_escape_free_buffer_unchanged() {
        for bad in [
            &br#"{"a": "b" "c"}"#[..],
            br#"{"assignment_id": "x", "job": {"type": "fs.get",}}"#,
            br#"{"k": [1, 2, "three" "#,
            br#"{"k": tru}"#,
            b"\xff\xfe{}",
        ] {
            assert!(!memchr_backslash(bad));
            let mut buf = bad.to_vec();
            assert!(parse_value(&mut buf).is_err());
            assert_eq!(
                buf,
                bad,
                "buffer changed for {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn traceparent_continues_a_w3c_trace_id() {
        let tp = traceparent_for("4BF92F3577B34DA6A3CE929D0E0E4736").expect("some");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert_eq!(tp.len(), 55);
        let other = traceparent_for("trace-abc").expect("some");
        assert_eq!(other.len(), 55);
        assert_eq!(
            other[3..35],
            traceparent_for("trace-abc").expect("some")[3..35]
        );
    }
}
