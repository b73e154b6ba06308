//! Content types of hot files remembered per CPU thread, for the inline `fs.get`: one
//! `fgetxattr` of the seven system calls of a get was spent asking again for the same
//! answer. An entry is keyed by (device, inode) and holds only while the file's `ctime`,
//! `mtime` and size are what they were when it was read: setting or removing the xattr
//! changes `ctime`, and `fs.put` replaces the file by rename or exchange (a new inode, or a
//! kept spare whose rewrite changed its `ctime`). The IO threads ask the file every time.
//!
//! A file's times come from a coarse clock (one tick: up to 10 ms) on kernels without
//! multi-grain timestamps, so two changes within one tick can leave the same `ctime`.
//! Only an answer whose `ctime` is older than [`SETTLED_NS`] is remembered: any later change
//! then carries a later `ctime`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::RawFd;

use crate::sys;

/// Entries per thread; the map is emptied when it is full (hot files come back at once).
const CAPACITY: usize = 4096;

/// How old a file's `ctime` must be for its content type to be remembered: beyond the
/// coarsest clock tick file times are taken from.
const SETTLED_NS: i128 = 50_000_000;

type Key = (u32, u32, u64);

/// Whether a `ctime` is at least [`SETTLED_NS`] old (the coarse real-time clock: a vDSO
/// read, no system call).
fn settled((sec, nsec): (i64, u32)) -> bool {
    // SAFETY: `timespec` is plain integers; all-zero is valid, and the call fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a live, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } != 0 {
        return false;
    }
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    ns(now.tv_sec, now.tv_nsec) - ns(sec, i64::from(nsec)) >= SETTLED_NS
}

#[derive(PartialEq, Eq)]
struct Stamp {
    ctime: (i64, u32),
    mtime: (i64, u32),
    size: u64,
}

/// What a file's content type was, and the stamps it was read at.
type Seen = HashMap<Key, (Stamp, Option<Box<str>>), foldhash::fast::RandomState>;

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(HashMap::default());
}

/// The content type of the open file `fd`, whose `statx` is `stx`: remembered, or read
/// with [`sys::get_content_type`] (and remembered).
pub(crate) fn content_type(fd: RawFd, stx: &libc::statx) -> Result<Option<String>, i32> {
    let need = libc::STATX_INO | libc::STATX_CTIME | libc::STATX_MTIME | libc::STATX_SIZE;
    if stx.stx_mask & need != need {
        return sys::get_content_type(fd);
    }
    let key = (stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino);
    let stamp = Stamp {
        ctime: (stx.stx_ctime.tv_sec, stx.stx_ctime.tv_nsec),
        mtime: (stx.stx_mtime.tv_sec, stx.stx_mtime.tv_nsec),
        size: stx.stx_size,
    };
    let known = SEEN.with(|seen| {
        let seen = seen.try_borrow().ok()?;
        match seen.get(&key) {
            Some((at, ct)) if *at == stamp => Some(ct.as_deref().map(str::to_owned)),
            _ => None,
        }
    });
    if let Some(ct) = known {
        return Ok(ct);
    }
    let ct = sys::get_content_type(fd)?;
    if !settled(stamp.ctime) {
        return Ok(ct);
    }
    SEEN.with(|seen| {
        if let Ok(mut seen) = seen.try_borrow_mut() {
            if seen.len() >= CAPACITY {
                seen.clear();
            }
            seen.insert(key, (stamp, ct.as_deref().map(Box::from)));
        }
    });
    Ok(ct)
}

/// Content types this thread remembers (tests).
#[cfg(test)]
pub(crate) fn remembered() -> usize {
    SEEN.with(|seen| seen.borrow().len())
}
