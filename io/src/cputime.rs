//! Thread CPU time, and the account of CPU time other threads spent for the task being
//! polled on this thread.
//!
//! [`thread_cpu_ns`] reads `CLOCK_THREAD_CPUTIME_ID` (a system call: the vDSO does not
//! serve the CPU-time clocks). The IO threads measure with it what each request cost them
//! and send that with the reply; [`crate::IoPool::get`] and [`crate::IoPool::put_with`]
//! [`charge`] it on the thread that awaited the reply. The worker's per-assignment meter
//! (`runtime::cputime`, which polls each assignment on one thread) takes what was charged
//! during a poll with [`take_charged`] and adds it to that assignment's CPU time; other
//! pools (the GPU pool) report their time with their answers and the block charges it.

use std::cell::Cell;

thread_local! {
    /// CPU ns charged on this thread since the last [`take_charged`].
    static CHARGED: Cell<u64> = const { Cell::new(0) };
}

/// The calling thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`); 0 if the clock cannot
/// be read (it always can on Linux).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Runs `f` and returns what it returned with the CPU time (ns) it used on this thread:
/// for work done on another thread (e.g. tokio's blocking pool) to be [`charge`]d to the
/// task that waits for it.
pub fn measured<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let start = thread_cpu_ns();
    let r = f();
    (r, thread_cpu_ns().saturating_sub(start))
}

/// Adds `ns` of CPU time, spent on another thread for the task being polled now on this
/// thread, to this thread's account (taken by the task's meter after the poll).
pub fn charge(ns: u64) {
    let _ = CHARGED.try_with(|c| c.set(c.get().saturating_add(ns)));
}

/// What was charged on this thread since the last call, and resets it.
pub fn take_charged() -> u64 {
    CHARGED.try_with(|c| c.replace(0)).unwrap_or(0)
}

/// What was charged on this thread since the last [`take_charged`], left in place.
pub fn charged() -> u64 {
    CHARGED.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_work_not_sleep() {
        let t0 = thread_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = thread_cpu_ns() - t0;
        assert!(slept < 10_000_000, "sleeping used {slept} ns");
        // Spinning makes it advance: 5 ms of it within 5 s of wall time, however busy the
        // host (a fixed spin of wall time gets what share of a core the host leaves it).
        let t1 = thread_cpu_ns();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while thread_cpu_ns() - t1 < 5_000_000 {
            assert!(
                std::time::Instant::now() < give_up,
                "5 s of spinning read {} ns",
                thread_cpu_ns() - t1
            );
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }

    #[test]
    fn charges_add_up_per_thread_and_are_taken_once() {
        assert_eq!(take_charged(), 0);
        charge(5);
        charge(7);
        assert_eq!(charged(), 12);
        std::thread::spawn(|| assert_eq!(charged(), 0))
            .join()
            .expect("other thread");
        assert_eq!(take_charged(), 12);
        assert_eq!(take_charged(), 0);
    }
}
