//! `human.approval`: publishes an `ApprovalRequest` on `caf.human.approval.request.v1` and
//! waits for an `ApprovalDecision` from one of the listed approvers until `expires_at`.
//! A denial is a `success` result with `"approved": false`; no decision in time is status
//! `timeout` / 5002. A redelivered approval re-sends its request with the original
//! `expires_at` (kept in the results bucket), and a decision that came while no worker was
//! waiting (kept in the decision stream) answers it at once.

use std::fmt;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use serde_json::json;

use crate::contract::wire::{encode, now_ms, ApprovalRequest};
use crate::contract::{ErrorCode, Fields, TaskError};

use super::{Block, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

/// What `human.approval` needs of the worker: a durable clock per request, a wait for a
/// listed approver's decision, and a way to publish the request. The runtime implements
/// it (`runtime/approvals.rs`). Its futures are boxed so that the port can be a trait
/// object; an approval waits for a person, so a box or two costs it nothing.
pub trait ApprovalPort: fmt::Debug {
    /// Sandbox mode: every request is approved at once and nothing is published.
    fn sandbox(&self) -> bool;

    /// The request's `expires_at`: the one first recorded for (tenant, id), else
    /// `proposed` (recorded now), so that a redelivered approval keeps its clock.
    fn expires_at<'a>(
        &'a self,
        tenant: &'a str,
        assignment_id: &'a str,
        proposed: u64,
    ) -> LocalBoxFuture<'a, u64>;

    /// Registers a wait for a decision from one of `approvers` (one already kept answers
    /// it at once); the wait ends when the returned value is dropped.
    fn wait(
        &self,
        tenant: &str,
        assignment_id: &str,
        approvers: &[&str],
    ) -> Box<dyn PendingApproval>;

    /// Publishes an encoded `ApprovalRequest`; the error is the transport's, boxed (this
    /// module knows no transport).
    fn request(&self, body: Bytes) -> LocalBoxFuture<'_, Result<(), RequestError>>;
}

/// Why an approval request could not be published.
pub type RequestError = Box<dyn std::error::Error + Send + Sync>;

/// A registered wait ([`ApprovalPort::wait`]).
pub trait PendingApproval: fmt::Debug {
    /// The next decision from a listed approver; `None` when none can come any more.
    fn decision(&mut self) -> LocalBoxFuture<'_, Option<Verdict>>;
}

/// An approver's decision, as the block reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub approved: bool,
    pub approver: String,
    pub comment: Option<String>,
    /// When the decision was taken (ms), if the approver said.
    pub decided_at: Option<u64>,
}

/// Longest an approval can have waited for its decision: the decisions a worker keeps
/// for a request not yet (re)registered are kept a week (`runtime::approvals`).
const LONGEST_WAIT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The result's `approved_at`: the approver's own `decided_at` when it is a time the
/// decision can have been taken (not in the future, not older than the longest wait),
/// else when the worker read it. A sender cannot set it to any number it likes.
fn approved_at(decided_at: Option<u64>, now: u64) -> u64 {
    decided_at
        .filter(|&at| at <= now && now - at <= LONGEST_WAIT_MS)
        .unwrap_or(now)
}

#[derive(Debug)]
pub struct HumanBlock {
    port: Rc<dyn ApprovalPort>,
}

#[derive(Debug)]
pub struct HumanJob<'a> {
    prompt: &'a str,
    approvers: Vec<&'a str>,
}

impl<'a> HumanJob<'a> {
    pub fn prompt(&self) -> &'a str {
        self.prompt
    }

    pub fn approvers(&self) -> &[&'a str] {
        &self.approvers
    }
}

impl HumanBlock {
    pub fn new(port: Rc<dyn ApprovalPort>) -> Self {
        HumanBlock { port }
    }
}

/// Reads and validates a `human.approval` job: what [`Block::decode`] does, without the
/// approval port.
pub fn decode_job<'a>(job: Fields<'a, 'a>) -> Result<HumanJob<'a>, TaskError> {
    let prompt = job.req_nonempty("prompt")?;
    let approvers = job
        .opt_str_list("approvers")?
        .ok_or_else(|| TaskError::missing("job.approvers"))?;
    if approvers.is_empty() || approvers.iter().any(|a| a.is_empty()) {
        return Err(TaskError::invalid(
            "job.approvers",
            "must list at least one non-empty approver",
        ));
    }
    Ok(HumanJob { prompt, approvers })
}

impl Block for HumanBlock {
    type Job<'a> = HumanJob<'a>;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        Ok(HumanBlock::new(ctx.approvals.clone()))
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        _settings: &DecodeSettings,
        _assignment_id: &str,
    ) -> Result<HumanJob<'a>, TaskError> {
        decode_job(job)
    }

    fn decode<'a>(
        &self,
        job: Fields<'a, 'a>,
        _ctx: &ExecCtx<'_>,
    ) -> Result<HumanJob<'a>, TaskError> {
        decode_job(job)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        let now = now_ms();
        if self.port.sandbox() {
            return Ok(Output::new(json!({
                "approved": true,
                "approver": "sandbox",
                "comment": "auto-approved in sandbox mode",
                "approved_at": now,
            })));
        }
        let proposed = now + ctx.remaining().as_millis() as u64;
        let expires_at = self
            .port
            .expires_at(ctx.tenant, ctx.assignment_id, proposed)
            .await;
        // Register before publishing, so a fast decision cannot slip past.
        let mut waiter = self
            .port
            .wait(ctx.tenant, ctx.assignment_id, &job.approvers);
        let request = ApprovalRequest {
            assignment_id: ctx.assignment_id,
            tenant_id: ctx.tenant,
            prompt: job.prompt,
            approvers: &job.approvers,
            expires_at,
            trace_id: ctx.trace_id,
        };
        self.port.request(encode(&request)).await.map_err(|e| {
            TaskError::retryable(
                ErrorCode::NetworkError,
                format!("publishing the approval request: {e}"),
            )
        })?;
        let left = std::time::Duration::from_millis(expires_at.saturating_sub(now_ms()));
        let decision = tokio::select! {
            d = waiter.decision() => d,
            _ = tokio::time::sleep(left) => None,
        };
        match decision {
            Some(d) => Ok(Output::new(json!({
                "approved": d.approved,
                "approver": d.approver,
                "comment": d.comment,
                "approved_at": approved_at(d.decided_at, now_ms()),
            }))),
            None => Err(TaskError::new(
                ErrorCode::CancelledByTimeout,
                format!("no approval decision before expires_at {expires_at}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approved_at_is_the_approvers_time_only_when_it_can_be_true() {
        let now = 1_800_000_000_000;
        assert_eq!(approved_at(None, now), now);
        assert_eq!(approved_at(Some(now - 5_000), now), now - 5_000);
        assert_eq!(
            approved_at(Some(now - LONGEST_WAIT_MS), now),
            now - LONGEST_WAIT_MS
        );
        for odd in [now + 1, 123, now - LONGEST_WAIT_MS - 1, u64::MAX] {
            assert_eq!(approved_at(Some(odd), now), now, "{odd}");
        }
    }
}
