//! Syntactic checks on tenant paths, done on the caller's thread before a request is queued.
//!
//! These checks only reject malformed input; they are NOT the sandbox. Containment is
//! always enforced by the kernel: every path is resolved with `openat2(root_fd, ...,
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.

use std::ffi::CString;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{FsError, FsErrorKind};

/// Longest path we accept (PATH_MAX minus the NUL).
const MAX_PATH: usize = 4095;
/// Longest single component (NAME_MAX).
const MAX_NAME: usize = 255;
/// Longest slice of the target name kept in a temp file name, so that
/// `.<name>.tmp.<16 hex>` stays within NAME_MAX.
const TMP_NAME_KEEP: usize = 200;

/// The path a read resolves.
#[derive(Debug)]
pub(crate) struct GetPath {
    /// Tenant-relative path with leading `/` stripped (used in errors).
    pub(crate) display: String,
    /// Same, as the C string handed to openat2.
    pub(crate) c: CString,
}

/// The pieces a write needs.
#[derive(Debug)]
pub(crate) struct PutPath {
    pub(crate) display: String,
    /// The parent directory, normalised (no empty or `.` components), or `None` when the
    /// file goes directly in the root.
    pub(crate) parent: Option<CString>,
    /// The components of `parent`, for creating missing directories one by one. May contain
    /// `..`: the kernel decides whether that stays beneath the root.
    pub(crate) comps: Vec<CString>,
    /// The last component.
    pub(crate) name: CString,
    /// The part of the last component kept in temp file names.
    pub(crate) tmp_stem: String,
}

fn invalid(path: &str, why: &str) -> FsError {
    FsError::new(FsErrorKind::InvalidPath, "open", path).with_source(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        why.to_owned(),
    ))
}

/// Strips leading `/` and rejects what can never name a file.
fn check(rel: &str) -> Result<&str, FsError> {
    let s = rel.trim_start_matches('/');
    if s.is_empty() {
        return Err(invalid(s, "empty path"));
    }
    if s.contains('\0') {
        return Err(invalid(&s.replace('\0', "\\0"), "NUL byte in path"));
    }
    if s.ends_with('/') {
        return Err(invalid(s, "path ends with '/'"));
    }
    if s.len() > MAX_PATH {
        return Err(invalid(s, "path too long"));
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if last == "." || last == ".." {
        return Err(invalid(s, "path does not name a file"));
    }
    if s.split('/').any(|c| c.len() > MAX_NAME) {
        return Err(invalid(s, "path component too long"));
    }
    Ok(s)
}

fn cstring(s: &str, display: &str) -> Result<CString, FsError> {
    CString::new(s).map_err(|_| invalid(display, "NUL byte in path"))
}

pub(crate) fn parse_get(rel: &str) -> Result<GetPath, FsError> {
    let s = check(rel)?;
    Ok(GetPath {
        display: s.to_owned(),
        c: cstring(s, s)?,
    })
}

pub(crate) fn parse_put(rel: &str) -> Result<PutPath, FsError> {
    let s = check(rel)?;
    let (parent, name) = match s.rfind('/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => ("", s),
    };
    let comps: Vec<&str> = parent
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let parent_c = if comps.is_empty() {
        None
    } else {
        Some(cstring(&comps.join("/"), s)?)
    };
    let comps_c = comps
        .iter()
        .map(|c| cstring(c, s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keep = name.len().min(TMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    Ok(PutPath {
        display: s.to_owned(),
        parent: parent_c,
        comps: comps_c,
        name: cstring(name, s)?,
        tmp_stem: name[..keep].to_owned(),
    })
}

/// `prefix_i` = the first `i + 1` components joined by `/`.
pub(crate) fn prefix(comps: &[CString], i: usize) -> CString {
    let mut v = Vec::new();
    for (k, c) in comps.iter().take(i + 1).enumerate() {
        if k > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    // Components come from CStrings, so there is no interior NUL; fall back to "." anyway
    // rather than panic.
    CString::new(v).unwrap_or_else(|_| c".".to_owned())
}

/// The tenant root as a C string.
pub(crate) fn root_cstring(root: &Path, display: &str) -> Result<CString, FsError> {
    CString::new(root.as_os_str().as_bytes()).map_err(|_| {
        FsError::new(FsErrorKind::InvalidPath, "open", display).with_source(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NUL byte in tenant root",
        ))
    })
}

/// `.<stem>.tmp.<16 hex digits>`: a per-process random seed plus a counter, so names do not
/// repeat within a process and are unlikely to collide across processes (a collision is
/// caught by O_EXCL and retried).
pub(crate) fn tmp_name(stem: &str) -> CString {
    static SEED: OnceLock<u64> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    // Mix the counter so successive names differ in more than the last digit.
    let v = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let s = format!(".{stem}.tmp.{v:016x}");
    CString::new(s).unwrap_or_else(|_| c".beamline.tmp".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strips_leading_slashes() {
        assert_eq!(parse_get("/data/x.json").unwrap().display, "data/x.json");
        assert_eq!(parse_get("///x").unwrap().display, "x");
        assert_eq!(parse_get("data/x.json").unwrap().display, "data/x.json");
    }

    #[test]
    fn rejects_invalid() {
        for p in [
            "", "/", "//", "a/", "a\0b", ".", "..", "a/.", "a/..", "/a/b/",
        ] {
            let e = parse_get(p).unwrap_err();
            assert_eq!(e.kind, FsErrorKind::InvalidPath, "{p:?}");
            let e = parse_put(p).unwrap_err();
            assert_eq!(e.kind, FsErrorKind::InvalidPath, "{p:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(parse_put(&long).unwrap_err().kind, FsErrorKind::InvalidPath);
        let longpath = "a/".repeat(2100) + "b";
        assert_eq!(
            parse_get(&longpath).unwrap_err().kind,
            FsErrorKind::InvalidPath
        );
    }

    #[test]
    fn splits_put_paths() {
        let p = parse_put("/a//./b/../c/file.txt").unwrap();
        assert_eq!(p.display, "a//./b/../c/file.txt");
        assert_eq!(p.parent.as_deref(), Some(c"a/b/../c"));
        assert_eq!(p.comps.len(), 4);
        assert_eq!(p.name.as_c_str(), c"file.txt");
        assert_eq!(prefix(&p.comps, 0).as_c_str(), c"a");
        assert_eq!(prefix(&p.comps, 2).as_c_str(), c"a/b/..");
        let p = parse_put("file").unwrap();
        assert!(p.parent.is_none());
        assert!(p.comps.is_empty());
        let p = parse_put("./file").unwrap();
        assert!(p.parent.is_none());
    }

    #[test]
    fn tmp_names_are_unique_and_short() {
        let a = tmp_name("x.json");
        let b = tmp_name("x.json");
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with(".x.json.tmp."));
        let long = "é".repeat(127); // 254 bytes
        let p = parse_put(&long).unwrap();
        let t = tmp_name(&p.tmp_stem);
        assert!(t.as_bytes().len() <= MAX_NAME, "{}", t.as_bytes().len());
    }
}
