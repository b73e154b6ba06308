//! Core mode: how many lanes are in the queue group. Lanes `0..active` are subscribed; the
//! others hold their connection and their thread, and take no messages from the server.
//!
//! Why: the server hands each message to one member of the queue group, so with every lane
//! subscribed at a partial load each thread wakes for about one message at a time and pays
//! a whole wake-up (poll, read, write, flush) per task. Fewer members take several messages
//! per wake-up. Measured with `beamline-bench` at a fixed rate, worker CPU per `fs.get`:
//! 1 vs 2 threads on the 2-vCPU VM 58.6 vs 92.6 µs at 5 000/s, 29.3 vs 39.5 at 20 000/s;
//! 1 vs 16 threads on the 16-core host at 20 000/s 20.5 vs 61.8 µs
//! (`bench/results/issue12-r8/`, `bench/results/device-h200-2026-11-28-second/`). This
//! rule against every lane in, on the VM: 34.4 vs 42.8 µs at 5 000/s, 19.1 vs 26.8 at
//! 20 000/s, flat out level (0.30× and 0.31× the null echo; `bench/results/issue12-r9/`).
//!
//! The rule, checked by each subscribed lane every [`TICK`] (and at once on a backlog):
//! - **join**: a lane whose thread was busy more than [`JOIN_PERMILLE`] of the last tick
//!   (busy: not parked, as its runtime counts it, so time runnable but preempted by other
//!   processes counts; [`busy_ns`]), whose thread has [`BACKLOG`] assignments queued and
//!   not started at the tick, or that took [`BURST`] messages in one turn twice within a
//!   tick (a backlog that lasts, not one scheduling stall of the thread), asks for one
//!   more lane; such a lane counts as fully busy;
//! - **leave**: the highest subscribed lane (never below `--min-lanes`) leaves once, for
//!   [`QUIET_TICKS`] ticks in a row, the busy time of the subscribed lanes would have fitted
//!   in one lane fewer at under [`LEAVE_PERMILLE`] each. That overestimates what the
//!   fewer lanes will be busy (they then take more messages per wake-up, each cheaper), so
//!   after a leave they stay under the join threshold: a steady load does not make a lane
//!   join and leave in turn.
//!
//! Leaving loses nothing: the lane does not unsubscribe at once (the client forgets a
//! subscription as soon as it sends `UNSUB`, and drops what the server had already sent
//! it); it sends `UNSUB <sid> <max>` with `max` the messages it has taken plus its buffer
//! plus [`LEAVE_ALLOWANCE`], so the server stops routing to it after that many and the
//! client keeps the subscription until it has handed over exactly those. Only when more
//! than that allowance is in flight between the server and the client at the moment of
//! leaving (at a load the lane judged to fit in fewer lanes) would the client drop the
//! excess, and those are counted in `worker_intake_dropped_total` like any slow
//! consumer's. Until it has them all it keeps taking its share, so a leave completes
//! after about `LEAVE_ALLOWANCE` more messages to it. (Should the client have dropped one
//! of them, its buffer full, it waits for one that never comes: that subscription lingers,
//! receiving nothing, until the connection closes.)
//!
//! A lane that is not subscribed still runs what its thread's queue holds: a lane whose
//! queue is full hands the delivery to another thread's queue before it refuses (4002 is
//! answered only when every CPU queue is full; `runtime::lane`).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often a subscribed lane measures its thread's busy time and applies the rule.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// A lane busier than this (‰ of a tick) asks for another lane.
pub(super) const JOIN_PERMILLE: u32 = 800;
/// The highest lane leaves when the others would each be under this (‰) without it…
pub(super) const LEAVE_PERMILLE: u32 = 650;
/// …for this many ticks in a row (one second).
pub(super) const QUIET_TICKS: u32 = 10;
/// Assignments queued and not started on a lane's thread, at a tick, that say it does not
/// keep up.
pub(super) const BACKLOG: usize = 128;
/// Messages taken in one turn without the buffer running dry that count as a burst; two
/// bursts within a [`TICK`] are a backlog.
pub(super) const BURST: u32 = 128;
/// Messages a leaving lane still takes beyond what its buffer may hold (see the module doc).
pub(super) const LEAVE_ALLOWANCE: u64 = 4096;

/// The lanes of one worker: which are in the core queue group, and, at stop, whether any
/// still takes deliveries.
#[derive(Debug)]
pub struct LaneScale {
    /// Lanes `0..active` are subscribed (or subscribing).
    active: AtomicUsize,
    /// Never fewer subscribed lanes than this.
    min: usize,
    /// Lane `i` is told that `active` grew past it.
    wake: Box<[Notify]>,
    /// Each lane's busy share of its last tick, ‰.
    busy: Box<[AtomicU32]>,
    /// `worker_intake_lanes_active`.
    gauge: IntGauge,
    /// Lanes whose intake has not ended; `ended` is cancelled when none is left.
    running: AtomicUsize,
    ended: CancellationToken,
}

impl LaneScale {
    /// `lanes` lanes, `min` of them always subscribed (clamped to 1..=lanes).
    pub fn new(lanes: usize, min: usize, gauge: IntGauge) -> LaneScale {
        let lanes = lanes.max(1);
        let min = min.clamp(1, lanes);
        gauge.set(min as i64);
        LaneScale {
            active: AtomicUsize::new(min),
            min,
            wake: (0..lanes).map(|_| Notify::new()).collect(),
            busy: (0..lanes).map(|_| AtomicU32::new(0)).collect(),
            gauge,
            running: AtomicUsize::new(lanes),
            ended: CancellationToken::new(),
        }
    }

    /// Called once per lane when its intake has ended (at stop). A call past the lanes
    /// counted changes nothing (the count never wraps around to "running").
    pub fn intake_ended(&self) {
        let before = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.ended.cancel();
        }
    }

    /// Returns once every lane's intake has ended: from then on no lane hands a delivery
    /// to any thread's queue (a core lane may hand one to another thread's).
    pub async fn every_intake_ended(&self) {
        self.ended.cancelled().await;
    }

    /// Whether lane `index` should be subscribed.
    pub fn wanted(&self, index: usize) -> bool {
        index < self.active.load(Ordering::Acquire)
    }

    /// Lanes subscribed (or subscribing) now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until lane `index` is told that membership changed.
    pub async fn changed(&self, index: usize) {
        if let Some(n) = self.wake.get(index) {
            n.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// One more lane joins, unless all are in; wakes it.
    pub fn join_one(&self) {
        let n = self.wake.len();
        let mut a = self.active.load(Ordering::Acquire);
        while a < n {
            match self
                .active
                .compare_exchange_weak(a, a + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.gauge.set(a as i64 + 1);
                    self.wake[a].notify_one();
                    return;
                }
                Err(now) => a = now,
            }
        }
    }

    /// Lane `index` leaves when it is the highest subscribed lane and above the minimum;
    /// whether it did.
    pub fn leave(&self, index: usize) -> bool {
        if index < self.min {
            return false;
        }
        let left = self
            .active
            .compare_exchange(index + 1, index, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if left {
            self.gauge.set(index as i64);
            self.busy[index].store(0, Ordering::Relaxed);
        }
        left
    }

    /// Records lane `index`'s busy share (‰) of its last tick.
    pub fn record(&self, index: usize, permille: u32) {
        if let Some(b) = self.busy.get(index) {
            b.store(permille, Ordering::Relaxed);
        }
    }

    /// The busy share (‰) each of the lanes below `index` would have had if lane `index`
    /// had not been subscribed: their busy time and its own, over `index` lanes.
    pub fn without(&self, index: usize) -> u32 {
        if index == 0 {
            return u32::MAX;
        }
        let sum: u64 = self.busy[..=index.min(self.busy.len() - 1)]
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .sum();
        (sum / index as u64).min(u64::from(u32::MAX)) as u32
    }
}

/// What one subscribed lane measures and decides each tick.
#[derive(Debug)]
pub(super) struct LaneMeter {
    index: usize,
    wall: std::time::Instant,
    busy_ns: u64,
    quiet: u32,
    /// When the last burst was seen.
    burst: Option<std::time::Instant>,
}

/// How long this thread has been busy, in ns: on a current-thread tokio runtime (a CPU
/// thread's), the wall time it spent running tasks rather than parked, as the runtime
/// counts it (`worker_total_busy_duration`), so time spent runnable but preempted by other
/// processes counts: a lane that cannot keep up on a host whose cores it shares is busy.
/// Elsewhere (tests) the thread's CPU time.
fn busy_ns() -> u64 {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.metrics().num_workers() == 1 => {
            h.metrics().worker_total_busy_duration(0).as_nanos() as u64
        }
        _ => beamline_io::cputime::thread_cpu_ns(),
    }
}

/// What the lane does after a tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Stay,
    Leave,
}

impl LaneMeter {
    pub(super) fn new(index: usize) -> LaneMeter {
        LaneMeter {
            index,
            wall: std::time::Instant::now(),
            busy_ns: busy_ns(),
            quiet: 0,
            burst: None,
        }
    }

    /// Starts measuring afresh (after the lane joined again).
    pub(super) fn reset(&mut self) {
        *self = LaneMeter::new(self.index);
    }

    /// Measures the thread's busy share since the last tick ([`busy_ns`]; full with `backlog` ≥
    /// [`BACKLOG`]) and applies the rule: asks for one more lane when busy, says when this
    /// lane should leave.
    pub(super) fn tick(&mut self, scale: &LaneScale, backlog: usize) -> Verdict {
        let (wall, busy) = (std::time::Instant::now(), busy_ns());
        let elapsed = wall.duration_since(self.wall).as_nanos() as u64;
        if elapsed < (TICK / 2).as_nanos() as u64 {
            // Too short to judge (an interval's first tick is at once): measure on.
            return Verdict::Stay;
        }
        let permille = (busy.saturating_sub(self.busy_ns).saturating_mul(1000) / elapsed) as u32;
        (self.wall, self.busy_ns) = (wall, busy);
        let permille = if backlog >= BACKLOG { 1000 } else { permille };
        self.judge(scale, permille.min(1000))
    }

    /// The rule, given this tick's busy share.
    fn judge(&mut self, scale: &LaneScale, permille: u32) -> Verdict {
        scale.record(self.index, permille);
        if permille > JOIN_PERMILLE {
            self.quiet = 0;
            scale.join_one();
            return Verdict::Stay;
        }
        let highest = scale.active() == self.index + 1;
        if !highest || self.index < scale.min || scale.without(self.index) >= LEAVE_PERMILLE {
            self.quiet = 0;
            return Verdict::Stay;
        }
        self.quiet += 1;
        if self.quiet >= QUIET_TICKS && scale.leave(self.index) {
            self.quiet = 0;
            return Verdict::Leave;
        }
        Verdict::Stay
    }

    /// This lane took [`BURST`] more messages in one turn. The second within a [`TICK`] is a
    /// backlog: it counts as a busy tick and asks for one more lane.
    pub(super) fn burst(&mut self, scale: &LaneScale) {
        self.quiet = 0;
        let now = std::time::Instant::now();
        if self.burst.is_some_and(|b| now.duration_since(b) < TICK) {
            scale.record(self.index, 1000);
            scale.join_one();
            self.burst = None;
        } else {
            self.burst = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(lanes: usize, min: usize) -> LaneScale {
        LaneScale::new(lanes, min, IntGauge::new("g", "g").expect("gauge"))
    }

    #[test]
    fn starts_with_the_minimum_and_joins_one_at_a_time_up_to_all() {
        let s = scale(3, 1);
        assert_eq!((s.active(), s.gauge.get()), (1, 1));
        assert!(s.wanted(0) && !s.wanted(1));
        s.join_one();
        assert!(s.wanted(1) && !s.wanted(2));
        s.join_one();
        s.join_one();
        assert_eq!((s.active(), s.gauge.get()), (3, 3));
        assert_eq!(scale(2, 0).active(), 1, "at least one lane");
        assert_eq!(scale(2, 9).active(), 2, "at most every lane");
    }

    #[test]
    fn on_a_cpu_thread_the_tick_measures_the_runtimes_busy_time() -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let s = scale(2, 1);
            let mut m = LaneMeter::new(0);
            let end = std::time::Instant::now() + TICK;
            while std::time::Instant::now() < end {
                std::hint::black_box(0u64);
            }
            // Parking hands the runtime's busy time over (tokio counts it per park).
            tokio::time::sleep(Duration::from_millis(1)).await;
            m.tick(&s, 0);
            assert!(s.busy[0].load(Ordering::Relaxed) > 800, "{:?}", s.busy);
            assert_eq!(s.active(), 2, "busy: another lane");
            tokio::time::sleep(TICK).await;
            m.tick(&s, 0);
            assert!(s.busy[0].load(Ordering::Relaxed) < 200, "{:?}", s.busy);
        });
        Ok(())
    }

    #[tokio::test]
    async fn every_intake_ended_waits_for_the_last_lane() {
        let s = std::sync::Arc::new(scale(2, 1));
        s.intake_ended();
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.every_intake_ended().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one lane still runs");
        s.intake_ended();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("ends once both have")
            .expect("task");
        // One call too many: still ended (the count does not wrap around).
        s.intake_ended();
        assert_eq!(s.running.load(Ordering::Acquire), 0);
        tokio::time::timeout(Duration::from_millis(100), s.every_intake_ended())
            .await
            .expect("still ended");
    }

    #[test]
    fn only_the_highest_lane_above_the_minimum_leaves() {
        let s = scale(3, 1);
        s.join_one();
        s.join_one();
        assert!(!s.leave(1), "not the highest");
        assert!(s.leave(2));
        assert!(s.leave(1));
        assert!(!s.leave(0), "the minimum stays");
        assert_eq!((s.active(), s.gauge.get()), (1, 1));
    }

    #[test]
    fn a_busy_lane_asks_for_another_and_a_quiet_highest_lane_leaves_after_a_second() {
        let s = scale(2, 1);
        let (mut m0, mut m1) = (LaneMeter::new(0), LaneMeter::new(1));
        assert_eq!(m0.judge(&s, 900), Verdict::Stay);
        assert_eq!(s.active(), 2, "busy lane 0 brought lane 1 in");
        // Together 700 ‰: one lane would be 70 % busy, over the leave threshold: stay.
        m0.judge(&s, 350);
        for _ in 0..3 * QUIET_TICKS {
            assert_eq!(m1.judge(&s, 350), Verdict::Stay);
        }
        // Together 600 ‰: leaves after QUIET_TICKS quiet ticks, not before.
        m0.judge(&s, 300);
        for _ in 1..QUIET_TICKS {
            assert_eq!(m1.judge(&s, 300), Verdict::Stay);
        }
        assert_eq!(m1.judge(&s, 300), Verdict::Leave);
        assert_eq!(s.active(), 1);
        // Lane 0 is the minimum: never leaves.
        for _ in 0..3 * QUIET_TICKS {
            assert_eq!(m0.judge(&s, 0), Verdict::Stay);
        }
    }

    #[test]
    fn a_busy_tick_or_a_backlog_restarts_the_quiet_count() {
        let s = scale(3, 1);
        s.join_one();
        let (mut m0, mut m1) = (LaneMeter::new(0), LaneMeter::new(1));
        m0.judge(&s, 100);
        for _ in 1..QUIET_TICKS {
            m1.judge(&s, 100);
        }
        m1.burst(&s);
        assert_eq!(s.active(), 2, "one burst is not a backlog");
        m1.burst(&s);
        assert_eq!(
            s.active(),
            3,
            "a second within a tick brings one more lane in"
        );
        // Lane 1 is no longer the highest; lane 2 is, and its own count starts at zero.
        let mut m2 = LaneMeter::new(2);
        m1.judge(&s, 100);
        for _ in 1..QUIET_TICKS {
            assert_eq!(m2.judge(&s, 100), Verdict::Stay);
        }
        assert_eq!(m2.judge(&s, 100), Verdict::Leave);
    }

    #[test]
    fn off_a_runtime_the_tick_measures_this_threads_cpu() {
        let s = scale(2, 1);
        let (cpu0, wall0) = (
            beamline_io::cputime::thread_cpu_ns(),
            std::time::Instant::now(),
        );
        let mut m = LaneMeter::new(0);
        m.tick(&s, 0);
        assert_eq!(s.busy[0].load(Ordering::Relaxed), 0, "too short to judge");
        // Spin until this thread has had a tick's worth of CPU, however long the host's
        // other work makes that take.
        let tick_ns = TICK.as_nanos() as u64;
        let mut x = 0u64;
        while beamline_io::cputime::thread_cpu_ns() - cpu0 < tick_ns {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        m.tick(&s, 0);
        let wall = wall0.elapsed().as_nanos() as u64;
        // The tick says the thread's CPU over the tick's wall time: at least the tick of
        // CPU spun over at most `wall` (less a little for the rounding down of both and the
        // microseconds between `cpu0` and the meter's first reading). Unloaded, about 1 000.
        let least = (tick_ns * 1000 / wall).min(1000) as u32;
        let busy = s.busy[0].load(Ordering::Relaxed);
        assert!(busy + 10 >= least, "busy {busy}‰, at least {least}‰");
        std::thread::sleep(TICK);
        m.tick(&s, 0);
        assert!(s.busy[0].load(Ordering::Relaxed) < 200, "{:?}", s.busy);
        // Idle, but with a backlog: counts as fully busy and asks for another lane.
        let s = scale(2, 1);
        let mut m = LaneMeter::new(0);
        std::thread::sleep(TICK);
        m.tick(&s, BACKLOG - 1);
        assert_eq!(s.active(), 1, "idle, no backlog: {:?}", s.busy);
        std::thread::sleep(TICK);
        m.tick(&s, BACKLOG);
        assert_eq!(s.busy[0].load(Ordering::Relaxed), 1000, "a backlog is full");
        assert_eq!(s.active(), 2, "and asks for another lane");
    }
}
