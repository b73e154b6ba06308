//! Core NATS intake: a queue subscription per lane.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::poll_fn;
use std::task::{Context, Poll};

use async_nats::Client;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

use super::budget::Hold;
use super::delivery::{headers_of, Settle};
use super::scale::{LaneMeter, LaneScale, Verdict, BURST, LEAVE_ALLOWANCE, TICK};
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

/// Core NATS intake: every message of the lane's subscription goes to the sink, or is
/// refused (4002) when the sink is full, until stop. The refusals in progress are bounded
/// by payload bytes (a quarter of the intake byte budget; queued and running work is
/// bounded by the queues): a message over it is dropped, as the client drops for a slow
/// consumer (counted in `worker_intake_dropped_total`; the Router's retry covers it), so a
/// flood faster than the worker can refuse costs bounded memory.
///
/// The lane is in the queue group while the [`LaneScale`] wants it (`sub` is its
/// subscription when it starts in it): it joins when told, and leaves, losslessly, when
/// its tick says so (`scale.rs`).
pub(super) async fn consume_core(intake: Intake, mut lane: CoreLane) {
    let cfg = &intake.cfg;
    tracing::info!(subject = %cfg.subjects.assign, queue_group = %cfg.queue_group, lane = lane.index,
        in_group = lane.sub.is_some(), "consuming (core NATS queue group; lanes join it with the load)");
    let stats = lane.client.statistics();
    let mut drops = ClientDrops::new(&stats);
    let mut over_bound = 0u64;
    let (index, scale) = (lane.index, lane.scale.clone());
    let mut subs = Subs {
        current: lane.sub.take(),
        taken: 0,
        leaving: Vec::new(),
    };
    let mut meter = LaneMeter::new(index);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut run = 0u32;
    loop {
        // Unconstrained: tokio's cooperative budget would otherwise answer "pending" while
        // messages wait, and they would be counted as dropped.
        let got = match tokio::task::coop::unconstrained(poll_fn(|cx| subs.poll_next(cx)))
            .now_or_never()
        {
            Some(g) => g,
            None => {
                drops.count(&intake);
                run = 0;
                match idle(&intake, &lane, &mut subs, &mut meter, &mut ticks).await {
                    Step::Got(g) => g,
                    Step::Again => continue,
                    Step::Stop => break,
                }
            }
        };
        let msg = match got {
            Got::Message(m) => m,
            Got::LeavingEnded => continue,
            Got::CurrentEnded => break,
        };
        run += 1;
        if run % BURST == 0 {
            meter.burst(&scale);
        }
        drops.taken += 1;
        let d = Delivery {
            headers: headers_of(msg.headers.as_ref()),
            payload: msg.payload,
            delivered: 1,
            received: Instant::now(),
            settle: Settle::Core,
            publisher: intake.publisher.clone(),
            hold: None,
        };
        if let Err(d) = intake.sink.submit(d) {
            refuse_or_drop(&intake, d, &mut over_bound);
        }
    }
    if let Some(mut sub) = subs.current.take() {
        let _ = sub.unsubscribe().await;
    }
}

/// A core lane: its connection, whether it starts in the queue group, and the group's
/// membership it follows.
pub(super) struct CoreLane {
    pub(super) index: usize,
    pub(super) client: Client,
    pub(super) sub: Option<async_nats::Subscriber>,
    pub(super) scale: Arc<LaneScale>,
    /// The client's subscription buffer (messages): what it may hold that the lane has
    /// not taken yet.
    pub(super) buffer: usize,
}

/// What the intake loop does after waiting.
enum Step {
    Got(Got),
    Again,
    Stop,
}

/// Waits, with nothing buffered, for a message, a change of the group's membership, a tick
/// (measure, maybe leave) or stop; joins the group when wanted and not in it.
async fn idle(
    intake: &Intake,
    lane: &CoreLane,
    subs: &mut Subs,
    meter: &mut LaneMeter,
    ticks: &mut tokio::time::Interval,
) -> Step {
    let measuring = subs.any() || lane.scale.wanted(lane.index);
    let changed = tokio::select! {
        _ = intake.stop.cancelled() => return Step::Stop,
        g = poll_fn(|cx| subs.poll_next(cx)) => return Step::Got(g),
        _ = lane.scale.changed(lane.index) => true,
        _ = ticks.tick(), if measuring => false,
    };
    if changed && subs.current.is_none() {
        meter.reset();
    }
    if !changed
        && subs.current.is_some()
        && meter.tick(&lane.scale, intake.sink.backlog()) == Verdict::Leave
    {
        subs.leave(lane).await;
    }
    subs.follow(lane, intake).await;
    Step::Again
}

enum Got {
    Message(async_nats::Message),
    /// The subscription the lane is in the group with ended (the client closed).
    CurrentEnded,
    /// A leaving subscription has handed over everything the server sent it.
    LeavingEnded,
}

/// The lane's subscriptions: the one it is in the group with, and those leaving it.
struct Subs {
    current: Option<async_nats::Subscriber>,
    /// Messages taken from `current`.
    taken: u64,
    leaving: Vec<async_nats::Subscriber>,
}

impl Subs {
    fn any(&self) -> bool {
        self.current.is_some() || !self.leaving.is_empty()
    }

    /// The next message: a leaving subscription's first (each is finite, so none starves
    /// the current one for long, and a busy current one cannot leave a leaving one's buffer
    /// to overflow).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Got> {
        for i in 0..self.leaving.len() {
            if let Poll::Ready(m) = self.leaving[i].poll_next_unpin(cx) {
                return Poll::Ready(match m {
                    Some(m) => Got::Message(m),
                    None => {
                        self.leaving.swap_remove(i);
                        Got::LeavingEnded
                    }
                });
            }
        }
        if let Some(sub) = self.current.as_mut() {
            if let Poll::Ready(m) = sub.poll_next_unpin(cx) {
                return Poll::Ready(match m {
                    Some(m) => {
                        self.taken += 1;
                        Got::Message(m)
                    }
                    None => Got::CurrentEnded,
                });
            }
        }
        Poll::Pending
    }

    /// Joins the group when the lane is wanted and not in it (a failed subscribe is
    /// retried at the next tick).
    async fn follow(&mut self, lane: &CoreLane, intake: &Intake) {
        if self.current.is_some() || !lane.scale.wanted(lane.index) {
            return;
        }
        let cfg = &intake.cfg;
        match lane
            .client
            .queue_subscribe(cfg.subjects.assign.clone(), cfg.queue_group.clone())
            .await
        {
            Ok(sub) => {
                self.current = Some(sub);
                self.taken = 0;
                tracing::debug!(lane = lane.index, "lane joined the queue group");
            }
            Err(e) => {
                tracing::warn!(lane = lane.index, error = %e, "lane could not join the queue group; retrying");
            }
        }
    }

    /// Leaves the group without losing what the server already routed here: the server
    /// stops after `max` messages in all, and the client keeps the subscription until it
    /// has handed those over (`scale.rs`).
    async fn leave(&mut self, lane: &CoreLane) {
        let Some(mut sub) = self.current.take() else {
            return;
        };
        let max = self.taken + lane.buffer as u64 + LEAVE_ALLOWANCE;
        if sub.unsubscribe_after(max).await.is_ok() {
            tracing::debug!(lane = lane.index, "lane leaving the queue group");
            self.leaving.push(sub);
        }
    }
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
