//! JetStream intake: pulls on the durable consumer every lane and instance shares,
//! bounded by the intake budget, rebinding the consumer when the server lost it.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{MessagesErrorKind, Stream};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::SemaphorePermit;

use super::budget::Hold;
use super::delivery::{headers_of, Settle};
use super::{Delivery, Intake, JetStreamHandles};

/// Idle heartbeat asked of the server on each pull request.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Why taking from a pull ended.
enum Ended {
    /// The worker stops.
    Stop,
    /// The consumer or its leader is gone: bind it again.
    Lost,
}

/// JetStream intake: pulls from the durable consumer (shared by every lane and instance)
/// while the intake budget has room and the sink is accepting, until stop; rebinds the
/// consumer when the server lost it.
pub(super) async fn consume_jetstream(intake: Intake, js: JetStreamHandles) {
    let mut failures = 0u32;
    while let Some(mut messages) = pull(&intake, &js, &mut failures).await {
        tracing::info!(stream = %js.stream_name, durable = %intake.cfg.js.durable, "consuming (JetStream durable pull consumer)");
        match take(&intake, &mut messages, &mut failures).await {
            Ended::Stop => return hand_back_buffered(&mut messages).await,
            Ended::Lost => intake.metrics.js_consumer_recreated.inc(),
        }
    }
}

/// Binds the durable consumer and starts a pull on it, retrying until both work; `None`
/// once the worker stops.
async fn pull(intake: &Intake, js: &JetStreamHandles, failures: &mut u32) -> Option<Stream> {
    loop {
        let consumer = bind(intake, js, failures).await?;
        // A lane asks for its share of the budget at most, so what waits in the client's
        // buffer is bounded too; never below two of the largest messages the server takes.
        let budget = &intake.budget;
        let batch = (budget.free_slots() / budget.lanes).clamp(1, 256);
        let max_bytes = ((budget.kib_total << 10) / budget.lanes)
            .max(intake.publisher.max_payload().saturating_mul(2))
            .max(1 << 20);
        let started = consumer
            .stream()
            .max_messages_per_batch(batch)
            .max_bytes_per_batch(max_bytes)
            // The server sends an idle heartbeat every second; two missed (the client's
            // rule) is a lost consumer or leader, rebound at once by `take`.
            .heartbeat(PULL_HEARTBEAT)
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        match started {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::error!(error = %e, "starting the pull consumer failed; retrying");
                pause(intake, Duration::from_millis(100)).await?;
            }
        }
    }
}

/// A new bind attempt starts this often while earlier ones are unanswered.
const BIND_EVERY: Duration = Duration::from_millis(250);
/// At most this many bind attempts wait for an answer at once.
const BINDS_IN_FLIGHT: usize = 4;

/// Binds the durable consumer. While the cluster elects a new leader for it (after a
/// leader loss: the server's Raft election timeout, 4–9 s in nats-server 2.9), requests
/// go unanswered until they time out; attempts therefore overlap, a new one every
/// [`BIND_EVERY`], so the first one the new leader can answer binds it, instead of
/// waiting out a timeout that started before the election ended (docs/RELIABILITY.md).
async fn bind(intake: &Intake, js: &JetStreamHandles, failures: &mut u32) -> Option<PullConsumer> {
    let mut attempts = FuturesUnordered::new();
    let mut next = tokio::time::Instant::now();
    loop {
        if attempts.len() < BINDS_IN_FLIGHT && tokio::time::Instant::now() >= next {
            attempts.push(js.assign_consumer(&intake.cfg));
            next = tokio::time::Instant::now() + BIND_EVERY;
        }
        tokio::select! {
            _ = intake.stop.cancelled() => return None,
            Some(r) = attempts.next(), if !attempts.is_empty() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    *failures += 1;
                    if failures.is_power_of_two() {
                        tracing::error!(error = %e, failures = *failures, "binding the JetStream consumer failed; retrying");
                    }
                }
            },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// At stop: what the server already delivered to this pull and the client holds goes
/// back at once (nak'ed), for another instance or the next start; dropped with the pull,
/// it would wait out the ack wait (30 s) first.
async fn hand_back_buffered(messages: &mut Stream) {
    let mut n = 0usize;
    // The stream may answer `Pending` while it holds messages (its pull bookkeeping is
    // polled first): a short wait per message, not a single poll.
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(50), messages.next()).await
    {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        n += 1;
    }
    if n > 0 {
        tracing::info!(
            handed_back = n,
            "stop: pulled assignments not taken yet handed back"
        );
    }
}

/// Sleeps `d`; `None` when the worker stops first.
async fn pause(intake: &Intake, d: Duration) -> Option<()> {
    tokio::select! {
        _ = intake.stop.cancelled() => None,
        _ = tokio::time::sleep(d) => Some(()),
    }
}

/// Takes messages from one pull and hands them to the sink, each holding its slot and
/// bytes of the budget, until the worker stops or the consumer is lost.
async fn take(intake: &Intake, messages: &mut Stream, failures: &mut u32) -> Ended {
    let mut errors_in_row = 0u32;
    loop {
        // Over the memory budget: stop pulling until it is back under.
        while !intake.sink.accepting() {
            if pause(intake, Duration::from_millis(50)).await.is_none() {
                return Ended::Stop;
            }
        }
        // Take a slot before the next message, so a full worker stops pulling.
        let permit = tokio::select! {
            _ = intake.stop.cancelled() => return Ended::Stop,
            p = intake.budget.slots.acquire() => match p { Ok(p) => p, Err(_) => return Ended::Stop },
        };
        let next = tokio::select! {
            _ = intake.stop.cancelled() => return Ended::Stop,
            n = messages.next() => n,
        };
        match next {
            Some(Ok(msg)) => {
                errors_in_row = 0;
                *failures = 0;
                if hand_over(intake, msg, permit).await.is_none() {
                    return Ended::Stop;
                }
            }
            Some(Err(e)) => {
                drop(permit);
                errors_in_row += 1;
                tracing::warn!(error = %e, errors_in_row, "pull consumer error");
                // nats.rs#1584: a consumer the server lost keeps yielding errors instead
                // of ending; rebind it. A missed heartbeat or a deleted consumer says so
                // at once: rebind without waiting for more.
                let lost = matches!(
                    e.kind(),
                    MessagesErrorKind::MissingHeartbeat
                        | MessagesErrorKind::ConsumerDeleted
                        | MessagesErrorKind::NoResponders
                );
                if lost || errors_in_row >= 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ended::Lost;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => return Ended::Lost,
        }
    }
}

/// Hands one message to the sink with its slot and its bytes of the budget; while the
/// worker holds its byte budget, waits (pulling nothing more) until finished assignments
/// give some back. `None` when the worker stops meanwhile.
async fn hand_over(intake: &Intake, msg: Message, slot: SemaphorePermit<'_>) -> Option<()> {
    let received = Instant::now();
    let budget = &intake.budget;
    let kib = msg.payload.len().div_ceil(1024).clamp(1, budget.kib_total);
    let bytes = tokio::select! {
        _ = intake.stop.cancelled() => {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return None;
        }
        p = budget.kib.acquire_many(kib as u32) => p.ok()?,
    };
    slot.forget();
    bytes.forget();
    let hold = Hold {
        budget: budget.clone(),
        kib,
        slot: true,
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let (m, acker) = msg.split();
    let d = Delivery {
        headers: headers_of(m.headers.as_ref()),
        payload: m.payload,
        delivered,
        received,
        settle: Settle::Js(Box::new(acker)),
        publisher: intake.publisher.clone(),
        hold: Some(hold),
    };
    if let Err(d) = intake.sink.submit(d) {
        // The budget bounds intake below the queues, so this is rare: let JetStream hold
        // it a moment (the share is given back with `d`).
        d.nak(Duration::from_millis(500)).await;
    }
    Some(())
}
