//! `human.approval`: publishes an `ApprovalRequest` on `caf.human.approval.request.v1` and
//! waits for an `ApprovalDecision` from one of the listed approvers until `expires_at`.
//! A denial is a `success` result with `"approved": false`; no decision in time is status
//! `timeout` / 5002. A redelivered approval re-sends its request with the original
//! `expires_at` (kept in the results bucket), and a decision that came while no worker was
//! waiting (kept in the decision stream) answers it at once.

use serde_json::json;

use crate::contract::wire::{encode, now_ms, ApprovalRequest};
use crate::contract::{ErrorCode, Fields, TaskError};
use crate::runtime::ApprovalPort;

use super::{Block, ExecCtx, Output};

#[derive(Debug)]
pub struct HumanBlock {
    port: ApprovalPort,
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
    pub fn new(port: ApprovalPort) -> Self {
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

    fn decode<'a>(
        &self,
        job: Fields<'a, 'a>,
        _ctx: &ExecCtx<'_>,
    ) -> Result<HumanJob<'a>, TaskError> {
        decode_job(job)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        let now = now_ms();
        if self.port.sandbox {
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
        let (mut waiter, ignored) =
            self.port
                .approvals
                .wait(ctx.tenant, ctx.assignment_id, &job.approvers);
        for _ in 0..ignored {
            self.port.metrics.approval_decisions_ignored.inc();
        }
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
            d = waiter.rx.recv() => d,
            _ = tokio::time::sleep(left) => None,
        };
        match decision {
            Some(d) => Ok(Output::new(json!({
                "approved": d.approved,
                "approver": d.approver,
                "comment": d.comment,
                "approved_at": d.decided_at.unwrap_or_else(now_ms),
            }))),
            None => Err(TaskError::new(
                ErrorCode::CancelledByTimeout,
                format!("no approval decision before expires_at {expires_at}"),
            )),
        }
    }
}
