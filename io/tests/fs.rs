//! End-to-end tests on real files, written once and run for each backend (`uring::*`,
//! `threads::*`).
//!
//! The io_uring variants are skipped (with a message) where io_uring is unusable, unless
//! `BEAMLINE_IO_REQUIRE_URING=1` is set, which turns the skip into a failure.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use beamline_io::{Backend, FsErrorKind, IoConfig, IoPool, PutOptions};
use bytes::Bytes;

fn config(backend: Backend) -> IoConfig {
    IoConfig {
        threads: 2,
        cores: Vec::new(),
        queue_capacity: 4096,
        ring_entries: 64,
        force_backend: Some(backend),
        max_file_bytes: 4 << 20,
    }
}

/// Starts a pool, or `None` when io_uring is unusable here (skip).
fn start(cfg: IoConfig) -> Option<IoPool> {
    let backend = cfg.force_backend;
    match IoPool::start(cfg) {
        Ok(p) => Some(p),
        Err(e) if backend == Some(Backend::Uring) => {
            if std::env::var_os("BEAMLINE_IO_REQUIRE_URING").is_some() {
                panic!("io_uring required but unusable: {e}");
            }
            eprintln!("SKIP: io_uring unusable here: {e}");
            None
        }
        Err(e) => panic!("pool start failed: {e}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A temp dir with `root/` (the tenant root) and `outside/` next to it.
struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret.txt"), b"top secret").unwrap();
    Env {
        _dir: dir,
        root,
        outside,
    }
}

fn tmp_leftovers(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp.") {
            v.push(e.display().to_string());
        }
    }
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name(beamline_io::Backend::Uring) } )*
        }
        mod threads {
            $( #[test] fn $name() { super::$name(beamline_io::Backend::Threads) } )*
        }
    };
}

for_each_backend!(
    round_trip,
    nested_dirs_and_root_created,
    overwrite_is_atomic,
    dot_dot_escape,
    absolute_path_is_stripped,
    symlinks_out_are_escapes,
    symlinks_inside_are_followed,
    hard_links_are_refused,
    special_files_are_refused,
    missing_and_directory,
    size_cap,
    invalid_paths,
    read_only_dir,
    failed_put_leaves_no_temp_file,
    durable_put,
    many_concurrent_requests,
    overloaded_when_queue_full,
    shutdown_completes_or_refuses,
    backend_is_reported,
    inline_get_answers_like_the_pool,
    a_root_behind_a_symlink_is_the_same_sandbox,
    a_path_as_long_as_a_path_may_be_is_read,
    overwrites_keep_the_old_inode_as_the_spare,
    a_reader_of_an_old_version_keeps_it_whole,
    linked_or_altered_old_versions_are_never_reused,
    concurrent_small_overwrites_never_mix,
    a_tenants_spares_hold_only_its_own_files,
);

fn round_trip(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    rt().block_on(async {
        let text = Bytes::from_static(b"{\"hello\": \"world\"}\n");
        let info = pool
            .put(
                &e.root,
                "/data/x.json",
                text.clone(),
                Some("application/json"),
            )
            .await
            .unwrap();
        assert_eq!(info.size_bytes, text.len() as u64);
        // Leading '/' or not: the same file.
        let got = pool.get(&e.root, "data/x.json").await.unwrap();
        assert_eq!(got.bytes, text.as_ref());
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(fs::read(e.root.join("data/x.json")).unwrap(), text.as_ref());

        let binary: Vec<u8> = (0..=255u8).cycle().take(4099).collect();
        pool.put(&e.root, "bin", Bytes::from(binary.clone()), None)
            .await
            .unwrap();
        let got = pool.get(&e.root, "/bin").await.unwrap();
        assert_eq!(got.bytes, binary);
        assert_eq!(got.content_type, None);

        let info = pool
            .put(&e.root, "empty", Bytes::new(), Some("text/plain"))
            .await
            .unwrap();
        assert_eq!(info.size_bytes, 0);
        let got = pool.get(&e.root, "empty").await.unwrap();
        assert!(got.bytes.is_empty());
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));

        let big: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        pool.put(
            &e.root,
            "big.bin",
            Bytes::from(big.clone()),
            Some("application/octet-stream"),
        )
        .await
        .unwrap();
        let got = pool.get(&e.root, "big.bin").await.unwrap();
        assert_eq!(got.bytes.len(), 1 << 20);
        assert!(got.bytes == big);

        // Overwriting without a content type drops the old one (fresh inode).
        pool.put(&e.root, "data/x.json", Bytes::from_static(b"2"), None)
            .await
            .unwrap();
        let got = pool.get(&e.root, "data/x.json").await.unwrap();
        assert_eq!(got.bytes, b"2");
        assert_eq!(got.content_type, None);
        assert_eq!(pool.queue_depth(), 0);
    });
    assert!(tmp_leftovers(&e.root).is_empty());
}

fn nested_dirs_and_root_created(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    rt().block_on(async {
        pool.put(&e.root, "a/b/c/d/e.txt", Bytes::from_static(b"deep"), None)
            .await
            .unwrap();
        assert_eq!(fs::read(e.root.join("a/b/c/d/e.txt")).unwrap(), b"deep");
        // Partly existing chain, odd spellings.
        pool.put(&e.root, "a//b/./x/y.txt", Bytes::from_static(b"y"), None)
            .await
            .unwrap();
        assert_eq!(fs::read(e.root.join("a/b/x/y.txt")).unwrap(), b"y");
        // `..` that stays inside the root is fine.
        pool.put(&e.root, "a/b/../z.txt", Bytes::from_static(b"z"), None)
            .await
            .unwrap();
        assert_eq!(fs::read(e.root.join("a/z.txt")).unwrap(), b"z");
        pool.put(
            &e.root,
            "new/../also/../n.txt",
            Bytes::from_static(b"n"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(fs::read(e.root.join("n.txt")).unwrap(), b"n");

        // A missing tenant root is created (one level).
        let fresh = e.root.parent().unwrap().join("fresh-tenant");
        pool.put(&fresh, "f.txt", Bytes::from_static(b"f"), None)
            .await
            .unwrap();
        assert_eq!(fs::read(fresh.join("f.txt")).unwrap(), b"f");
        // ...but only one level.
        let deep = e.root.parent().unwrap().join("no/such/tenant");
        let err = pool
            .put(&deep, "f.txt", Bytes::from_static(b"f"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::NotFound, "{err}");
        // A get under a missing root is NotFound, and creates nothing.
        let missing = e.root.parent().unwrap().join("missing-tenant");
        let err = pool.get(&missing, "f.txt").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::NotFound);
        assert!(!missing.exists());
        // A regular file in the middle of the path.
        let err = pool
            .put(&e.root, "a/z.txt/under", Bytes::from_static(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::InvalidPath, "{err}");
    });
}

fn overwrite_is_atomic(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let a = Bytes::from(vec![b'a'; 64 * 1024]);
    let bb = Bytes::from(vec![b'b'; 192 * 1024]);
    let runtime = rt();
    runtime.block_on(async {
        pool.put(&e.root, "hot/file", a.clone(), Some("text/a"))
            .await
            .unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let pool = pool.clone();
        let root = e.root.clone();
        let stop = Arc::clone(&stop);
        let (a, bb) = (a.clone(), bb.clone());
        runtime.spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let (data, ct) = if n & 1 == 0 {
                    (&bb, "text/b")
                } else {
                    (&a, "text/a")
                };
                pool.put(&root, "hot/file", data.clone(), Some(ct))
                    .await
                    .unwrap();
                n += 1;
                if n >= 2000 {
                    break;
                }
            }
            n
        })
    };
    let reads = runtime.block_on(async {
        let mut reads = 0;
        for _ in 0..400 {
            let got = pool.get(&e.root, "hot/file").await.unwrap();
            let first = got.bytes[0];
            let want_len = if first == b'a' { a.len() } else { bb.len() };
            assert_eq!(got.bytes.len(), want_len, "partial file seen");
            assert!(got.bytes.iter().all(|&c| c == first), "mixed content seen");
            // The content type travels with the inode, so it always matches.
            let want_ct = if first == b'a' { "text/a" } else { "text/b" };
            assert_eq!(got.content_type.as_deref(), Some(want_ct));
            reads += 1;
        }
        reads
    });
    stop.store(true, Ordering::Relaxed);
    let writes = runtime.block_on(writer).unwrap();
    assert_eq!(reads, 400);
    assert!(writes >= 50);
    assert!(tmp_leftovers(&e.root).is_empty());
}

fn dot_dot_escape(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::create_dir(e.root.join("sub")).unwrap();
    rt().block_on(async {
        for p in [
            "../outside/secret.txt",
            "sub/../../outside/secret.txt",
            "/../outside/secret.txt",
        ] {
            let err = pool.get(&e.root, p).await.unwrap_err();
            assert_eq!(err.kind, FsErrorKind::Escape, "{p}: {err}");
        }
        for p in [
            "../outside/new.txt",
            "sub/../../outside/new.txt",
            "../evil/new.txt",
        ] {
            let err = pool
                .put(&e.root, p, Bytes::from_static(b"x"), None)
                .await
                .unwrap_err();
            assert_eq!(err.kind, FsErrorKind::Escape, "{p}: {err}");
        }
        let err = pool
            .get(&e.root, "../outside/secret.txt")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "open ../outside/secret.txt: escapes the tenant root"
        );
    });
    assert!(!e.outside.join("new.txt").exists());
    assert!(!e.root.parent().unwrap().join("evil").exists());
    assert_eq!(
        fs::read(e.outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
}

fn absolute_path_is_stripped(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let real = fs::read("/etc/passwd").ok();
    rt().block_on(async {
        // Stripped to "etc/passwd" beneath the root: does not exist there.
        let err = pool.get(&e.root, "/etc/passwd").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::NotFound, "{err}");
        pool.put(
            &e.root,
            "/etc/passwd",
            Bytes::from_static(b"tenant data"),
            None,
        )
        .await
        .unwrap();
        let got = pool.get(&e.root, "/etc/passwd").await.unwrap();
        assert_eq!(got.bytes, b"tenant data");
        if let Some(real) = &real {
            assert_ne!(&got.bytes, real);
        }
    });
    assert_eq!(fs::read(e.root.join("etc/passwd")).unwrap(), b"tenant data");
    assert_eq!(
        fs::read("/etc/passwd").ok(),
        real,
        "real /etc/passwd changed"
    );
}

fn symlinks_out_are_escapes(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    // Relative link to a directory outside, absolute link to a directory outside, link to an
    // outside file, absolute link to a file that IS inside the root (absolute links are
    // refused wholesale under RESOLVE_BENEATH), and a dangling absolute link.
    symlink("../outside", e.root.join("reldir")).unwrap();
    symlink(&e.outside, e.root.join("absdir")).unwrap();
    symlink(e.outside.join("secret.txt"), e.root.join("secretlink")).unwrap();
    fs::write(e.root.join("inside.txt"), b"in").unwrap();
    symlink(e.root.join("inside.txt"), e.root.join("abs-inside")).unwrap();
    symlink("/nonexistent/dir", e.root.join("dangling")).unwrap();
    rt().block_on(async {
        for p in [
            "reldir/secret.txt",
            "absdir/secret.txt",
            "secretlink",
            "abs-inside",
            "dangling/x",
        ] {
            let err = pool.get(&e.root, p).await.unwrap_err();
            assert_eq!(err.kind, FsErrorKind::Escape, "{p}: {err}");
        }
        for p in [
            "reldir/new.txt",
            "absdir/new.txt",
            "absdir/deeper/new.txt",
            "dangling/x",
        ] {
            let err = pool
                .put(&e.root, p, Bytes::from_static(b"x"), None)
                .await
                .unwrap_err();
            assert_eq!(err.kind, FsErrorKind::Escape, "{p}: {err}");
        }
        // A put onto a symlink replaces the link itself (rename never follows it), so it
        // cannot write through to the outside file.
        pool.put(&e.root, "secretlink", Bytes::from_static(b"replaced"), None)
            .await
            .unwrap();
    });
    assert_eq!(
        fs::read(e.outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
    assert!(!e.outside.join("new.txt").exists());
    assert!(!e.outside.join("deeper").exists());
    let meta = fs::symlink_metadata(e.root.join("secretlink")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(fs::read(e.root.join("secretlink")).unwrap(), b"replaced");
}

fn symlinks_inside_are_followed(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::create_dir(e.root.join("real")).unwrap();
    fs::write(e.root.join("real/file.txt"), b"real content").unwrap();
    symlink("real/file.txt", e.root.join("alias")).unwrap();
    symlink("real", e.root.join("dirlink")).unwrap();
    fs::create_dir(e.root.join("sub")).unwrap();
    symlink("../real", e.root.join("sub/up")).unwrap();
    rt().block_on(async {
        assert_eq!(
            pool.get(&e.root, "alias").await.unwrap().bytes,
            b"real content"
        );
        assert_eq!(
            pool.get(&e.root, "dirlink/file.txt").await.unwrap().bytes,
            b"real content"
        );
        assert_eq!(
            pool.get(&e.root, "sub/up/file.txt").await.unwrap().bytes,
            b"real content"
        );
        pool.put(
            &e.root,
            "dirlink/new.txt",
            Bytes::from_static(b"via link"),
            None,
        )
        .await
        .unwrap();
        pool.put(
            &e.root,
            "sub/up/newdir/n.txt",
            Bytes::from_static(b"n"),
            None,
        )
        .await
        .unwrap();
    });
    assert_eq!(fs::read(e.root.join("real/new.txt")).unwrap(), b"via link");
    assert_eq!(fs::read(e.root.join("real/newdir/n.txt")).unwrap(), b"n");
}

fn hard_links_are_refused(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    // Same filesystem (one tempdir), so the hard link can be made.
    fs::hard_link(e.outside.join("secret.txt"), e.root.join("hl")).unwrap();
    fs::write(e.root.join("a.txt"), b"a").unwrap();
    fs::hard_link(e.root.join("a.txt"), e.root.join("b.txt")).unwrap();
    rt().block_on(async {
        let err = pool.get(&e.root, "hl").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::Escape, "{err}");
        // Documented: every multiply-linked file is refused, even with both names inside.
        let err = pool.get(&e.root, "a.txt").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::Escape, "{err}");
        // Writing over a hard link replaces the entry and never touches the other name.
        pool.put(&e.root, "hl", Bytes::from_static(b"mine"), None)
            .await
            .unwrap();
        assert_eq!(pool.get(&e.root, "hl").await.unwrap().bytes, b"mine");
    });
    assert_eq!(
        fs::read(e.outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
}

fn special_files_are_refused(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let fifo = std::ffi::CString::new(e.root.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    symlink("fifo", e.root.join("to-fifo")).unwrap();
    symlink("loop-b", e.root.join("loop-a")).unwrap();
    symlink("loop-a", e.root.join("loop-b")).unwrap();
    rt().block_on(async {
        // Opening a FIFO with no writer must not block the IO thread.
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            (
                pool.get(&e.root, "fifo").await,
                pool.get(&e.root, "to-fifo").await,
            )
        })
        .await
        .expect("reading a FIFO blocked");
        for r in [got.0, got.1] {
            let err = r.unwrap_err();
            assert_eq!(err.kind, FsErrorKind::InvalidPath, "{err}");
        }
        // A symlink loop is reported like an escape (ELOOP).
        let err = pool.get(&e.root, "loop-a").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::Escape, "{err}");
        // The pool still works afterwards.
        pool.put(&e.root, "ok", Bytes::from_static(b"ok"), None)
            .await
            .unwrap();
        assert_eq!(pool.get(&e.root, "ok").await.unwrap().bytes, b"ok");
    });
}

fn missing_and_directory(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::create_dir_all(e.root.join("d/inner")).unwrap();
    fs::write(e.root.join("d/f.txt"), b"f").unwrap();
    rt().block_on(async {
        for p in ["nope.txt", "no/such/dir.txt", "d/f.txt/child"] {
            let err = pool.get(&e.root, p).await.unwrap_err();
            assert_eq!(err.kind, FsErrorKind::NotFound, "{p}: {err}");
        }
        let err = pool.get(&e.root, "d").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::IsADirectory, "{err}");
        let err = pool.get(&e.root, "d/inner").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::IsADirectory, "{err}");
        let err = pool
            .put(&e.root, "d", Bytes::from_static(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::IsADirectory, "{err}");
    });
    assert!(e.root.join("d/inner").is_dir());
    assert!(tmp_leftovers(&e.root).is_empty());
}

fn size_cap(b: Backend) {
    let Some(pool) = start(IoConfig {
        max_file_bytes: 1024,
        ..config(b)
    }) else {
        return;
    };
    let e = env();
    fs::write(e.root.join("big"), vec![0u8; 2048]).unwrap();
    fs::write(e.root.join("exact"), vec![7u8; 1024]).unwrap();
    rt().block_on(async {
        let err = pool
            .put(&e.root, "x", Bytes::from(vec![0u8; 1025]), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::TooLarge);
        pool.put(&e.root, "x", Bytes::from(vec![1u8; 1024]), None)
            .await
            .unwrap();
        let err = pool.get(&e.root, "big").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::TooLarge, "{err}");
        assert_eq!(pool.get(&e.root, "exact").await.unwrap().bytes.len(), 1024);
    });
}

fn invalid_paths(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    rt().block_on(async {
        for p in ["", "/", "//", "a/", "a\0b", ".", "..", "a/.", "a/.."] {
            let err = pool.get(&e.root, p).await.unwrap_err();
            assert_eq!(err.kind, FsErrorKind::InvalidPath, "get {p:?}: {err}");
            let err = pool
                .put(&e.root, p, Bytes::from_static(b"x"), None)
                .await
                .unwrap_err();
            assert_eq!(err.kind, FsErrorKind::InvalidPath, "put {p:?}: {err}");
        }
        let long = "n".repeat(300);
        let err = pool
            .put(&e.root, &long, Bytes::from_static(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::InvalidPath);
        // The message says why, not only that.
        assert!(
            err.to_string()
                .ends_with("invalid path (path component too long)"),
            "{err}"
        );
        // A 255-byte name works, its temp name is shortened.
        let max = "m".repeat(255);
        pool.put(&e.root, &max, Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        assert_eq!(pool.get(&e.root, &max).await.unwrap().bytes, b"x");
    });
    assert_eq!(fs::read_dir(&e.root).unwrap().count(), 1);
}

fn read_only_dir(b: Backend) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root (CAP_DAC_OVERRIDE) ignores a 0555 mode, and a read-only bind mount would need
        // CAP_SYS_ADMIN plus a private mount namespace; rather than fake the error, the
        // PermissionDenied / ReadOnlyFs paths are only covered when not running as root (the
        // errno mapping itself is unit-tested).
        eprintln!("SKIP read_only_dir: running as root, permission bits are not enforced");
        return;
    }
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let ro = e.root.join("ro");
    fs::create_dir(&ro).unwrap();
    fs::write(ro.join("f"), b"f").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    rt().block_on(async {
        let err = pool
            .put(&e.root, "ro/new", Bytes::from_static(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::PermissionDenied, "{err}");
        let err = pool
            .put(&e.root, "ro/sub/new", Bytes::from_static(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::PermissionDenied, "{err}");
        // Reading still works.
        assert_eq!(pool.get(&e.root, "ro/f").await.unwrap().bytes, b"f");
    });
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

fn failed_put_leaves_no_temp_file(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::create_dir_all(e.root.join("dir/full")).unwrap();
    fs::write(e.root.join("dir/full/x"), b"x").unwrap();
    rt().block_on(async {
        // The temp file is created and written; the rename over a non-empty directory fails.
        let err = pool
            .put(
                &e.root,
                "dir/full",
                Bytes::from(vec![5u8; 10_000]),
                Some("a/b"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::IsADirectory, "{err}");
        assert_eq!(err.op, "rename");
    });
    assert!(
        tmp_leftovers(&e.root).is_empty(),
        "{:?}",
        tmp_leftovers(&e.root)
    );
    assert_eq!(fs::read(e.root.join("dir/full/x")).unwrap(), b"x");
}

fn durable_put(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    rt().block_on(async {
        let opts = PutOptions { durable: true };
        pool.put_with(
            &e.root,
            "d/u/r.txt",
            Bytes::from_static(b"durable"),
            Some("text/plain"),
            opts,
        )
        .await
        .unwrap();
        pool.put_with(&e.root, "top.txt", Bytes::from_static(b"top"), None, opts)
            .await
            .unwrap();
        let got = pool.get(&e.root, "d/u/r.txt").await.unwrap();
        assert_eq!(got.bytes, b"durable");
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
        assert_eq!(pool.get(&e.root, "top.txt").await.unwrap().bytes, b"top");
    });
}

fn many_concurrent_requests(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    runtime.block_on(async {
        for i in 0..20 {
            pool.put(
                &e.root,
                &format!("f/{i}.txt"),
                Bytes::from(format!("file {i}")),
                None,
            )
            .await
            .unwrap();
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..2000usize {
            let pool = pool.clone();
            let root = e.root.clone();
            set.spawn(async move {
                let k = i % 20;
                if i % 10 == 0 {
                    // A few writes mixed in (to other files).
                    pool.put(
                        &root,
                        &format!("w/{i}.txt"),
                        Bytes::from(vec![1u8; 100]),
                        None,
                    )
                    .await
                    .map(|_| ())
                } else {
                    let got = pool.get(&root, &format!("f/{k}.txt")).await?;
                    assert_eq!(got.bytes, format!("file {k}").as_bytes());
                    Ok(())
                }
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
            ok += 1;
        }
        assert_eq!(ok, 2000);
        assert_eq!(pool.queue_depth(), 0);
    });
    assert_eq!(fs::read_dir(e.root.join("w")).unwrap().count(), 200);
}

fn overloaded_when_queue_full(b: Backend) {
    let Some(pool) = start(IoConfig {
        threads: 1,
        queue_capacity: 1,
        ring_entries: 8,
        ..config(b)
    }) else {
        return;
    };
    let e = env();
    fs::write(e.root.join("f"), vec![3u8; 1000]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            let pool = pool.clone();
            let root = e.root.clone();
            set.spawn(async move { pool.get(&root, "f").await });
        }
        let (mut ok, mut overloaded) = (0, 0);
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(d) => {
                    assert_eq!(d.bytes.len(), 1000);
                    ok += 1;
                }
                Err(err) => {
                    assert_eq!(err.kind, FsErrorKind::Overloaded, "{err}");
                    assert_eq!(err.to_string(), "get f: I/O queue full");
                    overloaded += 1;
                }
            }
        }
        assert_eq!(ok + overloaded, 2000);
        assert!(overloaded > 0, "queue of 1 never overflowed (ok={ok})");
        assert!(ok > 0);
    });
}

fn shutdown_completes_or_refuses(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::write(e.root.join("f"), b"data").unwrap();
    let runtime = rt();
    runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..500 {
            let pool = pool.clone();
            let root = e.root.clone();
            set.spawn(async move {
                if i % 5 == 0 {
                    pool.put(&root, &format!("p/{i}"), Bytes::from_static(b"p"), None)
                        .await
                        .map(|_| ())
                } else {
                    pool.get(&root, "f")
                        .await
                        .map(|d| assert_eq!(d.bytes, b"data"))
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        pool.shutdown();
        pool.shutdown(); // idempotent
        let (mut ok, mut shut) = (0, 0);
        let all = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(r) = set.join_next().await {
                match r.unwrap() {
                    Ok(()) => ok += 1,
                    Err(err) => {
                        assert_eq!(err.kind, FsErrorKind::Shutdown, "{err}");
                        shut += 1;
                    }
                }
            }
        })
        .await;
        assert!(all.is_ok(), "requests hung after shutdown");
        assert_eq!(ok + shut, 500);
        let err = pool.get(&e.root, "f").await.unwrap_err();
        assert_eq!(err.kind, FsErrorKind::Shutdown);
        let err = pool
            .put(&e.root, "g", Bytes::from_static(b"g"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, FsErrorKind::Shutdown);
        assert_eq!(pool.queue_depth(), 0);
    });
    // Every put that reported success is on disk in full.
    for p in walk(&e.root.join("p")) {
        assert_eq!(fs::read(&p).unwrap(), b"p");
    }
    assert!(tmp_leftovers(&e.root).is_empty());
    // Dropping the last handle joins the (already stopped) threads.
    drop(pool);

    // Dropping the last handle with work queued also completes it.
    let Some(pool) = start(config(b)) else { return };
    let rx = {
        let pool2 = pool.clone();
        let root = e.root.clone();
        let handle = runtime.spawn(async move { pool2.get(&root, "f").await });
        drop(pool);
        handle
    };
    let r = runtime.block_on(rx).unwrap();
    match r {
        Ok(d) => assert_eq!(d.bytes, b"data"),
        Err(err) => assert_eq!(err.kind, FsErrorKind::Shutdown),
    }
}

fn backend_is_reported(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    assert_eq!(pool.backend(), b);
    assert_eq!(pool.threads(), 2);
    assert!(
        format!("{pool:?}").contains(b.as_str())
            || format!("{pool:?}").contains("Uring")
            || format!("{pool:?}").contains("Threads")
    );
    // With no forced backend, the probe decides.
    let auto = IoPool::start(IoConfig {
        force_backend: None,
        ..config(b)
    })
    .unwrap();
    let want = if beamline_io::probe_uring().is_ok() {
        Backend::Uring
    } else {
        Backend::Threads
    };
    assert_eq!(auto.backend(), want);
    if std::env::var_os("BEAMLINE_IO_REQUIRE_URING").is_some() {
        assert_eq!(auto.backend(), Backend::Uring);
    }
}

/// `try_get_now` (the CPU thread's inline get) gives what `get` gives, byte for byte and
/// error for error, and does answer inline for a hot file.
fn inline_get_answers_like_the_pool(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    fs::create_dir_all(e.root.join("d")).unwrap();
    fs::write(e.root.join("d/f.bin"), (0..=255u8).collect::<Vec<u8>>()).unwrap();
    fs::write(e.root.join("twice"), b"x").unwrap();
    fs::hard_link(e.root.join("twice"), e.root.join("linked")).unwrap();
    let fifo = std::ffi::CString::new(e.root.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    rt().block_on(async {
        pool.put(
            &e.root,
            "typed.json",
            Bytes::from_static(b"{}"),
            Some("application/json"),
        )
        .await
        .unwrap();
        // Warm the caches through the pool first.
        let hot = pool.get(&e.root, "d/f.bin").await.unwrap();
        let inline = pool
            .try_get_now(&e.root, "d/f.bin")
            .expect("a hot file is read inline")
            .unwrap();
        assert_eq!(inline.bytes, hot.bytes);
        assert_eq!(inline.content_type, hot.content_type);
        for p in [
            "typed.json",
            "/d/f.bin",
            "d",
            "nope.txt",
            "../outside/secret.txt",
            "linked",
            "fifo",
            "",
        ] {
            let Some(now) = pool.try_get_now(&e.root, p) else {
                continue; // would have waited: the pool answers instead
            };
            match (now, pool.get(&e.root, p).await) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.bytes, b.bytes, "{p}");
                    assert_eq!(a.content_type, b.content_type, "{p}");
                }
                (Err(a), Err(b)) => {
                    assert_eq!((a.kind, a.to_string()), (b.kind, b.to_string()), "{p}");
                }
                (a, b) => panic!("{p}: inline {a:?} vs pool {b:?}"),
            }
        }
        let typed = pool
            .try_get_now(&e.root, "typed.json")
            .expect("inline")
            .unwrap();
        assert_eq!(typed.content_type.as_deref(), Some("application/json"));
        pool.shutdown();
        assert!(pool.try_get_now(&e.root, "d/f.bin").is_none());
    });
}

/// A root reached through a symlink (here, its parent is one; a get first tries the
/// root's and the file's path in one walk that follows no symlink, and goes through the
/// root when it meets one): the same answers, pool and inline, as a root without one.
fn a_root_behind_a_symlink_is_the_same_sandbox(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let parent = e.root.parent().unwrap();
    symlink(parent, parent.join("via")).unwrap();
    let linked = parent.join("via/root");
    fs::create_dir(e.root.join("d")).unwrap();
    fs::write(e.root.join("d/f.txt"), b"content").unwrap();
    symlink("d/f.txt", e.root.join("alias")).unwrap();
    symlink("../outside/secret.txt", e.root.join("out")).unwrap();
    rt().block_on(async {
        for root in [&e.root, &linked] {
            for (p, want) in [
                ("d/f.txt", Ok(&b"content"[..])),
                ("alias", Ok(b"content")),
                ("d/../alias", Ok(b"content")),
                ("out", Err(FsErrorKind::Escape)),
                ("d/../../outside/secret.txt", Err(FsErrorKind::Escape)),
                ("d/nope", Err(FsErrorKind::NotFound)),
            ] {
                let got = pool.get(root, p).await;
                let got = got.as_ref().map(|d| &d.bytes[..]).map_err(|e| e.kind);
                assert_eq!(got, want, "{} {p}", root.display());
                // Inline: the same answer, or left to the pool where it would wait.
                if let Some(now) = pool.try_get_now(root, p) {
                    let now = now.as_ref().map(|d| &d.bytes[..]).map_err(|e| e.kind);
                    assert_eq!(now, want, "inline {} {p}", root.display());
                }
            }
        }
    });
}

/// A `rel` as long as a path may be (4 095 bytes): the root's path and it together are
/// longer than the kernel takes in one path, so the get goes through the root; the same
/// bytes, pool and inline.
fn a_path_as_long_as_a_path_may_be_is_read(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let dir = "d".repeat(200);
    let mut rel = vec![dir.as_str(); 20].join("/");
    rel.push('/');
    rel.push_str(&"f".repeat(4095 - rel.len()));
    assert_eq!(rel.len(), 4095);
    rt().block_on(async {
        pool.put(&e.root, &rel, Bytes::from_static(b"far down"), None)
            .await
            .unwrap();
        assert_eq!(pool.get(&e.root, &rel).await.unwrap().bytes, b"far down");
        if let Some(now) = pool.try_get_now(&e.root, &rel) {
            assert_eq!(now.unwrap().bytes, b"far down");
        }
    });
}

/// Whether this kernel grants file leases (`fs.leases-enable`): without them every put
/// takes the fresh temp file path, and the inode checks below do not apply.
fn leases_on() -> bool {
    let on = fs::read_to_string("/proc/sys/fs/leases-enable").is_ok_and(|v| v.trim() == "1");
    if !on {
        eprintln!("SKIP (inode reuse checks): fs.leases-enable is not 1 here");
    }
    on
}

fn ino(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().ino()
}

fn put_now(rt: &tokio::runtime::Runtime, pool: &IoPool, root: &Path, rel: &str, data: &str) {
    rt.block_on(pool.put(root, rel, Bytes::from(data.to_owned()), Some("text/plain")))
        .unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A small overwrite keeps the replaced inode as a spare in the pool beside the root, and
/// the next overwrite is written into it: after the first overwrite no inode is made or
/// freed, and nothing but the target shows in the tenant's directory.
fn overwrites_keep_the_old_inode_as_the_spare(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    let target = e.root.join("d/f.json");
    let spare = beamline_io::spare_path(&e.root, "/d/f.json").unwrap();
    assert_eq!(
        spare.parent().unwrap(),
        e.root.parent().unwrap().join(".beamline+spares/root"),
        "each tenant root has its own pool beside the roots"
    );
    put_now(&runtime, &pool, &e.root, "d/f.json", "one");
    assert!(!spare.exists(), "a first write has no old version to keep");
    let first = ino(&target);
    put_now(&runtime, &pool, &e.root, "d/f.json", "two, longer");
    if !leases_on() {
        return;
    }
    assert_eq!(
        ino(&spare),
        first,
        "the replaced inode is kept as the spare"
    );
    assert_eq!(fs::read(&spare).unwrap(), b"one");
    let second = ino(&target);
    // No content type this time: the spare's old one must not come back with it.
    runtime
        .block_on(pool.put(&e.root, "d/f.json", Bytes::from_static(b"3"), None))
        .unwrap();
    assert_eq!(ino(&target), first, "the spare was written and swapped in");
    assert_eq!(ino(&spare), second);
    let got = runtime.block_on(pool.get(&e.root, "d/f.json")).unwrap();
    assert_eq!(got.bytes, b"3", "cut to the new length");
    assert_eq!(got.content_type, None);
    runtime
        .block_on(pool.put(&e.root, "d/f.json", Bytes::from_static(b"4"), Some("a/b")))
        .unwrap();
    let got = runtime.block_on(pool.get(&e.root, "d/f.json")).unwrap();
    assert_eq!(
        (got.bytes.as_ref(), got.content_type.as_deref()),
        (&b"4"[..], Some("a/b"))
    );
    assert_eq!(ino(&target), second);
    assert_eq!(
        names_in(&e.root.join("d")),
        ["f.json"],
        "spares live elsewhere"
    );
    // Above the spare size limit: a fresh file, the old one freed, the spare left alone.
    let big = Bytes::from(vec![b'z'; 16 * 1024 + 1]);
    runtime
        .block_on(pool.put(&e.root, "d/f.json", big.clone(), None))
        .unwrap();
    assert_eq!(ino(&spare), first, "a big put does not touch the spare");
    assert_eq!(
        runtime
            .block_on(pool.get(&e.root, "d/f.json"))
            .unwrap()
            .bytes,
        big
    );
    // The spare takes the next small version, and the big old one is freed, not kept.
    put_now(&runtime, &pool, &e.root, "d/f.json", "small again");
    assert_eq!(fs::read(&target).unwrap(), b"small again");
    assert_eq!(ino(&target), first);
    assert!(!spare.exists(), "no spare holds a big old version");
    assert!(tmp_leftovers(&e.root).is_empty());
    assert_eq!(names_in(&e.root.join("d")), ["f.json"]);
}

/// A reader that opened (or mapped) an old version keeps reading exactly it: a spare
/// holding it is not rewritten while anyone has it open.
fn a_reader_of_an_old_version_keeps_it_whole(b: Backend) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    let target = e.root.join("f");
    let spare = beamline_io::spare_path(&e.root, "f").unwrap();
    put_now(&runtime, &pool, &e.root, "f", "v1");
    put_now(&runtime, &pool, &e.root, "f", "v2");
    if !leases_on() {
        return;
    }
    let mut reader = fs::File::open(&target).unwrap();
    let held = ino(&target);
    put_now(&runtime, &pool, &e.root, "f", "v3");
    assert_eq!(ino(&spare), held, "the read version is the spare now");
    put_now(&runtime, &pool, &e.root, "f", "v4 is longer than v2");
    put_now(&runtime, &pool, &e.root, "f", "v5");
    assert_eq!(fs::read(&target).unwrap(), b"v5");
    let mut seen = String::new();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "v2", "an open old version is never rewritten");
    assert_ne!(ino(&target), held, "nor swapped back in while it is open");
    drop(reader);

    // A mapping outlives its descriptor and must hold the inode as well.
    let file = fs::File::open(&target).unwrap();
    let mapped = ino(&target);
    // SAFETY: a shared read-only mapping of a 2-byte file; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    drop(file);
    for v in ["v6", "v7", "v8", "v9"] {
        put_now(&runtime, &pool, &e.root, "f", v);
        assert_ne!(ino(&target), mapped, "a mapped old version is not reused");
    }
    // SAFETY: `map` is the live 2-byte mapping made above.
    let bytes = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), 2) }.to_vec();
    // SAFETY: unmaps the mapping made above, not used after.
    assert_eq!(unsafe { libc::munmap(map, 2) }, 0);
    assert_eq!(bytes, b"v5");
    assert_eq!(fs::read(&target).unwrap(), b"v9");
    assert!(tmp_leftovers(&e.root).is_empty());
}

/// An old version with a second name, or a spare somebody linked, chmod-ed or replaced
/// with something else, is never written: the other name keeps its bytes.
fn linked_or_altered_old_versions_are_never_reused(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    let target = e.root.join("f");
    let spare = beamline_io::spare_path(&e.root, "f").unwrap();
    put_now(&runtime, &pool, &e.root, "f", "a");
    fs::hard_link(&target, e.root.join("g")).unwrap();
    put_now(&runtime, &pool, &e.root, "f", "b");
    assert!(
        !spare.exists(),
        "a linked old version does not become the spare"
    );
    assert_eq!(fs::read(e.root.join("g")).unwrap(), b"a");
    put_now(&runtime, &pool, &e.root, "f", "c");
    if !leases_on() {
        return;
    }
    assert_eq!(fs::read(&spare).unwrap(), b"b");
    // The spare gets a second name: never written, its name dropped.
    fs::hard_link(&spare, e.root.join("h")).unwrap();
    put_now(&runtime, &pool, &e.root, "f", "d");
    assert_eq!(fs::read(e.root.join("h")).unwrap(), b"b");
    assert_eq!(fs::read(&target).unwrap(), b"d");
    // A spare with another mode than a new file's: dropped, and the new file has the mode
    // a fresh file gets.
    let fresh_mode = {
        put_now(&runtime, &pool, &e.root, "fresh", "x");
        fs::metadata(e.root.join("fresh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    put_now(&runtime, &pool, &e.root, "f", "e");
    fs::set_permissions(&spare, fs::Permissions::from_mode(0o600)).unwrap();
    put_now(&runtime, &pool, &e.root, "f", "f");
    assert_eq!(fs::read(&target).unwrap(), b"f");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        fresh_mode
    );
    // A slot taken by a symlink or a FIFO: the put still lands, nothing is written through.
    for make in ["symlink", "fifo"] {
        let _ = fs::remove_file(&spare);
        if make == "symlink" {
            symlink(e.outside.join("secret.txt"), &spare).unwrap();
        } else {
            let c = std::ffi::CString::new(spare.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a live C string path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        for v in ["g1", "g2"] {
            put_now(&runtime, &pool, &e.root, "f", v);
            assert_eq!(fs::read_to_string(&target).unwrap(), v, "{make}");
        }
    }
    assert_eq!(
        fs::read(e.outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
    assert!(tmp_leftovers(&e.root).is_empty());
    assert_eq!(names_in(&e.root), ["f", "fresh", "g", "h"]);
}

/// Many puts of small files to one path and to paths sharing nothing but the pool, from
/// several tasks, with readers throughout: every read sees one whole version with its own
/// content type, and the last write wins.
fn concurrent_small_overwrites_never_mix(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    let version = |w: u8, n: usize| Bytes::from(vec![b'a' + w; 1 + (n * 37 + w as usize) % 3000]);
    runtime.block_on(async {
        pool.put(&e.root, "hot", version(0, 0), Some("t/a"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..4u8 {
            let (pool, root) = (pool.clone(), e.root.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..150 {
                    let ct = format!("t/{}", (b'a' + w) as char);
                    // One path for all, and one of 8 others (their slots may be shared).
                    let other = format!("cold/{}", n % 8);
                    pool.put(&root, "hot", version(w, n), Some(&ct))
                        .await
                        .unwrap();
                    pool.put(&root, &other, version(w, n), Some(&ct))
                        .await
                        .unwrap();
                }
            }));
        }
        let reader = {
            let (pool, root) = (pool.clone(), e.root.clone());
            tokio::spawn(async move {
                for i in 0..600 {
                    let path = if i % 2 == 0 {
                        "hot".to_owned()
                    } else {
                        format!("cold/{}", i % 8)
                    };
                    let Ok(got) = pool.get(&root, &path).await else {
                        continue; // a cold path not written yet
                    };
                    let first = got.bytes[0];
                    assert!(got.bytes.iter().all(|&c| c == first), "mixed versions");
                    let ct = format!("t/{}", first as char);
                    assert_eq!(got.content_type.as_deref(), Some(ct.as_str()));
                }
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        reader.await.unwrap();
        // One more write after all of them: that is what is there.
        pool.put(&e.root, "hot", Bytes::from_static(b"last"), None)
            .await
            .unwrap();
        assert_eq!(pool.get(&e.root, "hot").await.unwrap().bytes, b"last");
    });
    assert!(tmp_leftovers(&e.root).is_empty());
}

/// Two tenant roots side by side: each has its own pool, so a spare claimed into a
/// tenant's directory only ever held that tenant's bytes.
fn a_tenants_spares_hold_only_its_own_files(b: Backend) {
    let Some(pool) = start(config(b)) else { return };
    let e = env();
    let runtime = rt();
    // `outside/` serves as a second tenant root beside `root/`.
    for n in 0..40 {
        put_now(
            &runtime,
            &pool,
            &e.root,
            &format!("f{}", n % 10),
            &format!("root {n}"),
        );
        put_now(
            &runtime,
            &pool,
            &e.outside,
            &format!("f{}", n % 10),
            &format!("other {n}"),
        );
    }
    if !leases_on() {
        return;
    }
    let pools = e.root.parent().unwrap().join(".beamline+spares");
    assert_eq!(names_in(&pools), ["outside", "root"]);
    for (tenant, prefix) in [("root", "root "), ("outside", "other ")] {
        let kept = names_in(&pools.join(tenant));
        assert!(!kept.is_empty(), "{tenant}: old versions kept");
        for name in kept {
            let bytes = fs::read_to_string(pools.join(tenant).join(&name)).unwrap();
            assert!(bytes.starts_with(prefix), "{tenant}/{name}: {bytes:?}");
        }
    }
    for n in 0..10 {
        let want = format!("root {}", 30 + n);
        assert_eq!(
            fs::read_to_string(e.root.join(format!("f{n}"))).unwrap(),
            want
        );
    }
}
