//! The syscall-level operations the state machines issue, their blocking execution (the
//! `Threads` backend), and the start-up probes.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types, IoUring};
use libc::c_char;

/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: every tenant path is resolved with this.
pub(crate) const RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

/// The kernel's `struct open_how` (first version, 24 bytes), the argument of openat2(2) and
/// IORING_OP_OPENAT2. Our own definition because `libc::open_how` cannot be built outside
/// libc (it is `#[non_exhaustive]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenHow {
    pub(crate) flags: u64,
    pub(crate) mode: u64,
    pub(crate) resolve: u64,
}

/// What `Op::Statx` asks for.
pub(crate) const STATX_MASK: u32 = libc::STATX_TYPE
    | libc::STATX_MODE
    | libc::STATX_NLINK
    | libc::STATX_SIZE
    | libc::STATX_INO
    | libc::STATX_CTIME
    | libc::STATX_MTIME;

/// The xattr holding the content type.
pub(crate) const CONTENT_TYPE_XATTR: &CStr = c"user.beamline.content_type";

/// One syscall. The raw pointers point into the state machine that issued it; the machine
/// guarantees they stay valid and unmoved until it is handed the result (see
/// `machine::Machine`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// openat(2) — only for the tenant root itself, an absolute path from our own config.
    OpenAt {
        dirfd: RawFd,
        path: *const c_char,
        flags: i32,
        mode: u32,
    },
    /// openat2(2); `how.resolve` always holds `RESOLVE`.
    OpenAt2 {
        dirfd: RawFd,
        path: *const c_char,
        how: *const OpenHow,
    },
    /// statx(fd, "", AT_EMPTY_PATH, STATX_MASK).
    Statx {
        fd: RawFd,
        buf: *mut libc::statx,
    },
    Read {
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        offset: u64,
    },
    Write {
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    },
    Fsync {
        fd: RawFd,
    },
    Close {
        fd: RawFd,
    },
    MkDirAt {
        dirfd: RawFd,
        path: *const c_char,
        mode: u32,
    },
    /// renameat(dirfd, from, dirfd, to): always within one directory.
    RenameAt {
        dirfd: RawFd,
        from: *const c_char,
        to: *const c_char,
    },
    UnlinkAt {
        dirfd: RawFd,
        path: *const c_char,
    },
}

// SAFETY: the raw pointers in an `Op` point into the state machine that owns the request, and
// that machine travels with (or outlives) the op on the same IO thread; `Op` is only `Send` so
// that it can sit inside data structures of the IO thread, never to share the memory.
unsafe impl Send for Op {}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Runs `op` with a blocking syscall and returns what io_uring would put in the CQE: the
/// non-negative result or `-errno`. `EINTR` is retried (except for close, which must not be).
///
/// # Safety
/// Every pointer in `op` must be valid for the access the syscall makes (C strings
/// NUL-terminated, buffers at least `len` bytes, `how`/`buf` pointing at live structs) for
/// the duration of the call.
pub(crate) unsafe fn exec(op: &Op) -> i32 {
    loop {
        // SAFETY: the caller guarantees the pointers are valid for this call; the fds are
        // plain integers the kernel checks.
        let r: i64 = unsafe {
            match *op {
                Op::OpenAt {
                    dirfd,
                    path,
                    flags,
                    mode,
                } => libc::openat(dirfd, path, flags, mode as libc::c_uint) as i64,
                Op::OpenAt2 { dirfd, path, how } => libc::syscall(
                    libc::SYS_openat2,
                    dirfd,
                    path,
                    how,
                    std::mem::size_of::<OpenHow>(),
                ),
                Op::Statx { fd, buf } => {
                    libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, STATX_MASK, buf) as i64
                }
                Op::Read {
                    fd,
                    buf,
                    len,
                    offset,
                } => libc::pread(fd, buf.cast(), len as usize, offset as libc::off_t) as i64,
                Op::Write {
                    fd,
                    buf,
                    len,
                    offset,
                } => libc::pwrite(fd, buf.cast(), len as usize, offset as libc::off_t) as i64,
                Op::Fsync { fd } => libc::fsync(fd) as i64,
                Op::Close { fd } => {
                    // close(2) must not be retried on EINTR: the fd is gone either way.
                    let r = libc::close(fd);
                    return if r < 0 { -errno() } else { 0 };
                }
                Op::MkDirAt { dirfd, path, mode } => {
                    libc::mkdirat(dirfd, path, mode as libc::mode_t) as i64
                }
                Op::RenameAt { dirfd, from, to } => libc::renameat(dirfd, from, dirfd, to) as i64,
                Op::UnlinkAt { dirfd, path } => libc::unlinkat(dirfd, path, 0) as i64,
            }
        };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return -e;
        }
        // Results are fds, 0, or byte counts of at most `MAX_IO_CHUNK` (< i32::MAX).
        return i32::try_from(r).unwrap_or(i32::MAX);
    }
}

/// As [`exec`], but never waits for the disk: path lookups only through the dentry cache
/// (`RESOLVE_CACHED`), reads only from the page cache (`RWF_NOWAIT`). `-EAGAIN` means
/// "would block": the caller hands the whole request to an IO thread instead. Only the ops
/// of a get are supported (others answer `-EAGAIN`).
///
/// # Safety
/// As for [`exec`].
pub(crate) unsafe fn exec_nowait(op: &Op) -> i32 {
    match *op {
        Op::OpenAt {
            dirfd, path, flags, ..
        } => {
            let how = OpenHow {
                flags: flags as u64,
                mode: 0,
                resolve: libc::RESOLVE_CACHED,
            };
            // SAFETY: as for `exec`; `how` lives for the call.
            unsafe {
                exec(&Op::OpenAt2 {
                    dirfd,
                    path,
                    how: &how,
                })
            }
        }
        Op::OpenAt2 { dirfd, path, how } => {
            // SAFETY: the caller guarantees `how` points at a live struct.
            let mut h = unsafe { *how };
            h.resolve |= libc::RESOLVE_CACHED;
            // SAFETY: as for `exec`; `h` lives for the call.
            unsafe {
                exec(&Op::OpenAt2 {
                    dirfd,
                    path,
                    how: &h,
                })
            }
        }
        Op::Statx { .. } | Op::Close { .. } => {
            // SAFETY: forwarded with the caller's guarantee.
            unsafe { exec(op) }
        }
        Op::Read {
            fd,
            buf,
            len,
            offset,
        } => loop {
            let iov = libc::iovec {
                iov_base: buf.cast(),
                iov_len: len as usize,
            };
            // SAFETY: the caller guarantees `buf` is writable for `len` bytes.
            let r = unsafe { libc::preadv2(fd, &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
            if r < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                // EOPNOTSUPP: a filesystem without RWF_NOWAIT; the IO thread reads it.
                return -(if e == libc::EOPNOTSUPP {
                    libc::EAGAIN
                } else {
                    e
                });
            }
            return i32::try_from(r).unwrap_or(i32::MAX);
        },
        _ => -libc::EAGAIN,
    }
}

/// Whether [`exec_nowait`] can work here: openat2 knows `RESOLVE_CACHED` (Linux 5.12).
pub(crate) fn probe_nowait() -> bool {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_CACHED,
    };
    // SAFETY: a static NUL-terminated path and a live `how`.
    let r = unsafe {
        exec(&Op::OpenAt2 {
            dirfd: libc::AT_FDCWD,
            path: c"/".as_ptr(),
            how: &how,
        })
    };
    if r >= 0 {
        // SAFETY: `r` is an fd this function just opened and owns.
        unsafe { libc::close(r) };
    }
    // "/" is always in the dentry cache; EAGAIN would still mean the flag is understood.
    r >= 0 || r == -libc::EAGAIN
}

/// Builds the io_uring submission for `op` (the pointers are copied into the SQE; the same
/// validity rule as for `exec` applies until the completion arrives).
pub(crate) fn sqe(op: &Op) -> io_uring::squeue::Entry {
    use types::Fd;
    match *op {
        Op::OpenAt {
            dirfd,
            path,
            flags,
            mode,
        } => opcode::OpenAt::new(Fd(dirfd), path)
            .flags(flags)
            .mode(mode as libc::mode_t)
            .build(),
        // The crate only stores the `how` pointer in the SQE (and the length of the kernel's
        // struct, 24 bytes); the kernel reads it as its `struct open_how`, which `OpenHow` is.
        Op::OpenAt2 { dirfd, path, how } => {
            opcode::OpenAt2::new(Fd(dirfd), path, how.cast::<types::OpenHow>()).build()
        }
        Op::Statx { fd, buf } => {
            opcode::Statx::new(Fd(fd), c"".as_ptr(), buf.cast::<types::statx>())
                .flags(libc::AT_EMPTY_PATH)
                .mask(STATX_MASK)
                .build()
        }
        Op::Read {
            fd,
            buf,
            len,
            offset,
        } => opcode::Read::new(Fd(fd), buf, len).offset(offset).build(),
        Op::Write {
            fd,
            buf,
            len,
            offset,
        } => opcode::Write::new(Fd(fd), buf, len).offset(offset).build(),
        Op::Fsync { fd } => opcode::Fsync::new(Fd(fd)).build(),
        Op::Close { fd } => opcode::Close::new(Fd(fd)).build(),
        Op::MkDirAt { dirfd, path, mode } => opcode::MkDirAt::new(Fd(dirfd), path)
            .mode(mode as libc::mode_t)
            .build(),
        Op::RenameAt { dirfd, from, to } => {
            opcode::RenameAt::new(Fd(dirfd), from, Fd(dirfd), to).build()
        }
        Op::UnlinkAt { dirfd, path } => opcode::UnlinkAt::new(Fd(dirfd), path).build(),
    }
}

/// `fgetxattr(fd, CONTENT_TYPE_XATTR)`, executed inline on the IO thread (both backends):
/// IORING_OP_FGETXATTR needs Linux 5.19, above our 5.15 floor, and the kernel runs it on an
/// io-wq worker anyway, so the plain syscall is both portable and cheaper.
/// `Ok(None)` when the attribute is absent or the filesystem has no user xattrs.
pub(crate) fn get_content_type(fd: RawFd) -> Result<Option<String>, i32> {
    // Most files have no content type stored: ask with a stack buffer first, so that case
    // allocates nothing.
    let mut first = [0u8; 256];
    // SAFETY: `first` is a live, writable buffer of its length; the name is NUL-terminated.
    let n = unsafe {
        libc::fgetxattr(
            fd,
            CONTENT_TYPE_XATTR.as_ptr(),
            first.as_mut_ptr().cast(),
            first.len(),
        )
    };
    if n >= 0 {
        let v = &first[..(n as usize).min(first.len())];
        return Ok(Some(String::from_utf8_lossy(v).into_owned()));
    }
    match errno() {
        libc::ENODATA | libc::ENOTSUP => return Ok(None),
        libc::ERANGE | libc::EINTR => {}
        e => return Err(e),
    }
    let mut buf = vec![0u8; 256];
    for _ in 0..4 {
        // SAFETY: `buf` is a live, writable allocation of `buf.len()` bytes and the name is a
        // NUL-terminated static string.
        let n = unsafe {
            libc::fgetxattr(
                fd,
                CONTENT_TYPE_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        match errno() {
            libc::ENODATA | libc::ENOTSUP => return Ok(None),
            libc::ERANGE => {
                // Ask for the size, then retry with a buffer that big (capped at 64 KiB, the
                // VFS limit on an xattr value).
                // SAFETY: a NULL buffer with size 0 only queries the size.
                let need = unsafe {
                    libc::fgetxattr(fd, CONTENT_TYPE_XATTR.as_ptr(), std::ptr::null_mut(), 0)
                };
                if need < 0 {
                    return Err(errno());
                }
                buf = vec![0u8; (need as usize).clamp(1, 65536)];
            }
            libc::EINTR => {}
            e => return Err(e),
        }
    }
    Err(libc::ERANGE)
}

/// `fsetxattr(fd, CONTENT_TYPE_XATTR, value)`, inline on the IO thread for the same reason as
/// `get_content_type`. Returns 0 or `-errno`; `ENOTSUP` is reported as success (the
/// filesystem cannot store it, and a missing content type is acceptable).
pub(crate) fn set_content_type(fd: RawFd, value: &[u8]) -> i32 {
    loop {
        // SAFETY: `value` is a live slice of `value.len()` bytes; the name is a static C string.
        let r = unsafe {
            libc::fsetxattr(
                fd,
                CONTENT_TYPE_XATTR.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            return 0;
        }
        match errno() {
            libc::ENOTSUP => return 0,
            libc::EINTR => {}
            e => return -e,
        }
    }
}

/// Clears O_NONBLOCK (the file is opened with it so that a FIFO or device cannot block the
/// open; once statx says it is a regular file, reads must be allowed to wait for the disk —
/// io_uring would otherwise answer EAGAIN on a page-cache miss). Inline: there is no fcntl
/// opcode. Returns 0 or `-errno`.
pub(crate) fn clear_nonblock(fd: RawFd) -> i32 {
    // SAFETY: F_SETFL takes an int argument; an invalid fd only yields EBADF.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
    if r < 0 {
        -errno()
    } else {
        0
    }
}

/// A blocking eventfd (no EFD_NONBLOCK: io_uring treats an O_NONBLOCK file as "never wait"
/// and would complete the wake-up read with EAGAIN instead of arming a poll).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd (wakes an IO thread waiting on its ring).
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; failure (only on counter overflow) is harmless
    // because the counter is then already non-zero and the reader will wake.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn open_root_dir() -> io::Result<OwnedFd> {
    // SAFETY: static NUL-terminated path, integer flags.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn beneath_how() -> OpenHow {
    OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE,
    }
}

/// The openat2 syscall with RESOLVE_BENEATH must work: without it neither backend can
/// sandbox tenant paths, so `IoPool::start` fails rather than run unsandboxed.
pub(crate) fn probe_openat2() -> io::Result<()> {
    let dir = open_root_dir()?;
    let how = beneath_how();
    let path = c".";
    // SAFETY: valid dir fd, static C string, `how` is a live open_how of the size passed.
    let r = unsafe {
        exec(&Op::OpenAt2 {
            dirfd: dir.as_raw_fd(),
            path: path.as_ptr(),
            how: &how,
        })
    };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    // SAFETY: `r` is a fresh fd we own; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(r) });
    Ok(())
}

/// The opcodes the ring backend submits.
const NEEDED_OPCODES: [(u8, &str); 11] = [
    (opcode::OpenAt::CODE, "OPENAT"),
    (opcode::OpenAt2::CODE, "OPENAT2"),
    (opcode::Statx::CODE, "STATX"),
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::MkDirAt::CODE, "MKDIRAT"),
    (opcode::RenameAt::CODE, "RENAMEAT"),
    (opcode::UnlinkAt::CODE, "UNLINKAT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// Can this process use io_uring for our operations? Creates an 8-entry ring, checks that
/// every opcode we use is supported (MKDIRAT needs Linux 5.15), then runs one real
/// IORING_OP_OPENAT2 with RESOLVE_BENEATH (a seccomp policy or LSM may block it).
pub fn probe_uring() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in NEEDED_OPCODES {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode IORING_OP_{name} not supported (Linux >= 5.15 needed)"),
            ));
        }
    }
    let dir = open_root_dir()?;
    let how = beneath_how();
    let path = c".";
    let op = Op::OpenAt2 {
        dirfd: dir.as_raw_fd(),
        path: path.as_ptr(),
        how: &how,
    };
    let entry = sqe(&op).user_data(1);
    // SAFETY: `path` and `how` live until after `submit_and_wait` below returns with the
    // completion, so the kernel never reads them after they are dropped.
    unsafe {
        ring.submission()
            .push(&entry)
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    }
    // Wait for the completion before `how` goes out of scope (EINTR only interrupts the
    // wait, the submission stands).
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !ring.completion().is_empty() {
            break;
        }
    }
    let res = ring
        .completion()
        .next()
        .map(|c| c.result())
        .ok_or_else(|| io::Error::other("io_uring probe: no completion"))?;
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    // SAFETY: a fresh fd returned by the kernel, owned by us.
    drop(unsafe { OwnedFd::from_raw_fd(res) });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn openat2_probe_works_here() {
        probe_openat2().unwrap();
    }

    #[test]
    fn openat2_refuses_escape() {
        let dir = open_root_dir().unwrap();
        let how = beneath_how();
        // SAFETY: valid pointers for the call.
        let r = unsafe {
            exec(&Op::OpenAt2 {
                dirfd: dir.as_raw_fd(),
                path: c"/etc".as_ptr(),
                how: &how,
            })
        };
        assert_eq!(r, -libc::EXDEV);
    }
}
