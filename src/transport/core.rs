//! Core NATS intake: a queue subscription per lane.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

use super::budget::Hold;
use super::delivery::{headers_of, Settle};
use super::{Delivery, Intake};

/// Subscribes to the assign subject in the queue group (retrying until `stop`) and waits
/// until the server has the subscription, so nothing published after this returns is
/// missed.
pub(super) async fn subscribe_assignments(
    cfg: &Config,
    client: &Client,
    stop: &CancellationToken,
) -> Option<async_nats::Subscriber> {
    loop {
        match client
            .queue_subscribe(cfg.subjects.assign.clone(), cfg.queue_group.clone())
            .await
        {
            Ok(s) => {
                // A round trip (a request nobody answers: the server says "no responders"),
                // so the server has processed the SUB before this returns.
                let probe = client.request(client.new_inbox(), Bytes::new());
                let _ = tokio::time::timeout(Duration::from_secs(2), probe).await;
                return Some(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "subscribing to assignments failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Core NATS intake: every message of the subscription goes to the sink, or is refused
/// (4002) when the sink is full, until stop. The refusals in progress are bounded by
/// payload bytes (a quarter of the intake byte budget; queued and running work is
/// bounded by the queues): a message over it is dropped, as the client drops for a slow
/// consumer (counted in `worker_intake_dropped_total`; the Router's retry covers it), so a
/// flood faster than the worker can refuse costs bounded memory.
pub(super) async fn consume_core(
    intake: Intake,
    mut sub: async_nats::Subscriber,
    stats: Arc<async_nats::Statistics>,
) {
    let cfg = &intake.cfg;
    tracing::info!(subject = %cfg.subjects.assign, queue_group = %cfg.queue_group, "consuming (core NATS queue group)");
    let mut drops = ClientDrops::new(&stats);
    let mut over_bound = 0u64;
    loop {
        // Unconstrained: tokio's cooperative budget would otherwise answer "pending" while
        // messages wait, and they would be counted as dropped.
        let msg = match tokio::task::coop::unconstrained(sub.next()).now_or_never() {
            Some(m) => m,
            None => {
                drops.count(&intake);
                tokio::select! {
                    _ = intake.stop.cancelled() => break,
                    m = sub.next() => m,
                }
            }
        };
        let Some(msg) = msg else { break };
        drops.taken += 1;
        let d = Delivery {
            headers: headers_of(msg.headers.as_ref()),
            payload: msg.payload,
            delivered: 1,
            settle: Settle::Core,
            publisher: intake.publisher.clone(),
            hold: None,
        };
        if let Err(d) = intake.sink.submit(d) {
            refuse_or_drop(&intake, d, &mut over_bound);
        }
    }
    let _ = sub.unsubscribe().await;
}

/// What the client dropped because the subscription's buffer was full (a slow consumer).
/// Its slow-consumer events can be lost themselves (a bounded event queue), so its drops
/// are counted from its statistics: every message this connection received was taken
/// here or dropped there, exact whenever the buffer is empty (the client's reader runs on
/// this same thread, so it is never half-way through a message here).
struct ClientDrops<'s> {
    stats: &'s async_nats::Statistics,
    baseline: u64,
    taken: u64,
    counted: u64,
}

impl<'s> ClientDrops<'s> {
    fn new(stats: &'s async_nats::Statistics) -> Self {
        ClientDrops {
            stats,
            baseline: stats.in_messages.load(Relaxed),
            taken: 0,
            counted: 0,
        }
    }

    /// Called when the buffer is empty: counts what the client dropped since last time.
    fn count(&mut self, intake: &Intake) {
        let received = self
            .stats
            .in_messages
            .load(Relaxed)
            .saturating_sub(self.baseline);
        let lost = received.saturating_sub(self.taken);
        if lost > self.counted {
            intake.metrics.intake_dropped.inc_by(lost - self.counted);
            tracing::warn!(
                dropped = lost,
                "lane subscription buffer was full: assignments dropped (slow consumer)"
            );
            self.counted = lost;
        }
    }
}

/// No room: refuse it (4002) while the refusals in progress fit their byte bound (a
/// refusal holds its payload until its ack, result and DLQ entry are handed to the
/// client); beyond it, drop it as a slow consumer's message.
fn refuse_or_drop(intake: &Intake, mut d: Delivery, dropped: &mut u64) {
    let budget = &intake.budget;
    let kib = d.payload.len().div_ceil(1024).clamp(1, budget.refusing_kib);
    let Ok(bytes) = budget.refusing.try_acquire_many(kib as u32) else {
        intake.metrics.intake_dropped.inc();
        *dropped += 1;
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped = *dropped,
                bound_kib = budget.refusing_kib,
                "core intake over its byte bound: assignment dropped (slow consumer)"
            );
        }
        return;
    };
    bytes.forget();
    d.hold = Some(Hold {
        budget: budget.clone(),
        kib,
        slot: false,
    });
    intake.sink.refuse(d);
}
