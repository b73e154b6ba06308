//! Cancellation by `caf.exec.cancel.v1`: a token per queued or running assignment, keyed
//! by (tenant, assignment_id) so that one tenant can never cancel another's work. A cancel
//! that arrives before its assignment (still in the stream or a queue) is remembered for a
//! while and applied on arrival. One that arrives while its assignment waits in a CPU
//! thread's queue wakes that thread, which starts the assignment at once, past
//! `--max-in-flight` (it does not run, it is answered `cancelled`): before, the answer
//! waited for a slot, as long as whatever held the slots ran.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::key::{KeyHasher, TaskKey};

type Key = TaskKey;

/// How long an early cancel is remembered, and how many.
const EARLY_TTL: Duration = Duration::from_secs(600);
const EARLY_CAP: usize = 10_000;

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Key, (CancellationToken, Option<String>), KeyHasher>,
    early: HashMap<Key, (Instant, String), KeyHasher>,
    early_order: VecDeque<Key>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A queued or running assignment was cancelled.
    Cancelled,
    /// Not here (yet): remembered in case it arrives.
    Remembered,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Cancelled => "cancelled",
            Effect::Remembered => "remembered",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Cancels {
    inner: Arc<Mutex<Inner>>,
    /// Early cancels remembered so far, and the CPU threads' wake-up for them.
    remembered: Arc<(AtomicU64, Notify)>,
}

/// Keeps an assignment registered while it runs.
#[derive(Debug)]
pub struct Registration {
    cancels: Cancels,
    key: Key,
    pub token: CancellationToken,
}

impl Registration {
    /// The reason given by the cancel request, once cancelled.
    pub fn reason(&self) -> Option<String> {
        self.cancels
            .lock()
            .live
            .get(&self.key)
            .and_then(|(_, r)| r.clone())
    }
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an assignment; its token is already cancelled when a cancel came first or
    /// `stop` (the worker's hard stop) is. The token is not a child of `stop`: every
    /// child's creation and drop locks its parent, one lock shared by every CPU thread
    /// (2 % of the worker's CPU per task in issue 12's profile); [`Cancels::cancel_all`]
    /// cancels them instead, called right after `stop` is cancelled.
    pub fn register(&self, key: TaskKey, stop: &CancellationToken) -> Registration {
        let token = CancellationToken::new();
        let mut g = self.lock();
        // Early cancels are rare: no lookup while there are none.
        let early = (!g.early.is_empty())
            .then(|| g.early.remove(&key))
            .flatten()
            .filter(|(at, _)| at.elapsed() < EARLY_TTL);
        let reason = early.map(|(_, r)| {
            token.cancel();
            r
        });
        g.live.insert(key.clone(), (token.clone(), reason));
        // Checked under the lock: either `cancel_all` (after `stop` was cancelled) finds
        // this registration in `live`, or this sees `stop` cancelled.
        if stop.is_cancelled() {
            token.cancel();
        }
        Registration {
            cancels: self.clone(),
            key,
            token,
        }
    }

    /// Cancels every registered assignment (the worker's hard stop).
    pub fn cancel_all(&self) {
        for (token, _) in self.lock().live.values() {
            token.cancel();
        }
    }

    pub fn cancel(&self, tenant: &str, id: &str, reason: &str) -> Effect {
        let key = TaskKey::new(tenant, id);
        let mut g = self.lock();
        if let Some((token, r)) = g.live.get_mut(&key) {
            *r = Some(reason.to_owned());
            token.cancel();
            return Effect::Cancelled;
        }
        if g.early.len() >= EARLY_CAP {
            if let Some(old) = g.early_order.pop_front() {
                g.early.remove(&old);
            }
        }
        g.early
            .insert(key.clone(), (Instant::now(), reason.to_owned()));
        g.early_order.push_back(key);
        drop(g);
        let (count, wake) = &*self.remembered;
        count.fetch_add(1, Ordering::Release);
        wake.notify_waiters();
        Effect::Remembered
    }

    /// Resolves once a cancel is remembered after this call: made before
    /// [`Cancels::remembered_since`] is asked, so none slips between the two.
    pub fn woken(&self) -> Notified<'_> {
        self.remembered.1.notified()
    }

    /// How many early cancels were remembered so far (the start of `remembered_since`).
    pub fn remembered_count(&self) -> u64 {
        self.remembered.0.load(Ordering::Acquire)
    }

    /// The early cancels remembered since `seen` that still wait for their assignment,
    /// oldest first, and `seen` moved on. An atomic load when there are none (each turn of
    /// a CPU thread's start loop asks).
    pub fn remembered_since(&self, seen: &mut u64) -> Vec<TaskKey> {
        let now = self.remembered_count();
        if now == *seen {
            return Vec::new();
        }
        let new = usize::try_from(now - *seen).unwrap_or(usize::MAX);
        *seen = now;
        let g = self.lock();
        let skip = g.early_order.len().saturating_sub(new);
        g.early_order
            .iter()
            .skip(skip)
            .filter(|k| g.early.contains_key(*k))
            .cloned()
            .collect()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.lock().live.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_tenant_cancels() {
        let c = Cancels::default();
        let root = CancellationToken::new();
        let r = c.register(TaskKey::new("a", "x"), &root);
        assert_eq!(c.cancel("b", "x", "nope"), Effect::Remembered);
        assert!(!r.token.is_cancelled());
        assert_eq!(c.cancel("a", "x", "user"), Effect::Cancelled);
        assert!(r.token.is_cancelled());
        assert_eq!(r.reason().as_deref(), Some("user"));
    }

    #[test]
    fn the_hard_stop_reaches_running_and_later_registrations() {
        let c = Cancels::default();
        let stop = CancellationToken::new();
        let running = c.register(TaskKey::new("a", "1"), &stop);
        stop.cancel();
        c.cancel_all();
        assert!(running.token.is_cancelled());
        assert_eq!(running.reason(), None, "no cancel request's reason");
        let late = c.register(TaskKey::new("a", "2"), &stop);
        assert!(late.token.is_cancelled());
    }

    #[test]
    fn early_cancels_are_listed_once_each_and_wake_a_waiter() {
        let c = Cancels::default();
        let mut seen = c.remembered_count();
        assert!(c.remembered_since(&mut seen).is_empty());
        let woken = c.woken();
        assert_eq!(c.cancel("a", "1", "r"), Effect::Remembered);
        assert_eq!(c.cancel("a", "2", "r"), Effect::Remembered);
        // `woken` was made before the cancels: it is ready.
        futures::executor::block_on(woken);
        let keys = c.remembered_since(&mut seen);
        assert_eq!(keys, vec![TaskKey::new("a", "1"), TaskKey::new("a", "2")]);
        assert!(c.remembered_since(&mut seen).is_empty(), "listed once");
        // One that arrived meanwhile (registered) is not listed again.
        assert_eq!(c.cancel("a", "3", "r"), Effect::Remembered);
        let _r = c.register(TaskKey::new("a", "3"), &CancellationToken::new());
        assert!(c.remembered_since(&mut seen).is_empty());
    }

    #[test]
    fn an_early_cancel_applies_on_arrival() {
        let c = Cancels::default();
        let root = CancellationToken::new();
        assert_eq!(c.cancel("a", "y", "early"), Effect::Remembered);
        let r = c.register(TaskKey::new("a", "y"), &root);
        assert!(r.token.is_cancelled());
        assert_eq!(r.reason().as_deref(), Some("early"));
    }
}
