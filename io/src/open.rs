//! A blocking, sandboxed open for callers that read a tenant-named file themselves (the
//! worker's model loader, its SQLite opener): the same resolution rule as [`IoPool::get`]
//! (`openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, the same path
//! syntax checks, the same refusal of directories, special files and files with more
//! than one hard link), but the caller gets the open file and its `fstat`, so it can key a
//! cache on what was opened (device, inode, mtime, size) and read only on a miss.
//!
//! Runs on the caller's thread (it blocks): call it from a blocking context.
//!
//! [`IoPool::get`]: crate::IoPool::get

use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{FsError, FsErrorKind};
use crate::path;
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
    let fail = |errno: i32| FsError::from_errno(errno, false, "open", display);
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
        return Err(fail(-r));
    }
    let root_fd = own(r);
    let how = OpenHow {
        // O_NONBLOCK: a FIFO must not block the open (cleared below once fstat says
        // "regular file"). O_NOCTTY: never acquire a terminal.
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: if opts.no_symlinks {
            RESOLVE | libc::RESOLVE_NO_SYMLINKS
        } else {
            RESOLVE
        },
    };
    let mut retries = 0;
    let fd = loop {
        // SAFETY: `p.c` and `how` are live for the call; `root_fd` is an open descriptor.
        let r = unsafe {
            sys::exec(&Op::OpenAt2 {
                dirfd: root_fd.as_raw_fd(),
                path: p.c.as_ptr(),
                how: &how,
            })
        };
        if r == -libc::EAGAIN && retries < MAX_EAGAIN_RETRIES {
            retries += 1;
            continue;
        }
        if r < 0 {
            return Err(fail(-r));
        }
        break own(r);
    };
    drop(root_fd);
    let file = File::from(fd);
    let metadata = file.metadata().map_err(|e| {
        FsError::from_errno(
            e.raw_os_error().unwrap_or(libc::EIO),
            false,
            "stat",
            display,
        )
    })?;
    if metadata.is_dir() {
        return Err(FsError::new(FsErrorKind::IsADirectory, "open", display));
    }
    if !metadata.is_file() {
        return Err(
            FsError::new(FsErrorKind::InvalidPath, "open", display).with_source(
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ),
        );
    }
    // As in `get`: a hard link can point at a file outside the root and path resolution
    // cannot tell, so every multiply-linked file is refused.
    if metadata.nlink() > 1 {
        return Err(
            FsError::new(FsErrorKind::Escape, "open", display).with_source(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "file has more than one hard link",
            )),
        );
    }
    let r = sys::clear_nonblock(file.as_raw_fd());
    if r < 0 {
        return Err(fail(-r));
    }
    Ok(OpenedFile { file, metadata })
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
}
