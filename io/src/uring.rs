//! The io_uring backend: one ring per pinned IO thread.
//!
//! Loop: take as many queued requests as there are free slots (`try_recv`, never blocking),
//! push the first op of each, submit everything in one `io_uring_enter` and wait for at
//! least one completion; feed each CQE to the request keyed by its `user_data`, pushing the
//! request's next op, and go round again. While idle the thread sleeps in the ring on a read
//! of the shard's eventfd; a caller that queues a request while the thread sleeps bumps the
//! eventfd (a Dekker-style `sleeping` flag keeps that to one syscall per wake-up).
//!
//! CPU time per request (sent with its reply): the thread's CPU clock is read after each
//! admission and each completion handled, and the time since the previous read goes to
//! that request; the CPU time of an `io_uring_enter` that submitted step ops (which may
//! complete page-cache reads inline) is split evenly among the requests whose ops it
//! submitted. An `enter` that only waited is not billed (waiting uses no CPU).

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use flume::{Receiver, TryRecvError};
use io_uring::{cqueue, opcode, squeue, types, IoUring, SubmissionQueue, Submitter};

use crate::cputime::thread_cpu_ns;
use crate::error::FsErrorKind;
use crate::machine::{Machine, Step};
use crate::sys::{self, Op};
use crate::Shard;

const TAG_WAKE: u64 = 0;
const TAG_STEP: u64 = 1;
const TAG_CLOSE: u64 = 2;
const TAG_CANCEL: u64 = 3;
/// Most ops one slot can have in flight: its step op, or after it finished up to this many
/// closes (get: 2 fds, put: at most 3 of root/dir/walk/tmp are open at the end).
const OPS_PER_SLOT: usize = 4;

fn ud(slot: usize, tag: u64) -> u64 {
    ((slot as u64) << 2) | tag
}

struct Slot {
    /// The request; `None` when the slot is free. The machine's buffers live behind its
    /// `Box`, so they do not move even when `slots` is reorganised.
    m: Option<Machine>,
    /// Ops of this slot currently owned by the kernel.
    in_flight: usize,
    /// The machine has replied; the slot is freed when `in_flight` drops to 0.
    done: bool,
}

struct Ring<'a> {
    submitter: Submitter<'a>,
    sq: SubmissionQueue<'a>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    live: usize,
    shard: &'a Shard,
    /// The thread's CPU time when the last request was billed.
    mark: u64,
    /// Slots whose step ops were pushed since the last submission (billed its CPU time).
    pushed: Vec<usize>,
}

impl Ring<'_> {
    /// Pushes one SQE, flushing the queue to the kernel first when it is full.
    ///
    /// # Safety
    /// The buffers the entry points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.sq.push(entry) }.is_ok() {
                return Ok(());
            }
            self.sq.sync();
            match self.submitter.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            self.sq.sync();
        }
    }

    /// Whether `op` of the machine in `slot` runs inline on this thread instead of through
    /// the ring. The metadata ops of a put (create, mkdir, rename, unlink) are ones io_uring
    /// punts to its io-wq worker threads; measured with `beamline-bench --scenario fs-put`
    /// on kernel 6.18/ext4 (2 vCPU), the ring path gave 3.7k puts/s at 278 µs CPU each and
    /// inline syscalls 10.7k/s at 94 µs, while reads were equal either way. Reads and
    /// writes stay on the ring.
    fn runs_inline(&self, slot: usize, op: &Op) -> bool {
        matches!(self.slots[slot].m, Some(Machine::Put(_)))
            && matches!(
                op,
                Op::OpenAt { .. }
                    | Op::OpenAt2 { .. }
                    | Op::MkDirAt { .. }
                    | Op::RenameAt { .. }
                    | Op::UnlinkAt { .. }
            )
    }

    /// Handles a step returned by the machine in `slot`.
    fn advance(&mut self, slot: usize, mut step: Step) -> io::Result<()> {
        while let Step::Submit(op) = &step {
            if !self.runs_inline(slot, op) {
                break;
            }
            // SAFETY: the op's pointers point into the boxed machine in `slots[slot]`, which
            // is alive and unmoved for the duration of this blocking call.
            let res = unsafe { sys::exec(op) };
            step = match self.slots[slot].m.as_mut() {
                Some(m) => m.on_result(res),
                None => return Ok(()),
            };
        }
        match step {
            Step::Submit(op) => {
                let entry = sys::sqe(&op).user_data(ud(slot, TAG_STEP));
                // SAFETY: the op's pointers point into the boxed machine in `slots[slot]`,
                // which stays there (unmoved, not freed) until this op's CQE is handled
                // (`in_flight` > 0 keeps the slot allocated).
                unsafe { self.push(&entry)? };
                self.slots[slot].in_flight += 1;
                self.pushed.push(slot);
            }
            Step::Done => {
                // Its last CPU time goes with the reply.
                self.bill(slot);
                // Count the request out before the caller can observe the reply.
                self.shard.depth.fetch_sub(1, Ordering::AcqRel);
                let fds = match self.slots[slot].m.as_mut() {
                    Some(m) => m.finish(),
                    None => Vec::new(),
                };
                self.slots[slot].done = true;
                for fd in fds {
                    use std::os::fd::IntoRawFd;
                    let entry = opcode::Close::new(types::Fd(fd.into_raw_fd()))
                        .build()
                        .user_data(ud(slot, TAG_CLOSE));
                    // SAFETY: a close references no user memory.
                    unsafe { self.push(&entry)? };
                    self.slots[slot].in_flight += 1;
                }
                self.maybe_free(slot);
            }
        }
        Ok(())
    }

    /// Bills the CPU time since the last bill to the request in `slot`, unless it has
    /// replied already (then what follows, its closes, goes to the next one billed).
    fn bill(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let Some(m) = s.m.as_mut().filter(|_| !s.done) else {
            return;
        };
        let now = thread_cpu_ns();
        m.add_cpu_ns(now.saturating_sub(self.mark));
        self.mark = now;
    }

    /// Splits the CPU time of a submission among the requests whose ops it carried.
    fn bill_submission(&mut self, spent: u64) {
        let n = self.pushed.len() as u64;
        if n == 0 {
            return;
        }
        let share = spent / n;
        for i in 0..self.pushed.len() {
            let s = &mut self.slots[self.pushed[i]];
            if let (false, Some(m)) = (s.done, s.m.as_mut()) {
                m.add_cpu_ns(share);
            }
        }
        self.pushed.clear();
    }

    fn maybe_free(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.done && s.in_flight == 0 {
            s.m = None;
            s.done = false;
            self.free.push(slot);
            self.live -= 1;
        }
    }

    fn admit(&mut self, mut m: Machine) -> io::Result<()> {
        let Some(slot) = self.free.pop() else {
            // Not reachable: admit is only called with a free slot. Answer rather than drop.
            self.shard.depth.fetch_sub(1, Ordering::AcqRel);
            m.abort(FsErrorKind::Overloaded);
            return Ok(());
        };
        self.live += 1;
        let s = &mut self.slots[slot];
        s.in_flight = 0;
        s.done = false;
        let m = s.m.insert(m);
        let step = m.start();
        self.advance(slot, step)?;
        self.bill(slot);
        Ok(())
    }

    fn complete(&mut self, user_data: u64, res: i32) -> io::Result<()> {
        let slot = (user_data >> 2) as usize;
        if slot >= self.slots.len() {
            return Ok(());
        }
        match user_data & 3 {
            TAG_STEP => {
                self.slots[slot].in_flight = self.slots[slot].in_flight.saturating_sub(1);
                let step = match self.slots[slot].m.as_mut() {
                    Some(m) => m.on_result(res),
                    None => return Ok(()),
                };
                self.advance(slot, step)?;
                self.bill(slot);
                Ok(())
            }
            TAG_CLOSE => {
                self.slots[slot].in_flight = self.slots[slot].in_flight.saturating_sub(1);
                self.maybe_free(slot);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// Creates the ring of one IO thread.
pub(crate) fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::new(entries)
}

/// The IO thread body. Returns when the queue is disconnected (pool shut down) and every
/// admitted request has completed.
pub(crate) fn run(mut ring: IoUring, rx: Receiver<Machine>, shard: Arc<Shard>) {
    let Some(wake_fd) = shard.wake.as_ref() else {
        return;
    };
    let sq_entries = ring.params().sq_entries() as usize;
    // Slot budget: each slot has at most OPS_PER_SLOT ops in flight, plus the wake-up read
    // and its cancel, so the SQ never holds more than it can and the CQ (2 × SQ) never
    // overflows.
    let max_slots = (sq_entries.saturating_sub(2) / OPS_PER_SLOT).max(1);
    let mut wake_buf: Box<u64> = Box::new(0);
    let wake_raw = {
        use std::os::fd::AsRawFd;
        wake_fd.as_raw_fd()
    };
    let (submitter, sq, mut cq) = ring.split();
    let mut r = Ring {
        submitter,
        sq,
        slots: (0..max_slots)
            .map(|_| Slot {
                m: None,
                in_flight: 0,
                done: false,
            })
            .collect(),
        free: (0..max_slots).rev().collect(),
        live: 0,
        shard: &shard,
        mark: thread_cpu_ns(),
        pushed: Vec::with_capacity(max_slots),
    };
    let wake_ptr: *mut u8 = (&mut *wake_buf as *mut u64).cast();
    let arm_wake = |r: &mut Ring<'_>| -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(wake_raw), wake_ptr, 8)
            .build()
            .user_data(TAG_WAKE);
        // SAFETY: `wake_buf` is a heap u64 that lives until this function returns, and the
        // function only returns after the read has completed or been cancelled.
        unsafe { r.push(&entry) }
    };

    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(2 * sq_entries);
    let mut wake_armed = false;
    let mut disconnected = false;
    let result: io::Result<()> = (|| {
        arm_wake(&mut r)?;
        wake_armed = true;
        loop {
            while !disconnected && r.live < max_slots {
                match rx.try_recv() {
                    Ok(m) => r.admit(m)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => disconnected = true,
                }
            }
            if disconnected && r.live == 0 {
                return Ok(());
            }
            cq.sync();
            let mut want = usize::from(cq.is_empty());
            let mut sleeping = false;
            if want == 1 && !disconnected && r.live < max_slots {
                // About to block with room for more work: tell producers to wake us, then
                // re-check the queue (a producer that pushed before seeing the flag is seen
                // here; one that pushes after sees the flag and signals the eventfd).
                shard.sleeping.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                sleeping = true;
                if !rx.is_empty() || rx.is_disconnected() {
                    want = 0;
                }
            }
            r.sq.sync();
            let before = if r.pushed.is_empty() {
                0
            } else {
                thread_cpu_ns()
            };
            let res = r.submitter.submit_and_wait(want);
            r.mark = thread_cpu_ns();
            if !r.pushed.is_empty() {
                r.bill_submission(r.mark.saturating_sub(before));
            }
            if sleeping {
                shard.sleeping.store(false, Ordering::Relaxed);
            }
            match res {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            cq.sync();
            cqes.clear();
            cqes.extend(
                cq.by_ref()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result())),
            );
            for &(user_data, res) in &cqes {
                if user_data == TAG_WAKE {
                    wake_armed = false;
                    if !disconnected {
                        arm_wake(&mut r)?;
                        wake_armed = true;
                    }
                    continue;
                }
                r.complete(user_data, res)?;
            }
        }
    })();

    match result {
        Ok(()) => {
            // Retire the wake-up read before `wake_buf` is freed: cancel it and wait until
            // its completion (cancelled or not) has been reaped.
            if wake_armed {
                let entry = opcode::AsyncCancel::new(TAG_WAKE)
                    .build()
                    .user_data(TAG_CANCEL);
                // SAFETY: a cancel references no user memory.
                let pushed = unsafe { r.push(&entry) };
                let mut ok = pushed.is_ok();
                while ok && wake_armed {
                    r.sq.sync();
                    match r.submitter.submit_and_wait(1) {
                        Ok(_) => {}
                        Err(e) if is_transient(&e) => {}
                        Err(_) => ok = false,
                    }
                    cq.sync();
                    for c in cq.by_ref() {
                        if c.user_data() == TAG_WAKE {
                            wake_armed = false;
                        }
                    }
                }
                if wake_armed {
                    // Could not confirm: never free memory the kernel may still write.
                    std::mem::forget(wake_buf);
                }
            }
        }
        Err(_) => {
            // The ring is unusable with ops possibly in flight. Answer every admitted
            // request, then leak the machines and the wake-up buffer instead of freeing
            // memory the kernel may still write into; queued requests are answered by
            // dropping them (their callers see `Shutdown`).
            for s in &mut r.slots {
                if let Some(m) = s.m.as_mut() {
                    if !s.done {
                        shard.depth.fetch_sub(1, Ordering::AcqRel);
                        m.abort(FsErrorKind::Other);
                    }
                }
            }
            std::mem::forget(std::mem::take(&mut r.slots));
            std::mem::forget(wake_buf);
            while let Ok(m) = rx.try_recv() {
                shard.depth.fetch_sub(1, Ordering::AcqRel);
                drop(m);
            }
        }
    }
}
