//! CPU time per assignment. Each assignment's future runs on one pinned CPU thread;
//! [`metered`] wraps it and times each of its polls with the monotonic clock (TSC through
//! the vDSO, ~30 ns a read), so what the task itself runs on that thread adds up, and the
//! time the thread spends on other tasks, or waiting, does not. A poll's time is its CPU
//! time unless the kernel preempted the thread during the poll (then it is an upper
//! bound). The thread CPU clock (`CLOCK_THREAD_CPUTIME_ID`) would be exact but is a
//! system call: 1–2 µs a read on the 2-vCPU VM (`cost_of_the_accounting` below), over the
//! whole per-task budget of the performance work at two reads a poll. At the end the sum
//! goes into the `worker_task_cpu_time_ms` histogram, and the polls into
//! `worker_task_polls_total`.
//!
//! `--max-cpu-time-ms` is enforced on that sum: [`over_limit`] (called by the pipeline
//! after each block attempt) answers 5002 when the task has used more. On the CPU thread
//! the wall-clock deadline (`job.timeout_ms`, clamped to the same flag) usually fires
//! first; the CPU limit is what stops a task whose single poll ran past it (a long
//! synchronous step, e.g. one SQLite VM instruction) from being answered `success`.
//! Work the task hands to the IO and GPU pools runs on their threads and is not counted.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::contract::{ErrorCode, TaskError};

/// This thread's CPU time in ns (a system call: for measurements, not per poll).
#[cfg(test)]
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
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

    /// Used so far, the poll in progress included.
    pub(super) fn used_ns(&self) -> u64 {
        let running = self
            .poll_start
            .get()
            .map_or(0, |start| start.elapsed().as_nanos() as u64);
        self.used_ns.get() + running
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
        // Two clock reads per poll; the pair brackets only this task's own work.
        let start = Instant::now();
        this.meter.poll_start.set(Some(start));
        let r = this.inner.poll(cx);
        let spent = start.elapsed().as_nanos() as u64;
        this.meter.poll_start.set(None);
        this.meter.used_ns.set(this.meter.used_ns.get() + spent);
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
            let used = m.used_ns();
            (used > m.limit_ns).then(|| {
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
    use super::*;

    fn burn(d: Duration) {
        let end = Instant::now() + d;
        let mut x = 0u64;
        while Instant::now() < end {
            x = x.wrapping_add(1);
            std::hint::black_box(x);
        }
    }

    #[test]
    fn counts_the_polls_not_the_waits_and_enforces_the_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
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

    /// What the accounting costs: `cargo test --lib cputime -- --ignored --nocapture`.
    /// Prints the cost of one clock read, and of one metered poll and one metered task
    /// beyond the bare future (a task that yields `POLLS` times, metered or not).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_the_accounting() {
        const READS: u32 = 1_000_000;
        let t = std::time::Instant::now();
        let mut x = 0u64;
        for _ in 0..READS {
            x = x.wrapping_add(thread_cpu_ns());
        }
        std::hint::black_box(x);
        let read_ns = t.elapsed().as_nanos() as f64 / f64::from(READS);
        let t = std::time::Instant::now();
        for _ in 0..READS {
            std::hint::black_box(Instant::now());
        }
        let instant_ns = t.elapsed().as_nanos() as f64 / f64::from(READS);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        const TASKS: u32 = 20_000;
        const POLLS: u32 = 4;
        let run = |metered_run: bool| {
            let t = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..TASKS {
                    let task = async {
                        for _ in 1..POLLS {
                            tokio::task::yield_now().await;
                        }
                    };
                    if metered_run {
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
        let (mut bare, mut with) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            bare = bare.min(run(false));
            with = with.min(run(true));
        }
        eprintln!(
            "cputime cost: thread CPU clock read {read_ns:.0} ns, monotonic clock read \
             {instant_ns:.0} ns; task of {POLLS} polls: bare {bare:.0} ns, \
             metered {with:.0} ns, accounting {:.0} ns per task ({:.0} ns per poll)",
            with - bare,
            (with - bare) / f64::from(POLLS)
        );
    }
}
