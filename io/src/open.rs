//! A blocking, sandboxed open for callers that read a tenant-named file themselves (the
//! worker's model loader), and [`locate_first_beneath`], which only finds which file a name
//! reaches (the SQL block, whose library opens the file again by name): the same
//! resolution rule as [`IoPool::get`]
//! (`openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, the same path
//! syntax checks, the same refusal of directories, special files and files with more
//! than one hard link); `open_beneath` hands the caller the open file and its `fstat`, so
//! it can key a cache on what was opened (device, inode, mtime, size) and read only on a
//! miss.
//!
//! Runs on the caller's thread (it blocks): call it from a blocking context.
//!
//! [`IoPool::get`]: crate::IoPool::get

use std::ffi::CStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{FsError, FsErrorKind};
use crate::path;
use crate::roots;
use crate::sys::{self, Op, OpenHow, RESOLVE};

/// openat2 may answer EAGAIN when a concurrent rename races with `..` resolution.
const MAX_EAGAIN_RETRIES: u8 = 8;

/// A regular file opened beneath a root, and its `fstat` taken on the open descriptor.
#[derive(Debug)]
pub struct OpenedFile {
    /// Opened read-only (`O_CLOEXEC | O_NOCTTY`), blocking.
    pub file: File,
    /// `fstat` of `file`: a regular file with exactly one link.
    pub metadata: Metadata,
}

/// How [`open_beneath`] resolves `rel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenBeneath {
    /// Refuse every symlink on the way (`RESOLVE_NO_SYMLINKS`), also those that stay
    /// beneath the root ([`FsErrorKind::Escape`]). For callers that hand the path on to a
    /// library that opens it again by name (SQLite), where only a path without symlinks
    /// is known to reach the same file.
    pub no_symlinks: bool,
}

fn own(fd: i32) -> OwnedFd {
    // SAFETY: only called with a non-negative open/openat2 result, a fresh fd that nothing
    // else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens `rel` (leading `/` stripped, as for `get`) beneath the directory `root` with the
/// sandbox rules of [`IoPool::get`](crate::IoPool::get). Errors carry the tenant-relative
/// path only. `..` above the root, absolute or escaping symlinks, magic links and symlink
/// loops are [`FsErrorKind::Escape`], as is a file with `st_nlink > 1`; a directory is
/// [`FsErrorKind::IsADirectory`]; a FIFO, socket or device [`FsErrorKind::InvalidPath`].
pub fn open_beneath(root: &Path, rel: &str, opts: OpenBeneath) -> Result<OpenedFile, FsError> {
    let p = path::parse_get(rel)?;
    let display = p.display.as_str();
    let root_c = path::root_cstring(root, display)?;
    let root_fd = open_root(&root_c).map_err(|errno| fail(errno, display))?;
    // O_NONBLOCK: a FIFO must not block the open (cleared below once fstat says "regular
    // file"). O_NOCTTY: never acquire a terminal.
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    let fd = open_at(&root_fd, &p.c, flags, opts).map_err(|errno| fail(errno, display))?;
    drop(root_fd);
    let file = File::from(fd);
    let metadata = checked_metadata(&file, display)?;
    let r = sys::clear_nonblock(file.as_raw_fd());
    if r < 0 {
        return Err(fail(-r, display));
    }
    Ok(OpenedFile { file, metadata })
}

/// A file found beneath a root by [`locate_first_beneath`]: a regular file with exactly
/// one link.
#[derive(Debug)]
pub struct LocatedFile {
    /// Its device and inode numbers (as `st_dev`, `st_ino`).
    pub id: (u64, u64),
    /// With [`Locate::Hold`]: an `O_PATH` descriptor on it, which keeps the inode (and
    /// so `id`) for as long as it is held; it cannot be read or written through.
    pub fd: Option<OwnedFd>,
}

/// What [`locate_first_beneath`] does with the file it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locate {
    /// Only tell which file the name reaches now: a name of one component is looked up
    /// with one `statx` (no symlink followed; only with `no_symlinks`).
    Identify,
    /// Open it `O_PATH` and hand the descriptor over ([`LocatedFile::fd`]).
    Hold,
}

/// The first of `rels` that names a file beneath `root`, by the rules of [`open_beneath`]
/// (same path syntax, same refusals, same errors), for a caller that hands the name on to
/// a library which opens it again (SQLite) and needs to know which file the name reaches
/// now. Returns its index in `rels`. A name that is not found is passed over; any other
/// refusal is the answer. When none is found, the last one's not-found error.
///
/// Cheaper than [`open_beneath`] per name. With `no_symlinks`, each name is first looked
/// up in one walk of its whole path (the root's path, then the name; [`locate_whole`]):
/// a walk that follows no symlink and never goes up ends beneath whatever directory the
/// root's path names at that moment, so it reaches what a walk beneath the root would,
/// and no descriptor of the root is needed (none can be stale). With [`Locate::Identify`]
/// a name of one component (no `/`, never `.` or `..`) is one
/// `statx(AT_SYMLINK_NOFOLLOW)` of the whole path, which may follow symlinks of the root's
/// own path (they lead to the root) and none beneath it; a longer name is one
/// `openat2(RESOLVE_NO_SYMLINKS)`. When such a walk meets a symlink (in the root's own
/// path, or beneath it), the answer comes from the way through the root below, and this
/// thread marks the root so that its later lookups go that way at once.
///
/// Through the root: the root is the one this thread keeps open (the kept roots of the
/// inline `fs.get`, checked by one `statx` of its path before use); an `O_PATH` open
/// needs no `fcntl` after it; and with [`Locate::Identify`] and `no_symlinks`, a name of
/// one component is one `statx(root, name, AT_SYMLINK_NOFOLLOW)`, which is exactly what
/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` would reach. A kept root that
/// was removed and made again can come back under its old inode number; nothing is found
/// through the removed one, so an answer with something found (or refused) is known to
/// come from the live directory, and "none found" is asked again through a fresh open of
/// the root.
pub fn locate_first_beneath(
    root: &Path,
    rels: &[&str],
    opts: OpenBeneath,
    how: Locate,
) -> Result<(usize, LocatedFile), FsError> {
    let mut parsed = Vec::with_capacity(rels.len());
    for rel in rels {
        parsed.push(path::parse_get(rel)?);
    }
    let Some(last) = parsed.last() else {
        return Err(FsError::new(FsErrorKind::InvalidPath, "open", ""));
    };
    let root_c = path::root_cstring(root, &last.display)?;
    if opts.no_symlinks && !roots::symlinked(&root_c) {
        if let Some(found) = locate_whole(&root_c, &parsed, how) {
            return found;
        }
    }
    if let Some(held) = roots::take(&root_c) {
        let (fd, id) = held.split();
        let found = locate_first(&fd, &parsed, opts, how);
        roots::put(&root_c, roots::Held::again(fd, id));
        if !matches!(&found, Err(e) if e.kind == FsErrorKind::NotFound) {
            return found;
        }
    }
    let fd = open_root(&root_c).map_err(|errno| fail(errno, &last.display))?;
    let found = locate_first(&fd, &parsed, opts, how);
    if let Some(held) = roots::Held::opened(fd) {
        roots::put(&root_c, held);
    }
    found
}

/// What [`locate_first`] would answer with `no_symlinks`, each name looked up by its
/// whole path (see [`locate_first_beneath`]). `None` when that way cannot tell: a name has
/// a `..` component or is too long to join to the root's path, or a walk met a symlink
/// (then the root is marked, [`roots::mark_symlinked`]).
fn locate_whole(
    root_c: &CStr,
    parsed: &[path::GetPath],
    how: Locate,
) -> Option<Result<(usize, LocatedFile), FsError>> {
    let mut missing = None;
    for (i, p) in parsed.iter().enumerate() {
        let whole = crate::machine::whole_path(root_c, p)?;
        let display = p.display.as_str();
        let found = if how == Locate::Identify && !display.contains('/') {
            identify(libc::AT_FDCWD, &whole, display)
        } else {
            match open_whole(&whole) {
                Err(libc::ELOOP) => {
                    roots::mark_symlinked(root_c);
                    return None;
                }
                Err(errno) => Err(fail(errno, display)),
                Ok(fd) => held(fd, display),
            }
        };
        match found {
            Err(e) if e.kind == FsErrorKind::NotFound => missing = Some(e),
            Err(e) => return Some(Err(e)),
            Ok(mut file) => {
                if how == Locate::Identify {
                    file.fd = None;
                }
                return Some(Ok((i, file)));
            }
        }
    }
    Some(Err(missing.unwrap_or_else(|| {
        FsError::new(FsErrorKind::NotFound, "open", "")
    })))
}

fn locate_first(
    root_fd: &OwnedFd,
    parsed: &[path::GetPath],
    opts: OpenBeneath,
    how: Locate,
) -> Result<(usize, LocatedFile), FsError> {
    let mut missing = None;
    for (i, p) in parsed.iter().enumerate() {
        let display = p.display.as_str();
        let single = !display.contains('/');
        let found = if how == Locate::Identify && opts.no_symlinks && single {
            identify(root_fd.as_raw_fd(), &p.c, display)
        } else {
            hold(root_fd, &p.c, opts, display)
        };
        match found {
            Err(e) if e.kind == FsErrorKind::NotFound => missing = Some(e),
            Err(e) => return Err(e),
            Ok(mut file) => {
                if how == Locate::Identify {
                    file.fd = None;
                }
                return Ok((i, file));
            }
        }
    }
    Err(missing.unwrap_or_else(|| FsError::new(FsErrorKind::NotFound, "open", "")))
}

/// `name` (one component) in the directory `dirfd`, or a whole path whose last component
/// is the one looked at (`dirfd` = `AT_FDCWD`), by one `statx` that follows no symlink
/// there.
fn identify(dirfd: RawFd, name: &CStr, display: &str) -> Result<LocatedFile, FsError> {
    // SAFETY: `statx` is a plain C struct of integers; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `dirfd` open (or `AT_FDCWD`), `stx` a writable
    // statx buffer.
    let r = unsafe {
        libc::statx(
            dirfd,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_NLINK | libc::STATX_INO,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(fail(sys::errno(), display));
    }
    let kind = match u32::from(stx.stx_mode) & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        // What `RESOLVE_NO_SYMLINKS` answers for a symlink.
        libc::S_IFLNK => return Err(fail(libc::ELOOP, display)),
        _ => Kind::Other,
    };
    check(kind, u64::from(stx.stx_nlink), display)?;
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    Ok(LocatedFile {
        id: (dev, stx.stx_ino),
        fd: None,
    })
}

/// `rel` beneath `root_fd`, opened `O_PATH`.
fn hold(
    root_fd: &OwnedFd,
    rel: &CStr,
    opts: OpenBeneath,
    display: &str,
) -> Result<LocatedFile, FsError> {
    // openat2 takes no other flag beside O_PATH but O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW.
    let fd = open_at(root_fd, rel, libc::O_PATH | libc::O_CLOEXEC, opts)
        .map_err(|errno| fail(errno, display))?;
    held(fd, display)
}

/// The file `fd` (opened `O_PATH`), refused unless a regular file with one link.
fn held(fd: OwnedFd, display: &str) -> Result<LocatedFile, FsError> {
    let file = File::from(fd);
    let metadata = checked_metadata(&file, display)?;
    Ok(LocatedFile {
        id: (metadata.dev(), metadata.ino()),
        fd: Some(file.into()),
    })
}

/// `openat2(AT_FDCWD, whole, O_PATH)` following no symlink anywhere on the way; the errno
/// on failure (`ELOOP`: a symlink was met).
fn open_whole(whole: &CStr) -> Result<OwnedFd, i32> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `whole` and `how` are live for the call.
    let r = unsafe {
        sys::exec(&Op::OpenAt2 {
            dirfd: libc::AT_FDCWD,
            path: whole.as_ptr(),
            how: &how,
        })
    };
    if r < 0 {
        return Err(-r);
    }
    Ok(own(r))
}

fn fail(errno: i32, display: &str) -> FsError {
    FsError::from_errno(errno, false, "open", display)
}

/// The root directory, opened `O_PATH` by its absolute path; the errno on failure.
fn open_root(root_c: &CStr) -> Result<OwnedFd, i32> {
    // SAFETY: `root_c` is a live NUL-terminated string for the duration of the call.
    let r = unsafe {
        sys::exec(&Op::OpenAt {
            dirfd: libc::AT_FDCWD,
            path: root_c.as_ptr(),
            flags: libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            mode: 0,
        })
    };
    if r < 0 {
        return Err(-r);
    }
    Ok(own(r))
}

/// `openat2(root_fd, rel, flags)` with the sandbox's resolve flags; the errno on failure.
fn open_at(root_fd: &OwnedFd, rel: &CStr, flags: i32, opts: OpenBeneath) -> Result<OwnedFd, i32> {
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: if opts.no_symlinks {
            RESOLVE | libc::RESOLVE_NO_SYMLINKS
        } else {
            RESOLVE
        },
    };
    let mut retries = 0;
    loop {
        // SAFETY: `rel` and `how` are live for the call; `root_fd` is an open descriptor.
        let r = unsafe {
            sys::exec(&Op::OpenAt2 {
                dirfd: root_fd.as_raw_fd(),
                path: rel.as_ptr(),
                how: &how,
            })
        };
        if r == -libc::EAGAIN && retries < MAX_EAGAIN_RETRIES {
            retries += 1;
            continue;
        }
        if r < 0 {
            return Err(-r);
        }
        return Ok(own(r));
    }
}

/// The `fstat` of an opened name, refused unless it is a regular file with one link.
fn checked_metadata(file: &File, display: &str) -> Result<Metadata, FsError> {
    let metadata = file.metadata().map_err(|e| {
        FsError::from_errno(
            e.raw_os_error().unwrap_or(libc::EIO),
            false,
            "stat",
            display,
        )
    })?;
    let kind = if metadata.is_dir() {
        Kind::Dir
    } else if metadata.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    check(kind, metadata.nlink(), display)?;
    Ok(metadata)
}

/// What a name reached, as far as the sandbox cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// Refuses all but a regular file with one link.
fn check(kind: Kind, nlink: u64, display: &str) -> Result<(), FsError> {
    match kind {
        Kind::Dir => return Err(FsError::new(FsErrorKind::IsADirectory, "open", display)),
        Kind::Other => {
            return Err(
                FsError::new(FsErrorKind::InvalidPath, "open", display).with_source(
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                ),
            )
        }
        Kind::File => {}
    }
    // As in `get`: a hard link can point at a file outside the root and path resolution
    // cannot tell, so every multiply-linked file is refused.
    if nlink > 1 {
        return Err(
            FsError::new(FsErrorKind::Escape, "open", display).with_source(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "file has more than one hard link",
            )),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use super::*;

    fn env() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"outside").unwrap();
        (dir, root)
    }

    fn kind(r: Result<OpenedFile, FsError>) -> FsErrorKind {
        r.map(|_| ()).unwrap_err().kind
    }

    #[test]
    fn opens_a_plain_file_and_reports_its_identity() {
        let (_d, root) = env();
        let mut f = open_beneath(&root, "/sub/a.txt", OpenBeneath::default()).unwrap();
        let mut s = String::new();
        f.file.read_to_string(&mut s).unwrap();
        assert_eq!(s, "inside");
        let m = std::fs::metadata(root.join("sub/a.txt")).unwrap();
        assert_eq!((f.metadata.dev(), f.metadata.ino()), (m.dev(), m.ino()));
    }

    #[test]
    fn refuses_what_get_refuses() {
        let (d, root) = env();
        let o = OpenBeneath::default();
        assert_eq!(
            kind(open_beneath(&root, "../secret.txt", o)),
            FsErrorKind::Escape
        );
        symlink(d.path().join("secret.txt"), root.join("abs")).unwrap();
        assert_eq!(kind(open_beneath(&root, "abs", o)), FsErrorKind::Escape);
        symlink("../../secret.txt", root.join("sub/rel")).unwrap();
        assert_eq!(kind(open_beneath(&root, "sub/rel", o)), FsErrorKind::Escape);
        std::fs::hard_link(d.path().join("secret.txt"), root.join("hl")).unwrap();
        assert_eq!(kind(open_beneath(&root, "hl", o)), FsErrorKind::Escape);
        assert_eq!(
            kind(open_beneath(&root, "sub", o)),
            FsErrorKind::IsADirectory
        );
        assert_eq!(kind(open_beneath(&root, "nope", o)), FsErrorKind::NotFound);
        assert_eq!(
            kind(open_beneath(&root, "a/..", o)),
            FsErrorKind::InvalidPath
        );
        // Absolute paths are tenant-relative, as for `get`.
        let abs = d.path().join("secret.txt");
        assert_eq!(
            kind(open_beneath(&root, abs.to_str().unwrap(), o)),
            FsErrorKind::NotFound
        );
    }

    #[test]
    fn no_symlinks_refuses_even_those_that_stay_inside() {
        let (_d, root) = env();
        symlink("sub/a.txt", root.join("alias")).unwrap();
        assert!(open_beneath(&root, "alias", OpenBeneath::default()).is_ok());
        let strict = OpenBeneath { no_symlinks: true };
        assert_eq!(
            kind(open_beneath(&root, "alias", strict)),
            FsErrorKind::Escape
        );
        assert!(open_beneath(&root, "sub/a.txt", strict).is_ok());
        symlink("sub", root.join("dirlink")).unwrap();
        assert_eq!(
            kind(open_beneath(&root, "dirlink/a.txt", strict)),
            FsErrorKind::Escape
        );
    }

    /// What `locate_first_beneath` answers for one name, as `open_beneath` would say it.
    fn located(
        root: &Path,
        rel: &str,
        o: OpenBeneath,
        how: Locate,
    ) -> Result<(u64, u64), FsErrorKind> {
        locate_first_beneath(root, &[rel], o, how)
            .map(|(_, f)| {
                assert_eq!(f.fd.is_some(), how == Locate::Hold);
                f.id
            })
            .map_err(|e| e.kind)
    }

    #[test]
    fn locate_answers_as_open_beneath_does() {
        let (d, root) = env();
        std::fs::write(root.join("top.db"), b"x").unwrap();
        symlink(d.path().join("secret.txt"), root.join("abs")).unwrap();
        symlink("sub/a.txt", root.join("alias")).unwrap();
        symlink("sub", root.join("dirlink")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        std::fs::hard_link(d.path().join("secret.txt"), root.join("hl")).unwrap();
        let fifo =
            std::ffi::CString::new(root.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let names = [
            "top.db",
            "/top.db",
            "sub/a.txt",
            "../secret.txt",
            "abs",
            "alias",
            "dirlink/a.txt",
            "dangling",
            "hl",
            "sub",
            "nope",
            "sub/nope",
            "a/..",
            "fifo",
            "..",
            ".",
        ];
        // The same root reached through a symlink: a whole-path walk that refuses symlinks
        // meets that one, and the answer comes through the root.
        let link = d.path().join("link");
        symlink(&root, &link).unwrap();
        for o in [OpenBeneath::default(), OpenBeneath { no_symlinks: true }] {
            for name in names {
                let want = open_beneath(&root, name, o)
                    .map(|f| (f.metadata.dev(), f.metadata.ino()))
                    .map_err(|e| e.kind);
                for how in [Locate::Identify, Locate::Hold] {
                    for at in [&root, &link] {
                        // Twice: through a fresh root (or in whole walks), then through the
                        // kept one (or in whole walks again).
                        for _ in 0..2 {
                            let got = located(at, name, o, how);
                            assert_eq!(got, want, "{name} {o:?} {how:?} {}", at.display());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_root_without_symlinks_is_looked_up_in_whole_walks() {
        let (d, root) = env();
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("db"), b"shared").unwrap();
        let strict = OpenBeneath { no_symlinks: true };
        let root_c = path::root_cstring(&root, "db").unwrap();
        for how in [Locate::Identify, Locate::Hold] {
            let (at, _) = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap();
            assert_eq!(at, 1);
        }
        assert_eq!(roots::held(), 0, "no root kept for whole walks");
        assert!(!roots::symlinked(&root_c));
        // Behind a symlink: the private name's walk meets it; the root is marked and kept.
        let link = d.path().join("link");
        symlink(&root, &link).unwrap();
        let link_c = path::root_cstring(&link, "db").unwrap();
        let (at, _) =
            locate_first_beneath(&link, &["sub/db", "db"], strict, Locate::Identify).unwrap();
        assert_eq!(at, 1);
        assert!(roots::symlinked(&link_c));
        assert_eq!(roots::held(), 1);
        // A symlink beneath a root refuses the name there, and marks that root as well.
        symlink("db", root.join("sub/db")).unwrap();
        let e =
            locate_first_beneath(&root, &["sub/db", "db"], strict, Locate::Identify).unwrap_err();
        assert_eq!(e.kind, FsErrorKind::Escape);
        assert!(roots::symlinked(&root_c));
    }

    #[test]
    fn locate_takes_the_first_name_found_and_sees_a_replaced_root() {
        let (d, root) = env();
        std::fs::write(root.join("db"), b"shared").unwrap();
        let how = Locate::Identify;
        let strict = OpenBeneath { no_symlinks: true };
        let (at, _) = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap();
        assert_eq!(at, 1, "no private file: the shared one");
        std::fs::write(root.join("sub/db"), b"private").unwrap();
        let (at, f) = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap();
        assert_eq!(at, 0, "a private file made since is seen at once");
        let m = std::fs::metadata(root.join("sub/db")).unwrap();
        assert_eq!(f.id, (m.dev(), m.ino()));
        // A refusal of the first name is the answer; the second is not tried.
        std::fs::remove_file(root.join("sub/db")).unwrap();
        symlink("../db", root.join("sub/db")).unwrap();
        let e = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap_err();
        assert_eq!(e.kind, FsErrorKind::Escape);
        // The root swapped for another directory under the same path: its files, not the
        // kept descriptor's.
        std::fs::rename(&root, d.path().join("old")).unwrap();
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("db"), b"new").unwrap();
        let (at, f) = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap();
        let m = std::fs::metadata(root.join("db")).unwrap();
        assert_eq!((at, f.id), (1, (m.dev(), m.ino())));
        // Removed: not found, whatever was kept.
        std::fs::remove_file(root.join("db")).unwrap();
        let e = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap_err();
        assert_eq!(e.kind, FsErrorKind::NotFound);
        std::fs::remove_dir(&root).unwrap();
        let e = locate_first_beneath(&root, &["sub/db", "db"], strict, how).unwrap_err();
        assert_eq!(e.kind, FsErrorKind::NotFound);
    }
}
