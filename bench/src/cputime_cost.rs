//! `beamline-bench cputime-cost`: what the worker's per-task CPU time accounting costs
//! (issue 13 item 6; figures in docs/raw/health/health-cputime-cost.log, section 2).
//!
//! The meter below is the worker's `runtime/cputime.rs` wrapper (`Meter`, `metered`: two
//! monotonic clock reads a poll, a task-local scope), repeated here because the worker
//! keeps it private to its runtime; keep the two alike when either changes. Each run
//! times 200 000 tasks of 1, 4 and 8 polls on a current-thread tokio runtime, bare and
//! metered (with the histogram observe and counter increment the worker does per task),
//! and prints the minimum of 7 runs, with the cost of one thread CPU clock read (the
//! system call the worker avoids per poll) and one monotonic clock read beside it. Run it
//! from a release build: `cargo run --release -p beamline-bench -- cputime-cost`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Result;

/// What one task used so far.
#[derive(Debug)]
struct Meter {
    used_ns: Cell<u64>,
    polls: Cell<u32>,
    /// When the poll in progress started.
    poll_start: Cell<Option<Instant>>,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            used_ns: Cell::new(0),
            polls: Cell::new(0),
            poll_start: Cell::new(None),
        }
    }
}

tokio::task_local! {
    static METER: Rc<Meter>;
}

/// Runs `fut` with its CPU time accounted; `done` gets the total (ns) and the number of
/// polls when it completes.
fn metered<F: Future>(fut: F, done: impl FnOnce(u64, u32)) -> impl Future<Output = F::Output> {
    let meter = Rc::new(Meter::new());
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
        let spent = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
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

/// This thread's CPU time in ns (a system call).
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Mean ns of one call of `f` over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// The `worker_task_cpu_time_ms` buckets.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0, 1000.0, 10000.0,
    60000.0,
];

/// Prints one line per task shape (1, 4 and 8 polls).
pub(crate) fn cputime_cost_main() -> Result<()> {
    const READS: u32 = 1_000_000;
    const TASKS: u32 = 200_000;
    let read_ns = per_call(READS, || {
        std::hint::black_box(thread_cpu_ns());
    });
    let instant_ns = per_call(READS, || {
        std::hint::black_box(Instant::now());
    });
    let hist = prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new("h", "h").buckets(BUCKETS.to_vec()),
    )?;
    let polls = prometheus::IntCounter::new("p", "p")?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    for n_polls in [1u32, 4, 8] {
        let run = |metered_run: bool| {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..TASKS {
                    let task = async {
                        for _ in 1..n_polls {
                            tokio::task::yield_now().await;
                        }
                    };
                    if metered_run {
                        metered(task, |ns, p| {
                            hist.observe(ns as f64 / 1e6);
                            polls.inc_by(u64::from(p));
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
        for _ in 0..7 {
            bare = bare.min(run(false));
            with = with.min(run(true));
        }
        println!(
            "{build}: thread CPU clock read {read_ns:.0} ns, monotonic read {instant_ns:.0} ns; \
             task of {n_polls} polls: bare {bare:.0} ns, metered {with:.0} ns, accounting {:.0} ns per task",
            with - bare
        );
    }
    Ok(())
}
