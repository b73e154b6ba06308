//! The per-request state machines, shared by both backends.
//!
//! A machine hands out one `Op` at a time (`Step::Submit`) and is fed its result
//! (`on_result`, the io_uring CQE convention: value or `-errno`). The io_uring backend turns
//! the op into an SQE keyed by the request's slot; the threads backend runs it as a blocking
//! syscall. Either way the logic — and so the behaviour the tests check — is the same.
//!
//! Memory rule: an `Op` holds raw pointers into its machine (paths, `open_how`, the statx
//! buffer, the read buffer's spare capacity, the write payload). A machine never touches
//! those fields between returning `Step::Submit` and receiving the result, and the executors
//! never move or drop a machine while one of its ops is in flight (the ring backend keeps it
//! boxed in a slot until every completion for it has arrived).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{FsError, FsErrorKind};
use crate::path::{self, GetPath, PutPath};
use crate::spare;
use crate::sys::{self, Op, OpenHow, RESOLVE};
use crate::{FileData, PutInfo};

/// Largest single read/write submitted (the SQE length is a u32).
const MAX_IO_CHUNK: usize = 1 << 30;
/// openat2 may answer EAGAIN when a concurrent rename races with `..` resolution.
const MAX_EAGAIN_RETRIES: u8 = 8;
/// O_EXCL collisions tolerated when picking a temp name.
const MAX_TMP_TRIES: u8 = 16;

/// The answer and the CPU time (ns) the IO thread spent on the request.
pub(crate) type GetReply = oneshot::Sender<(Result<FileData, FsError>, u64)>;
pub(crate) type PutReply = oneshot::Sender<(Result<PutInfo, FsError>, u64)>;

/// What a machine wants next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Run this op and call `on_result` with its result.
    Submit(Op),
    /// Finished: call `finish` (sends the reply) and close the fds it returns.
    Done,
}

/// One request.
#[derive(Debug)]
pub(crate) enum Machine {
    Get(Box<GetMachine>),
    Put(Box<PutMachine>),
}

impl Machine {
    pub(crate) fn start(&mut self) -> Step {
        match self {
            Machine::Get(m) => m.start(),
            Machine::Put(m) => m.start(),
        }
    }

    pub(crate) fn on_result(&mut self, res: i32) -> Step {
        match self {
            Machine::Get(m) => m.on_result(res),
            Machine::Put(m) => m.on_result(res),
        }
    }

    /// Adds CPU time the executing thread spent on this request (sent with the reply).
    pub(crate) fn add_cpu_ns(&mut self, ns: u64) {
        let c = match self {
            Machine::Get(m) => &mut m.cpu_ns,
            Machine::Put(m) => &mut m.cpu_ns,
        };
        *c = c.saturating_add(ns);
    }

    /// Sends the reply (if the caller is still waiting) and returns the fds still open, for
    /// the executor to close. Only called after `Step::Done`.
    pub(crate) fn finish(&mut self) -> Vec<OwnedFd> {
        match self {
            Machine::Get(m) => {
                if let (Some(tx), Some(r)) = (m.tx.take(), m.reply.take()) {
                    // The caller may have given up (future dropped): nothing to do then.
                    let _ = tx.send((r, m.cpu_ns));
                }
                [m.fd.take(), m.root_fd.take()]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            Machine::Put(m) => {
                if let (Some(tx), Some(r)) = (m.tx.take(), m.reply.take()) {
                    let _ = tx.send((r, m.cpu_ns));
                }
                [
                    m.tmp_fd.take(),
                    m.walk_fd.take(),
                    m.dir_fd.take(),
                    m.root_fd.take(),
                ]
                .into_iter()
                .flatten()
                .collect()
            }
        }
    }

    /// Answers the caller with `kind` without touching any buffer (used when the ring dies
    /// with ops in flight: the machine is then leaked, never freed).
    pub(crate) fn abort(&mut self, kind: FsErrorKind) {
        match self {
            Machine::Get(m) => {
                if let Some(tx) = m.tx.take() {
                    let _ = tx.send((Err(FsError::new(kind, "get", &m.path.display)), m.cpu_ns));
                }
            }
            Machine::Put(m) => {
                if let Some(tx) = m.tx.take() {
                    let _ = tx.send((Err(FsError::new(kind, "put", &m.path.display)), m.cpu_ns));
                }
            }
        }
    }
}

pub(crate) fn own_fd(res: i32) -> OwnedFd {
    // SAFETY: only called with a non-negative open/openat2 result, i.e. a fresh fd that the
    // kernel just installed for us and that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(res) }
}

fn raw(fd: &Option<OwnedFd>) -> RawFd {
    fd.as_ref().map_or(-1, |f| f.as_raw_fd())
}

fn dir_how(durable: bool) -> OpenHow {
    // A durable write fsyncs the directory, which needs a real (not O_PATH) descriptor.
    let access = if durable {
        libc::O_RDONLY
    } else {
        libc::O_PATH
    };
    OpenHow {
        flags: (access | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE,
    }
}

// ---------------------------------------------------------------------------------------
// get: openat2(root/rel, NO_SYMLINKS) → statx → [inline fgetxattr] → read… → reply → close
// fd; when that open meets a symlink (or `rel` has a `..`): open root → openat2(rel,
// BENEATH) → statx → … → close fds.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GetState {
    OpenWhole,
    OpenRoot,
    OpenFile,
    Stat,
    Read,
    Done,
}

pub(crate) struct GetMachine {
    state: GetState,
    /// The tenant root's path; `None` when the machine is given the root open
    /// ([`GetMachine::beneath`]).
    root: Option<CString>,
    /// `root/rel`, opened in one walk from the current directory with `RESOLVE_NO_SYMLINKS`
    /// when `rel` has no `..` (see [`whole_path`]); `None` once that open met a symlink, or
    /// for a machine that goes through the root.
    whole: Option<CString>,
    /// The whole-path open met a symlink (`ELOOP`) and the machine went through the root.
    met_symlink: bool,
    path: GetPath,
    max_bytes: u64,
    how: OpenHow,
    stx: libc::statx,
    root_fd: Option<OwnedFd>,
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    size: usize,
    content_type: Option<String>,
    retries: u8,
    tx: Option<GetReply>,
    reply: Option<Result<FileData, FsError>>,
    /// CPU time the IO thread spent on this request so far.
    cpu_ns: u64,
    /// Run by [`run_get_nowait`] on the caller's thread: reads go through `RWF_NOWAIT`, so
    /// the file's `O_NONBLOCK` need not be cleared.
    nowait: bool,
}

impl std::fmt::Debug for GetMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetMachine")
            .field("state", &self.state)
            .field("path", &self.path.display)
            .finish_non_exhaustive()
    }
}

impl GetMachine {
    /// A get of `path` beneath the root named `root`: in one open of the whole path when it
    /// can be ([`whole_path`]), else (or when that open meets a symlink) through the root.
    pub(crate) fn new(root: CString, path: GetPath, max_bytes: u64, tx: Option<GetReply>) -> Self {
        let whole = whole_path(&root, &path);
        let mut m = Self::with(Some(root), path, max_bytes, tx);
        m.whole = whole;
        m
    }

    /// [`GetMachine::new`] that goes through the root from the start (a root known to sit
    /// behind a symlink).
    pub(crate) fn by_root(root: CString, path: GetPath, max_bytes: u64) -> Self {
        Self::with(Some(root), path, max_bytes, None)
    }

    /// A get beneath `root`, already open: the machine starts at the file.
    pub(crate) fn beneath(root: OwnedFd, path: GetPath, max_bytes: u64) -> Self {
        let mut m = Self::with(None, path, max_bytes, None);
        m.root_fd = Some(root);
        m
    }

    fn with(root: Option<CString>, path: GetPath, max_bytes: u64, tx: Option<GetReply>) -> Self {
        GetMachine {
            state: GetState::OpenRoot,
            root,
            whole: None,
            met_symlink: false,
            path,
            max_bytes,
            how: OpenHow {
                // O_NONBLOCK: a FIFO must not block the open; cleared once statx says
                // "regular file". O_NOCTTY: never acquire a terminal.
                flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
                    as u64,
                mode: 0,
                resolve: RESOLVE,
            },
            // SAFETY: `statx` is a plain C struct of integers; all-zero is a valid value.
            stx: unsafe { std::mem::zeroed() },
            root_fd: None,
            fd: None,
            buf: Vec::new(),
            size: 0,
            content_type: None,
            retries: 0,
            tx,
            reply: None,
            cpu_ns: 0,
            nowait: false,
        }
    }

    /// The answer of a machine run by [`run_get_nowait`].
    pub(crate) fn take_reply(&mut self) -> Option<Result<FileData, FsError>> {
        self.reply.take()
    }

    /// The root the machine opened or was given, for the caller to keep.
    pub(crate) fn take_root_fd(&mut self) -> Option<OwnedFd> {
        self.root_fd.take()
    }

    /// Whether the whole-path open met a symlink, so the get went through the root.
    pub(crate) fn met_symlink(&self) -> bool {
        self.met_symlink
    }

    fn fail(&mut self, err: FsError) -> Step {
        self.reply = Some(Err(err));
        self.state = GetState::Done;
        Step::Done
    }

    fn fail_errno(&mut self, errno: i32, op: &'static str) -> Step {
        let e = FsError::from_errno(errno, false, op, &self.path.display);
        self.fail(e)
    }

    fn start(&mut self) -> Step {
        if self.root_fd.is_some() {
            return self.open_file(); // given, open ([`GetMachine::beneath`])
        }
        if let Some(whole) = &self.whole {
            self.state = GetState::OpenWhole;
            self.how.resolve = libc::RESOLVE_NO_SYMLINKS;
            return Step::Submit(Op::OpenAt2 {
                dirfd: libc::AT_FDCWD,
                path: whole.as_ptr(),
                how: &self.how,
            });
        }
        let Some(root) = &self.root else {
            return self.fail_errno(libc::EBADF, "open"); // neither path nor fd: unreachable
        };
        self.state = GetState::OpenRoot;
        Step::Submit(Op::OpenAt {
            dirfd: libc::AT_FDCWD,
            path: root.as_ptr(),
            flags: libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            mode: 0,
        })
    }

    fn open_file(&mut self) -> Step {
        self.state = GetState::OpenFile;
        self.how.resolve = RESOLVE;
        Step::Submit(Op::OpenAt2 {
            dirfd: raw(&self.root_fd),
            path: self.path.c.as_ptr(),
            how: &self.how,
        })
    }

    fn read_next(&mut self) -> Step {
        let filled = self.buf.len();
        if filled >= self.size {
            return self.succeed();
        }
        let len = (self.size - filled).min(MAX_IO_CHUNK);
        self.state = GetState::Read;
        Step::Submit(Op::Read {
            fd: raw(&self.fd),
            // The spare capacity after the filled part: reserved (try_reserve_exact) before
            // the first read and never reallocated afterwards.
            buf: self.buf.spare_capacity_mut().as_mut_ptr().cast(),
            len: len as u32,
            offset: filled as u64,
        })
    }

    fn succeed(&mut self) -> Step {
        let bytes = std::mem::take(&mut self.buf);
        self.reply = Some(Ok(FileData {
            bytes,
            content_type: self.content_type.take(),
        }));
        self.state = GetState::Done;
        Step::Done
    }

    fn on_stat(&mut self) -> Step {
        let fmt = u32::from(self.stx.stx_mode) & libc::S_IFMT;
        if fmt == libc::S_IFDIR {
            return self.fail(FsError::new(
                FsErrorKind::IsADirectory,
                "open",
                &self.path.display,
            ));
        }
        if fmt != libc::S_IFREG {
            return self.fail(
                FsError::new(FsErrorKind::InvalidPath, "open", &self.path.display).with_source(
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                ),
            );
        }
        // A hard link can point at a file outside the tenant root and path resolution cannot
        // tell: refuse every multiply-linked file.
        if self.stx.stx_nlink > 1 {
            return self.fail(
                FsError::new(FsErrorKind::Escape, "open", &self.path.display).with_source(
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "file has more than one hard link",
                    ),
                ),
            );
        }
        if self.stx.stx_size > self.max_bytes {
            return self.fail(FsError::new(
                FsErrorKind::TooLarge,
                "read",
                &self.path.display,
            ));
        }
        let Ok(size) = usize::try_from(self.stx.stx_size) else {
            return self.fail(FsError::new(
                FsErrorKind::TooLarge,
                "read",
                &self.path.display,
            ));
        };
        let fd = raw(&self.fd);
        if !self.nowait {
            let r = sys::clear_nonblock(fd);
            if r < 0 {
                return self.fail_errno(-r, "open");
            }
        }
        // Inline (a CPU thread): the content type remembered per thread while the file's
        // stamps hold (`types.rs`); the IO threads ask the file.
        let content_type = if self.nowait {
            crate::types::content_type(fd, &self.stx)
        } else {
            sys::get_content_type(fd)
        };
        match content_type {
            Ok(ct) => self.content_type = ct,
            Err(e) => return self.fail_errno(e, "getxattr"),
        }
        if self.buf.try_reserve_exact(size).is_err() {
            return self.fail_errno(libc::ENOMEM, "read");
        }
        self.size = size;
        self.read_next()
    }

    /// The file is open (`res`, else `-errno`): ask its `statx`.
    fn on_file_open(&mut self, res: i32) -> Step {
        if res < 0 {
            return self.fail_errno(-res, "open");
        }
        self.fd = Some(own_fd(res));
        self.state = GetState::Stat;
        Step::Submit(Op::Statx {
            fd: res,
            buf: &mut self.stx,
        })
    }

    fn on_result(&mut self, res: i32) -> Step {
        match self.state {
            GetState::OpenWhole => {
                if res == -libc::ELOOP {
                    // A symlink on the way (in the root's path or in `rel`): followed only
                    // where it stays beneath the root, so resolved through the root.
                    self.met_symlink = true;
                    self.whole = None;
                    return self.start();
                }
                if res == -libc::EAGAIN && self.retries < MAX_EAGAIN_RETRIES {
                    self.retries += 1;
                    return self.start();
                }
                self.on_file_open(res)
            }
            GetState::OpenRoot => {
                if res < 0 {
                    return self.fail_errno(-res, "open");
                }
                self.root_fd = Some(own_fd(res));
                self.open_file()
            }
            GetState::OpenFile => {
                if res == -libc::EAGAIN && self.retries < MAX_EAGAIN_RETRIES {
                    self.retries += 1;
                    return self.open_file();
                }
                self.on_file_open(res)
            }
            GetState::Stat => {
                if res < 0 {
                    return self.fail_errno(-res, "stat");
                }
                self.on_stat()
            }
            GetState::Read => {
                if res == -libc::EINTR || res == -libc::EAGAIN {
                    if self.retries >= MAX_EAGAIN_RETRIES {
                        return self.fail_errno(-res, "read");
                    }
                    self.retries += 1;
                    return self.read_next();
                }
                if res < 0 {
                    return self.fail_errno(-res, "read");
                }
                if res == 0 {
                    // EOF before the statx size: the file shrank; return what is there.
                    return self.succeed();
                }
                let n = res as usize;
                let filled = self.buf.len();
                let new_len = (filled + n).min(self.size);
                // SAFETY: the kernel wrote `n` bytes into the spare capacity starting at
                // `filled` (we asked for at most `size - filled`, all within the reserved
                // capacity), so `new_len` bytes are initialised.
                unsafe { self.buf.set_len(new_len) };
                self.read_next()
            }
            GetState::Done => Step::Done,
        }
    }
}

// ---------------------------------------------------------------------------------------
// put: open root (mkdir once if missing) → openat2(parent) (walk + mkdirat if missing) →
// openat2(tmp, O_CREAT|O_EXCL) → write… → [inline fsetxattr] → [fsync] → close(tmp) →
// renameat(tmp, name) → [fsync dir] → reply → close fds.   On failure: close + unlink tmp.
// A small put first claims its slot's spare from the pool (`spare.rs`, all inline):
// open pool → renameat2(slot → tmp) → open + lease + fstat → write… → ftruncate →
// [fsetxattr/fremovexattr] → [fsync] → close; and any small put whose old target may
// become a spare swaps in by renameat2(tmp, name, EXCHANGE) and then moves the old target
// (now `tmp`) into the slot, instead of renameat.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutState {
    OpenRoot,
    MkRoot,
    OpenParent,
    WalkOpen,
    WalkMkdir,
    OpenTemp,
    Write,
    Fsync,
    CloseTemp,
    Rename,
    FsyncDir,
    CleanupClose,
    CleanupUnlink,
    Done,
}

pub(crate) struct PutMachine {
    state: PutState,
    root: CString,
    path: PutPath,
    data: Bytes,
    content_type: Option<Box<[u8]>>,
    durable: bool,
    how: OpenHow,
    root_fd: Option<OwnedFd>,
    /// The target's directory when it is not the root itself.
    dir_fd: Option<OwnedFd>,
    /// The last directory opened while creating missing ones.
    walk_fd: Option<OwnedFd>,
    walk_i: usize,
    walk_prefix: CString,
    mkdir_tried: bool,
    root_mkdir_tried: bool,
    tmp: CString,
    tmp_fd: Option<OwnedFd>,
    tmp_created: bool,
    tmp_tries: u8,
    /// The spare pool and this target's slot in it, when the put may keep the old target
    /// as a spare.
    pool: Option<(OwnedFd, CString)>,
    /// `tmp` is a claimed spare (rewritten: cut to length, old content type removed).
    reusing: bool,
    written: usize,
    retries: u8,
    err: Option<FsError>,
    tx: Option<PutReply>,
    reply: Option<Result<PutInfo, FsError>>,
    /// CPU time the IO thread spent on this request so far.
    cpu_ns: u64,
}

impl std::fmt::Debug for PutMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutMachine")
            .field("state", &self.state)
            .field("path", &self.path.display)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl PutMachine {
    pub(crate) fn new(
        root: CString,
        path: PutPath,
        data: Bytes,
        content_type: Option<&str>,
        durable: bool,
        tx: PutReply,
    ) -> Self {
        PutMachine {
            state: PutState::OpenRoot,
            root,
            path,
            data,
            content_type: content_type.map(|c| c.as_bytes().into()),
            durable,
            how: dir_how(durable),
            root_fd: None,
            dir_fd: None,
            walk_fd: None,
            walk_i: 0,
            walk_prefix: CString::default(),
            mkdir_tried: false,
            root_mkdir_tried: false,
            tmp: CString::default(),
            tmp_fd: None,
            tmp_created: false,
            tmp_tries: 0,
            pool: None,
            reusing: false,
            written: 0,
            retries: 0,
            err: None,
            tx: Some(tx),
            reply: None,
            cpu_ns: 0,
        }
    }

    /// The directory the file goes in.
    fn dir(&self) -> RawFd {
        match &self.dir_fd {
            Some(d) => d.as_raw_fd(),
            None => raw(&self.root_fd),
        }
    }

    fn err(&self, errno: i32, op: &'static str) -> FsError {
        FsError::from_errno(errno, true, op, &self.path.display)
    }

    fn finish_with(&mut self, r: Result<PutInfo, FsError>) -> Step {
        self.reply = Some(r);
        self.state = PutState::Done;
        Step::Done
    }

    /// Records the error and cleans up the temp file (close, then unlink) before replying,
    /// so no `.name.tmp.*` is left behind once the caller sees the error.
    fn fail(&mut self, err: FsError) -> Step {
        self.err = Some(err);
        if let Some(fd) = self.tmp_fd.take() {
            self.state = PutState::CleanupClose;
            return Step::Submit(Op::Close {
                fd: fd.into_raw_fd(),
            });
        }
        self.cleanup_unlink()
    }

    fn cleanup_unlink(&mut self) -> Step {
        if self.tmp_created {
            self.state = PutState::CleanupUnlink;
            return Step::Submit(Op::UnlinkAt {
                dirfd: self.dir(),
                path: self.tmp.as_ptr(),
            });
        }
        let err = self
            .err
            .take()
            .unwrap_or_else(|| FsError::new(FsErrorKind::Other, "put", &self.path.display));
        self.finish_with(Err(err))
    }

    fn fail_errno(&mut self, errno: i32, op: &'static str) -> Step {
        let e = self.err(errno, op);
        self.fail(e)
    }

    fn open_root(&mut self) -> Step {
        self.state = PutState::OpenRoot;
        let access = if self.durable {
            libc::O_RDONLY
        } else {
            libc::O_PATH
        };
        Step::Submit(Op::OpenAt {
            dirfd: libc::AT_FDCWD,
            path: self.root.as_ptr(),
            flags: access | libc::O_DIRECTORY | libc::O_CLOEXEC,
            mode: 0,
        })
    }

    fn start(&mut self) -> Step {
        self.open_root()
    }

    fn open_parent(&mut self) -> Step {
        let Some(parent) = &self.path.parent else {
            return self.begin_file();
        };
        self.state = PutState::OpenParent;
        self.how = dir_how(self.durable);
        Step::Submit(Op::OpenAt2 {
            dirfd: raw(&self.root_fd),
            path: parent.as_ptr(),
            how: &self.how,
        })
    }

    /// Opens the first `walk_i + 1` parent components, always resolved from the root with
    /// RESOLVE_BENEATH (never from the previous component, so `..` is judged against the
    /// tenant root, and a symlink created concurrently cannot lead out).
    fn walk_open(&mut self) -> Step {
        self.state = PutState::WalkOpen;
        self.how = dir_how(self.durable);
        self.walk_prefix = path::prefix(&self.path.comps, self.walk_i);
        Step::Submit(Op::OpenAt2 {
            dirfd: raw(&self.root_fd),
            path: self.walk_prefix.as_ptr(),
            how: &self.how,
        })
    }

    /// The directory is open: a small put writes into its slot's spare when it can claim
    /// one that nobody else has open, else into a fresh temp file.
    fn begin_file(&mut self) -> Step {
        if self.data.len() > spare::SPARE_MAX || !spare::enabled() {
            return self.open_temp();
        }
        let root = self.root.as_bytes();
        let Some(pool) = spare::pool_path(root).and_then(|p| spare::open_pool(&p)) else {
            return self.open_temp();
        };
        let slot = spare::slot(root, &self.path.display);
        let dir = self.dir();
        self.tmp = path::tmp_name(&self.path.tmp_stem);
        if spare::claim(pool.as_raw_fd(), &slot, dir, &self.tmp) == 0 {
            self.tmp_created = true;
            if let Some(fd) = spare::lease(dir, &self.tmp) {
                self.tmp_fd = Some(fd);
                self.reusing = true;
                self.pool = Some((pool, slot));
                return self.write_next();
            }
            // Someone still reads that old version, or it is not ours to rewrite: it goes.
            spare::unlink(dir, &self.tmp);
            self.tmp_created = false;
        }
        self.pool = Some((pool, slot));
        self.open_temp()
    }

    fn open_temp(&mut self) -> Step {
        self.state = PutState::OpenTemp;
        self.tmp = path::tmp_name(&self.path.tmp_stem);
        self.how = OpenHow {
            flags: (libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC) as u64,
            mode: 0o644,
            resolve: RESOLVE,
        };
        Step::Submit(Op::OpenAt2 {
            dirfd: self.dir(),
            path: self.tmp.as_ptr(),
            how: &self.how,
        })
    }

    fn write_next(&mut self) -> Step {
        let total = self.data.len();
        if self.written >= total {
            return self.after_write();
        }
        let len = (total - self.written).min(MAX_IO_CHUNK);
        self.state = PutState::Write;
        Step::Submit(Op::Write {
            fd: raw(&self.tmp_fd),
            // `data` (a `Bytes`) owns its buffer for the machine's whole life; `written` is
            // within its length.
            buf: self.data[self.written..].as_ptr(),
            len: len as u32,
            offset: self.written as u64,
        })
    }

    fn after_write(&mut self) -> Step {
        if self.reusing {
            // The spare held an older, maybe longer, file.
            let r = spare::truncate(raw(&self.tmp_fd), self.data.len());
            if r < 0 {
                return self.fail_errno(-r, "truncate");
            }
        }
        if let Some(ct) = &self.content_type {
            let r = sys::set_content_type(raw(&self.tmp_fd), ct);
            if r < 0 {
                return self.fail_errno(-r, "setxattr");
            }
        } else if self.reusing {
            let r = spare::clear_content_type(raw(&self.tmp_fd));
            if r < 0 {
                return self.fail_errno(-r, "removexattr");
            }
        }
        if self.durable {
            self.state = PutState::Fsync;
            return Step::Submit(Op::Fsync {
                fd: raw(&self.tmp_fd),
            });
        }
        self.close_temp()
    }

    /// Puts the new file in the target's place: exchanged with the target when the old
    /// one may become the spare, else renamed over it as before.
    fn swap(&mut self) -> Step {
        let dir = self.dir();
        if let Some((pool, slot)) = self.pool.take() {
            if spare::enabled() && spare::keeps(dir, &self.path.name) {
                let r = spare::exchange(dir, &self.tmp, &self.path.name);
                if r == 0 {
                    // `tmp` now names the old target: into the slot it goes.
                    self.tmp_created = false;
                    spare::keep(dir, &self.tmp, pool.as_raw_fd(), &slot);
                    return self.renamed();
                }
                // ENOENT: the target went away meanwhile; EINVAL & co.: no exchange here
                // (spares are off now). Either way a plain rename does it.
                if !matches!(
                    -r,
                    libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
                ) {
                    return self.fail_errno(-r, "rename");
                }
            }
        }
        self.state = PutState::Rename;
        Step::Submit(Op::RenameAt {
            dirfd: dir,
            from: self.tmp.as_ptr(),
            to: self.path.name.as_ptr(),
        })
    }

    /// The new file has the target's name.
    fn renamed(&mut self) -> Step {
        self.tmp_created = false;
        if self.durable {
            self.state = PutState::FsyncDir;
            return Step::Submit(Op::Fsync { fd: self.dir() });
        }
        self.succeed()
    }

    fn close_temp(&mut self) -> Step {
        let Some(fd) = self.tmp_fd.take() else {
            return self.fail_errno(libc::EBADF, "close");
        };
        self.state = PutState::CloseTemp;
        Step::Submit(Op::Close {
            fd: fd.into_raw_fd(),
        })
    }

    fn succeed(&mut self) -> Step {
        let size_bytes = self.data.len() as u64;
        self.finish_with(Ok(PutInfo { size_bytes }))
    }

    fn on_result(&mut self, res: i32) -> Step {
        match self.state {
            PutState::OpenRoot => {
                if res == -libc::ENOENT && !self.root_mkdir_tried {
                    // The tenant root is created on first write (one level only).
                    self.root_mkdir_tried = true;
                    self.state = PutState::MkRoot;
                    return Step::Submit(Op::MkDirAt {
                        dirfd: libc::AT_FDCWD,
                        path: self.root.as_ptr(),
                        mode: 0o755,
                    });
                }
                if res < 0 {
                    return self.fail_errno(-res, "open");
                }
                self.root_fd = Some(own_fd(res));
                self.open_parent()
            }
            PutState::MkRoot => {
                if res < 0 && res != -libc::EEXIST {
                    return self.fail_errno(-res, "mkdir");
                }
                self.open_root()
            }
            PutState::OpenParent => {
                if res == -libc::EAGAIN && self.retries < MAX_EAGAIN_RETRIES {
                    self.retries += 1;
                    return self.open_parent();
                }
                if res == -libc::ENOENT {
                    self.walk_i = 0;
                    self.mkdir_tried = false;
                    return self.walk_open();
                }
                if res < 0 {
                    return self.fail_errno(-res, "open");
                }
                self.dir_fd = Some(own_fd(res));
                self.begin_file()
            }
            PutState::WalkOpen => {
                if res == -libc::EAGAIN && self.retries < MAX_EAGAIN_RETRIES {
                    self.retries += 1;
                    return self.walk_open();
                }
                if res == -libc::ENOENT && !self.mkdir_tried {
                    let Some(comp) = self.path.comps.get(self.walk_i) else {
                        return self.fail_errno(libc::ENOENT, "open");
                    };
                    self.mkdir_tried = true;
                    self.state = PutState::WalkMkdir;
                    // The component's parent: the last directory opened by the walk (itself
                    // opened beneath the root), or the root.
                    let parent = match &self.walk_fd {
                        Some(fd) => fd.as_raw_fd(),
                        None => raw(&self.root_fd),
                    };
                    return Step::Submit(Op::MkDirAt {
                        dirfd: parent,
                        path: comp.as_ptr(),
                        mode: 0o755,
                    });
                }
                if res < 0 {
                    return self.fail_errno(-res, "open");
                }
                // Replacing `walk_fd` closes the previous directory inline: an O_PATH (or
                // read-only directory) close is a trivial syscall not worth a ring round trip.
                self.walk_fd = Some(own_fd(res));
                self.walk_i += 1;
                self.mkdir_tried = false;
                if self.walk_i >= self.path.comps.len() {
                    self.dir_fd = self.walk_fd.take();
                    return self.begin_file();
                }
                self.walk_open()
            }
            PutState::WalkMkdir => {
                if res < 0 && res != -libc::EEXIST {
                    return self.fail_errno(-res, "mkdir");
                }
                // Re-open the same prefix beneath the root (never trust what mkdir made).
                self.walk_open()
            }
            PutState::OpenTemp => {
                if res == -libc::EEXIST && self.tmp_tries < MAX_TMP_TRIES {
                    self.tmp_tries += 1;
                    return self.open_temp();
                }
                if res < 0 {
                    return self.fail_errno(-res, "create");
                }
                self.tmp_fd = Some(own_fd(res));
                self.tmp_created = true;
                self.write_next()
            }
            PutState::Write => {
                if res == -libc::EINTR || res == -libc::EAGAIN {
                    if self.retries >= MAX_EAGAIN_RETRIES {
                        return self.fail_errno(-res, "write");
                    }
                    self.retries += 1;
                    return self.write_next();
                }
                if res < 0 {
                    return self.fail_errno(-res, "write");
                }
                if res == 0 {
                    let e =
                        FsError::new(FsErrorKind::Other, "write", &self.path.display).with_source(
                            std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0"),
                        );
                    return self.fail(e);
                }
                self.written += res as usize;
                self.write_next()
            }
            PutState::Fsync => {
                if res < 0 {
                    return self.fail_errno(-res, "fsync");
                }
                self.close_temp()
            }
            PutState::CloseTemp => {
                // The fd is released even when close reports an error (a deferred write
                // error): the data may be lost, so fail and remove the temp file.
                if res < 0 {
                    return self.fail_errno(-res, "close");
                }
                self.swap()
            }
            PutState::Rename => {
                if res < 0 {
                    return self.fail_errno(-res, "rename");
                }
                self.renamed()
            }
            PutState::FsyncDir => {
                if res < 0 {
                    return self.fail_errno(-res, "fsync");
                }
                self.succeed()
            }
            PutState::CleanupClose => self.cleanup_unlink(),
            PutState::CleanupUnlink => {
                self.tmp_created = false;
                self.cleanup_unlink()
            }
            PutState::Done => Step::Done,
        }
    }
}

/// `root/rel` as one path, when opening it from the current directory with
/// `RESOLVE_NO_SYMLINKS` can only reach a file beneath the root: `rel` has no `..`
/// component (it is relative, `path::parse_get`), so a walk that follows no symlink stays
/// below wherever the root's path leads at that moment. The same file `RESOLVE_BENEATH`
/// from the root would open, in one walk instead of two (or of a `statx` of the root's path
/// and a walk from a kept root): no descriptor of the root is kept, so none can be stale.
/// Not when the two together are longer than a path may be (`PATH_MAX` with its NUL), as
/// a long `rel` beneath a root can be.
pub(crate) fn whole_path(root: &std::ffi::CStr, rel: &GetPath) -> Option<CString> {
    let (root, rel_bytes) = (root.to_bytes(), rel.c.as_bytes());
    if root.len() + 1 + rel_bytes.len() >= libc::PATH_MAX as usize
        || rel.display.split('/').any(|c| c == "..")
    {
        return None;
    }
    let rel = rel_bytes;
    let mut v = Vec::with_capacity(root.len() + rel.len() + 2);
    v.extend_from_slice(root);
    if !root.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(rel);
    CString::new(v).ok()
}

/// Runs a get on the calling thread with syscalls that never wait for the disk
/// ([`sys::exec_nowait`]). `false` when a step would have blocked (a path not in the dentry
/// cache, data not in the page cache, a rename race): nothing was answered, and dropping
/// the machine closes what it opened; the caller then hands the get to an IO thread.
pub(crate) fn run_get_nowait(m: &mut GetMachine) -> bool {
    m.nowait = true;
    let mut step = m.start();
    while let Step::Submit(op) = step {
        // SAFETY: `op` points into `m`, which is alive, not moved, and not otherwise accessed
        // during this call.
        let res = unsafe { sys::exec_nowait(&op) };
        if res == -libc::EAGAIN {
            return false;
        }
        step = m.on_result(res);
    }
    true
}

/// Runs a machine to completion with blocking syscalls (the threads backend).
pub(crate) fn run_blocking(m: &mut Machine) {
    let mut step = m.start();
    while let Step::Submit(op) = step {
        // SAFETY: `op` points into `m`, which is alive, not moved, and not otherwise accessed
        // during this call.
        let res = unsafe { sys::exec(&op) };
        step = m.on_result(res);
    }
}
