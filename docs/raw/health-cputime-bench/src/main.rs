use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
/// What one task used so far.
#[derive(Debug)]
struct Meter {
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
    fn used_ns(&self) -> u64 {
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
fn metered<F: Future>(
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


fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}
fn main() {
    const READS: u32 = 1_000_000;
    let t = Instant::now();
    let mut x = 0u64;
    for _ in 0..READS { x = x.wrapping_add(thread_cpu_ns()); }
    std::hint::black_box(x);
    let read_ns = t.elapsed().as_nanos() as f64 / f64::from(READS);
    let t = Instant::now();
    for _ in 0..READS { std::hint::black_box(Instant::now()); }
    let instant_ns = t.elapsed().as_nanos() as f64 / f64::from(READS);
    let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h").buckets(vec![0.005,0.01,0.025,0.05,0.1,0.25,0.5,1.0,2.5,5.0,10.0,25.0,100.0,1000.0,10000.0,60000.0])).unwrap();
    let polls = prometheus::IntCounter::new("p", "p").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    const TASKS: u32 = 200_000;
    for n_polls in [1u32, 4, 8] {
        let run = |metered_run: bool| {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..TASKS {
                    let task = async { for _ in 1..n_polls { tokio::task::yield_now().await; } };
                    if metered_run {
                        metered(Duration::from_secs(1), task, |ns, p| { hist.observe(ns as f64 / 1e6); polls.inc_by(u64::from(p)); }).await;
                    } else { task.await; }
                }
            });
            t.elapsed().as_nanos() as f64 / f64::from(TASKS)
        };
        let (mut bare, mut with) = (f64::MAX, f64::MAX);
        for _ in 0..7 { bare = bare.min(run(false)); with = with.min(run(true)); }
        println!("release: thread CPU clock read {read_ns:.0} ns, monotonic read {instant_ns:.0} ns; task of {n_polls} polls: bare {bare:.0} ns, metered {with:.0} ns, accounting {:.0} ns per task", with - bare);
    }
}
