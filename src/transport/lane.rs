//! Opening a CPU thread's intake lane: its own connection (client buffers sized from its
//! share of the memory budget), its publisher, and its intake loop, all on the calling
//! thread's runtime, so an assignment goes from socket to result without another thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConsumerMode};
use crate::telemetry::Metrics;

use super::{connect_with, core, jetstream};
use super::{
    Bucket, Intake, IntakeBudget, JetStreamHandles, LaneScale, Publisher, Role, Sink,
    TransportError,
};

/// JetStream API calls and publish-acks of a lane give up after this (the client's default
/// is 5 s) and are retried: after a leader loss the pull is rebound and acks/results are
/// re-sent within the intake promise of docs/RELIABILITY.md instead of waiting 5 s each.
const JS_API_TIMEOUT: Duration = Duration::from_millis(1500);

/// An open lane: its intake loop, and in JetStream mode the results bucket reached through
/// the lane's own connection.
#[derive(Debug)]
pub struct Lane {
    /// The intake loop; it ends when the lane's `stop` is cancelled.
    pub intake: JoinHandle<()>,
    /// The dedupe bucket through this lane's connection, for the assignments this thread
    /// runs: a lookup and a store then travel on the connection the assignment came in
    /// on, driven by this thread, instead of crossing to the control connection's thread
    /// and back (two thread hops and wake-ups per call). `None` in core mode, without a
    /// bucket, or when binding it through the lane failed (the shared one is used then).
    pub results: Option<Bucket>,
    /// The lane's publisher (acks, results, refusals), for the last flush at stop.
    pub publisher: Arc<Publisher>,
}

/// Connects lane `index` and starts its intake on the current thread's runtime, handing
/// what it receives to `sink`; returns once it receives (core mode: the server has the
/// subscription, when `scale` wants this lane in the queue group). The intake ends when
/// `stop` is cancelled.
#[allow(clippy::too_many_arguments)]
pub async fn open_lane(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    index: usize,
    js: Option<&JetStreamHandles>,
    sink: Arc<dyn Sink>,
    budget: Arc<IntakeBudget>,
    scale: Arc<LaneScale>,
    stop: CancellationToken,
) -> Result<Lane, TransportError> {
    // The client's buffers are bounded from the lane's share of the memory budget: a core
    // flood faster than the worker can refuse is dropped there, not buffered without bound.
    let buffers = budget.lane_buffers();
    let client = connect_with(&cfg, metrics.clone(), Role::Lane(index), buffers).await?;
    let js = match (cfg.consumer, js) {
        (ConsumerMode::Jetstream, Some(h)) => Some(
            h.through(
                async_nats::jetstream::ContextBuilder::new()
                    .timeout(JS_API_TIMEOUT)
                    .build(client.clone()),
            ),
        ),
        _ => None,
    };
    let results = match &js {
        Some(h) if h.results.is_some() => h.bind_results_again().await,
        _ => None,
    };
    // Acks and results go through JetStream when a stream keeps them.
    let publish_js = js
        .as_ref()
        .filter(|h| h.outputs_durable)
        .map(|h| h.ctx.clone());
    let publisher = Arc::new(Publisher::new(
        client.clone(),
        publish_js,
        cfg.subjects.clone(),
        metrics.clone(),
    ));
    let intake = Intake {
        cfg,
        sink,
        budget,
        metrics,
        publisher: publisher.clone(),
        stop,
    };
    let intake = match js {
        Some(js) => tokio::spawn(jetstream::consume_jetstream(intake, js)),
        None => {
            // A lane the group does not want yet opens its connection and waits to be told.
            let sub = if scale.wanted(index) {
                let Some(sub) =
                    core::subscribe_assignments(&intake.cfg, &client, &intake.stop).await
                else {
                    return Err(TransportError::new(
                        "subscribing to assignments",
                        "the worker stopped first",
                    ));
                };
                Some(sub)
            } else {
                None
            };
            let lane = core::CoreLane {
                index,
                client,
                sub,
                scale,
                buffer: buffers.subscription,
            };
            tokio::spawn(core::consume_core(intake, lane))
        }
    };
    Ok(Lane {
        intake,
        results,
        publisher,
    })
}
