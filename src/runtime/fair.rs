//! Fair start order across tenants on one CPU thread. The thread moves deliveries from its
//! bounded transport queue into a [`FairQueue`] (one FIFO line per tenant, lines served
//! round robin) and starts them from there, so a tenant that queued a thousand
//! assignments delays another tenant's next one by at most one start per busy tenant.
//!
//! The queue is bounded in total; while it is full the thread leaves deliveries in its
//! transport queue, which fills, and the transport's back-pressure applies as before
//! (core NATS: 4002; JetStream: intake slots run out and the worker stops pulling).
//!
//! Fairness covers what this worker holds. JetStream hands out a stream's messages first
//! in, first out: a backlog larger than the worker's intake slots stays in the stream in
//! publish order, and there `--tenant-max-in-flight` (each tenant's share of the slots)
//! and `--tenant-rate-limit` are what keep one tenant from holding every slot.

use std::collections::{HashMap, VecDeque};

use crate::contract::assignment::peek_tenant_id;
use crate::transport::Delivery;

/// Per-tenant FIFO lines served round robin, holding at most `bound` items in all.
/// Memory: the items, plus one line per tenant that has items queued, plus up to
/// [`SPARE_LINES`] emptied lines kept for the next tenant to arrive.
#[derive(Debug)]
pub struct FairQueue<T> {
    lines: HashMap<Box<str>, VecDeque<T>>,
    /// Tenants with queued items, in the order they are served next.
    turns: VecDeque<Box<str>>,
    /// Emptied lines, cleared, their buffers kept. With one busy tenant the queue drains to
    /// empty and refills with every batch the lane hands over: a dropped line meant
    /// growing a fresh buffer from nothing each time (4 → 8 → … → 512 deliveries), and
    /// the allocator handing out (and the kernel zeroing) fresh pages for it: 5 % of the
    /// worker's CPU per `fs.get` task in the issue-12 profile.
    spare: Vec<VecDeque<T>>,
    len: usize,
    bound: usize,
}

/// How many emptied lines a queue keeps for reuse.
const SPARE_LINES: usize = 8;

impl<T> FairQueue<T> {
    /// A queue holding at most `bound` items (at least 1).
    pub fn new(bound: usize) -> FairQueue<T> {
        FairQueue {
            lines: HashMap::new(),
            turns: VecDeque::new(),
            spare: Vec::new(),
            len: 0,
            bound: bound.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.bound
    }

    /// Tenants with something queued.
    pub fn tenants(&self) -> usize {
        self.turns.len()
    }

    /// Queues `item` at the end of its tenant's line (`tenant_of` reads it from the item,
    /// so a key borrowed from the item costs no copy); a tenant new to the queue takes its
    /// turn after those already waiting. A full queue hands the item back.
    pub fn push(&mut self, item: T, tenant_of: impl FnOnce(&T) -> &str) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        let tenant = tenant_of(&item);
        if let Some(line) = self.lines.get_mut(tenant) {
            line.push_back(item);
        } else {
            let key: Box<str> = tenant.into();
            self.turns.push_back(key.clone());
            let mut line = self.spare.pop().unwrap_or_default();
            line.push_back(item);
            self.lines.insert(key, line);
        }
        self.len += 1;
        Ok(())
    }

    /// The oldest item of the tenant whose turn it is; that tenant goes to the back.
    pub fn pop(&mut self) -> Option<T> {
        let tenant = self.turns.pop_front()?;
        let line = self.lines.get_mut(&tenant)?;
        let item = line.pop_front()?;
        self.len -= 1;
        if line.is_empty() {
            self.drop_line(&tenant);
        } else {
            self.turns.push_back(tenant);
        }
        Some(item)
    }

    /// Takes the first item of `tenant`'s line that `wanted` picks, out of turn (a queued
    /// assignment a cancel names); the tenant keeps its place in the turns.
    pub fn take_from(&mut self, tenant: &str, wanted: impl FnMut(&T) -> bool) -> Option<T> {
        let line = self.lines.get_mut(tenant)?;
        let at = line.iter().position(wanted)?;
        let item = line.remove(at)?;
        self.len -= 1;
        if line.is_empty() {
            self.turns.retain(|t| &**t != tenant);
            self.drop_line(tenant);
        }
        Some(item)
    }

    /// Removes an emptied line, keeping its buffer as a spare.
    fn drop_line(&mut self, tenant: &str) {
        if let Some(line) = self.lines.remove(tenant) {
            if self.spare.len() < SPARE_LINES {
                self.spare.push(line);
            }
        }
    }
}

/// The line of a delivery: its `tenant_id` NATS header, else the payload's top-level
/// `tenant_id` read without parsing (the pipeline parses once, later, and prefers the
/// payload's; the Router sets both alike). Without either, `""`: one line shared by
/// everything that names no tenant.
pub(super) fn tenant_of(d: &Delivery) -> &str {
    match d.headers.tenant_id.as_deref() {
        Some(t) if !t.is_empty() => t,
        _ => peek_tenant_id(&d.payload).unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut FairQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn lanes_are_served_round_robin_each_in_fifo_order() {
        let mut q = FairQueue::new(100);
        for item in ["a1", "a2", "a3", "a4"] {
            q.push(item, |_| "a").expect("room");
        }
        q.push("b1", |_| "b").expect("room");
        q.push("b2", |_| "b").expect("room");
        q.push("c1", |_| "c").expect("room");
        assert_eq!((q.len(), q.tenants()), (7, 3));
        assert_eq!(drain(&mut q), ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert!(q.is_empty() && q.tenants() == 0);
    }

    #[test]
    fn a_tenant_arriving_behind_a_flood_is_served_next_but_one() {
        let mut q = FairQueue::new(1000);
        for _ in 0..500 {
            q.push("f", |_| "flood").expect("room");
        }
        assert_eq!(q.pop(), Some("f"));
        q.push("q", |_| "quiet").expect("room");
        assert_eq!(q.pop(), Some("f"));
        assert_eq!(q.pop(), Some("q"));
        assert_eq!(q.tenants(), 1);
    }

    #[test]
    fn an_emptied_line_lends_its_buffer_to_the_next_tenant() {
        let mut q = FairQueue::new(1000);
        for _ in 0..500 {
            q.push("a", |_| "a").expect("room");
        }
        assert_eq!(drain(&mut q).len(), 500);
        assert_eq!((q.tenants(), q.spare.len()), (0, 1));
        q.push("b", |_| "b").expect("room");
        let line = q.lines.get("b").expect("b's line");
        assert!(line.capacity() >= 500, "capacity {}", line.capacity());
        assert_eq!((q.spare.len(), drain(&mut q)), (0, vec!["b"]));
        // Spares are bounded.
        for t in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"] {
            q.push("x", |_| t).expect("room");
        }
        assert_eq!(drain(&mut q).len(), 10);
        assert_eq!(q.spare.len(), SPARE_LINES);
    }

    #[test]
    fn an_item_taken_out_of_turn_leaves_the_rest_in_order() {
        let mut q = FairQueue::new(10);
        for (item, tenant) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a")] {
            q.push(item, |_| tenant).expect("room");
        }
        assert_eq!(q.take_from("a", |i| *i == "a2"), Some("a2"));
        assert_eq!(
            q.take_from("a", |i| *i == "b1"),
            None,
            "only that tenant's line"
        );
        assert_eq!(q.take_from("c", |_| true), None);
        assert_eq!(q.len(), 3);
        // A line emptied so loses its turn.
        assert_eq!(q.take_from("b", |_| true), Some("b1"));
        assert_eq!((q.len(), q.tenants()), (2, 1));
        assert_eq!(drain(&mut q), ["a1", "a3"]);
    }

    #[test]
    fn the_bound_is_total_and_a_full_queue_hands_the_item_back() {
        let mut q = FairQueue::new(3);
        q.push("a1", |_| "a").expect("room");
        q.push("b1", |_| "b").expect("room");
        q.push("a2", |_| "a").expect("room");
        assert!(q.is_full());
        assert_eq!(q.push("c1", |_| "c"), Err("c1"));
        assert_eq!(q.push("a3", |_| "a"), Err("a3"));
        assert_eq!(q.tenants(), 2, "a refused tenant gets no line");
        assert_eq!(q.pop(), Some("a1"));
        q.push("c1", |_| "c").expect("room again");
        assert_eq!(drain(&mut q), ["b1", "a2", "c1"]);
        assert!(
            FairQueue::<u8>::new(0).push(1, |_| "a").is_ok(),
            "bound is at least 1"
        );
    }

    #[test]
    fn a_tenant_that_empties_its_lane_rejoins_at_the_back() {
        let mut q = FairQueue::new(10);
        q.push("a1", |_| "a").expect("room");
        q.push("b1", |_| "b").expect("room");
        q.push("b2", |_| "b").expect("room");
        assert_eq!(q.pop(), Some("a1"));
        q.push("a2", |_| "a").expect("room");
        assert_eq!(drain(&mut q), ["b1", "a2", "b2"]);
    }
}
