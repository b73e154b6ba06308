//! Pending human approvals and the decisions that answer them. The guide's decision names
//! no tenant, so it is matched by assignment_id and checked against each request's
//! approvers (a `tenant_id`, when the approval UI sends one, must match too); two tenants'
//! requests with the same assignment_id wait side by side. A decision that arrives before
//! (or while no worker holds) its request is kept for a while and answers the request when
//! it is (re)registered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use tokio::sync::mpsc;

use crate::blocks::{
    self,
    human::{PendingApproval, Verdict},
};

/// `ApprovalDecision`, as read by [`crate::contract::control::read_decision`].
pub use crate::contract::control::ApprovalDecision as Decision;

const KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
const KEPT_CAP: usize = 100_000;

#[derive(Debug)]
struct Pending {
    tenant: String,
    approvers: Vec<String>,
    tx: mpsc::UnboundedSender<Decision>,
}

impl Pending {
    fn accepts(&self, d: &Decision) -> bool {
        d.tenant_id.as_ref().is_none_or(|t| *t == self.tenant)
            && self.approvers.contains(&d.approver)
    }
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<String, Vec<Pending>>,
    kept: HashMap<String, Vec<(Instant, Decision)>>,
    kept_order: VecDeque<String>,
}

/// What became of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Delivered,
    /// From someone not in the request's approvers: ignored (and counted).
    NotAnApprover,
    /// No request waiting here: kept for a later (re)registration.
    Kept,
}

#[derive(Debug, Clone, Default)]
pub struct Approvals {
    inner: Arc<Mutex<Inner>>,
}

/// A registered wait; unregisters on drop.
#[derive(Debug)]
pub struct Waiter {
    approvals: Approvals,
    id: String,
    pub rx: mpsc::UnboundedReceiver<Decision>,
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a wait; a kept decision from a listed approver is delivered at once.
    /// Returns the waiter and how many kept decisions were ignored (not an approver).
    pub fn wait(&self, tenant: &str, assignment_id: &str, approvers: &[&str]) -> (Waiter, usize) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Pending {
            tenant: tenant.to_owned(),
            approvers: approvers.iter().map(|a| (*a).to_owned()).collect(),
            tx,
        };
        let mut g = self.lock();
        let mut ignored = 0;
        if let Some(kept) = g.kept.get(assignment_id) {
            for (at, d) in kept {
                if at.elapsed() >= KEPT {
                    continue;
                }
                if pending.accepts(d) {
                    let _ = pending.tx.send(d.clone());
                } else {
                    ignored += 1;
                }
            }
        }
        let list = g.pending.entry(assignment_id.to_owned()).or_default();
        // A redelivery of the same request replaces the earlier wait of that tenant.
        list.retain(|p| p.tenant != tenant);
        list.push(pending);
        (
            Waiter {
                approvals: self.clone(),
                id: assignment_id.to_owned(),
                rx,
            },
            ignored,
        )
    }

    /// Routes one decision.
    pub fn decide(&self, d: Decision) -> Routed {
        let mut g = self.lock();
        if let Some(list) = g.pending.get(&d.assignment_id) {
            let mut delivered = false;
            for p in list.iter().filter(|p| p.accepts(&d)) {
                delivered |= p.tx.send(d.clone()).is_ok();
            }
            return if delivered {
                Routed::Delivered
            } else {
                Routed::NotAnApprover
            };
        }
        if g.kept_order.len() >= KEPT_CAP {
            if let Some(old) = g.kept_order.pop_front() {
                g.kept.remove(&old);
            }
        }
        let id = d.assignment_id.clone();
        let list = g.kept.entry(id.clone()).or_default();
        // The same decision replayed from the stream is kept once.
        if !list.iter().any(|(_, k)| *k == d) {
            list.push((Instant::now(), d));
        }
        g.kept_order.push_back(id);
        Routed::Kept
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.values().map(Vec::len).sum()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Closing our receiver marks our entry; a newer wait of the same request keeps its own.
        self.rx.close();
        let mut g = self.approvals.lock();
        if let Some(list) = g.pending.get_mut(&self.id) {
            list.retain(|p| !p.tx.is_closed());
            if list.is_empty() {
                g.pending.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, who: &str, ok: bool) -> Decision {
        Decision {
            assignment_id: id.into(),
            tenant_id: None,
            approver: who.into(),
            approved: ok,
            comment: None,
            decided_at: None,
        }
    }

    #[test]
    fn decisions_reach_listed_approvers_only() {
        let a = Approvals::default();
        let (mut w, _) = a.wait("t", "x", &["u1@example.com"]);
        assert_eq!(a.decide(d("x", "mallory", true)), Routed::NotAnApprover);
        assert!(w.rx.try_recv().is_err());
        assert_eq!(a.decide(d("x", "u1@example.com", false)), Routed::Delivered);
        assert_eq!(w.rx.try_recv().ok(), Some(d("x", "u1@example.com", false)));
    }

    #[test]
    fn an_early_decision_is_kept_for_the_request() {
        let a = Approvals::default();
        assert_eq!(a.decide(d("y", "u1", true)), Routed::Kept);
        assert_eq!(a.decide(d("y", "u1", true)), Routed::Kept);
        let (mut w, ignored) = a.wait("t", "y", &["u1"]);
        assert_eq!(ignored, 0);
        assert_eq!(w.rx.try_recv().ok(), Some(d("y", "u1", true)));
        assert!(w.rx.try_recv().is_err(), "a replayed decision is kept once");
        drop(w);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn two_tenants_with_the_same_assignment_id_wait_side_by_side() {
        let a = Approvals::default();
        let (mut wa, _) = a.wait("tenant-a", "same", &["boss"]);
        let (mut wb, _) = a.wait("tenant-b", "same", &["boss"]);
        assert_eq!(a.pending(), 2);
        let mut only_b = d("same", "boss", false);
        only_b.tenant_id = Some("tenant-b".into());
        assert_eq!(a.decide(only_b.clone()), Routed::Delivered);
        assert!(
            wa.rx.try_recv().is_err(),
            "a decision for tenant-b does not answer tenant-a"
        );
        assert_eq!(wb.rx.try_recv().ok(), Some(only_b));
        drop(wb);
        assert_eq!(a.pending(), 1);
        assert_eq!(a.decide(d("same", "boss", true)), Routed::Delivered);
        assert_eq!(wa.rx.try_recv().ok().map(|x| x.approved), Some(true));
    }
}

/// What the `human.approval` block needs of the worker: the registry, a way to publish the
/// request, and (JetStream mode) a durable note of each request's `expires_at`, so that a
/// redelivered approval keeps its original clock.
#[derive(Debug, Clone)]
pub struct ApprovalPort {
    pub approvals: Approvals,
    pub publisher: crate::transport::Publisher,
    pub kv: Option<crate::transport::Bucket>,
    pub metrics: Arc<crate::telemetry::Metrics>,
    pub sandbox: bool,
}

impl ApprovalPort {
    /// The request's `expires_at`: the one first recorded for (tenant, id), else `proposed`
    /// (recorded now).
    pub async fn expires_at(&self, tenant: &str, id: &str, proposed: u64) -> u64 {
        let Some(kv) = &self.kv else { return proposed };
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = format!("a.{}.{}", e.encode(tenant), e.encode(id));
        match kv.create(&key, proposed.to_string().into()).await {
            Ok(_) => proposed,
            Err(_) => match kv.get(&key).await {
                Ok(Some(v)) => std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(proposed),
                _ => proposed,
            },
        }
    }

    pub async fn request(
        &self,
        body: bytes::Bytes,
    ) -> Result<(), crate::transport::TransportError> {
        let subject = self.publisher.subjects().approval_request.clone();
        self.publisher.publish_core(&subject, body).await
    }
}

/// The runtime's side of `human.approval`: what [`blocks::human::ApprovalPort`] asks for,
/// on this registry, the publisher and the clock bucket.
impl blocks::human::ApprovalPort for ApprovalPort {
    fn sandbox(&self) -> bool {
        self.sandbox
    }

    fn expires_at<'a>(
        &'a self,
        tenant: &'a str,
        assignment_id: &'a str,
        proposed: u64,
    ) -> LocalBoxFuture<'a, u64> {
        Box::pin(ApprovalPort::expires_at(
            self,
            tenant,
            assignment_id,
            proposed,
        ))
    }

    fn wait(
        &self,
        tenant: &str,
        assignment_id: &str,
        approvers: &[&str],
    ) -> Box<dyn PendingApproval> {
        let (waiter, ignored) = self.approvals.wait(tenant, assignment_id, approvers);
        for _ in 0..ignored {
            self.metrics.approval_decisions_ignored.inc();
        }
        Box::new(waiter)
    }

    fn request(
        &self,
        body: bytes::Bytes,
    ) -> LocalBoxFuture<'_, Result<(), crate::blocks::human::RequestError>> {
        Box::pin(async move { Ok(ApprovalPort::request(self, body).await?) })
    }
}

impl PendingApproval for Waiter {
    fn decision(&mut self) -> LocalBoxFuture<'_, Option<Verdict>> {
        Box::pin(async {
            let d = self.rx.recv().await?;
            Some(Verdict {
                approved: d.approved,
                approver: d.approver,
                comment: d.comment,
                decided_at: d.decided_at,
            })
        })
    }
}
