//! Kept spare inodes for `fs.put`: an overwrite that neither makes nor frees an inode.
//!
//! A put writes the new bytes to a file of its own and renames that over the target, so a
//! reader sees the old bytes or the new ones, never a mix. With a fresh temp file every put
//! makes one inode and frees one; on ext4 without a journal the inode allocator then skips
//! every inode freed in the last minutes (`recently_deleted`), and a stream of overwrites
//! spends most of its CPU scanning past them (bench/results/README.md, "Issue 12, fourth
//! round").
//!
//! So an overwrite keeps the old inode instead of freeing it. The new bytes go into the
//! spare `.<name>.beamline-spare` beside the target, which is then *exchanged* with the
//! target (`renameat2(RENAME_EXCHANGE)`): the target's name gets the new inode, the spare's
//! name the old one, for the next put. A spare is written only when nobody else can see it:
//! - a write lease (`F_SETLEASE F_WRLCK`) is granted only while no other descriptor or
//!   mapping has the file open: a reader still holding the old version keeps it from reuse.
//!   Someone who opens the spare while the lease is held waits until the content is
//!   complete (or gets `EAGAIN` with `O_NONBLOCK`); the lease is released before the
//!   exchange, so the target's name never points at a leased file;
//! - our descriptor stays open until after the exchange, so no other put can take a lease
//!   on the spare between that release and the exchange;
//! - only a regular file with one link, our owner and the mode a new file gets is reused
//!   (else the spare is removed: "unfit");
//! - only an old target that is a regular file with one link, our owner and at most
//!   [`SPARE_MAX`] bytes becomes a spare; anything else is replaced and freed as before.
//!
//! A path component that starts with `.` and ends with `.beamline-spare` is reserved: tenant
//! reads and writes of it are refused as invalid paths (`path::check`). Where the kernel or
//! filesystem refuses leases or the exchange, spares are switched off for the process and
//! every put takes the fresh temp file path. A lease break sends the holder `SIGIO`, whose
//! default action ends the process: before the first lease, `SIGIO` is set to ignored
//! unless a handler is installed already.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::sys::{self, errno, Op, OpenHow, RESOLVE};

/// What a spare's name ends with.
pub(crate) const SUFFIX: &str = ".beamline-spare";
/// Largest put written through a spare, and largest old target kept as one (spares cost
/// disk space: at most this much per overwritten file).
pub(crate) const SPARE_MAX: usize = 64 * 1024;

/// Set once the kernel or a filesystem has refused a lease or an exchange.
static OFF: AtomicBool = AtomicBool::new(false);

/// What a reused spare must look like: the owner and mode a file we create gets.
struct Expect {
    uid: u32,
    mode: u32,
}

/// `None` when spares cannot be used in this process (umask unknown, SIGIO not ignorable).
fn expect() -> Option<&'static Expect> {
    static E: OnceLock<Option<Expect>> = OnceLock::new();
    E.get_or_init(|| {
        let umask = umask()?;
        if !ignore_sigio() {
            return None;
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        Some(Expect {
            uid,
            mode: 0o644 & !umask,
        })
    })
    .as_ref()
}

/// The process's umask, read from `/proc/self/status` (reading it with umask(2) would
/// change it for a moment under the other threads).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Sets SIGIO to ignored unless someone handles it already; `false` if that failed.
fn ignore_sigio() -> bool {
    // SAFETY: sigaction with a zeroed (then filled) struct and null pointers where the
    // kernel allows them; only the SIGIO disposition is read or changed.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGIO, std::ptr::null(), &mut old) != 0 {
            return false;
        }
        if old.sa_sigaction != libc::SIG_DFL {
            return true;
        }
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGIO, &new, std::ptr::null_mut()) == 0
    }
}

/// Whether puts may use spares.
pub(crate) fn enabled() -> bool {
    !OFF.load(Ordering::Relaxed) && expect().is_some()
}

fn switch_off() {
    OFF.store(true, Ordering::Relaxed);
}

/// `.<stem>.beamline-spare`.
pub(crate) fn name(stem: &str) -> CString {
    CString::new(format!(".{stem}{SUFFIX}")).unwrap_or_else(|_| c".beamline-spare".to_owned())
}

/// Whether a path component is a spare's name (reserved: tenants cannot address it).
pub(crate) fn is_reserved(component: &str) -> bool {
    component.starts_with('.') && component.ends_with(SUFFIX)
}

/// What [`acquire`] found.
pub(crate) enum Acquired {
    /// The spare, open for writing with a write lease held and `O_NONBLOCK` cleared.
    Leased(OwnedFd),
    /// No spare, or one somebody has open: use a fresh temp file, leave the spare be.
    Unavailable,
    /// A spare that must never be reused (wrong type, links, owner or mode): remove it.
    Unfit,
}

/// Opens the spare `name` in `dir` and takes a write lease on it (see the module docs).
pub(crate) fn acquire(dir: RawFd, name: &CStr) -> Acquired {
    let Some(expect) = expect() else {
        return Acquired::Unavailable;
    };
    // O_NONBLOCK: a FIFO must not block the open, and a leased spare (another put writing
    // it) answers EAGAIN instead of waiting.
    let how = OpenHow {
        flags: (libc::O_WRONLY
            | libc::O_NONBLOCK
            | libc::O_NOFOLLOW
            | libc::O_NOCTTY
            | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE,
    };
    // SAFETY: `name` and `how` are live for the call.
    let r = unsafe {
        sys::exec(&Op::OpenAt2 {
            dirfd: dir,
            path: name.as_ptr(),
            how: &how,
        })
    };
    if r < 0 {
        return match -r {
            libc::ENOENT | libc::EAGAIN | libc::EINTR | libc::ENOSPC | libc::ENOMEM => {
                Acquired::Unavailable
            }
            _ => Acquired::Unfit,
        };
    }
    let fd = crate::machine::own_fd(r);
    // SAFETY: F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } < 0 {
        return match errno() {
            // Open elsewhere (a reader of the old version, a mapping, another put).
            libc::EAGAIN => Acquired::Unavailable,
            // Not ours.
            libc::EACCES | libc::EPERM => Acquired::Unfit,
            // Leases off here (fs.leases-enable = 0) or not on this filesystem.
            _ => {
                switch_off();
                Acquired::Unavailable
            }
        };
    }
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Acquired::Unavailable;
    }
    let fit = st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_nlink == 1
        && st.st_uid == expect.uid
        && st.st_mode & 0o7777 == expect.mode;
    if !fit {
        return Acquired::Unfit;
    }
    if sys::clear_nonblock(fd.as_raw_fd()) < 0 {
        return Acquired::Unavailable;
    }
    Acquired::Leased(fd)
}

/// Releases the lease taken by [`acquire`] (the descriptor stays open). 0 or `-errno`.
pub(crate) fn release(fd: RawFd) -> i32 {
    // SAFETY: F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) } < 0 {
        -errno()
    } else {
        0
    }
}

/// Cuts a reused spare to the `len` bytes just written. 0 or `-errno`.
pub(crate) fn truncate(fd: RawFd, len: usize) -> i32 {
    let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd, len) } == 0 {
            return 0;
        }
        let e = errno();
        if e != libc::EINTR {
            return -e;
        }
    }
}

/// Removes a reused spare's stored content type (the put gave none). 0 or `-errno`.
pub(crate) fn clear_content_type(fd: RawFd) -> i32 {
    // SAFETY: the name is a static C string.
    if unsafe { libc::fremovexattr(fd, sys::CONTENT_TYPE_XATTR.as_ptr()) } == 0 {
        return 0;
    }
    match errno() {
        libc::ENODATA | libc::ENOTSUP => 0,
        e => -e,
    }
}

/// Whether the current target `name` in `dir` may become the spare once replaced.
pub(crate) fn keeps(dir: RawFd, name: &CStr) -> bool {
    let Some(expect) = expect() else {
        return false;
    };
    // SAFETY: a zeroed statx is a valid out-parameter.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` and `stx` are live for the call.
    let r = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_NLINK | libc::STATX_SIZE | libc::STATX_UID,
            &mut stx,
        )
    };
    r == 0
        && u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG
        && stx.stx_nlink == 1
        && stx.stx_uid == expect.uid
        && stx.stx_size <= SPARE_MAX as u64
}

fn renameat2(dir: RawFd, from: &CStr, to: &CStr, flags: libc::c_uint) -> i32 {
    // SAFETY: both names are live C strings; the kernel checks the fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            dir,
            from.as_ptr(),
            dir,
            to.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        -errno()
    } else {
        0
    }
}

/// Swaps `a` and `b` in `dir`. 0 or `-errno`; a kernel or filesystem without the exchange
/// switches spares off (the caller then renames as before).
pub(crate) fn exchange(dir: RawFd, a: &CStr, b: &CStr) -> i32 {
    let r = renameat2(dir, a, b, libc::RENAME_EXCHANGE);
    if matches!(-r, libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) {
        switch_off();
    }
    r
}

/// Renames `from` to `to` unless `to` exists (then `-EEXIST`).
pub(crate) fn rename_noreplace(dir: RawFd, from: &CStr, to: &CStr) -> i32 {
    renameat2(dir, from, to, libc::RENAME_NOREPLACE)
}

/// Removes `name` from `dir` (errors ignored: what is left is only a spare).
pub(crate) fn unlink(dir: RawFd, name: &CStr) {
    // SAFETY: `name` is a live C string.
    let _ = unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
}
