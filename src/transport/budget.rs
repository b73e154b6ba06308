//! What bounds intake: assignments taken and not finished, their payload bytes, and (core
//! mode) the bytes of refusals in progress.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::Buffers;

/// What bounds JetStream intake across the worker's lanes: the assignments taken and not
/// finished (a count), and their payload bytes (in KiB). A delivery holds its share until
/// it is dropped, so a full worker stops pulling.
#[derive(Debug)]
pub struct IntakeBudget {
    pub(super) slots: Semaphore,
    pub(super) kib: Semaphore,
    pub(super) kib_total: usize,
    /// Core mode: what refusals in progress may hold (a quarter of `kib_total`, in KiB;
    /// a refusal costs about three times its payload: its ack, result and DLQ entry).
    pub(super) refusing: Semaphore,
    pub(super) refusing_kib: usize,
    pub(super) lanes: usize,
}

impl IntakeBudget {
    /// `slots` assignments and `bytes` of payload at once, pulled by `lanes` lanes.
    pub fn new(slots: usize, bytes: u64, lanes: usize) -> Arc<IntakeBudget> {
        let kib_total = ((bytes >> 10) as usize).clamp(1, u32::MAX as usize);
        Arc::new(IntakeBudget {
            slots: Semaphore::new(slots.max(1)),
            kib: Semaphore::new(kib_total),
            kib_total,
            refusing: Semaphore::new((kib_total / 4).max(1)),
            refusing_kib: (kib_total / 4).max(1),
            lanes: lanes.max(1),
        })
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }
}

/// A delivery's share of the intake budget, given back when it is dropped.
#[derive(Debug)]
pub(super) struct Hold {
    pub(super) budget: Arc<IntakeBudget>,
    pub(super) kib: usize,
    /// A JetStream delivery (a slot and bytes), or a core refusal (refusal bytes).
    pub(super) slot: bool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.slot {
            self.budget.slots.add_permits(1);
            self.budget.kib.add_permits(self.kib);
        } else {
            self.budget.refusing.add_permits(self.kib);
        }
    }
}

impl IntakeBudget {
    /// The client buffers of one lane's connection (messages), from its share of the byte
    /// budget at 16 KiB a message (an 8 KiB assignment or its DLQ copy), 256 to 65 536.
    /// A count, not bytes: with larger messages they hold more (up to `max_payload` each).
    pub fn lane_buffers(&self) -> Buffers {
        let per_lane = (self.kib_total << 10) / self.lanes;
        let n = (per_lane / (16 << 10)).clamp(256, 65_536);
        Buffers {
            subscription: n,
            outgoing: n,
        }
    }
}
