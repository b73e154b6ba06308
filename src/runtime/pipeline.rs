//! One assignment, start to end: parse in place → dedupe → validate → ack → execute with
//! retries, deadline and cancel → store → publish result (and DLQ) → settle with the broker.
//! Runs on the CPU thread that took the assignment; nothing here blocks that thread.
//!
//! In code: `handle` parses, then `handle_parsed` runs `claim` (dedupe), `validate`, the
//! tenant quota, and `Blocks::run` with an `Execute` (`Attempts::run`: decode, ack, the
//! attempts); `Reply::finish` then stores, publishes (`Reply::publish`, `dead_letter`) and
//! settles (`Reply::settle`). `Reply` is the answer side of one assignment.

use std::ops::ControlFlow::{self, Break, Continue};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use simd_json::BorrowedValue;
use tracing::Instrument;

use crate::blocks::{Block, BlockKind, Blocks, ExecCtx, Output, RunBlock};
use crate::contract::assignment::{
    cut_unrepresentable_numbers, parse_value, unanswered_ids, Parsed, Unanswerable,
};
use crate::contract::dead_letter::encode_dead_letter;
use crate::contract::wire::{
    dlq_reason, encode_json, now_ms, Ack, DeadLetter, ExecResult, Ids, Original, Outcome,
    ResultBody, WorkerFacts,
};
use crate::contract::{AckStatus, Assignment, ErrorCode, Fields, RetryPolicy, Status, TaskError};
use crate::telemetry::logs::{StepLine, TaskFields};
use crate::telemetry::Intake;
use crate::transport::{Delivery, Kind, Publisher, TransportError};

use super::cancel::Registration;
use super::dedupe::{Begin, Guard, Record};
use super::key::TaskKey;
use super::Shared;

const ACCEPTED: &str = "Assignment accepted for execution";

/// How the block run ended.
enum Finished {
    /// Decoding refused the job: rejected ack.
    Rejected(TaskError),
    /// The block ran: a result, an error, or both (an HTTP error response).
    Ran(Ran),
    /// The worker is stopping and the grace period is over: hand it back to the broker.
    Abandoned,
}

/// What a run produced, to be answered.
struct Ran {
    result: Option<ResultBody>,
    error: Option<TaskError>,
    attempts: u32,
    cost: f64,
    device: Option<String>,
    /// Why the error is dead-lettered; `None` when it is not its own reason (success,
    /// timeout, cancel).
    dlq: Option<&'static str>,
}

impl Finished {
    fn succeeded(output: Output, attempts: u32) -> Finished {
        let Output {
            result,
            cost,
            device,
        } = output;
        Finished::Ran(Ran {
            result: Some(result),
            error: None,
            attempts,
            cost,
            device,
            dlq: None,
        })
    }

    fn failed(error: TaskError, attempts: u32, dlq: Option<&'static str>) -> Finished {
        Finished::Ran(Ran::failed(error, attempts, dlq))
    }

    /// What to answer; `None` when the assignment goes back to the broker unanswered.
    fn into_ran(self) -> Option<Ran> {
        match self {
            Finished::Rejected(error) => {
                let dlq = match error.code {
                    ErrorCode::SystemOverload => dlq_reason::OVERLOADED,
                    ErrorCode::QuotaExceeded => dlq_reason::QUOTA_EXCEEDED,
                    _ => dlq_reason::INVALID_ASSIGNMENT,
                };
                Some(Ran::failed(error, 0, Some(dlq)))
            }
            Finished::Ran(ran) => Some(ran),
            Finished::Abandoned => None,
        }
    }
}

impl Ran {
    /// Ended with `error` after `attempts`; what the block produced anyway (an HTTP error
    /// response) stays in `result`.
    fn failed(mut error: TaskError, attempts: u32, dlq: Option<&'static str>) -> Ran {
        Ran {
            result: error.result.take().map(|b| ResultBody::Value(*b)),
            error: Some(error),
            attempts,
            cost: 0.0,
            device: None,
            dlq,
        }
    }

    fn outcome(&self, latency_ms: u64) -> Outcome<'_> {
        Outcome {
            status: self
                .error
                .as_ref()
                .map_or(Status::Success, |e| e.code.status()),
            result: self.result.as_ref().map(ResultBody::view),
            error: self.error.as_ref(),
            attempts: self.attempts,
            latency_ms,
            cost: self.cost,
            device: self.device.as_deref(),
        }
    }
}

/// The answer side of one assignment: who asked (ids, delivery) and how to answer
/// (ack, result, DLQ entry, settling the delivery).
struct Reply<'a> {
    shared: &'a Arc<Shared>,
    delivery: &'a Delivery,
    ids: Ids<'a>,
    job_type: Option<&'a str>,
    value: &'a BorrowedValue<'a>,
    received: Instant,
    /// `Nats-Msg-Id` base (`<tenant>/<assignment_id>`), for JetStream only: core NATS has
    /// no duplicate window to give it to. A tenant id holds no `/` (it may hold `:`), so
    /// no two (tenant, id) pairs share a base.
    msg_id: Option<String>,
    /// (tenant, assignment id): the key of the dedupe store and of the cancel registry.
    key: TaskKey,
}

impl<'a> Reply<'a> {
    fn new(
        shared: &'a Arc<Shared>,
        delivery: &'a Delivery,
        assignment: &'a Assignment<'a>,
        value: &'a BorrowedValue<'a>,
        received: Instant,
    ) -> Reply<'a> {
        let tenant = tenant_of(assignment);
        Reply {
            shared,
            delivery,
            ids: ids_of(assignment),
            job_type: assignment.job_type,
            value,
            received,
            msg_id: delivery
                .is_jetstream()
                .then(|| format!("{tenant}/{}", assignment.assignment_id)),
            key: TaskKey::new(tenant, assignment.assignment_id),
        }
    }
}

impl Reply<'_> {
    fn worker(&self) -> WorkerFacts<'_> {
        WorkerFacts {
            worker_id: &self.shared.config.worker_id,
            sandbox: self.shared.config.sandbox,
        }
    }

    fn ack_body(&self, status: AckStatus, error: Option<&TaskError>) -> Bytes {
        let id = self.ids.assignment_id.unwrap_or_default();
        let message = error.map_or(ACCEPTED, |e| e.message.as_str());
        encode_json(&Ack::new(&self.ids, id, status, message, error, now_ms()))
    }

    fn original(&self) -> Option<Box<serde_json::value::RawValue>> {
        let text = simd_json::to_string(self.value).ok()?;
        serde_json::value::RawValue::from_string(text).ok()
    }

    fn result_body(&self, outcome: &Outcome<'_>, now: u64) -> Bytes {
        encode_json(&ExecResult::new(
            &self.ids,
            self.job_type,
            outcome,
            self.worker(),
            now,
        ))
    }

    /// A 2004 when a result of `len` bytes is more than the broker takes.
    fn over_max_payload(&self, len: usize) -> Option<TaskError> {
        let limit = body_limit(self.delivery.publisher());
        (limit > 0 && len > limit).then(|| {
            TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "result of {len} bytes exceeds the NATS max_payload ({} bytes)",
                    limit + 1024
                ),
            )
        })
    }

    /// Store → publish → settle, once the run has ended.
    async fn finish(
        &self,
        guard: Option<Guard>,
        ack: Bytes,
        kind: Option<BlockKind>,
        finished: Finished,
    ) {
        let Some(ran) = finished.into_ran() else {
            drop(guard);
            return Box::pin(self.delivery.nak(Duration::from_millis(100))).await;
        };
        let latency_ms = self.received.elapsed().as_millis() as u64;
        let now = now_ms();
        let mut outcome = ran.outcome(latency_ms);
        let mut body = self.result_body(&outcome, now);
        // A result the broker would refuse is replaced by a 2004 that says so.
        let too_big = self.over_max_payload(body.len());
        if let Some(error) = &too_big {
            outcome.status = Status::Error;
            outcome.result = None;
            outcome.error = Some(error);
            body = self.result_body(&outcome, now);
        }
        if let Some(stored) = store(guard, ack, &body).await {
            // Another delivery of this assignment stored its result first: publish that
            // one, so every copy of the result is the same bytes.
            self.count(kind, &outcome);
            return Box::pin(republish(self, &stored)).await;
        }
        let published = self
            .publish(&outcome, body, ran.dlq, now)
            .instrument(self.publish_span())
            .await;
        self.settle(published).await;
        self.count(kind, &outcome);
        self.log(&outcome);
    }

    /// The result, and the DLQ entry when it is an error.
    async fn publish(
        &self,
        outcome: &Outcome<'_>,
        body: Bytes,
        dlq: Option<&'static str>,
        now: u64,
    ) -> Result<(), TransportError> {
        let published = self
            .delivery
            .publisher()
            .publish(Kind::Result, self.msg_id.as_deref(), body)
            .await;
        if outcome.status == Status::Error {
            Box::pin(self.dead_letter(outcome, dlq, now)).await;
        }
        published
    }

    async fn dead_letter(&self, outcome: &Outcome<'_>, dlq: Option<&'static str>, now: u64) {
        // An error with no reason of its own (a result over max_payload, replaced by a 2004
        // after the block ran) is one no retry mends: `non_retryable` (it was an empty
        // reason, and an empty `reason` label on `worker_dlq_published_total`).
        let reason = dlq.unwrap_or(dlq_reason::NON_RETRYABLE);
        let original = self.original();
        let entry = DeadLetter {
            result: ExecResult::new(&self.ids, self.job_type, outcome, self.worker(), now),
            dlq_reason: reason,
            worker_id: &self.shared.config.worker_id,
            failed_at: now,
            original: Some(match &original {
                Some(raw) => Original::Assignment(raw),
                None => Original::Text(""),
            }),
            truncated: None,
        };
        self.shared.metrics.dlq(reason);
        let publisher = self.delivery.publisher();
        let body = encode_dead_letter(entry, body_limit(publisher));
        if let Err(error) = publisher
            .publish(Kind::Dlq, self.msg_id.as_deref(), body)
            .await
        {
            tracing::error!(error = %error, "DLQ publish failed");
        }
    }

    /// Acks the delivery once its result is out; else hands it back for a redelivery.
    async fn settle<E: std::fmt::Display>(&self, published: Result<(), E>) {
        match published {
            Ok(()) => self.delivery.ack().await,
            Err(error) => {
                tracing::error!(error = %error, assignment_id = self.ids.assignment_id, "result publish failed");
                // Stored for dedupe: the redelivery re-publishes it without running again.
                self.delivery.nak(Duration::from_secs(1)).await;
            }
        }
    }

    fn publish_span(&self) -> tracing::Span {
        if !child_spans(self.shared) {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "worker.result.publish",
            tenant_id = self.ids.tenant_id,
            trace_id = self.ids.trace_id,
            run_id = self.ids.run_id,
            block_type = self.job_type,
            worker_id = self.shared.config.worker_id.as_str()
        )
    }

    /// `worker_tasks_total` and `worker_task_latency_ms`, for a known kind.
    fn count(&self, kind: Option<BlockKind>, outcome: &Outcome<'_>) {
        if let Some(kind) = kind {
            let metrics = &self.shared.metrics;
            metrics.task_done(kind, outcome.status, outcome.latency_ms);
        }
    }

    /// The per-step log line.
    fn log(&self, outcome: &Outcome<'_>) {
        let ids = &self.ids;
        StepLine {
            success: outcome.status == Status::Success,
            tenant_id: ids.tenant_id,
            trace_id: ids.trace_id,
            run_id: ids.run_id,
            block_type: self.job_type,
            worker_id: &self.shared.config.worker_id,
            assignment_id: ids.assignment_id,
            status: outcome.status.as_str(),
            latency_ms: outcome.latency_ms,
            attempts: outcome.attempts,
            error: outcome.error.map(|e| (e.code.code(), e.message.as_str())),
            flow_id: ids.flow_id,
            step_id: ids.step_id,
        }
        .log();
    }
}

/// Stores the result for dedupe; returns the record another delivery stored first, if one
/// did.
async fn store(guard: Option<Guard>, ack: Bytes, body: &Bytes) -> Option<Arc<Record>> {
    let guard = guard?;
    let record = Record {
        ack,
        result: body.clone(),
    };
    let stored = guard.complete(record).await;
    (stored.result != *body).then_some(stored)
}

/// Whether the per-step child spans (`worker.block.execute`, `worker.result.publish`) are
/// made: only for a trace exporter. Without one a span is seen only by the log layer, which
/// lifts the correlation ids of an event's enclosing spans, and these two carry the same
/// ids as their parent `worker.assignment.receive`: they would cost two span records (and
/// their field allocations) per task and change no log line (issue 12). Without them the
/// block runs in the receive span itself ([`execute_span`]).
fn child_spans(shared: &Shared) -> bool {
    shared.config.otlp_endpoint.is_some()
}

/// Handles one delivery to the end. Never panics on input.
pub(super) async fn handle(shared: Arc<Shared>, blocks: Rc<Blocks>, mut delivery: Delivery) {
    let received = delivery.received;
    let metrics = &shared.metrics;
    metrics.intake(Intake::Received);
    if delivery.redelivered() {
        metrics.js_redeliveries.inc();
    }
    let payload = std::mem::take(&mut delivery.payload);
    let (mut buf, pristine) = own_buffer(payload);
    // A second parse only after the parser refused a number it cannot represent (boxed:
    // this lives across the task's await, in every task's future).
    let mut numbers: Option<Box<NumberCut>> = None;
    // The error arm falls out of the match so that the buffer's borrow has ended.
    let why = loop {
        let mut why = match parse_value(&mut buf) {
            Ok(mut parsed) => {
                if let Some(refusal) = numbers.take().and_then(|cut| cut.0) {
                    parsed.mended = Some(refusal);
                }
                // Boxed where it is made: the pipeline's state is ~5 KiB, and every move of
                // an unboxed future copies all of it (into `cputime::metered`, into the
                // local task, into tokio's own box for large tasks): 6 % of the worker's
                // CPU went to such copies (`memmove`) in issue 12's profile.
                let task = Box::pin(handle_parsed(
                    &shared, &blocks, &delivery, &parsed, received,
                ));
                return task.await;
            }
            Err(why) => why,
        };
        match numbers.take() {
            // Cut and still not JSON: the DLQ keeps the payload as sent.
            Some(cut) => {
                why.sent = Some(cut.1);
                break why;
            }
            None => match cut_numbers(&mut buf, pristine.as_ref(), &mut why) {
                Some(cut) => numbers = Some(cut),
                None => break why,
            },
        }
    };
    // Boxed too: inline, this rare path's state (~2 KiB) made every task's future that
    // much larger, and the future is copied whole into its task when it is spawned.
    Box::pin(unparseable(&shared, &delivery, why, pristine, buf)).await
}

/// Dedupe → validate → admit → execute (decode, ack, attempts) → finish.
///
/// The rare paths here and below (no id, a rejection, a duplicate, a nak, a DLQ entry)
/// are awaited boxed: a future is as large as its largest state, and every task's is
/// copied whole when it is made, boxed and awaited (`memmove` was 7.8 % of the worker's
/// CPU on the `fs.get` bench); boxed, they cost an allocation only when they happen
/// (issue 12, seventh round: 3704 → 2552 bytes for this one, `-Zprint-type-sizes`).
async fn handle_parsed(
    shared: &Arc<Shared>,
    blocks: &Blocks,
    delivery: &Delivery,
    parsed: &Parsed<'_>,
    received: Instant,
) {
    let (assignment, problem) = match Assignment::read(parsed, &delivery.headers, shared.limits) {
        Ok(read) => read,
        Err(why) => return Box::pin(no_id(shared, delivery, why, &parsed.value)).await,
    };
    let reply = Reply::new(shared, delivery, &assignment, &parsed.value, received);
    let task = run(&reply, blocks, &assignment, problem);
    // The run in its receive span, or with the span's fields alone when nothing needs the
    // span itself (`logs::TaskFields`). One scope for the whole run: each `instrument`
    // costs a span clone, and an enter and exit on every poll and again at its drop.
    match receive_fields(shared, &assignment) {
        Some(fields) => fields.scope(task).await,
        None => task.instrument(receive_span(shared, &assignment)).await,
    }
}

/// Claim → validate → admit → execute → finish, in the receive span or with its fields.
async fn run(
    reply: &Reply<'_>,
    blocks: &Blocks,
    assignment: &Assignment<'_>,
    problem: Option<TaskError>,
) {
    let shared = reply.shared;
    let Some(guard) = claim(reply).await else {
        return; // a duplicate, answered
    };
    let (kind, job) = match validate(assignment, problem) {
        Ok(valid) => valid,
        Err((kind, error)) => return Box::pin(reject(reply, Some(guard), kind, error)).await,
    };
    let _quota = match shared.quotas.take(tenant_of(assignment)) {
        Ok(slot) => slot,
        Err(error) => {
            // Not remembered for dedupe: the Router's later retry of it runs.
            drop(guard);
            return Box::pin(reject(reply, None, Some(kind), error)).await;
        }
    };
    // Stopping: not started by now, so handed back rather than started into a grace
    // period that may end before it does (and then run again elsewhere).
    if shared.stopping.is_cancelled() {
        return Box::pin(hand_back_at_stop(reply, guard, kind)).await;
    }
    let cancel = shared
        .cancels
        .register(reply.key.clone(), &shared.hard_stop);
    let run = Execute::new(reply, assignment, (kind, job), &cancel);
    let _pool = super::PoolBusy::new(&shared.metrics, kind); // worker_pool_in_flight{pool}
    let (ack, finished) = blocks
        .run(kind, run)
        .instrument(execute_span(reply, kind))
        .await;
    let finished = with_cancel_reason(finished, &cancel);
    reply.finish(Some(guard), ack, Some(kind), finished).await;
}

fn tenant_of<'a>(assignment: &'a Assignment<'_>) -> &'a str {
    assignment.tenant_id.as_deref().unwrap_or("")
}

/// The receive span's fields without the span, when no trace exporter wants it and the
/// log layer takes them so (else `None`: the span is made).
fn receive_fields(shared: &Shared, assignment: &Assignment<'_>) -> Option<TaskFields> {
    if child_spans(shared) {
        return None;
    }
    TaskFields::receive([
        ("tenant_id", Some(tenant_of(assignment))),
        ("trace_id", assignment.trace_id.as_deref()),
        ("run_id", assignment.run_id),
        ("block_type", assignment.job_type),
        ("worker_id", Some(shared.config.worker_id.as_str())),
        ("assignment_id", Some(assignment.assignment_id)),
    ])
}

fn receive_span(shared: &Shared, assignment: &Assignment<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "worker.assignment.receive",
        tenant_id = tenant_of(assignment),
        trace_id = assignment.trace_id.as_deref(),
        run_id = assignment.run_id,
        block_type = assignment.job_type,
        worker_id = shared.config.worker_id.as_str(),
        assignment_id = assignment.assignment_id
    );
    crate::telemetry::trace::continue_trace(&span, assignment.trace_id.as_deref());
    span
}

/// The span the block runs in, `worker.block.execute`, a child of the receive span it is
/// called in, when there is a trace exporter; else none (entering it costs a branch): the
/// block runs in the receive span itself, so that what it logs carries the assignment's ids.
fn execute_span(reply: &Reply<'_>, kind: BlockKind) -> tracing::Span {
    if !child_spans(reply.shared) {
        return tracing::Span::none();
    }
    let ids = &reply.ids;
    tracing::info_span!(
        "worker.block.execute",
        tenant_id = ids.tenant_id.unwrap_or(""),
        trace_id = ids.trace_id,
        run_id = ids.run_id,
        block_type = kind.as_str(),
        worker_id = reply.shared.config.worker_id.as_str()
    )
}

/// Claims the assignment for this delivery. A duplicate is answered here, with the result
/// stored for it (waiting for it when it is running here now), and gets `None`.
async fn claim(reply: &Reply<'_>) -> Option<Guard> {
    let begun = reply.shared.dedupe.begin_key(&reply.key).await;
    let mut running = match begun {
        Begin::New(guard) => return Some(guard),
        Begin::Done(record) => {
            Box::pin(republish(reply, &record)).await;
            return None;
        }
        Begin::Running(running) => running,
    };
    // The same assignment is running here now: answer with its result when it lands.
    let record = loop {
        if let Some(record) = running.borrow_and_update().clone() {
            break Some(record);
        }
        if running.changed().await.is_err() {
            break None;
        }
    };
    match record {
        Some(record) => Box::pin(republish(reply, &record)).await,
        None => Box::pin(reply.delivery.nak(Duration::from_millis(200))).await,
    }
    None
}

/// The kind and job to run, or why not (with the kind when it is known).
fn validate<'v>(
    assignment: &Assignment<'v>,
    problem: Option<TaskError>,
) -> Result<(BlockKind, Fields<'v, 'v>), (Option<BlockKind>, TaskError)> {
    if let Some(error) = problem {
        return Err((None, error));
    }
    let job_type = assignment.job_type.unwrap_or_default();
    let Some(kind) = BlockKind::parse(job_type) else {
        let error = TaskError::invalid("job.type", format!("unknown block type {job_type:?}"));
        return Err((None, error));
    };
    match assignment.job {
        Some(job) => Ok((kind, job)),
        None => Err((Some(kind), TaskError::missing("job"))),
    }
}

/// A cancel request's reason, when it is what ended the run.
fn with_cancel_reason(finished: Finished, cancel: &Registration) -> Finished {
    match finished {
        Finished::Ran(Ran {
            error: Some(error),
            attempts,
            ..
        }) if error.code == ErrorCode::CancelledByUser => {
            let reason = cancel
                .reason()
                .unwrap_or_else(|| "cancel requested".to_owned());
            let error = TaskError::new(ErrorCode::CancelledByUser, format!("cancelled: {reason}"));
            Finished::failed(error, attempts, None)
        }
        other => other,
    }
}

/// One assignment's run, handed to whichever block its kind runs on ([`Blocks::run`]).
struct Execute<'r, 'a> {
    attempts: Attempts<'r, 'a>,
    job: Fields<'r, 'r>,
    ctx: ExecCtx<'r>,
}

impl<'r, 'a> Execute<'r, 'a> {
    fn new(
        reply: &'r Reply<'a>,
        assignment: &'r Assignment<'r>,
        (kind, job): (BlockKind, Fields<'r, 'r>),
        cancel: &'r Registration,
    ) -> Self {
        let ctx = ExecCtx {
            tenant: tenant_of(assignment),
            assignment_id: assignment.assignment_id,
            trace_id: assignment.trace_id.as_deref(),
            traceparent: None, // made in `run`, for a block that sends it
            deadline: reply.received + assignment.deadline,
            attempt: 0,
            cancel: &cancel.token,
            redelivered: reply.delivery.redelivered(),
        };
        let attempts = Attempts {
            reply,
            retry: assignment.retry,
            kind,
        };
        Execute { attempts, job, ctx }
    }
}

impl<'r, 'a> RunBlock<'r> for Execute<'r, 'a> {
    type Output = LocalBoxFuture<'r, (Bytes, Finished)>;

    fn run<B: Block>(self, block: &'r B) -> Self::Output {
        // Each block's run is its own allocation, sized for that block: inlined, every
        // assignment's task would carry the largest block's state (8.3 KiB per task instead
        // of 4.9 KiB, `-Zprint-type-sizes`).
        Box::pin(async move {
            let traceparent = B::SENDS_TRACEPARENT
                .then(|| self.ctx.trace_id.and_then(traceparent_for))
                .flatten();
            let ctx = ExecCtx {
                traceparent: traceparent.as_deref(),
                ..self.ctx
            };
            self.attempts.run(block, self.job, ctx).await
        })
    }
}

/// Decode → ack → the attempts, with retries, deadline and cancel.
struct Attempts<'r, 'a> {
    reply: &'r Reply<'a>,
    retry: RetryPolicy,
    kind: BlockKind,
}

impl Attempts<'_, '_> {
    /// Decodes, acks, and runs the attempts. Returns the ack body sent and how it ended.
    async fn run<'j, B: Block>(
        &self,
        block: &B,
        job: Fields<'j, 'j>,
        mut ctx: ExecCtx<'_>,
    ) -> (Bytes, Finished) {
        let reply = self.reply;
        let job = match self.decode(block, job, &ctx) {
            Ok(job) => job,
            Err(error) => {
                let ack = send_rejection(reply, &error).await;
                return (ack, Finished::Rejected(error));
            }
        };
        let ack = reply.ack_body(AckStatus::Accepted, None);
        reply.shared.metrics.intake(Intake::Accepted);
        let progress = keep_alive(reply);
        // The ack is handed to the connection before the block starts, so it precedes the
        // result on the wire; its publish-ack is awaited alongside the work.
        let (_, finished) = futures::join!(publish_ack(reply, ack.clone()), async {
            tokio::select! {
                biased;
                f = self.attempts(block, &job, &mut ctx) => f,
                never = progress => match never {},
            }
        });
        (ack, finished)
    }

    /// [`Block::decode`]. A decoder that panics on some input is a worker bug (4001),
    /// answered like any rejection, not a lost assignment that JetStream would redeliver
    /// forever.
    fn decode<'j, B: Block>(
        &self,
        block: &B,
        job: Fields<'j, 'j>,
        ctx: &ExecCtx<'_>,
    ) -> Result<B::Job<'j>, TaskError> {
        std::panic::catch_unwind(AssertUnwindSafe(|| block.decode(job, ctx))).unwrap_or_else(|_| {
            self.reply.shared.metrics.panics.inc();
            Err(TaskError::internal(format!(
                "the {} block panicked decoding the job",
                self.kind.as_str()
            )))
        })
    }

    async fn attempts<B: Block>(
        &self,
        block: &B,
        job: &B::Job<'_>,
        ctx: &mut ExecCtx<'_>,
    ) -> Finished {
        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        let mut attempts = 0;
        loop {
            if ctx.cancel.is_cancelled() {
                return self.stopped(attempts);
            }
            if tokio::time::Instant::now() >= deadline {
                // Spent queued behind `--max-in-flight`: the block does not start.
                return timed_out(attempts);
            }
            attempts += 1;
            ctx.attempt = attempts;
            let error = match self.attempt(block, job, ctx, deadline).await {
                Break(finished) => return finished,
                Continue(error) => error,
            };
            let delay = match self.retry_delay(error, attempts, deadline) {
                Break(finished) => return finished,
                Continue(delay) => delay,
            };
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return self.stopped(attempts),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt under the cancel and the deadline: how the run ended, or the attempt's
    /// error to weigh for a retry.
    async fn attempt<B: Block>(
        &self,
        block: &B,
        job: &B::Job<'_>,
        ctx: &ExecCtx<'_>,
        deadline: tokio::time::Instant,
    ) -> ControlFlow<Finished, TaskError> {
        let attempts = ctx.attempt;
        let tried = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Break(self.stopped(attempts)),
            _ = tokio::time::sleep_until(deadline) => return Break(timed_out(attempts)),
            tried = AssertUnwindSafe(block.attempt(job, ctx)).catch_unwind() => tried,
        };
        if let Some(error) = super::cputime::over_limit() {
            return Break(Finished::failed(error, attempts, None)); // --max-cpu-time-ms
        }
        if ctx.cancel.is_cancelled() {
            // Whatever the block made of it, a cancel (or the hard stop) decides.
            return Break(self.stopped(attempts));
        }
        match tried {
            Ok(Ok(output)) => Break(Finished::succeeded(output, attempts)),
            Ok(Err(error)) => Continue(error),
            Err(_) => {
                self.reply.shared.metrics.panics.inc();
                let what = format!("the {} block panicked", self.kind.as_str());
                Continue(TaskError::internal(what))
            }
        }
    }

    /// How long to wait before the next attempt after `error`, or how the run ends.
    fn retry_delay(
        &self,
        error: TaskError,
        attempts: u32,
        deadline: tokio::time::Instant,
    ) -> ControlFlow<Finished, Duration> {
        if error.code.status() != Status::Error {
            // Timeout or cancel from inside the block: terminal, never dead-lettered.
            return Break(Finished::failed(error, attempts, None));
        }
        if !error.retryable || attempts >= self.retry.max_attempts {
            let reason = if error.retryable {
                dlq_reason::RETRIES_EXHAUSTED
            } else {
                dlq_reason::NON_RETRYABLE
            };
            let error = with_attempts(error, attempts);
            return Break(Finished::failed(error, attempts, Some(reason)));
        }
        let delay = self
            .retry
            .backoff(attempts + 1)
            .max(error.retry_after.unwrap_or_default());
        if tokio::time::Instant::now() + delay >= deadline {
            // Waiting would run into the deadline: return the last error instead.
            let error = with_attempts(error, attempts);
            return Break(Finished::failed(
                error,
                attempts,
                Some(dlq_reason::RETRIES_EXHAUSTED),
            ));
        }
        self.reply.shared.metrics.retry(error.code);
        tracing::debug!(
            code = error.code.code(),
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Continue(delay)
    }

    /// Cancelled: by a cancel request, or by the worker's hard stop.
    fn stopped(&self, attempts: u32) -> Finished {
        let shared = self.reply.shared;
        if shared.hard_stop.is_cancelled() && self.reply.delivery.is_jetstream() {
            return Finished::Abandoned;
        }
        if shared.hard_stop.is_cancelled() {
            let error = TaskError::retryable(
                ErrorCode::SystemOverload,
                "worker shut down before the assignment finished",
            );
            return Finished::failed(error, attempts, Some(dlq_reason::OVERLOADED));
        }
        let error = TaskError::new(ErrorCode::CancelledByUser, "cancelled");
        Finished::failed(error, attempts, None)
    }
}

fn timed_out(attempts: u32) -> Finished {
    let message = match attempts {
        0 => "job deadline passed before the block started (queued)".to_owned(),
        n => format!("job deadline passed after {n} attempt(s)"),
    };
    let error = TaskError::new(ErrorCode::CancelledByTimeout, message);
    Finished::failed(error, attempts, None)
}

fn with_attempts(mut error: TaskError, attempts: u32) -> TaskError {
    if attempts > 1 && !error.message.contains("attempts") {
        error.message = format!("{} after {attempts} attempts", error.message);
    }
    error
}

/// Sends in-progress acks while a JetStream task runs, so long tasks are not redelivered.
/// Never completes (hence `Infallible`).
///
/// Core mode has nothing to send; JetStream's loop (a timer and a publish, ~0.7 KiB) is
/// boxed so that it does not enlarge every task's future in core mode, where that future
/// is copied whole at each move (issue 12, seventh round).
async fn keep_alive(reply: &Reply<'_>) -> std::convert::Infallible {
    if !reply.delivery.is_jetstream() {
        return futures::future::pending().await;
    }
    Box::pin(in_progress_every(
        reply,
        reply.shared.config.js.ack_wait / 3,
    ))
    .await
}

async fn in_progress_every(reply: &Reply<'_>, every: Duration) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        reply.delivery.in_progress().await;
    }
}

async fn publish_ack(reply: &Reply<'_>, ack: Bytes) {
    let publisher = reply.delivery.publisher();
    if let Err(error) = publisher
        .publish(Kind::Ack, reply.msg_id.as_deref(), ack)
        .await
    {
        tracing::error!(error = %error, "ack publish failed");
    }
}

/// Publishes the rejected ack for `error`; returns its body (kept for dedupe).
async fn send_rejection(reply: &Reply<'_>, error: &TaskError) -> Bytes {
    let ack = reply.ack_body(AckStatus::Rejected, Some(error));
    publish_ack(reply, ack.clone()).await;
    reply.shared.metrics.intake(Intake::Rejected);
    ack
}

/// Rejected before the block ran: the rejected ack, then the error result and DLQ entry.
async fn reject(
    reply: &Reply<'_>,
    guard: Option<Guard>,
    kind: Option<BlockKind>,
    error: TaskError,
) {
    let ack = send_rejection(reply, &error).await;
    reply
        .finish(guard, ack, kind, Finished::Rejected(error))
        .await;
}

/// How long an assignment handed back at a stop waits before JetStream redelivers it.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// An assignment the worker did not start before its stop began: JetStream gets it back
/// (nak'ed, for another instance or this one after a restart); core answers it refused,
/// 4002 retryable, so the Router's retry runs it elsewhere. Not remembered for dedupe.
async fn hand_back_at_stop(reply: &Reply<'_>, guard: Guard, kind: BlockKind) {
    tracing::info!(
        assignment_id = reply.ids.assignment_id,
        tenant_id = reply.ids.tenant_id,
        "not started before the stop: handed back"
    );
    drop(guard); // forgets the running mark: a redelivery runs it
    if reply.delivery.is_jetstream() {
        // Not at once: nats-server 2.9 may still route a redelivery to this lane's pull
        // request (open until it expires or the connection closes), where nothing reads
        // it any more, and it would wait out the ack wait. An idle worker is gone within
        // the second (tests/e2e_stop.rs).
        return reply.delivery.nak(HAND_BACK_DELAY).await;
    }
    let error = TaskError::retryable(
        ErrorCode::SystemOverload,
        "worker stopping: the assignment was not started; retry it",
    );
    reject(reply, None, Some(kind), error).await
}

/// A duplicate: the stored ack and result again, byte for byte.
async fn republish(reply: &Reply<'_>, record: &Record) {
    let publisher = reply.delivery.publisher();
    reply.shared.metrics.intake(Intake::Deduplicated);
    tracing::info!(
        assignment_id = reply.ids.assignment_id,
        tenant_id = reply.ids.tenant_id,
        "duplicate assignment; re-publishing its result"
    );
    let msg_id = reply.msg_id.as_deref();
    let _ = publisher
        .publish(Kind::Ack, msg_id, record.ack.clone())
        .await;
    match publisher
        .publish(Kind::Result, msg_id, record.result.clone())
        .await
    {
        Ok(()) => reply.delivery.ack().await,
        Err(_) => reply.delivery.nak(Duration::from_secs(1)).await,
    }
}

/// The 1001 an assignment gets for a number cut in a member the worker reads (`None`: all
/// were in members it ignores), and the payload as sent.
type NumberCut = (Option<TaskError>, Vec<u8>);

/// After a parse that refused a number: the buffer back as it was sent (parsing unescapes
/// strings in place, and cuts values nested too deep), with every number the parser cannot
/// represent cut ([`cut_unrepresentable_numbers`]). `None` when no such number is there:
/// the refusal stands.
#[cold]
fn cut_numbers(
    buf: &mut BytesMut,
    pristine: Option<&Bytes>,
    why: &mut Unanswerable,
) -> Option<Box<NumberCut>> {
    if !why.bad_number {
        return None;
    }
    let sent: Vec<u8> = match (why.sent.take(), pristine) {
        (Some(sent), _) => sent,
        (None, Some(pristine)) => pristine.to_vec(),
        (None, None) => buf.to_vec(),
    };
    let mut cut = sent.clone();
    let error = cut_unrepresentable_numbers(&mut cut)?;
    buf.clear();
    buf.extend_from_slice(&cut);
    Some(Box::new((error, sent)))
}

/// The message's own buffer to parse in place (copied only when it is shared), and a
/// pristine copy when parsing could change it. simd-json unescapes strings in place; a
/// payload without a backslash is left as it was even when parsing fails.
fn own_buffer(payload: Bytes) -> (BytesMut, Option<Bytes>) {
    let pristine = has_backslash(&payload).then(|| payload.clone());
    match payload.try_into_mut() {
        Ok(buf) => (buf, pristine),
        // Shared with someone else: copy it, and keep the original for the DLQ.
        Err(shared) => (BytesMut::from(&shared[..]), Some(shared)),
    }
}

async fn unparseable(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    mut why: Unanswerable,
    pristine: Option<Bytes>,
    buf: BytesMut,
) {
    let raw = match why.sent.take() {
        Some(sent) => Bytes::from(sent),
        None => pristine.unwrap_or_else(|| buf.freeze()),
    };
    let none = (Ids::default(), None);
    unanswerable(shared, delivery, why, raw_original(&raw), none).await
}

async fn no_id(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    why: Unanswerable,
    value: &BorrowedValue<'_>,
) {
    let text = simd_json::to_string(value).unwrap_or_default();
    let raw = serde_json::value::RawValue::from_string(text).ok();
    let original = match &raw {
        Some(raw) if why.parsed_object => Original::Assignment(raw),
        Some(raw) => Original::Text(raw.get()),
        None => Original::Text(""),
    };
    let said = if why.parsed_object {
        unanswered_ids(value)
    } else {
        (Ids::default(), None)
    };
    unanswerable(shared, delivery, why, original, said).await
}

/// Core mode with every queue full: the assignment is answered 4002 (rejected ack, error
/// result, DLQ) without running. Not remembered for dedupe: the Router may retry it.
pub(super) async fn refuse(shared: Arc<Shared>, mut delivery: Delivery) {
    shared.metrics.intake(Intake::Received);
    shared.metrics.intake(Intake::Overloaded);
    let (mut buf, pristine) = own_buffer(std::mem::take(&mut delivery.payload));
    let why = match parse_value(&mut buf) {
        Ok(parsed) => return refuse_parsed(&shared, &delivery, &parsed).await,
        Err(why) => why,
    };
    // Boxed too: inline, this rare path's state (~2 KiB) made every task's future that
    // much larger, and the future is copied whole into its task when it is spawned.
    Box::pin(unparseable(&shared, &delivery, why, pristine, buf)).await
}

async fn refuse_parsed(shared: &Arc<Shared>, delivery: &Delivery, parsed: &Parsed<'_>) {
    let (assignment, _) = match Assignment::read(parsed, &delivery.headers, shared.limits) {
        Ok(read) => read,
        Err(why) => return no_id(shared, delivery, why, &parsed.value).await,
    };
    let reply = Reply::new(
        shared,
        delivery,
        &assignment,
        &parsed.value,
        delivery.received,
    );
    let error = TaskError::retryable(
        ErrorCode::SystemOverload,
        "worker saturated: every queue is full; retry later",
    );
    let kind = assignment.job_type.and_then(BlockKind::parse);
    reject(&reply, None, kind, error).await
}

fn ids_of<'a>(assignment: &'a Assignment<'a>) -> Ids<'a> {
    Ids {
        assignment_id: Some(assignment.assignment_id),
        request_id: assignment.request_id.as_deref(),
        tenant_id: assignment.tenant_id.as_deref(),
        trace_id: assignment.trace_id.as_deref(),
        run_id: assignment.run_id,
        flow_id: assignment.flow_id,
        step_id: assignment.step_id,
        provider_id: assignment.provider_id,
    }
}

/// The most a result or DLQ entry may take: the connection's `max_payload` less room for
/// the headers (`Nats-Msg-Id`).
fn body_limit(publisher: &Publisher) -> usize {
    publisher.max_payload().saturating_sub(1024)
}

/// Not answerable (not JSON, not an object, no usable id): a DLQ entry, nothing else. It
/// carries the ids and `job.type` an object still gave (`said`).
async fn unanswerable(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    why: Unanswerable,
    original: Original<'_>,
    said: (Ids<'_>, Option<&str>),
) {
    shared.metrics.intake(Intake::Unparseable);
    let now = now_ms();
    let outcome = Outcome {
        status: Status::Error,
        result: None,
        error: Some(&why.error),
        attempts: 0,
        latency_ms: 0,
        cost: 0.0,
        device: None,
    };
    let worker = WorkerFacts {
        worker_id: &shared.config.worker_id,
        sandbox: shared.config.sandbox,
    };
    let entry = DeadLetter {
        result: ExecResult::new(&said.0, said.1, &outcome, worker, now),
        dlq_reason: dlq_reason::UNPARSEABLE,
        worker_id: &shared.config.worker_id,
        failed_at: now,
        original: Some(original),
        truncated: None,
    };
    shared.metrics.dlq(dlq_reason::UNPARSEABLE);
    tracing::warn!(error = %why.error, "unanswerable assignment sent to the DLQ");
    let publisher = delivery.publisher();
    let body = encode_dead_letter(entry, body_limit(publisher));
    match publisher.publish(Kind::Dlq, None, body).await {
        Ok(()) => delivery.ack().await,
        Err(_) => delivery.nak(Duration::from_secs(1)).await,
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

/// `<[u8]>::contains` on a byte is a memchr underneath.
fn has_backslash(bytes: &[u8]) -> bool {
    bytes.contains(&b'\\')
}

/// A W3C traceparent continuing the Router's trace (its id when it is one, else a hash).
fn traceparent_for(trace_id: &str) -> Option<String> {
    let hex32 = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    let trace = if hex32 {
        trace_id.to_ascii_lowercase()
    } else {
        // Not a W3C id: derive a stable one so the upstream still sees one trace per id.
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        trace_id.hash(&mut hasher);
        let high = hasher.finish();
        (high, trace_id.len()).hash(&mut hasher);
        format!("{high:016x}{:016x}", hasher.finish())
    };
    let span: u64 = rand_u64();
    Some(format!("00-{trace}-{span:016x}-01"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos() ^ now_ms() as u128);
    hasher.finish() | 1
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
            assert!(!has_backslash(bad));
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
