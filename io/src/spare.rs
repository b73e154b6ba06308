//! Kept spare inodes for `fs.put`: an overwrite that neither makes nor frees an inode.
//!
//! A put writes the new bytes to a file of its own and renames that over the target, so a
//! reader sees the old bytes or the new ones, never a mix, and a kill -9 mid-put leaves the
//! target whole. With a fresh temp file every put makes one inode and frees one; on ext4
//! without a journal the inode allocator then skips every inode freed in the last minutes
//! (`recently_deleted`), and a stream of overwrites spends most of its CPU scanning past
//! them (bench/results/README.md, "Issue 12, fourth round").
//!
//! So an overwrite keeps the replaced file instead of freeing it, as a *spare* in the
//! tenant's pool beside the tenant roots: `<parent of the root>/.beamline+spares/<name of
//! the root>/<slot>` (the parent is the worker's fs root; `+` is not a tenant-id character,
//! so no tenant root can be that directory, and no tenant path can reach it). A pool only
//! ever holds its own tenant's old versions, so a claimed spare never carries another
//! tenant's bytes into a tenant's directory. A target's slot is a hash of its root and
//! path, one of [`SLOTS`], so a pool holds at most `SLOTS × SPARE_MAX` bytes. A small put
//! then:
//! 1. *claims* its slot's spare by renaming it to a fresh temp name in the target's
//!    directory (a rename moves exactly one inode to a name only this put uses; a put
//!    that finds the slot empty, or loses the race for it, writes a fresh file);
//! 2. opens it and takes a write lease (`F_SETLEASE F_WRLCK`): granted only while no other
//!    descriptor or mapping has the file open, so a reader still holding that old version
//!    keeps it byte for byte (the claim is then undone by unlinking the name, and the put
//!    writes a fresh file); the file must also be a regular file with one link, our owner
//!    and the mode a new file gets;
//! 3. writes, cuts it to length, closes it and *exchanges* it with the target
//!    (`renameat2(RENAME_EXCHANGE)`), which leaves the old target under the temp name;
//! 4. moves that old target into the slot (`RENAME_NOREPLACE`; if the slot was refilled
//!    meanwhile, the old target is unlinked as before).
//!
//! A fresh temp file takes steps 3 and 4 too, so the first overwrite fills the slot. Only
//! an old target that is a regular file with one link, our owner and at most
//! [`SPARE_MAX`] bytes is kept; anything else is replaced and freed as before. Where the
//! kernel or filesystem refuses leases or the exchange, spares are switched off for the
//! process; a tenant root on another filesystem than the pool simply never gets a spare
//! (`EXDEV`). A lease break sends the holder `SIGIO`, whose default action ends the
//! process: before the first lease, `SIGIO` is set to ignored unless a handler is installed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::sys::{self, errno, Op, OpenHow, RESOLVE};

/// The pool's directory name, beside the tenant roots.
pub const POOL_DIR: &str = ".beamline+spares";
/// Slots in a pool.
pub(crate) const SLOTS: u64 = 4096;
/// Largest put written through a spare, and largest old target kept as one: a tenant's
/// pool holds at most `SLOTS × SPARE_MAX` = 64 MiB.
pub(crate) const SPARE_MAX: usize = 16 * 1024;

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

/// The pool directory of tenant root `root`: `<its parent>/.beamline+spares/<its name>`;
/// `None` for a root without a parent.
pub(crate) fn pool_path(root: &[u8]) -> Option<CString> {
    let trimmed = match root.iter().rposition(|&b| b != b'/') {
        Some(i) => &root[..=i],
        None => return None,
    };
    let cut = trimmed.iter().rposition(|&b| b == b'/')?;
    let parent = if cut == 0 { &b"/"[..] } else { &trimmed[..cut] };
    let name = &trimmed[cut + 1..];
    if name == b"." || name == b".." {
        return None;
    }
    let mut p = parent.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(POOL_DIR.as_bytes());
    p.push(b'/');
    p.extend_from_slice(name);
    CString::new(p).ok()
}

/// Where the spare for `rel` beneath `root` lives (for operators and tests; `None` for a
/// root without a parent or a path `fs.put` refuses).
pub fn spare_path(root: &std::path::Path, rel: &str) -> Option<std::path::PathBuf> {
    let p = crate::path::parse_put(rel).ok()?;
    let pool = pool_path(root.as_os_str().as_bytes())?;
    let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(pool.as_bytes()));
    Some(
        dir.join(
            slot(root.as_os_str().as_bytes(), &p.display)
                .to_str()
                .ok()?,
        ),
    )
}

/// The slot of `rel` beneath `root`: three hex digits of an FNV-1a hash.
pub(crate) fn slot(root: &[u8], rel: &str) -> CString {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in root.iter().chain(&[0u8]).chain(rel.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    CString::new(format!("{:03x}", h % SLOTS)).unwrap_or_else(|_| c"0".to_owned())
}

/// Opens a tenant's pool directory at `path` (see [`pool_path`]), making it and the
/// `.beamline+spares` above it (mode 0700) when missing.
pub(crate) fn open_pool(path: &CStr) -> Option<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a live C string; plain syscall.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd >= 0 {
        return Some(crate::machine::own_fd(fd));
    }
    if errno() != libc::ENOENT {
        return None;
    }
    let bytes = path.to_bytes();
    let cut = bytes.iter().rposition(|&b| b == b'/')?;
    let above = CString::new(&bytes[..cut]).ok()?;
    for dir in [above.as_c_str(), path] {
        // SAFETY: live C strings; plain syscall (EEXIST: made meanwhile, fine).
        let _ = unsafe { libc::mkdirat(libc::AT_FDCWD, dir.as_ptr(), 0o700) };
    }
    // SAFETY: as above.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags) };
    (fd >= 0).then(|| crate::machine::own_fd(fd))
}

/// Moves the spare in `slot` of the pool to the fresh name `tmp` in `dir`. 0 or `-errno`
/// (`ENOENT`: the slot is empty, or another put claimed it first).
pub(crate) fn claim(pool: RawFd, slot: &CStr, dir: RawFd, tmp: &CStr) -> i32 {
    renameat2(pool, slot, dir, tmp, libc::RENAME_NOREPLACE)
}

/// Opens the claimed spare `tmp` in `dir` for writing under a write lease, if it may be
/// rewritten (see the module docs); `None`: unlink it and write a fresh file.
pub(crate) fn lease(dir: RawFd, tmp: &CStr) -> Option<OwnedFd> {
    let expect = expect()?;
    // O_NONBLOCK: whatever was in the slot (a FIFO?) must not block the open.
    let how = OpenHow {
        flags: (libc::O_WRONLY
            | libc::O_NONBLOCK
            | libc::O_NOFOLLOW
            | libc::O_NOCTTY
            | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE,
    };
    // SAFETY: `tmp` and `how` are live for the call.
    let r = unsafe {
        sys::exec(&Op::OpenAt2 {
            dirfd: dir,
            path: tmp.as_ptr(),
            how: &how,
        })
    };
    if r < 0 {
        return None;
    }
    let fd = crate::machine::own_fd(r);
    // SAFETY: F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } < 0 {
        // EAGAIN: open elsewhere (a reader of the old version, a mapping); EACCES: not
        // ours. Anything else: no leases here (fs.leases-enable = 0, the filesystem).
        if !matches!(errno(), libc::EAGAIN | libc::EACCES | libc::EPERM) {
            switch_off();
        }
        return None;
    }
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return None;
    }
    let fit = st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_nlink == 1
        && st.st_uid == expect.uid
        && st.st_mode & 0o7777 == expect.mode;
    // The writes may go through io_uring, which would answer EAGAIN on an O_NONBLOCK file.
    (fit && sys::clear_nonblock(fd.as_raw_fd()) == 0).then_some(fd)
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

/// Whether the current target `name` in `dir` may become a spare once replaced.
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

fn renameat2(from_dir: RawFd, from: &CStr, to_dir: RawFd, to: &CStr, flags: libc::c_uint) -> i32 {
    // SAFETY: both names are live C strings; the kernel checks the fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir,
            from.as_ptr(),
            to_dir,
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
    let r = renameat2(dir, a, dir, b, libc::RENAME_EXCHANGE);
    if matches!(-r, libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) {
        switch_off();
    }
    r
}

/// Moves the replaced target, now `tmp` in `dir`, into the pool's `slot` unless that is
/// taken (or on another filesystem): then it is unlinked, as a replaced file always was.
pub(crate) fn keep(dir: RawFd, tmp: &CStr, pool: RawFd, slot: &CStr) {
    if renameat2(dir, tmp, pool, slot, libc::RENAME_NOREPLACE) < 0 {
        unlink(dir, tmp);
    }
}

/// Removes `name` from `dir` (errors ignored: what is left is only a spare).
pub(crate) fn unlink(dir: RawFd, name: &CStr) {
    // SAFETY: `name` is a live C string.
    let _ = unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_beside_the_root() {
        let p = |r: &[u8]| pool_path(r).map(|c| c.into_bytes());
        assert_eq!(
            p(b"/srv/fs/acme").unwrap(),
            b"/srv/fs/.beamline+spares/acme"
        );
        assert_eq!(
            p(b"/srv/fs/acme//").unwrap(),
            b"/srv/fs/.beamline+spares/acme"
        );
        assert_eq!(p(b"/acme").unwrap(), b"/.beamline+spares/acme");
        assert_eq!(p(b"rel/acme").unwrap(), b"rel/.beamline+spares/acme");
        assert!(p(b"/").is_none());
        assert!(p(b"acme").is_none());
        assert!(p(b"/srv/fs/..").is_none());
    }

    #[test]
    fn slots_spread_and_stay_in_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let s = slot(b"/srv/fs/acme", &format!("out/{i}.json"));
            let v = u64::from_str_radix(s.to_str().unwrap(), 16).unwrap();
            assert!(v < SLOTS);
            seen.insert(v);
        }
        // 2000 keys into 4096 slots: about 1600 distinct expected; a broken hash gives few.
        assert!(seen.len() > 1400, "{}", seen.len());
        assert_ne!(
            slot(b"/a", "x"),
            slot(b"/b", "x"),
            "the root is part of the key"
        );
    }
}
