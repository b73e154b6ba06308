//! The error type of `fs.get` / `fs.put`, and the errno → kind mapping.

use std::fmt;
use std::io;

/// What went wrong, independent of the OS error that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsErrorKind {
    /// The file (or a directory on its path, or the tenant root for a read) does not exist.
    NotFound,
    /// The path resolves outside the tenant root (`..`, an absolute or escaping symlink, a
    /// magic link, a symlink loop), or the file is a hard link (`st_nlink > 1`) on read.
    Escape,
    /// `EACCES` / `EPERM`.
    PermissionDenied,
    /// Larger than `IoConfig::max_file_bytes`, or `EFBIG`.
    TooLarge,
    /// `ENOSPC` / `EDQUOT`.
    NoSpace,
    /// `EROFS`.
    ReadOnlyFs,
    /// The path names a directory.
    IsADirectory,
    /// Empty path, NUL byte, trailing `/`, a last component of `.` or `..`, a name too long,
    /// a component that is not a directory (on write), or not a regular file (on read).
    InvalidPath,
    /// Every shard queue is full; the request was not queued.
    Overloaded,
    /// The pool is shut down (or its IO thread is gone).
    Shutdown,
    /// Anything else; `FsError::source` has the OS error.
    Other,
}

impl FsErrorKind {
    /// A stable snake_case name, for metrics and JSON error codes.
    pub fn as_str(&self) -> &'static str {
        match self {
            FsErrorKind::NotFound => "not_found",
            FsErrorKind::Escape => "escape",
            FsErrorKind::PermissionDenied => "permission_denied",
            FsErrorKind::TooLarge => "too_large",
            FsErrorKind::NoSpace => "no_space",
            FsErrorKind::ReadOnlyFs => "read_only_fs",
            FsErrorKind::IsADirectory => "is_a_directory",
            FsErrorKind::InvalidPath => "invalid_path",
            FsErrorKind::Overloaded => "overloaded",
            FsErrorKind::Shutdown => "shutdown",
            FsErrorKind::Other => "other",
        }
    }

    /// The human text used by `FsError`'s `Display`.
    fn message(&self) -> &'static str {
        match self {
            FsErrorKind::NotFound => "no such file or directory",
            FsErrorKind::Escape => "escapes the tenant root",
            FsErrorKind::PermissionDenied => "permission denied",
            FsErrorKind::TooLarge => "file too large",
            FsErrorKind::NoSpace => "no space left on device",
            FsErrorKind::ReadOnlyFs => "read-only file system",
            FsErrorKind::IsADirectory => "is a directory",
            FsErrorKind::InvalidPath => "invalid path",
            FsErrorKind::Overloaded => "I/O queue full",
            FsErrorKind::Shutdown => "I/O pool shut down",
            FsErrorKind::Other => "I/O error",
        }
    }

    /// Maps an errno to a kind. `ENOTDIR` (a path component is a regular file) reads as
    /// `NotFound` for a read and `InvalidPath` for a write.
    pub(crate) fn from_errno(errno: i32, writing: bool) -> FsErrorKind {
        match errno {
            libc::ENOENT => FsErrorKind::NotFound,
            libc::EXDEV | libc::ELOOP => FsErrorKind::Escape,
            libc::EACCES | libc::EPERM => FsErrorKind::PermissionDenied,
            libc::ENOSPC | libc::EDQUOT => FsErrorKind::NoSpace,
            libc::EROFS => FsErrorKind::ReadOnlyFs,
            libc::EISDIR => FsErrorKind::IsADirectory,
            libc::EFBIG => FsErrorKind::TooLarge,
            libc::ENAMETOOLONG => FsErrorKind::InvalidPath,
            libc::ENOTDIR if writing => FsErrorKind::InvalidPath,
            libc::ENOTDIR => FsErrorKind::NotFound,
            _ => FsErrorKind::Other,
        }
    }
}

impl fmt::Display for FsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// An `fs.get` / `fs.put` failure.
///
/// `path` is always the tenant-relative path (leading `/` stripped), never the tenant root on
/// the host, so the message can be shown to the tenant as is.
#[derive(Debug)]
pub struct FsError {
    pub kind: FsErrorKind,
    /// The step that failed: `open`, `mkdir`, `create`, `stat`, `read`, `write`, `setxattr`,
    /// `fsync`, `close`, `rename`, for a rewritten spare `truncate` / `removexattr`, or
    /// `get` / `put` for queue-level errors.
    pub op: &'static str,
    pub path: String,
    pub source: Option<io::Error>,
}

impl FsError {
    pub(crate) fn new(kind: FsErrorKind, op: &'static str, path: &str) -> FsError {
        FsError {
            kind,
            op,
            path: path.to_owned(),
            source: None,
        }
    }

    pub(crate) fn from_errno(errno: i32, writing: bool, op: &'static str, path: &str) -> FsError {
        FsError {
            kind: FsErrorKind::from_errno(errno, writing),
            op,
            path: path.to_owned(),
            source: Some(io::Error::from_raw_os_error(errno)),
        }
    }

    pub(crate) fn with_source(mut self, source: io::Error) -> FsError {
        self.source = Some(source);
        self
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path, self.kind)?;
        // The syscall's words for an unexpected error, the reason for a refused path.
        if matches!(self.kind, FsErrorKind::Other | FsErrorKind::InvalidPath) {
            if let Some(src) = &self.source {
                write!(f, " ({src})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        let kind = match e.kind {
            FsErrorKind::NotFound => io::ErrorKind::NotFound,
            FsErrorKind::Escape | FsErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            FsErrorKind::TooLarge => io::ErrorKind::FileTooLarge,
            FsErrorKind::NoSpace => io::ErrorKind::StorageFull,
            FsErrorKind::ReadOnlyFs => io::ErrorKind::ReadOnlyFilesystem,
            FsErrorKind::IsADirectory => io::ErrorKind::IsADirectory,
            FsErrorKind::InvalidPath => io::ErrorKind::InvalidInput,
            FsErrorKind::Overloaded => io::ErrorKind::WouldBlock,
            FsErrorKind::Shutdown => io::ErrorKind::BrokenPipe,
            FsErrorKind::Other => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_documented_shape() {
        let e = FsError::from_errno(libc::EXDEV, false, "open", "data/x.json");
        assert_eq!(e.kind, FsErrorKind::Escape);
        assert_eq!(e.to_string(), "open data/x.json: escapes the tenant root");
        let e = FsError::from_errno(libc::EIO, true, "write", "a");
        assert_eq!(e.kind, FsErrorKind::Other);
        assert!(e.to_string().starts_with("write a: I/O error ("), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn errno_mapping() {
        use FsErrorKind as K;
        let cases = [
            (libc::ENOENT, K::NotFound),
            (libc::EXDEV, K::Escape),
            (libc::ELOOP, K::Escape),
            (libc::EACCES, K::PermissionDenied),
            (libc::EPERM, K::PermissionDenied),
            (libc::ENOSPC, K::NoSpace),
            (libc::EDQUOT, K::NoSpace),
            (libc::EROFS, K::ReadOnlyFs),
            (libc::EISDIR, K::IsADirectory),
            (libc::EFBIG, K::TooLarge),
            (libc::ENAMETOOLONG, K::InvalidPath),
            (libc::EIO, K::Other),
        ];
        for (errno, kind) in cases {
            assert_eq!(K::from_errno(errno, false), kind, "errno {errno}");
            assert_eq!(K::from_errno(errno, true), kind, "errno {errno}");
        }
        assert_eq!(K::from_errno(libc::ENOTDIR, false), K::NotFound);
        assert_eq!(K::from_errno(libc::ENOTDIR, true), K::InvalidPath);
    }

    #[test]
    fn converts_to_io_error() {
        let e: io::Error = FsError::new(FsErrorKind::NotFound, "open", "x").into();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
