//! The queue in front of the slots: requests grouped by model (encoder requests also by
//! padded-length bucket, so a batch wastes little on padding), each group ordered by
//! priority (higher first) then arrival. A slot takes the best group that is ready, which
//! is a group holding a full batch or one whose oldest request has waited the batching
//! delay, and the group's first requests up to the batch size become one batch.
//! Pure data: the scheduler owns the locking and the time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::encoder::Encoder;
use crate::error::{ErrorKind, InferError};
use crate::model::Model;
use crate::{DevicePref, Inference};

/// What a request runs: rows through a feed-forward network, or token sequences through
/// a sentence encoder. Requests batch together only when their [`Work::key`] is equal.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    Ffn {
        model: Arc<Model>,
        inputs: Arc<[f32]>,
    },
    Embed {
        encoder: Arc<Encoder>,
        /// Token ids per input, all in the same length bucket.
        seqs: Arc<[Vec<u32>]>,
        normalize: bool,
        /// Padded length this bucket holds at most (the longest sequence decides the
        /// padded length of a batch; the bucket bounds it).
        bucket: usize,
    },
}

impl Work {
    /// (model id, length bucket): what must match for two requests to share a batch.
    pub(crate) fn key(&self) -> (u64, usize) {
        match self {
            Work::Ffn { model, .. } => (model.id(), 0),
            Work::Embed {
                encoder, bucket, ..
            } => (encoder.id(), *bucket),
        }
    }

    /// The id device weights are kept under.
    pub(crate) fn model_id(&self) -> u64 {
        self.key().0
    }

    pub(crate) fn weight_bytes(&self) -> u64 {
        match self {
            Work::Ffn { model, .. } => model.weight_bytes(),
            Work::Embed { encoder, .. } => encoder.weight_bytes(),
        }
    }

    /// Device bytes a batch of `rows` of this work needs besides the weights.
    pub(crate) fn activation_bytes(&self, rows: usize) -> u64 {
        match self {
            Work::Ffn { model, .. } => model.activation_bytes(rows),
            Work::Embed {
                encoder, bucket, ..
            } => encoder.activation_bytes(rows, *bucket),
        }
    }
}

/// Which kind of slot runs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Gpu,
    Cpu,
}

pub(crate) type Reply = oneshot::Sender<Result<Inference, InferError>>;

/// One submitted request waiting for a slot.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) priority: i64,
    pub(crate) enqueued: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) work: Work,
    pub(crate) rows: usize,
    pub(crate) pref: DevicePref,
    pub(crate) reply: Reply,
}

impl Pending {
    pub(crate) fn answer(self, r: Result<Inference, InferError>) {
        // The requester may have gone (cancelled, deadline): nothing to tell then.
        let _ = self.reply.send(r);
    }

    fn order_key(&self) -> (std::cmp::Reverse<i64>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }
}

#[derive(Debug)]
struct Group {
    class: Class,
    key: (u64, usize),
    /// Sorted by (priority desc, seq asc).
    items: Vec<Pending>,
}

impl Group {
    fn oldest(&self) -> Instant {
        self.items
            .iter()
            .map(|p| p.enqueued)
            .min()
            .unwrap_or_else(Instant::now)
    }
    fn rows(&self) -> usize {
        self.items.iter().map(|p| p.rows).sum()
    }
}

/// What the slot's admission check says about a candidate batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Go,
    /// Not now (device memory in use by running batches); try other groups.
    Wait,
    /// Never on this kind of slot (the model does not fit the device budget).
    Never,
}

#[derive(Debug)]
pub(crate) enum Take {
    Batch(Vec<Pending>),
    /// A whole group that can never run on this class.
    Never(Vec<Pending>),
    /// Nothing ready yet; a group becomes ready at this instant.
    WaitUntil(Instant),
    Idle,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    groups: Vec<Group>,
    len: usize,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, class: Class, p: Pending) {
        self.len += 1;
        let key = p.work.key();
        let g = match self
            .groups
            .iter_mut()
            .position(|g| g.class == class && g.key == key)
        {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(Group {
                    class,
                    key,
                    items: Vec::new(),
                });
                let last = self.groups.len() - 1;
                &mut self.groups[last]
            }
        };
        let at = g.items.partition_point(|q| q.order_key() < p.order_key());
        g.items.insert(at, p);
    }

    /// Drops requests nobody waits for any more and answers those past their deadline.
    pub(crate) fn prune(&mut self, now: Instant) {
        for g in &mut self.groups {
            let before = g.items.len();
            let mut kept = Vec::with_capacity(before);
            for p in g.items.drain(..) {
                if p.reply.is_canceled() {
                    continue;
                }
                if p.deadline.is_some_and(|d| d <= now) {
                    p.answer(Err(InferError::new(
                        ErrorKind::Deadline,
                        "deadline passed while queued for a device",
                    )));
                    continue;
                }
                kept.push(p);
            }
            self.len -= before - kept.len();
            g.items = kept;
        }
        self.groups.retain(|g| !g.items.is_empty());
    }

    /// The next batch for a slot of `class`; `admit(work, rows)` is the slot's memory
    /// check, called only for groups that are ready.
    pub(crate) fn take(
        &mut self,
        class: Class,
        now: Instant,
        max_batch: usize,
        delay: Duration,
        mut admit: impl FnMut(&Work, usize) -> Admit,
    ) -> Take {
        let mut order: Vec<usize> = (0..self.groups.len())
            .filter(|&i| self.groups[i].class == class)
            .collect();
        order.sort_by_key(|&i| self.groups[i].items[0].order_key());
        let mut wake: Option<Instant> = None;
        for i in order {
            let g = &self.groups[i];
            let ready_at = g.oldest() + delay;
            if g.rows() < max_batch && now < ready_at {
                wake = Some(wake.map_or(ready_at, |w| w.min(ready_at)));
                continue;
            }
            let mut n = 0;
            let mut rows = 0;
            for p in &g.items {
                if n > 0 && rows + p.rows > max_batch {
                    break;
                }
                n += 1;
                rows += p.rows;
            }
            match admit(&g.items[0].work, rows.min(max_batch)) {
                Admit::Go => {
                    let g = &mut self.groups[i];
                    let batch: Vec<Pending> = g.items.drain(..n).collect();
                    self.len -= batch.len();
                    if g.items.is_empty() {
                        self.groups.swap_remove(i);
                    }
                    return Take::Batch(batch);
                }
                Admit::Wait => continue,
                Admit::Never => {
                    let g = self.groups.swap_remove(i);
                    self.len -= g.items.len();
                    return Take::Never(g.items);
                }
            }
        }
        match wake {
            Some(w) => Take::WaitUntil(w),
            None => Take::Idle,
        }
    }

    /// Everything still queued (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        self.len = 0;
        self.groups.drain(..).flat_map(|g| g.items).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Layer};

    fn model() -> Arc<Model> {
        Arc::new(
            Model::new(vec![Layer::new(
                1,
                1,
                vec![1.0],
                vec![0.0],
                Activation::None,
            )
            .expect("layer")])
            .expect("model"),
        )
    }

    fn pending(
        seq: u64,
        priority: i64,
        m: &Arc<Model>,
        at: Instant,
    ) -> (Pending, oneshot::Receiver<Result<Inference, InferError>>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            seq,
            priority,
            enqueued: at,
            deadline: None,
            work: Work::Ffn {
                model: m.clone(),
                inputs: Arc::from(vec![0.0f32]),
            },
            rows: 1,
            pref: DevicePref::Auto,
            reply: tx,
        };
        (p, rx)
    }

    #[test]
    fn waits_for_the_delay_then_batches_by_priority() {
        let t0 = Instant::now();
        let m = model();
        let mut q = Queue::default();
        let mut keep = Vec::new();
        for (seq, prio) in [(0, 0), (1, 5), (2, 1)] {
            let (p, rx) = pending(seq, prio, &m, t0);
            keep.push(rx);
            q.push(Class::Cpu, p);
        }
        let delay = Duration::from_millis(1);
        match q.take(Class::Cpu, t0, 8, delay, |_, _| Admit::Go) {
            Take::WaitUntil(t) => assert_eq!(t, t0 + delay),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert!(matches!(
            q.take(Class::Gpu, t0 + delay, 8, delay, |_, _| Admit::Go),
            Take::Idle
        ));
        let Take::Batch(b) = q.take(Class::Cpu, t0 + delay, 2, delay, |_, _| Admit::Go) else {
            panic!("ready after the delay")
        };
        assert_eq!(b.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn cancelled_requests_are_dropped() {
        let t0 = Instant::now();
        let m = model();
        let mut q = Queue::default();
        let (p, rx) = pending(0, 0, &m, t0);
        q.push(Class::Cpu, p);
        drop(rx);
        q.prune(t0);
        assert_eq!(q.len(), 0);
        assert!(matches!(
            q.take(Class::Cpu, t0, 8, Duration::ZERO, |_, _| Admit::Go),
            Take::Idle
        ));
    }
}
