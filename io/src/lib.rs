//! File I/O backend of the worker's `fs.put` / `fs.get` blocks.
//!
//! # Prerequisites
//! * Linux with `openat2(2)` and `RESOLVE_BENEATH` (5.6+). Without it [`IoPool::start`] fails:
//!   tenant paths are never resolved without the kernel's containment check.
//! * For the io_uring backend, Linux ≥ 5.15: it submits `IORING_OP_OPENAT`, `OPENAT2`, `STATX`,
//!   `READ`, `WRITE`, `FSYNC`, `CLOSE`, `MKDIRAT` (5.15), `RENAMEAT`, `UNLINKAT` and
//!   `ASYNC_CANCEL`. At start the pool creates a probe ring, checks those opcodes and runs one
//!   real `OPENAT2` with `RESOLVE_BENEATH`; if any of that fails (old kernel, io_uring
//!   disabled by sysctl, blocked by seccomp as in Docker's default profile) it falls back to
//!   [`Backend::Threads`], unless [`IoConfig::force_backend`] asks for a specific one.
//! * Content types are kept in the user xattr `user.beamline.content_type`; a filesystem
//!   without user xattrs (`ENOTSUP`) simply does not keep them.
//!
//! # Design
//! * `threads` IO threads, thread *i* pinned to `cores[i % cores.len()]`, each the only
//!   consumer of one bounded queue (a shard). Callers pick a shard round-robin and never
//!   block: a full queue (all shards full) is [`FsErrorKind::Overloaded`].
//! * [`Backend::Uring`]: each thread owns ONE io_uring. It drains its queue into free
//!   request slots, pushes the first submission of every new request, submits the whole
//!   batch with one `io_uring_enter`, and completes requests from the completion queue.
//!   Each request is a small state machine (`machine.rs`) keyed by the slot index in the
//!   SQE's `user_data`:
//!   - get: open root → `openat2(rel)` → `statx` → read… → reply → close;
//!   - put: open root (mkdir if missing) → open/create parent dirs → `openat2(tmp,
//!     O_CREAT|O_EXCL)` → write… → xattr → (`fsync` if durable) → close → `renameat` →
//!     (`fsync` dir if durable) → reply → close; on failure the temp file is unlinked first.
//!     A small overwrite (≤ 16 KiB) keeps the replaced file as a spare in the tenant's pool
//!     beside the tenant roots (`<parent of root>/.beamline+spares/<name of root>/<slot>`),
//!     and a later small put claims that spare (rename), rewrites it under a write lease
//!     that proves nobody else has it open, and swaps it in with
//!     `renameat2(RENAME_EXCHANGE)`: no inode made or freed per put (`spare.rs`).
//!
//!   Buffers handed to the kernel (paths, `open_how`, statx buffer, read buffer, write
//!   payload) belong to the request's boxed machine, which stays in its slot, unmoved,
//!   until every completion for it has been reaped.
//! * [`Backend::Threads`]: the same state machines, each op run as a plain blocking syscall
//!   (`openat2` via `syscall(2)`, `pread`/`pwrite`, `renameat`, …) on the same pinned threads,
//!   one request at a time.
//! * Where io_uring has no opcode we can use on 5.15, the IO thread makes the syscall inline
//!   (both backends): `fgetxattr` / `fsetxattr` (the xattr opcodes need 5.19 and run on
//!   io-wq anyway), `fcntl(F_SETFL)`, and the spares' pool open, claim, lease, `fstat`,
//!   `ftruncate`, exchange and the old target's `statx`.
//! * Replies travel back on a `tokio::sync::oneshot`; the crate uses only tokio's `sync`
//!   feature and works under any executor.
//! * Each reply carries the CPU time the IO thread spent on the request (threads backend:
//!   around its blocking calls; io_uring: admitting it and handling its completions, the
//!   inline syscalls included; not the shared `io_uring_enter`). `get` / `put` charge it
//!   to the awaiting thread's account ([`cputime::charge`]), where the worker's
//!   per-assignment meter picks it up.
//!
//! # Sandbox
//! `rel` is made relative by stripping leading `/`, then resolved ONLY by
//! `openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: `..` above the root,
//! absolute symlinks and symlinks leading out of the root fail with `EXDEV` and are reported
//! as [`FsErrorKind::Escape`]; symlinks that stay inside are followed. A get first tries
//! the shortcut that opens the same file: `openat2(AT_FDCWD, "root/rel",
//! RESOLVE_NO_SYMLINKS)` when `rel` has no `..` and the two fit in one path (a walk that
//! follows no symlink and never goes up stays beneath the root); a symlink on the way
//! (`ELOOP`) sends it through the root as above. The IO threads open the root directory
//! per request that needs it (`O_PATH|O_DIRECTORY`); the inline gets of
//! [`IoPool::try_get_now`] keep such a root open per calling thread, checked by one
//! `statx` of its path before each use so that a replaced root is never served from a
//! stale fd (`roots.rs`). A hard link inside the root to a file outside it cannot be told
//! apart by path resolution, so reads refuse every file with `st_nlink > 1` (Escape),
//! including hard links whose other name is inside the root. Writes replace the directory
//! entry by `renameat` (or exchange it with a rewritten spare) and never write through an
//! existing link: a spare is only ever written while it has one link and no other opener.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cputime;
mod error;
mod machine;
mod open;
mod path;
mod roots;
mod spare;
mod sys;
mod types;
mod uring;

pub use spare::{spare_path, POOL_DIR as SPARE_POOL_DIR};

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use flume::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

pub use error::{FsError, FsErrorKind};
pub use open::{locate_first_beneath, open_beneath, Locate, LocatedFile, OpenBeneath, OpenedFile};
pub use sys::probe_uring;

use machine::{GetMachine, Machine, PutMachine};

/// Which implementation runs the file operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// One io_uring per IO thread, batched submissions.
    Uring,
    /// Blocking syscalls on the IO threads.
    Threads,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Threads => "threads",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pool configuration.
#[derive(Debug, Clone)]
pub struct IoConfig {
    /// Number of IO threads (shards), at least 1.
    pub threads: usize,
    /// Core ids; thread *i* is pinned to `cores[i % cores.len()]`. Empty: no pinning. A core
    /// that cannot be pinned to is ignored (the thread runs unpinned).
    pub cores: Vec<usize>,
    /// Bound of each shard's queue (≥ 1). Requests beyond it are refused with `Overloaded`.
    pub queue_capacity: usize,
    /// Submission-queue size of each ring (8..=32768, rounded up to a power of two by the
    /// kernel). A thread keeps at most `(entries - 2) / 4` requests in flight.
    pub ring_entries: u32,
    /// `None`: io_uring when the probe succeeds, otherwise threads. `Some(b)`: exactly `b`;
    /// `start` fails if `Uring` is forced but unusable.
    pub force_backend: Option<Backend>,
    /// Largest file `get` reads or `put` writes.
    pub max_file_bytes: u64,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            threads: 2,
            cores: Vec::new(),
            queue_capacity: 1024,
            ring_entries: 256,
            force_backend: None,
            max_file_bytes: 64 << 20,
        }
    }
}

/// What `get` returns.
#[derive(Clone, PartialEq, Eq)]
pub struct FileData {
    pub bytes: Vec<u8>,
    /// From the `user.beamline.content_type` xattr, if set.
    pub content_type: Option<String>,
}

impl fmt::Debug for FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileData")
            .field("len", &self.bytes.len())
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// What `put` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutInfo {
    pub size_bytes: u64,
}

/// Per-call options of [`IoPool::put_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// fsync the file before the rename and its directory after it. Off by default: a
    /// crash may then lose a recent write, but never leaves a partial file under the
    /// target name.
    pub durable: bool,
}

/// State shared between the pool handle and one IO thread.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Requests queued or in flight on this shard.
    pub(crate) depth: AtomicUsize,
    /// The ring thread is (about to be) blocked waiting; producers must signal `wake`.
    pub(crate) sleeping: AtomicBool,
    /// eventfd the ring thread keeps a read on (io_uring backend only).
    pub(crate) wake: Option<std::os::fd::OwnedFd>,
}

struct Inner {
    backend: Backend,
    shards: Vec<Arc<Shard>>,
    /// `None` once shut down. Dropping the senders disconnects the queues; each thread then
    /// finishes what was queued and exits. Submissions hold the read lock while they push, so
    /// nothing can be queued after the disconnection.
    senders: RwLock<Option<Vec<Sender<Machine>>>>,
    next: AtomicUsize,
    max_file_bytes: u64,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// [`IoPool::try_get_now`] can work here (`RESOLVE_CACHED` known to openat2).
    nowait: bool,
}

impl Inner {
    fn shutdown(&self) {
        let senders = match self.senders.write() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if senders.is_some() {
            drop(senders);
            for s in &self.shards {
                if let Some(fd) = &s.wake {
                    sys::eventfd_signal(fd);
                }
            }
        }
    }

    fn submit(&self, m: Machine, op: &'static str, path: &str) -> Result<(), FsError> {
        let guard = match self.senders.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(senders) = guard.as_ref() else {
            return Err(FsError::new(FsErrorKind::Shutdown, op, path));
        };
        let n = senders.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = m;
        let mut all_disconnected = true;
        // Round-robin; a full shard spills to the next one; all full → Overloaded.
        for k in 0..n {
            let i = first.wrapping_add(k) % n;
            let shard = &self.shards[i];
            shard.depth.fetch_add(1, Ordering::AcqRel);
            match senders[i].try_send(msg) {
                Ok(()) => {
                    if let Some(fd) = &shard.wake {
                        // Pairs with the fence in the ring loop: either the thread sees our
                        // message before sleeping, or we see its `sleeping` flag.
                        fence(Ordering::SeqCst);
                        if shard.sleeping.load(Ordering::Relaxed) {
                            sys::eventfd_signal(fd);
                        }
                    }
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    shard.depth.fetch_sub(1, Ordering::AcqRel);
                    all_disconnected = false;
                    msg = back;
                }
                Err(TrySendError::Disconnected(back)) => {
                    shard.depth.fetch_sub(1, Ordering::AcqRel);
                    msg = back;
                }
            }
        }
        drop(msg);
        let kind = if all_disconnected {
            FsErrorKind::Shutdown
        } else {
            FsErrorKind::Overloaded
        };
        Err(FsError::new(kind, op, path))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
        let handles = match self.handles.get_mut() {
            Ok(h) => std::mem::take(h),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for h in handles {
            // A panicked IO thread has nothing left to clean up.
            let _ = h.join();
        }
    }
}

/// The IO thread pool. Cheap to clone; the threads stop when [`IoPool::shutdown`] is called
/// or the last clone is dropped (which also waits for them to finish what was queued).
#[derive(Clone)]
pub struct IoPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for IoPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoPool")
            .field("backend", &self.inner.backend)
            .field("threads", &self.inner.shards.len())
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

fn invalid_cfg(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

fn pin(cores: &[usize], i: usize) {
    if cores.is_empty() {
        return;
    }
    let id = cores[i % cores.len()];
    // Returns false when the core does not exist or is not allowed; the thread then simply
    // runs unpinned.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
}

/// The running IO threads: their shared state, queue ends and join handles.
struct Spawned {
    shards: Vec<Arc<Shard>>,
    senders: Vec<Sender<Machine>>,
    handles: Vec<JoinHandle<()>>,
}

/// Spawns the IO threads; `Err` if any of them could not start (e.g. ring creation failed).
fn spawn_threads(cfg: &IoConfig, backend: Backend) -> io::Result<Spawned> {
    let mut shards = Vec::with_capacity(cfg.threads);
    let mut senders = Vec::with_capacity(cfg.threads);
    let mut handles = Vec::with_capacity(cfg.threads);
    let mut readies = Vec::with_capacity(cfg.threads);
    let mut first_err = None;
    for i in 0..cfg.threads {
        let wake = match backend {
            Backend::Uring => match sys::eventfd() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            },
            Backend::Threads => None,
        };
        let shard = Arc::new(Shard {
            depth: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            wake,
        });
        let (tx, rx): (Sender<Machine>, Receiver<Machine>) = flume::bounded(cfg.queue_capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let cores = cfg.cores.clone();
        let entries = cfg.ring_entries;
        let thread_shard = Arc::clone(&shard);
        let spawned = std::thread::Builder::new()
            .name(format!("beamline-io-{i}"))
            .spawn(move || {
                pin(&cores, i);
                match backend {
                    Backend::Uring => match uring::build_ring(entries) {
                        Ok(ring) => {
                            let _ = ready_tx.send(Ok(()));
                            uring::run(ring, rx, thread_shard);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    },
                    Backend::Threads => {
                        let _ = ready_tx.send(Ok(()));
                        run_threads(rx, &thread_shard);
                    }
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
        shards.push(shard);
        senders.push(tx);
        readies.push(ready_rx);
    }
    for r in readies {
        match r.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert_with(|| io::Error::other("IO thread died at start"));
            }
        }
    }
    if let Some(e) = first_err {
        drop(senders);
        for s in &shards {
            if let Some(fd) = &s.wake {
                sys::eventfd_signal(fd);
            }
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    Ok(Spawned {
        shards,
        senders,
        handles,
    })
}

/// The threads backend: one request at a time, blocking syscalls. The thread's CPU time
/// around the request's syscalls goes with the reply.
fn run_threads(rx: Receiver<Machine>, shard: &Shard) {
    while let Ok(mut m) = rx.recv() {
        let start = cputime::thread_cpu_ns();
        machine::run_blocking(&mut m);
        m.add_cpu_ns(cputime::thread_cpu_ns().saturating_sub(start));
        shard.depth.fetch_sub(1, Ordering::AcqRel);
        // Closing the remaining fds (dropping them) after the reply is sent.
        drop(m.finish());
    }
}

impl IoPool {
    /// Probes the backend, spawns and pins the IO threads.
    ///
    /// Fails if the configuration is invalid, if `openat2` with `RESOLVE_BENEATH` is not
    /// available (no sandboxed resolution possible), or if `Uring` is forced but unusable.
    pub fn start(cfg: IoConfig) -> io::Result<IoPool> {
        if cfg.threads == 0 {
            return Err(invalid_cfg("IoConfig::threads must be at least 1"));
        }
        if cfg.queue_capacity == 0 {
            return Err(invalid_cfg("IoConfig::queue_capacity must be at least 1"));
        }
        if !(8..=32768).contains(&cfg.ring_entries) {
            return Err(invalid_cfg("IoConfig::ring_entries must be in 8..=32768"));
        }
        sys::probe_openat2().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("openat2(RESOLVE_BENEATH) unavailable (Linux >= 5.6 needed): {e}"),
            )
        })?;
        let backend = match cfg.force_backend {
            Some(Backend::Uring) => {
                probe_uring().map_err(|e| {
                    io::Error::new(e.kind(), format!("io_uring forced but unusable: {e}"))
                })?;
                Backend::Uring
            }
            Some(Backend::Threads) => Backend::Threads,
            None => match probe_uring() {
                Ok(()) => Backend::Uring,
                Err(_) => Backend::Threads,
            },
        };
        let (
            backend,
            Spawned {
                shards,
                senders,
                handles,
            },
        ) = match spawn_threads(&cfg, backend) {
            Ok(t) => (backend, t),
            Err(e) if backend == Backend::Uring && cfg.force_backend.is_none() => {
                // A per-thread ring could not be created (e.g. memlock limit): fall back.
                let _ = e;
                (Backend::Threads, spawn_threads(&cfg, Backend::Threads)?)
            }
            Err(e) => return Err(e),
        };
        Ok(IoPool {
            inner: Arc::new(Inner {
                backend,
                shards,
                senders: RwLock::new(Some(senders)),
                next: AtomicUsize::new(0),
                max_file_bytes: cfg.max_file_bytes,
                handles: Mutex::new(handles),
                nowait: sys::probe_nowait(),
            }),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Requests queued or in flight, over all shards.
    pub fn queue_depth(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.depth.load(Ordering::Acquire))
            .sum()
    }

    /// Number of IO threads.
    pub fn threads(&self) -> usize {
        self.inner.shards.len()
    }

    /// Reads `rel` beneath the directory `root` (an absolute path; the tenant root, e.g.
    /// `/srv/fs/acme`). Leading `/` in `rel` are stripped.
    ///
    /// If the returned future is dropped before completion the read still runs to the end on
    /// the IO thread; its result is discarded.
    ///
    /// The IO thread's CPU time for the request is [`cputime::charge`]d on the thread that
    /// awaited the reply.
    pub async fn get(&self, root: &Path, rel: &str) -> Result<FileData, FsError> {
        let path = path::parse_get(rel)?;
        let display = path.display.clone();
        let root_c = path::root_cstring(root, &display)?;
        let (tx, rx) = oneshot::channel();
        let m = Machine::Get(Box::new(GetMachine::new(
            root_c,
            path,
            self.inner.max_file_bytes,
            Some(tx),
        )));
        self.inner.submit(m, "get", &display)?;
        match rx.await {
            Ok((r, cpu_ns)) => {
                cputime::charge(cpu_ns);
                r
            }
            Err(_) => Err(FsError::new(FsErrorKind::Shutdown, "get", &display)),
        }
    }

    /// [`IoPool::get`] done on the calling thread, when it can be done without waiting: the
    /// path's lookup in the dentry cache and the file's bytes in the page cache (the common
    /// case for a hot file). `None` when some step would have waited for the disk; then
    /// call [`IoPool::get`], which hands it to an IO thread. The same checks and answers as
    /// [`IoPool::get`] (same machine); four system calls for a hot file (`openat2` of the
    /// whole path, `statx`, `preadv2`, `close`), five under a root behind a symlink (one
    /// `statx` of the kept root's path instead, then `openat2` beneath it), and no thread
    /// hop.
    pub fn try_get_now(&self, root: &Path, rel: &str) -> Option<Result<FileData, FsError>> {
        // After shutdown `get` answers `Shutdown`; so does this (through `get`).
        let open = self.inner.senders.read().is_ok_and(|s| s.is_some());
        if !self.inner.nowait || !open {
            return None;
        }
        let path = match path::parse_get(rel) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let root_c = match path::root_cstring(root, &path.display) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let by_root = roots::symlinked(&root_c);
        let cached = if by_root { roots::take(&root_c) } else { None };
        let was_cached = cached.is_some();
        let max = self.inner.max_file_bytes;
        let reply = get_now(&root_c, path, max, cached, by_root);
        let stale = was_cached && matches!(&reply, Some(Err(e)) if e.kind == FsErrorKind::NotFound);
        if stale {
            // Through a cached root (maybe one removed and made again under the same
            // inode): ask again through a fresh open.
            let path = path::parse_get(rel).ok()?; // parsed once already
            return get_now(&root_c, path, max, None, true);
        }
        reply
    }

    /// Atomically writes `data` to `rel` beneath `root`: missing parent directories are
    /// created beneath the root (and the root itself, one level, if missing), the bytes go to
    /// a temp file `.<name>.tmp.<random>` in the target's directory, which is then renamed
    /// over the target (a small overwrite: into a claimed, leased spare, exchanged with the
    /// target; see the crate docs). `content_type` is stored in the xattr
    /// `user.beamline.content_type` (silently not stored where the filesystem has no user
    /// xattrs).
    ///
    /// `data` is a [`Bytes`] so a payload received from the network is handed to the kernel
    /// without a copy. If the future is dropped, the write still completes.
    /// The IO thread's CPU time for it is [`cputime::charge`]d like [`IoPool::get`]'s.
    pub async fn put(
        &self,
        root: &Path,
        rel: &str,
        data: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutInfo, FsError> {
        self.put_with(root, rel, data, content_type, PutOptions::default())
            .await
    }

    /// [`IoPool::put`] with options (e.g. `durable`).
    pub async fn put_with(
        &self,
        root: &Path,
        rel: &str,
        data: Bytes,
        content_type: Option<&str>,
        opts: PutOptions,
    ) -> Result<PutInfo, FsError> {
        let path = path::parse_put(rel)?;
        let display = path.display.clone();
        if data.len() as u64 > self.inner.max_file_bytes {
            return Err(FsError::new(FsErrorKind::TooLarge, "write", &display));
        }
        let root_c = path::root_cstring(root, &display)?;
        let (tx, rx) = oneshot::channel();
        let m = Machine::Put(Box::new(PutMachine::new(
            root_c,
            path,
            data,
            content_type,
            opts.durable,
            tx,
        )));
        self.inner.submit(m, "put", &display)?;
        match rx.await {
            Ok((r, cpu_ns)) => {
                cputime::charge(cpu_ns);
                r
            }
            Err(_) => Err(FsError::new(FsErrorKind::Shutdown, "put", &display)),
        }
    }

    /// Stops accepting requests; the threads finish everything already queued, then exit.
    /// Idempotent; does not wait (dropping the last clone waits).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

/// One inline get on the caller's thread ([`IoPool::try_get_now`]), from `cached` (an open
/// root) when given, else by the whole path unless `by_root`. A root the get opened (it
/// met a symlink, or `by_root`) is kept for the next get unless the file was not found.
/// `None` when a step would block.
fn get_now(
    root: &std::ffi::CStr,
    path: path::GetPath,
    max: u64,
    cached: Option<roots::Held>,
    by_root: bool,
) -> Option<Result<FileData, FsError>> {
    let (mut m, known) = match cached {
        Some(held) => {
            let (fd, id) = held.split();
            (GetMachine::beneath(fd, path, max), Some(id))
        }
        None if by_root => (GetMachine::by_root(root.to_owned(), path, max), None),
        None => (GetMachine::new(root.to_owned(), path, max, None), None),
    };
    let done = machine::run_get_nowait(&mut m);
    if m.met_symlink() {
        roots::mark_symlinked(root);
    }
    let reply = if done { m.take_reply() } else { None };
    let not_found = matches!(&reply, Some(Err(e)) if e.kind == FsErrorKind::NotFound);
    if let (Some(fd), false) = (m.take_root_fd(), not_found) {
        let held = match known {
            Some(id) => Some(roots::Held::again(fd, id)),
            None => roots::Held::opened(fd),
        };
        if let Some(held) = held {
            roots::put(root, held);
        }
    }
    reply
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_send_sync_clone_debug() {
        fn check<T: Send + Sync + Clone + fmt::Debug>() {}
        check::<IoPool>();
        check::<IoConfig>();
        check::<Backend>();
    }

    #[test]
    fn backend_names() {
        assert_eq!(Backend::Uring.as_str(), "io_uring");
        assert_eq!(Backend::Threads.as_str(), "threads");
    }

    /// Each backend sends the IO thread's CPU time for a request with its reply, and
    /// `get` / `put` charge it on the awaiting thread.
    #[test]
    fn requests_charge_the_io_threads_cpu_time() {
        for backend in [Backend::Threads, Backend::Uring] {
            let pool = match IoPool::start(IoConfig {
                threads: 1,
                force_backend: Some(backend),
                ..IoConfig::default()
            }) {
                Ok(p) => p,
                Err(e) if backend == Backend::Uring => {
                    if std::env::var_os("BEAMLINE_IO_REQUIRE_URING").is_some() {
                        panic!("io_uring required but unusable: {e}");
                    }
                    eprintln!("SKIP io_uring: {e}");
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let data = Bytes::from(vec![7u8; 16 << 20]);
            cputime::take_charged();
            rt.block_on(pool.put(dir.path(), "big.bin", data, None))
                .unwrap();
            let put = cputime::take_charged();
            let got = rt.block_on(pool.get(dir.path(), "big.bin")).unwrap();
            assert_eq!(got.bytes.len(), 16 << 20);
            let get = cputime::take_charged();
            // Copying 16 MiB into and out of the page cache takes well over 100 µs, and the
            // threads backend copies on the IO thread. io_uring may hand the copy to the
            // kernel's io-wq workers instead (it did under the parallel test load: a put
            // charged 78 µs), whose CPU is not the IO thread's and is not charged (see
            // ARCHITECTURE.md); what the IO thread spends around it (open, rename, its
            // share of each enter, completions) is still well over 10 µs.
            let least = match backend {
                Backend::Threads => 100_000,
                Backend::Uring => 10_000,
            };
            assert!(put > least, "{backend}: put charged {put} ns");
            assert!(get > least, "{backend}: get charged {get} ns");
            assert!(put < 5_000_000_000 && get < 5_000_000_000, "{put} {get}");
        }
    }

    /// A one-thread pool that reads inline, or `None` (SKIP) where gets cannot be inline.
    fn inline_pool() -> Option<IoPool> {
        let pool = IoPool::start(IoConfig {
            threads: 1,
            ..IoConfig::default()
        })
        .unwrap();
        if !pool.inner.nowait {
            eprintln!("SKIP: no RWF_NOWAIT here, so no inline gets");
            return None;
        }
        Some(pool)
    }

    /// The inline get's answer. A walk that follows a symlink whose access time is due an
    /// update (`relatime`: the first use after it was made) is not done inline (openat2
    /// answers `EAGAIN` to `RESOLVE_CACHED`) until an ordinary walk, such as the IO
    /// thread's that a worker would fall back to, has updated it: one such walk, then
    /// again.
    fn now(pool: &IoPool, root: &Path, rel: &str) -> Result<Vec<u8>, FsErrorKind> {
        for _ in 0..2 {
            match pool.try_get_now(root, rel) {
                Some(Ok(data)) => return Ok(data.bytes),
                Some(Err(e)) => return Err(e.kind),
                None => drop(std::fs::metadata(root.join(rel))),
            }
        }
        panic!("inline get of {rel} would block")
    }

    /// A temp directory by its real path (no symlink on the way, wherever TMPDIR is).
    fn real_tempdir() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        (dir, real)
    }

    /// A root without a symlink on its path: each inline get opens the whole path in one
    /// walk, and nothing of the root is kept; a symlink beneath it, met once, sends that
    /// root's later gets through the kept root.
    #[test]
    fn a_root_without_symlinks_is_not_kept() {
        let Some(pool) = inline_pool() else { return };
        let (_dir, base) = real_tempdir();
        let root = base.join("tenant");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f.txt"), "one").unwrap();
        std::os::unix::fs::symlink("d/f.txt", root.join("alias")).unwrap();
        let root_c = path::root_cstring(&root, "").unwrap();
        for _ in 0..3 {
            assert_eq!(now(&pool, &root, "d/f.txt").unwrap(), b"one");
            assert_eq!(now(&pool, &root, "./d/f.txt").unwrap(), b"one");
        }
        assert_eq!(roots::held(), 0, "no root kept for whole-path gets");
        assert!(!roots::symlinked(&root_c));
        // `..` (even one that stays inside) is resolved beneath the root.
        assert_eq!(now(&pool, &root, "d/../d/f.txt").unwrap(), b"one");
        // (`..` above the root: refused, or left to the IO thread where the lookup cannot
        // be settled from the cache.)
        let up = pool.try_get_now(&root, "../tenant/d/f.txt");
        assert!(
            matches!(
                &up,
                None | Some(Err(FsError {
                    kind: FsErrorKind::Escape,
                    ..
                }))
            ),
            "{up:?}"
        );
        assert!(!roots::symlinked(&root_c));
        // A symlink inside: followed, through the root, which is kept from then on.
        assert_eq!(now(&pool, &root, "alias").unwrap(), b"one");
        assert!(roots::symlinked(&root_c));
        assert_eq!(now(&pool, &root, "d/f.txt").unwrap(), b"one");
        assert_eq!(roots::held(), 1);
    }

    /// The inline get of a root behind a symlink keeps the tenant root open between gets,
    /// and never serves a root that was renamed away, replaced, re-pointed or removed and
    /// made again.
    #[test]
    fn a_kept_root_is_never_a_stale_one() {
        let Some(pool) = inline_pool() else { return };
        let (_dir, real) = real_tempdir();
        std::fs::create_dir(real.join("real")).unwrap();
        std::os::unix::fs::symlink(real.join("real"), real.join("link")).unwrap();
        let base = real.join("link");
        let root = base.join("tenant");
        let write = |dir: &Path, text: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("f.txt"), text).unwrap();
        };
        write(&root, "one");
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"one");
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"one");
        assert_eq!(roots::held(), 1, "the root is kept between gets");

        // Renamed away, a new directory in its place.
        std::fs::rename(&root, base.join("old")).unwrap();
        write(&root, "two");
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"two");

        // Removed and made again (it may get the old inode number back).
        std::fs::remove_dir_all(&root).unwrap();
        write(&root, "three");
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"three");

        // The root is a symlink, swapped to another directory.
        std::fs::remove_dir_all(&root).unwrap();
        write(&base.join("a"), "four");
        write(&base.join("b"), "five");
        std::os::unix::fs::symlink(base.join("a"), &root).unwrap();
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"four");
        std::fs::remove_file(&root).unwrap();
        std::os::unix::fs::symlink(base.join("b"), &root).unwrap();
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"five");

        // Gone: not found, and nothing is kept for it.
        std::fs::remove_file(&root).unwrap();
        assert_eq!(now(&pool, &root, "f.txt"), Err(FsErrorKind::NotFound));
        // A file missing under a live root (inline: not found, or left to the IO thread
        // when the lookup is not cached), then the root serves again.
        write(&root, "six");
        assert!(!matches!(pool.try_get_now(&root, "nope.txt"), Some(Ok(_))));
        assert_eq!(now(&pool, &root, "f.txt").unwrap(), b"six");
        assert_eq!(roots::held(), 1);
    }

    /// Kept roots are open descriptors: bounded per thread, past which a root is opened
    /// again (and still answers).
    #[test]
    fn kept_roots_are_bounded() {
        let Some(pool) = inline_pool() else { return };
        let (_dir, real) = real_tempdir();
        std::fs::create_dir(real.join("real")).unwrap();
        std::os::unix::fs::symlink(real.join("real"), real.join("link")).unwrap();
        let base = real.join("link");
        for i in 0..40 {
            let root = base.join(format!("t{i}"));
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("f"), format!("{i}")).unwrap();
            assert_eq!(now(&pool, &root, "f").unwrap(), format!("{i}").as_bytes());
        }
        assert_eq!(roots::held(), 16);
        let first = base.join("t0");
        assert_eq!(now(&pool, &first, "f").unwrap(), b"0");
    }

    /// The inline get remembers a hot file's content type, and sees every change of it.
    #[test]
    fn a_remembered_content_type_follows_the_file() {
        let Some(pool) = inline_pool() else { return };
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f.json");
        std::fs::write(&file, b"{}").unwrap();
        let set = |value: Option<&str>| {
            let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: NUL-terminated path and name; `value` is a live buffer of its length.
            let r = unsafe {
                match value {
                    Some(v) => libc::setxattr(
                        path.as_ptr(),
                        sys::CONTENT_TYPE_XATTR.as_ptr(),
                        v.as_ptr().cast(),
                        v.len(),
                        0,
                    ),
                    None => libc::removexattr(path.as_ptr(), sys::CONTENT_TYPE_XATTR.as_ptr()),
                }
            };
            r == 0
        };
        let ct = || {
            pool.try_get_now(root.path(), "f.json")
                .expect("inline")
                .unwrap()
                .content_type
        };
        if !set(Some("application/json")) {
            eprintln!("SKIP: no user xattrs on this filesystem");
            return;
        }
        assert_eq!(ct().as_deref(), Some("application/json"));
        // Settled (its ctime old enough to be remembered), then changed.
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(ct().as_deref(), Some("application/json"));
        assert_eq!(types::remembered(), 1);
        assert!(set(Some("text/plain")));
        assert_eq!(ct().as_deref(), Some("text/plain"));
        assert!(set(None));
        assert_eq!(ct(), None);
        // Changes closer together than the clock's coarse tick: each is seen (a ctime that
        // recent is not remembered).
        for i in 0..200 {
            let (a, b) = (
                format!("application/x-{i}-a"),
                format!("application/x-{i}-b"),
            );
            assert!(set(Some(&a)));
            assert_eq!(ct().as_deref(), Some(a.as_str()));
            assert!(set(Some(&b)));
            assert_eq!(ct().as_deref(), Some(b.as_str()), "round {i}");
        }
    }

    #[test]
    fn rejects_bad_config() {
        for cfg in [
            IoConfig {
                threads: 0,
                ..IoConfig::default()
            },
            IoConfig {
                queue_capacity: 0,
                ..IoConfig::default()
            },
            IoConfig {
                ring_entries: 4,
                ..IoConfig::default()
            },
        ] {
            let e = IoPool::start(cfg).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
