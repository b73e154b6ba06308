//! CPU time per assignment. Each assignment's future runs on one pinned CPU thread;
//! [`metered`] wraps it and times each of its polls. What the task itself runs on that
//! thread adds up, and neither the time the thread spends on other tasks nor the time a
//! poll waits (a blocking call, the thread preempted) counts. Work done for the task on
//! other threads comes back with its answers and is charged on the CPU thread while the
//! task is polled (`beamline_io::cputime::charge`): the IO pool's per-request CPU time
//! (`IoPool::get` / `put` charge it themselves), the GPU pool's share of each batch and
//! the blocking pool's model loading (charged by the `ai.*` blocks). After each poll the
//! meter takes what was charged. At the end the total goes into the
//! `worker_task_cpu_time_ms` histogram, and the polls into `worker_task_polls_total`.
//!
//! The thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) is a system call (≈ 0.55 µs a read
//! on the 2-vCPU VM; two a poll cost ≈ 3 µs per fs.get task in the bench), so it is read
//! once per [`WINDOW`] of the thread's busy time, not per poll. Polls are timed with the
//! monotonic clock (vDSO), and their wall time is turned into CPU time by the window:
//! - a poll that fills at least half of the window it closes (a long synchronous step, a
//!   blocking call) gets the window's CPU time less the time before it in the window, at
//!   most its wall time: a blocking poll counts what it ran, not what it waited, within
//!   one window (≤ 500 µs) of error;
//! - shorter polls get their wall time times the share of the last window's poll time the
//!   thread was on a CPU (1 unless it was preempted).
//!
//! A window starts afresh (one more read) when a poll starts after the thread idled for
//! longer than a window, so idle time never lowers that share.
//!
//! `--max-cpu-time-ms` is enforced on that total: [`over_limit`] (called by the pipeline
//! after each block attempt) answers 5002 when the task has used more. The wall-clock
//! deadline (`job.timeout_ms`, clamped to the same flag) is unchanged; the CPU limit is
//! what stops a task whose single poll ran past it (a long synchronous step, e.g. one
//! SQLite VM instruction) or whose work on the IO/GPU pools did, from being answered
//! `success`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use beamline_io::cputime::{charged, take_charged, thread_cpu_ns};

use crate::contract::{ErrorCode, TaskError};

/// How much of the thread's busy time one CPU clock read covers (see the module doc).
const WINDOW: Duration = Duration::from_micros(500);

/// One CPU thread's current window: the CPU clock read at its start, when, the metered
/// polls' wall time since, and the on-CPU share of the last window's polls.
#[derive(Debug, Clone, Copy)]
struct Window {
    cpu: u64,
    at: Instant,
    polls_ns: u64,
    /// Parts per million.
    share_ppm: u64,
}

thread_local! {
    static THREAD_WINDOW: Cell<Option<Window>> = const { Cell::new(None) };
}

fn window() -> Option<Window> {
    THREAD_WINDOW.try_with(Cell::get).ok().flatten()
}

fn set_window(w: Window) {
    let _ = THREAD_WINDOW.try_with(|c| c.set(Some(w)));
}

/// A poll starts now: a fresh window (one clock read) when there is none or the last one
/// is older than [`WINDOW`] (the thread idled or ran unmetered work since).
fn poll_start() -> Instant {
    let now = Instant::now();
    match window() {
        Some(w) if now.saturating_duration_since(w.at) < WINDOW => {}
        last => set_window(Window {
            cpu: thread_cpu_ns(),
            at: now,
            polls_ns: 0,
            share_ppm: last.map_or(1_000_000, |w| w.share_ppm),
        }),
    }
    now
}

/// The CPU time of a poll that started at `started` and is still running (or just
/// ended): the window's CPU time since it started, less the time before the poll in the
/// window, at most the poll's wall time. Reads the clock.
fn poll_cpu_exact(w: &Window, started: Instant, cpu_now: u64, wall: u64) -> u64 {
    let before = started.saturating_duration_since(w.at).as_nanos() as u64;
    cpu_now
        .saturating_sub(w.cpu)
        .saturating_sub(before)
        .min(wall)
}

/// A poll that started at `started` ended now: its CPU time (see the module doc).
fn poll_end(started: Instant) -> u64 {
    let now = Instant::now();
    let wall = now.saturating_duration_since(started).as_nanos() as u64;
    let Some(mut w) = window() else {
        return wall;
    };
    w.polls_ns = w.polls_ns.saturating_add(wall);
    let span = now.saturating_duration_since(w.at);
    if span < WINDOW {
        set_window(w);
        return wall.saturating_mul(w.share_ppm) / 1_000_000;
    }
    let cpu = thread_cpu_ns();
    // A long poll (a blocking call, a long step) is measured on its own and leaves the
    // share as it was: what it waited is not preemption of the polls around it.
    let (spent, share_ppm) = if wall.saturating_mul(2) >= span.as_nanos() as u64 {
        (poll_cpu_exact(&w, started, cpu, wall), w.share_ppm)
    } else {
        let share = cpu.saturating_sub(w.cpu).saturating_mul(1_000_000) / w.polls_ns.max(1);
        (
            wall.saturating_mul(w.share_ppm) / 1_000_000,
            share.min(1_000_000),
        )
    };
    set_window(Window {
        cpu,
        at: now,
        polls_ns: 0,
        share_ppm,
    });
    spent
}

/// What one task used so far.
#[derive(Debug)]
pub(super) struct Meter {
    used_ns: Cell<u64>,
    polls: Cell<u32>,
    /// When the poll in progress started.
    poll_start: Cell<Option<Instant>>,
    limit_ns: u64,
}

impl Meter {
    fn new(limit: Duration) -> Meter {
        Meter {
            used_ns: Cell::new(0),
            polls: Cell::new(0),
            poll_start: Cell::new(None),
            limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Used so far: the poll in progress and what was charged during it included.
    pub(super) fn used_ns(&self) -> u64 {
        let running = match (self.poll_start.get(), window()) {
            (Some(at), Some(w)) => {
                let wall = at.elapsed().as_nanos() as u64;
                poll_cpu_exact(&w, at, thread_cpu_ns(), wall) + charged()
            }
            (Some(at), None) => at.elapsed().as_nanos() as u64 + charged(),
            (None, _) => 0,
        };
        self.used_ns.get().saturating_add(running)
    }

    /// What was used, when it is over the limit. The poll in progress has used at most
    /// the wall time since it started, so the CPU clock is read only when that bound
    /// could cross the limit.
    fn over_limit_ns(&self) -> Option<u64> {
        let bound = self.poll_start.get().map_or(0, |at| {
            (at.elapsed().as_nanos() as u64).saturating_add(charged())
        });
        if self.used_ns.get().saturating_add(bound) <= self.limit_ns {
            return None;
        }
        let used = self.used_ns();
        (used > self.limit_ns).then_some(used)
    }
}

tokio::task_local! {
    static METER: Rc<Meter>;
}

/// Runs `fut` with its CPU time accounted; `done` gets the total (ns) and the number of
/// polls when it completes.
pub(super) fn metered<F: Future>(
    limit: Duration,
    fut: F,
    done: impl FnOnce(u64, u32),
) -> impl Future<Output = F::Output> {
    let meter = Rc::new(Meter::new(limit));
    Metered {
        inner: METER.scope(meter.clone(), fut),
        meter,
        done: Some(done),
    }
}

pin_project_lite::pin_project! {
    // Inline, not boxed: no allocation per task beyond the `Rc` of its meter.
    struct Metered<G, D> {
        #[pin]
        inner: G,
        meter: Rc<Meter>,
        done: Option<D>,
    }
}

impl<G: Future, D: FnOnce(u64, u32)> Future for Metered<G, D> {
    type Output = G::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<G::Output> {
        let this = self.project();
        // Charges made outside any metered poll belong to no task.
        take_charged();
        // Two monotonic readings per poll; the CPU clock once per window (module doc).
        let at = poll_start();
        this.meter.poll_start.set(Some(at));
        let r = this.inner.poll(cx);
        let spent = poll_end(at) + take_charged();
        this.meter.poll_start.set(None);
        this.meter
            .used_ns
            .set(this.meter.used_ns.get().saturating_add(spent));
        this.meter
            .polls
            .set(this.meter.polls.get().saturating_add(1));
        if r.is_ready() {
            if let Some(done) = this.done.take() {
                done(this.meter.used_ns.get(), this.meter.polls.get());
            }
        }
        r
    }
}

/// The task's CPU time so far, when it runs under [`metered`].
#[cfg(test)]
fn used() -> Option<Duration> {
    METER.try_with(|m| Duration::from_nanos(m.used_ns())).ok()
}

/// 5002 when the task running now has used more CPU time than `--max-cpu-time-ms`.
pub(super) fn over_limit() -> Option<TaskError> {
    METER
        .try_with(|m| {
            m.over_limit_ns().map(|used| {
                TaskError::new(
                    ErrorCode::CancelledByTimeout,
                    format!(
                        "CPU time limit exceeded: used {} ms of the {} ms --max-cpu-time-ms",
                        used / 1_000_000,
                        m.limit_ns / 1_000_000
                    ),
                )
            })
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Burns `d` of this thread's CPU time (not wall time: the thread may be preempted).
    fn burn(d: Duration) {
        let end = thread_cpu_ns() + d.as_nanos() as u64;
        let mut x = 0u64;
        while thread_cpu_ns() < end {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn counts_the_polls_not_the_waits_and_enforces_the_limit() {
        let rt = runtime();
        let total = Rc::new(Cell::new(0u64));
        let t = total.clone();
        let (before, after) = rt.block_on(metered(
            Duration::from_millis(20),
            async {
                burn(Duration::from_millis(5));
                // Waiting is not CPU time.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let before = (used(), over_limit().is_some());
                burn(Duration::from_millis(30));
                (before, over_limit())
            },
            move |ns, _| t.set(ns),
        ));
        let used_then = before.0.expect("metered");
        assert!(
            used_then >= Duration::from_millis(5) && used_then < Duration::from_millis(20),
            "{used_then:?}"
        );
        assert!(!before.1, "under the limit");
        let e = after.expect("over the limit within the poll");
        assert_eq!(e.code, ErrorCode::CancelledByTimeout);
        assert!(e.message.contains("CPU time"), "{}", e.message);
        let ns = total.get();
        assert!(
            (35_000_000..50_000_000).contains(&ns),
            "35 ms burnt, 50 ms slept: {ns} ns"
        );
        assert!(over_limit().is_none(), "outside a metered task");
    }

    /// A poll that blocks (here a sleep of the thread inside the poll, as a blocking call
    /// would) is not CPU time: the wall clock per poll counted it.
    #[test]
    fn a_poll_that_blocks_is_not_cpu_time() {
        let rt = runtime();
        let total = Rc::new(Cell::new(0u64));
        let t = total.clone();
        let over = rt.block_on(metered(
            Duration::from_millis(20),
            async {
                std::thread::sleep(Duration::from_millis(60));
                over_limit()
            },
            move |ns, _| t.set(ns),
        ));
        assert!(
            over.is_none(),
            "60 ms blocked in a poll is not 20 ms of CPU"
        );
        assert!(total.get() < 10_000_000, "{} ns", total.get());
    }

    /// A blocking poll is measured on its own and does not lower what the short polls
    /// after it count (what it waited is not preemption of theirs).
    #[test]
    fn a_blocking_poll_leaves_the_short_polls_after_it_counted() {
        let rt = runtime();
        let total = Rc::new(Cell::new(0u64));
        let t = total.clone();
        rt.block_on(metered(
            Duration::from_secs(10),
            async {
                std::thread::sleep(Duration::from_millis(60));
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                    burn(Duration::from_micros(200));
                }
            },
            move |ns, _| t.set(ns),
        ));
        let ns = total.get();
        assert!(
            (1_700_000..10_000_000).contains(&ns),
            "2 ms burnt in 10 short polls after a 60 ms blocking one: {ns} ns"
        );
    }

    /// CPU time charged by other threads' work (the IO and GPU pools) counts, within the
    /// poll that received it, and is enforced.
    #[test]
    fn work_charged_from_other_threads_counts_and_is_enforced() {
        let rt = runtime();
        beamline_io::cputime::charge(1_000_000_000); // outside any task: nobody's
        let total = Rc::new(Cell::new(0u64));
        let t = total.clone();
        let (first, second) = rt.block_on(metered(
            Duration::from_millis(50),
            async {
                beamline_io::cputime::charge(30_000_000);
                let first = over_limit();
                tokio::task::yield_now().await;
                beamline_io::cputime::charge(30_000_000);
                (first, over_limit())
            },
            move |ns, _| t.set(ns),
        ));
        assert!(first.is_none(), "30 of 50 ms");
        assert!(second.is_some(), "60 of 50 ms");
        let ns = total.get();
        assert!((60_000_000..70_000_000).contains(&ns), "{ns} ns");
        assert_eq!(beamline_io::cputime::charged(), 0, "taken by the meter");
    }

    /// What the accounting costs: `cargo test --lib cputime -- --ignored --nocapture`.
    /// Prints the cost of one clock read, and of one metered poll and one metered task
    /// beyond the bare future (a task that yields `POLLS` times, metered or not).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_the_accounting() {
        const READS: u32 = 1_000_000;
        let (mut read_ns, mut instant_ns) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            let mut x = 0u64;
            for _ in 0..READS {
                x = x.wrapping_add(thread_cpu_ns());
            }
            std::hint::black_box(x);
            read_ns = read_ns.min(t.elapsed().as_nanos() as f64 / f64::from(READS));
            let t = Instant::now();
            for _ in 0..READS {
                std::hint::black_box(Instant::now());
            }
            instant_ns = instant_ns.min(t.elapsed().as_nanos() as f64 / f64::from(READS));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        const TASKS: u32 = 20_000;
        const POLLS: u32 = 2;
        // mode 0: bare; 1: metered (busy thread: one CPU clock read per window); 2:
        // metered, a fresh window at every poll (as when the thread idled before each).
        let run = |mode: u8| {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..TASKS {
                    let task = async {
                        for _ in 1..POLLS {
                            if mode == 2 {
                                THREAD_WINDOW.with(|l| l.set(None));
                            }
                            tokio::task::yield_now().await;
                        }
                    };
                    if mode == 2 {
                        THREAD_WINDOW.with(|l| l.set(None));
                    }
                    if mode > 0 {
                        metered(Duration::from_secs(1), task, |ns, p| {
                            std::hint::black_box((ns, p));
                        })
                        .await;
                    } else {
                        task.await;
                    }
                }
            });
            t.elapsed().as_nanos() as f64 / f64::from(TASKS)
        };
        let (mut bare, mut with, mut cold) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..5 {
            bare = bare.min(run(0));
            with = with.min(run(1));
            cold = cold.min(run(2));
        }
        eprintln!(
            "cputime cost (min of runs): thread CPU clock read {read_ns:.0} ns, monotonic \
             clock read {instant_ns:.0} ns; task of {POLLS} polls: bare {bare:.0} ns, \
             metered on a busy thread {with:.0} ns (accounting {:.0} ns per task, {:.0} per \
             poll), metered with a fresh window every poll {cold:.0} ns (accounting {:.0} ns per \
             task, {:.0} per poll)",
            with - bare,
            (with - bare) / f64::from(POLLS),
            cold - bare,
            (cold - bare) / f64::from(POLLS)
        );
    }
}
