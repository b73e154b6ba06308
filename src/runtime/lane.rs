//! A CPU thread's intake lane: its own NATS connection, on which it receives assignments
//! (a queue subscription in core mode, pulls on the shared durable consumer in JetStream
//! mode) and publishes their acks and results. The connection's tasks run on the thread's
//! own runtime, so an assignment goes from socket to result without crossing to another
//! thread (files excepted: those go through the IO pool).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::ConsumerMode;
use crate::transport::{self, Delivery, JetStreamHandles, Publisher, Role, Sink};

use super::{pipeline, Shared};

/// Hands what the lane receives to its own thread's queue.
struct LaneSink {
    shared: Arc<Shared>,
    tx: flume::Sender<Delivery>,
}

impl Sink for LaneSink {
    fn submit(&self, d: Delivery) -> Result<(), Delivery> {
        if self.shared.stopping.is_cancelled() || !self.accepting() {
            return Err(d);
        }
        self.tx.try_send(d).map_err(|e| e.into_inner())
    }

    fn refuse(&self, d: Delivery) {
        tokio::spawn(pipeline::refuse(self.shared.clone(), d));
    }

    fn accepting(&self) -> bool {
        !self.shared.over_memory.load(Ordering::Relaxed)
    }
}

/// Connects lane `index` and starts its intake on the current thread's runtime; returns
/// once it receives (core mode: the server has the subscription). The intake ends when
/// the worker stops.
pub(super) async fn open(
    shared: &Arc<Shared>,
    index: usize,
    js: Option<&JetStreamHandles>,
    tx: flume::Sender<Delivery>,
) -> Result<JoinHandle<()>, String> {
    let cfg = shared.config.clone();
    let metrics = shared.metrics.clone();
    // The client's buffers are bounded from the lane's share of the memory budget: a core
    // flood faster than the worker can refuse is dropped there, not buffered without bound.
    let buffers = shared.intake.lane_buffers();
    let client = transport::connect_with(&cfg, metrics.clone(), Role::Lane(index), buffers).await?;
    // JetStream API calls and publish-acks give up after 1.5 s (default 5 s) and are
    // retried: after a leader loss the pull is rebound and acks/results are re-sent
    // within the 3 s intake promise (docs/RELIABILITY.md) instead of waiting 5 s each.
    let ctx = async_nats::jetstream::ContextBuilder::new()
        .timeout(std::time::Duration::from_millis(1500))
        .build(client.clone());
    let js = match (cfg.consumer, js) {
        (ConsumerMode::Jetstream, Some(h)) => Some(h.through(ctx)),
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
    let sink: Arc<dyn Sink> = Arc::new(LaneSink {
        shared: shared.clone(),
        tx,
    });
    let stop = shared.stopping.clone();
    let intake = match js {
        Some(js) => tokio::spawn(transport::consume_jetstream(
            cfg,
            js,
            sink,
            shared.intake.clone(),
            metrics,
            publisher,
            stop,
        )),
        None => {
            let Some(sub) = transport::subscribe_assignments(&cfg, &client, &stop).await else {
                return Err("stopped before subscribing".into());
            };
            tokio::spawn(transport::consume_core(
                cfg,
                sub,
                client.statistics(),
                sink,
                shared.intake.clone(),
                metrics,
                publisher,
                stop,
            ))
        }
    };
    Ok(intake)
}
