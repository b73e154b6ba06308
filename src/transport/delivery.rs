//! One assignment as delivered ([`Delivery`]: payload, headers, how to settle it, the
//! connection that answers it) and the traits the runtime implements to receive them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::contract::AssignmentHeaders;

use super::budget::Hold;
use super::Publisher;

/// How an assignment is settled with the broker.
pub(super) enum Settle {
    /// Core NATS: nothing to settle.
    Core,
    Js(Box<jetstream::message::Acker>),
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Settle::Core => "Core",
            Settle::Js(_) => "JetStream",
        })
    }
}

/// One assignment as delivered, with what is needed to settle it.
#[derive(Debug)]
pub struct Delivery {
    pub payload: Bytes,
    pub headers: AssignmentHeaders,
    /// JetStream delivery count (1 for core NATS).
    pub delivered: i64,
    /// When the lane received it: the job's deadline and `latency_ms` count from here, so
    /// time spent queued behind `--max-in-flight` counts too.
    pub received: Instant,
    pub(super) settle: Settle,
    /// The connection it came in on, which also carries its ack and result.
    pub(super) publisher: Arc<Publisher>,
    /// Its share of the JetStream intake budget.
    pub(super) hold: Option<Hold>,
}

impl Delivery {
    /// Publishes on the connection the assignment came in on (no hop to another thread).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn redelivered(&self) -> bool {
        self.delivered > 1
    }

    pub fn is_jetstream(&self) -> bool {
        matches!(self.settle, Settle::Js(_))
    }

    /// Done with it: the result is stored.
    pub async fn ack(&self) {
        if let Settle::Js(a) = &self.settle {
            if let Err(e) = a.ack().await {
                tracing::warn!(error = %e, "JetStream ack failed; the assignment will be redelivered and deduplicated");
            }
        }
    }

    /// Not now: redeliver after `delay` (JetStream only).
    pub async fn nak(&self, delay: Duration) {
        if let Settle::Js(a) = &self.settle {
            if let Err(e) = a.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "JetStream nak failed");
            }
        }
    }

    /// Still working: extend the ack wait.
    pub async fn in_progress(&self) {
        if let Settle::Js(a) = &self.settle {
            let _ = a.ack_with(AckKind::Progress).await;
        }
    }
}

pub(super) fn headers_of(h: Option<&HeaderMap>) -> AssignmentHeaders {
    let Some(h) = h else {
        return AssignmentHeaders::default();
    };
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    AssignmentHeaders {
        tenant_id: get("tenant_id"),
        version: get("version"),
        trace_id: get("trace_id"),
        traceparent: get("traceparent"),
    }
}

/// Where an intake lane hands the assignments it receives.
pub trait Sink: Send + Sync + 'static {
    /// Queues an assignment; gives it back when the queue is full.
    #[allow(clippy::result_large_err)] // hands ownership back; boxing it would cost an allocation per message
    fn submit(&self, d: Delivery) -> Result<(), Delivery>;
    /// Answers an assignment the worker has no room for (core mode: 4002).
    fn refuse(&self, d: Delivery);
    /// Whether to take more work now (false while over the memory budget).
    fn accepting(&self) -> bool {
        true
    }
    /// What this lane's thread has queued and not started (core mode judges with it
    /// whether the lane keeps up: `scale.rs`).
    fn backlog(&self) -> usize {
        0
    }
}

/// Where the control connection hands cancel requests and approval decisions.
pub trait Control: Send + Sync + 'static {
    /// A cancel request, with the `tenant_id` NATS header when it has one.
    fn cancel(&self, payload: &[u8], header_tenant: Option<&str>);
    fn decision(&self, payload: &[u8]);
}
