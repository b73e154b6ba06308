//! Guard rail (issue 12): the system calls of one inline `fs.get` of a hot file, counted by
//! the kernel (the `raw_syscalls:sys_enter` tracepoint, for this thread only, through
//! `perf_event_open`). Counts are not flaky where timings are. Four per get (five in a
//! debug build, where std checks each descriptor it closes): `openat2` of the root's and
//! the file's path in one walk that follows no symlink, `statx`, `preadv2(RWF_NOWAIT)`,
//! `close`. Five under a root behind a symlink: `statx` of the kept tenant root's path (is
//! it still the same directory?), then `openat2` of the file beneath it. Every get was
//! five before issue 12's twelfth round, seven before its second: the root opened and
//! closed per get (`openat` + `close` where the `statx` is now) and the content type
//! asked of the file every time (`fgetxattr`; now remembered while the file's stamps
//! hold).
//!
//! Needs tracefs and the permission to open a tracepoint counter (root, or
//! `perf_event_paranoid` ≤ -1): where either is missing the test says SKIP, unless
//! `BEAMLINE_REQUIRE_SYSCALL_COUNT=1` (CI sets it) turns that into a failure.

//!
//! The SQL block's lookup of a database name (`locate_first_beneath` of the tenant's own
//! `<tenant>/NAME`, not there, then the shared `NAME`) is counted the same way: two
//! system calls (`openat2` of the private name's whole path, `statx` of the shared one's),
//! three under a root behind a symlink (`statx` of the kept root's path, then both names
//! beneath it). It was three under every root before issue 12's sixteenth round.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use beamline_io::{IoConfig, IoPool, Locate, OpenBeneath};

/// The first 64 bytes of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: `disabled`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;

/// A counter of this thread's system calls, disabled; or why there is none.
fn syscall_counter() -> Result<OwnedFd, String> {
    let id = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| fs::read_to_string(format!("{t}/events/raw_syscalls/sys_enter/id")).ok())
        .ok_or("no tracefs with raw_syscalls:sys_enter")?;
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id
            .trim()
            .parse()
            .map_err(|e| format!("tracepoint id: {e}"))?,
        sample_period: 1,
        flags: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: `attr` is a valid perf_event_attr of the size it states; pid 0 = this thread,
    // cpu -1 = any, no group, no flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0,
            -1,
            -1,
            0,
        )
    };
    if fd < 0 {
        return Err(format!(
            "perf_event_open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor the kernel just gave us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_count(fd: &OwnedFd) -> u64 {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    assert_eq!(r, 8, "reading the counter");
    n
}

#[test]
fn an_inline_get_of_a_hot_file_makes_four_system_calls() {
    let dir = tempfile::tempdir().unwrap();
    // By its real path: no symlink on the way, wherever TMPDIR is.
    let base = fs::canonicalize(dir.path()).unwrap();
    count_gets(&base.join("a/b/tenant"), 4);
}

#[test]
fn an_inline_get_under_a_root_behind_a_symlink_makes_five() {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(base.join("real")).unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
    count_gets(&base.join("link/b/tenant"), 5);
}

#[test]
fn a_database_name_is_looked_up_in_two_system_calls() {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    count_lookups(&base.join("sql"), 2);
}

#[test]
fn a_database_name_under_a_root_behind_a_symlink_takes_three() {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(base.join("real")).unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
    count_lookups(&base.join("link/sql"), 3);
}

/// This thread's system call counter, or `None` (said) where the test is skipped.
fn counter_or_skip() -> Option<OwnedFd> {
    match syscall_counter() {
        Ok(c) => Some(c),
        Err(why) => {
            if std::env::var_os("BEAMLINE_REQUIRE_SYSCALL_COUNT").is_some() {
                panic!("no syscall counter: {why}");
            }
            eprintln!("SKIP: no syscall counter here: {why}");
            None
        }
    }
}

/// Counts the system calls of `n` calls of `f` on this thread.
fn count(counter: &OwnedFd, n: u64, mut f: impl FnMut()) -> u64 {
    // SAFETY: ioctls on our own perf event descriptor.
    unsafe { libc::ioctl(counter.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    for _ in 0..n {
        f();
    }
    // SAFETY: as above.
    unsafe { libc::ioctl(counter.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0) };
    read_count(counter)
}

/// Counts the system calls of 1 000 lookups of the database `db` for tenant `t` in `root`
/// (made here, with only the shared `db`), as the SQL block makes them, and checks
/// `expected` per lookup.
fn count_lookups(root: &Path, expected: u64) {
    let Some(counter) = counter_or_skip() else {
        return;
    };
    fs::create_dir_all(root.join("t")).unwrap();
    fs::write(root.join("db"), b"shared").unwrap();
    let strict = OpenBeneath { no_symlinks: true };
    let lookup = || {
        let (at, found) =
            beamline_io::locate_first_beneath(root, &["t/db", "db"], strict, Locate::Identify)
                .unwrap();
        assert_eq!((at, found.fd.is_none()), (1, true));
    };
    // Warm: the dentries, the kept root (or the mark of one behind a symlink).
    for _ in 0..10 {
        lookup();
    }
    const LOOKUPS: u64 = 1000;
    let calls = count(&counter, LOOKUPS, lookup);
    let per = calls as f64 / LOOKUPS as f64;
    eprintln!("{calls} system calls for {LOOKUPS} lookups: {per:.2} per lookup");
    // The disabling ioctl itself counts; an allocator's occasional mmap may too.
    assert!(
        (expected * LOOKUPS..=expected * LOOKUPS + 20).contains(&calls),
        "{per:.2} system calls per lookup, expected {expected}"
    );
}

/// Counts the system calls of 1 000 inline gets of a hot 1 KiB file in `root` (made here),
/// and checks `expected` per get (one more in a debug build).
fn count_gets(root: &Path, expected: u64) {
    let Some(counter) = counter_or_skip() else {
        return;
    };
    let pool = IoPool::start(IoConfig {
        threads: 1,
        ..IoConfig::default()
    })
    .unwrap();
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("f.bin"), vec![7u8; 1024]).unwrap();
    // A content type is remembered once the file's ctime is older than a clock tick.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Warm: the page cache, the dentries, the kept root, the allocator; and a symlink's
    // access time, which an inline walk leaves to an ordinary one (`now` in lib.rs).
    drop(fs::metadata(root.join("f.bin")));
    for _ in 0..100 {
        if pool.try_get_now(root, "f.bin").is_none() {
            eprintln!("SKIP: no inline gets here (no RWF_NOWAIT / RESOLVE_CACHED)");
            return;
        }
    }
    const GETS: u64 = 1000;
    let calls = count(&counter, GETS, || {
        let got = pool.try_get_now(root, "f.bin").expect("inline").unwrap();
        assert_eq!(got.bytes.len(), 1024);
    });
    let per_get = calls as f64 / GETS as f64;
    eprintln!("{calls} system calls for {GETS} inline gets: {per_get:.2} per get");
    // With debug assertions, std checks that a descriptor is open before closing it
    // (`fcntl(F_GETFD)`): one more per get in a debug build.
    let expected = if cfg!(debug_assertions) {
        expected + 1
    } else {
        expected
    };
    // The disabling ioctl itself counts; an allocator's occasional mmap may too.
    assert!(
        (expected * GETS..=expected * GETS + 20).contains(&calls),
        "{per_get:.2} system calls per inline get, expected {expected}"
    );
}
