//! Tenant root directories kept open (`O_PATH`) per thread, for the inline `fs.get` of
//! [`IoPool::try_get_now`](crate::IoPool::try_get_now) of a root that sits behind a
//! symlink (its own path has one, or a get met one beneath it): such a get cannot open
//! `root/rel` in one walk without following symlinks (`machine.rs`, `whole_path`), so it
//! resolves `rel` beneath the root, and opening the root by its absolute path and closing
//! it again for each would be two more system calls, and costly ones (the whole path walk;
//! 1.47 µs for open + close of a six-level root here). A root is marked so here the first
//! time a get of it meets a symlink; the mark stays (it only costs speed: the way through
//! the root gives the same answers).
//!
//! A root is never served from a stale descriptor: before each use, one `statx` of the
//! root's path (0.98 µs) must name the same directory (device and inode) the descriptor
//! was opened on, so a root renamed, replaced or re-pointed (a symlink swapped) is opened
//! afresh. A root removed and made again can get its old inode number back; the old,
//! removed directory is empty, so a file looked up through it is not found, and a
//! not-found answer through a cached root is asked again through a fresh open
//! ([`crate::IoPool::try_get_now`]).
//!
//! The CPU threads' inline gets use it, and the SQL block's `locate_first_beneath`
//! (`open.rs`, on the CPU threads: the same rule, its names are looked up in whole walks
//! until one meets a symlink); the IO threads open the root per request that goes through
//! it.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Roots kept per thread (a tenant per entry); the first is replaced past it. Each is an
/// open descriptor: 16 per CPU thread keeps even a 64-thread host (1 024) clear of the
/// usual soft limit outside the systemd unit (which raises it), and a tenant past them
/// only costs its root's open again.
const CAPACITY: usize = 16;

struct Root {
    path: Box<[u8]>,
    /// `None` while a get uses it ([`take`] to [`put`]): the entry and its path stay, so
    /// giving the root back allocates nothing.
    held: Option<Held>,
    /// A get of this root met a symlink ([`mark_symlinked`]).
    symlinked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirId {
    dev_major: u32,
    dev_minor: u32,
    ino: u64,
}

thread_local! {
    static ROOTS: RefCell<Vec<Root>> = const { RefCell::new(Vec::new()) };
}

/// The directory `statx` names, by path (`dirfd` = `AT_FDCWD`) or by descriptor (empty
/// path).
fn dir_id(dirfd: RawFd, path: &CStr, flags: i32) -> Option<DirId> {
    // SAFETY: `statx` is a plain C struct of integers; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stx` is a valid, writable statx buffer.
    let r = unsafe {
        libc::statx(
            dirfd,
            path.as_ptr(),
            flags | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_INO,
            &mut stx,
        )
    };
    let is_dir = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
    (r == 0 && is_dir).then_some(DirId {
        dev_major: stx.stx_dev_major,
        dev_minor: stx.stx_dev_minor,
        ino: stx.stx_ino,
    })
}

/// An open root and the directory it was opened on.
pub(crate) struct Held {
    fd: OwnedFd,
    id: DirId,
}

impl Held {
    /// A root just opened (one `statx` of the descriptor); `None` if it is not a directory.
    pub(crate) fn opened(fd: OwnedFd) -> Option<Held> {
        let id = dir_id(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        Some(Held { fd, id })
    }

    /// The descriptor, and what to hold it again with ([`Held::again`]).
    pub(crate) fn split(self) -> (OwnedFd, DirId) {
        (self.fd, self.id)
    }

    /// `fd`, given by [`Held::split`] with `id`, held again.
    pub(crate) fn again(fd: OwnedFd, id: DirId) -> Held {
        Held { fd, id }
    }
}

/// The open root `root`, taken out of the cache, when its path still names the directory
/// it was opened on. Give it back with [`put`].
pub(crate) fn take(root: &CStr) -> Option<Held> {
    ROOTS.with(|roots| {
        let mut roots = roots.try_borrow_mut().ok()?;
        let entry = roots.iter_mut().find(|r| *r.path == *root.to_bytes())?;
        let held = entry.held.take()?;
        let now = dir_id(libc::AT_FDCWD, root, 0)?;
        // A different directory under the old path: the descriptor is dropped (closed).
        (now == held.id).then_some(held)
    })
}

/// Keeps `held`, the open root `root`, for the next get on this thread: back into its
/// entry when [`take`] left one, else in a new entry (the oldest goes past [`CAPACITY`]).
pub(crate) fn put(root: &CStr, held: Held) {
    with_entry(root, |entry| entry.held = Some(held));
}

/// Whether a get of `root` on this thread met a symlink ([`mark_symlinked`]).
pub(crate) fn symlinked(root: &CStr) -> bool {
    ROOTS.with(|roots| {
        roots.try_borrow().is_ok_and(|roots| {
            roots
                .iter()
                .any(|r| r.symlinked && *r.path == *root.to_bytes())
        })
    })
}

/// Marks `root` as one whose gets go through the root ([`IoPool::try_get_now`]).
///
/// [`IoPool::try_get_now`]: crate::IoPool::try_get_now
pub(crate) fn mark_symlinked(root: &CStr) {
    with_entry(root, |entry| entry.symlinked = true);
}

/// Runs `f` on `root`'s entry, made when missing (the oldest goes past [`CAPACITY`]).
fn with_entry(root: &CStr, f: impl FnOnce(&mut Root)) {
    ROOTS.with(|roots| {
        let Ok(mut roots) = roots.try_borrow_mut() else {
            return;
        };
        if let Some(entry) = roots.iter_mut().find(|r| *r.path == *root.to_bytes()) {
            f(entry);
            return;
        }
        if roots.len() >= CAPACITY {
            roots.remove(0);
        }
        let mut entry = Root {
            path: root.to_bytes().into(),
            held: None,
            symlinked: false,
        };
        f(&mut entry);
        roots.push(entry);
    });
}

/// Roots this thread holds open (tests).
#[cfg(test)]
pub(crate) fn held() -> usize {
    ROOTS.with(|roots| roots.borrow().iter().filter(|r| r.held.is_some()).count())
}
