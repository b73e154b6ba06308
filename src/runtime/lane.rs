//! A CPU thread's intake lane, the runtime's side: where what the lane receives goes (this
//! thread's queue, or a 4002 refusal). The connection and its intake loop are
//! `transport::open_lane`'s; its tasks run on this thread's runtime, so an assignment goes
//! from socket to result without crossing to another thread (files excepted: those go
//! through the IO pool).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::transport::{self, Delivery, JetStreamHandles, Sink};

use super::{dedupe, pipeline, Shared};

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

/// Connects lane `index` and starts its intake on the current thread's runtime
/// ([`transport::open_lane`]), handing what it receives to this thread's queue `tx`; the
/// lane's results bucket becomes this thread's for dedupe ([`dedupe::use_lane_bucket`]).
pub(super) async fn open(
    shared: &Arc<Shared>,
    index: usize,
    js: Option<&JetStreamHandles>,
    tx: flume::Sender<Delivery>,
) -> Result<JoinHandle<()>, transport::TransportError> {
    let sink: Arc<dyn Sink> = Arc::new(LaneSink {
        shared: shared.clone(),
        tx,
    });
    let lane = transport::open_lane(
        shared.config.clone(),
        shared.metrics.clone(),
        index,
        js,
        sink,
        shared.intake.clone(),
        shared.stopping.clone(),
    )
    .await?;
    if let Some(bucket) = lane.results {
        dedupe::use_lane_bucket(bucket);
    }
    Ok(lane.intake)
}
