//! A CPU thread's intake lane, the runtime's side: where what the lane receives goes (this
//! thread's queue, or a 4002 refusal). The connection and its intake loop are
//! `transport::open_lane`'s; its tasks run on this thread's runtime, so an assignment goes
//! from socket to result without crossing to another thread (files excepted: those go
//! through the IO pool).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::ConsumerMode;
use crate::transport::{self, Delivery, JetStreamHandles, Sink};

use super::{dedupe, pipeline, Shared};

/// Hands what the lane receives to its own thread's queue; in core mode, when that is
/// full, to another thread's, so that 4002 means every CPU queue is full (a lane may be the
/// only one in the queue group: `transport::LaneScale`).
struct LaneSink {
    shared: Arc<Shared>,
    index: usize,
    /// Every CPU thread's queue, this thread's at `index`; only this one in JetStream mode
    /// (a full queue stops that lane's pulls, and the other lanes pull).
    queues: Arc<[flume::Sender<Delivery>]>,
    /// Taken off this thread's queue into its fair queue, not started yet.
    waiting: Arc<AtomicUsize>,
}

impl Sink for LaneSink {
    fn submit(&self, mut d: Delivery) -> Result<(), Delivery> {
        if self.shared.stopping.is_cancelled() || !self.accepting() {
            return Err(d);
        }
        let n = self.queues.len();
        for k in 0..n {
            // Its own queue first, without the division (the common case on the hot path).
            let q = if k == 0 {
                self.index
            } else {
                (self.index + k) % n
            };
            match self.queues[q].try_send(d) {
                Ok(()) => return Ok(()),
                Err(e) => d = e.into_inner(),
            }
        }
        Err(d)
    }

    fn refuse(&self, d: Delivery) {
        tokio::spawn(pipeline::refuse(self.shared.clone(), d));
    }

    fn accepting(&self) -> bool {
        !self.shared.over_memory.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> usize {
        self.queues[self.index].len() + self.waiting.load(Ordering::Relaxed)
    }
}

/// Connects lane `index` and starts its intake on the current thread's runtime
/// ([`transport::open_lane`]), handing what it receives to this thread's queue,
/// `queues[index]` (core mode: to another of `queues` when it is full); the lane's results
/// bucket becomes this thread's for dedupe ([`dedupe::use_lane_bucket`]). Returns the
/// intake and the lane's publisher.
pub(super) async fn open(
    shared: &Arc<Shared>,
    index: usize,
    js: Option<&JetStreamHandles>,
    queues: &Arc<[flume::Sender<Delivery>]>,
    waiting: Arc<AtomicUsize>,
) -> Result<(JoinHandle<()>, Arc<transport::Publisher>), transport::TransportError> {
    let queues = match shared.config.consumer {
        ConsumerMode::Core => queues.clone(),
        ConsumerMode::Jetstream => Arc::from([queues[index].clone()]),
    };
    let sink: Arc<dyn Sink> = Arc::new(LaneSink {
        shared: shared.clone(),
        index: if queues.len() == 1 { 0 } else { index },
        queues,
        waiting,
    });
    let lane = transport::open_lane(
        shared.config.clone(),
        shared.metrics.clone(),
        index,
        js,
        sink,
        shared.intake.clone(),
        shared.lanes.clone(),
        shared.stopping.clone(),
    )
    .await?;
    if let Some(bucket) = lane.results {
        dedupe::use_lane_bucket(bucket);
    }
    // Its end is counted, so that no thread takes its queue's last delivery at stop while
    // another lane may still hand it one (`CpuThread::next`).
    let (lanes, intake) = (shared.lanes.clone(), lane.intake);
    let intake = tokio::spawn(async move {
        let _ = intake.await;
        lanes.intake_ended();
    });
    Ok((intake, lane.publisher))
}
