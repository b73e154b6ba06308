//! `fs.put` / `fs.get` (and the original worker's `fs.blob_put` / `fs.blob_get`): tenant
//! files under `<fs-root>/<tenant_id>/`, through the pinned io_uring shards of
//! `beamline_io`. Resolution is done by the kernel beneath the tenant root (openat2
//! `RESOLVE_BENEATH`), so `..`, absolute symlinks and symlinks out of the root fail with
//! 2003 instead of being clamped. Writes are atomic (temp file + rename) and idempotent.
//! The IO thread's CPU time for a request comes back with its reply and is charged to the
//! assignment by the pool itself (`beamline_io::cputime`; `--max-cpu-time-ms`).

use std::path::PathBuf;

use base64::Engine as _;
use beamline_io::{FsError, FsErrorKind, IoPool};
use bytes::Bytes;
use serde_json::json;

use crate::contract::fastjson::Object;
use crate::contract::{ErrorCode, Fields, TaskError};

use super::{Block, BlockKind, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

#[derive(Debug)]
pub struct FsBlock {
    io: IoPool,
    root: PathBuf,
    max_bytes: u64,
}

/// A decoded `fs.*` job.
#[derive(Debug)]
pub enum FsJob<'a> {
    Get {
        path: &'a str,
    },
    Put {
        path: &'a str,
        content: Bytes,
        content_type: Option<&'a str>,
    },
}

impl FsBlock {
    pub fn new(io: IoPool, root: PathBuf, max_bytes: u64) -> Self {
        FsBlock {
            io,
            root,
            max_bytes,
        }
    }
}

fn validate_path<'a>(job: &Fields<'a, 'a>) -> Result<&'a str, TaskError> {
    let path = job.req_nonempty("path")?;
    if path.contains('\0') {
        return Err(TaskError::invalid("job.path", "contains a NUL byte"));
    }
    if path.ends_with('/') || path.trim_start_matches('/').is_empty() {
        return Err(TaskError::invalid(
            "job.path",
            "must name a file, not a directory",
        ));
    }
    Ok(path)
}

/// Reads and validates an `fs.*` job: what [`Block::decode`] does, without the IO pool.
/// `job.type` picks get or put; content over `max_bytes` is 2004.
pub fn decode_job<'a>(job: Fields<'a, 'a>, max_bytes: u64) -> Result<FsJob<'a>, TaskError> {
    let path = validate_path(&job)?;
    let kind = job.req_str("type")?;
    if BlockKind::parse(kind) == Some(BlockKind::FsGet) {
        return Ok(FsJob::Get { path });
    }
    let content = match (job.opt_str("content")?, job.opt_str("content_base64")?) {
        (Some(text), None) => Bytes::copy_from_slice(text.as_bytes()),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    TaskError::new(
                        ErrorCode::InvalidFormat,
                        format!("field `job.content_base64` is not base64: {e}"),
                    )
                })?,
        ),
        (Some(_), Some(_)) => {
            return Err(TaskError::invalid(
                "job.content",
                "give either content or content_base64, not both",
            ))
        }
        (None, None) => return Err(TaskError::missing("job.content")),
    };
    if content.len() as u64 > max_bytes {
        return Err(TaskError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "content of {} bytes exceeds the {} byte file limit",
                content.len(),
                max_bytes
            ),
        ));
    }
    let content_type = job.opt_str("content_type")?;
    if let Some(ct) = content_type {
        if ct.len() > 255 || ct.bytes().any(|b| b.is_ascii_control()) {
            return Err(TaskError::invalid(
                "job.content_type",
                "must be a MIME type of at most 255 printable characters",
            ));
        }
    }
    Ok(FsJob::Put {
        path,
        content,
        content_type,
    })
}

impl Block for FsBlock {
    type Job<'a> = FsJob<'a>;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        Ok(FsBlock::new(
            ctx.io.clone(),
            ctx.fs_root.to_path_buf(),
            ctx.config.fs_max_bytes,
        ))
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        _assignment_id: &str,
    ) -> Result<FsJob<'a>, TaskError> {
        decode_job(job, settings.fs_max_bytes)
    }

    fn decode<'a>(&self, job: Fields<'a, 'a>, _ctx: &ExecCtx<'_>) -> Result<FsJob<'a>, TaskError> {
        decode_job(job, self.max_bytes)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        let root = self.root.join(ctx.tenant);
        match job {
            FsJob::Get { path } => {
                // Inline when nothing would wait for the disk (a hot file: no thread hop,
                // no cross-thread wake-up); else on an IO thread.
                let data = match self.io.try_get_now(&root, path) {
                    Some(r) => r,
                    None => self.io.get(&root, path).await,
                }
                .map_err(fs_error)?;
                let content_type = data.content_type;
                let content_type = content_type
                    .as_deref()
                    .unwrap_or_else(|| guess_content_type(path));
                Ok(Output::written(get_result(path, content_type, &data.bytes)))
            }
            FsJob::Put {
                path,
                content,
                content_type,
            } => {
                let ct = content_type.unwrap_or_else(|| guess_content_type(path));
                let info = self
                    .io
                    .put(&root, path, content.clone(), Some(ct))
                    .await
                    .map_err(fs_error)?;
                Ok(Output::new(
                    json!({"path": path, "size_bytes": info.size_bytes, "content_type": ct}),
                ))
            }
        }
    }
}

/// The `fs.get` result object, written as JSON directly: the same bytes serde_json writes
/// for `{"path", "size_bytes", "content_type", "content" | "content_base64"}` (test below),
/// with a binary file's base64 encoded straight into the text: no `Value` map, no owned
/// copies of the names, no base64 string scanned again for escapes (issue 12, seventh
/// round). The base64 is `base64-simd`'s (SIMD where the CPU has it, detected at run
/// time): 86–92 ns for 1 KiB against the `base64` crate's 441–648 here, the largest single
/// function of a flat-out `fs.get` worker's own code (2.8 %; issue 12, twelfth round,
/// `bench/results/issue12-r12/base64-cost.txt`).
fn get_result(path: &str, content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let b64 = base64_simd::STANDARD.encoded_length(bytes.len());
    let mut out = Vec::with_capacity(96 + path.len() + content_type.len() + b64.max(bytes.len()));
    let mut o = Object::new(&mut out);
    o.str("path", path);
    o.u64("size_bytes", bytes.len() as u64);
    o.str("content_type", content_type);
    match std::str::from_utf8(bytes) {
        Ok(text) => o.str("content", text),
        Err(_) => o.str_with("content_base64", |out| {
            let start = out.len();
            out.resize(start + b64, 0);
            // The room is `encoded_length`: exactly what the encoding takes.
            let room = base64_simd::Out::from_slice(&mut out[start..]);
            let n = base64_simd::STANDARD.encode(bytes, room).len();
            out.truncate(start + n);
        }),
    }
    o.end();
    out
}

/// Maps a file error to the contract's code.
fn fs_error(e: FsError) -> TaskError {
    let msg = e.to_string();
    match e.kind {
        FsErrorKind::NotFound => TaskError::new(ErrorCode::ResourceUnavailable, msg),
        FsErrorKind::Escape => TaskError::new(
            ErrorCode::PermissionDenied,
            format!("{msg} (path leaves the tenant root)"),
        ),
        FsErrorKind::PermissionDenied | FsErrorKind::ReadOnlyFs => {
            TaskError::new(ErrorCode::PermissionDenied, msg)
        }
        FsErrorKind::TooLarge | FsErrorKind::NoSpace => {
            TaskError::new(ErrorCode::QuotaExceeded, msg)
        }
        FsErrorKind::IsADirectory | FsErrorKind::InvalidPath => {
            TaskError::new(ErrorCode::InvalidInput, msg)
        }
        FsErrorKind::Overloaded | FsErrorKind::Shutdown => {
            TaskError::retryable(ErrorCode::SystemOverload, msg)
        }
        _ => TaskError::new(ErrorCode::ExecutionFailed, msg),
    }
}

/// Content type from the file extension, for files stored without one.
pub fn guess_content_type(path: &str) -> &'static str {
    // The extension lower-cased on the stack (every known one is short).
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    let mut lower = [0u8; 16];
    let ext = match lower.get_mut(..ext.len()) {
        Some(buf) => {
            buf.copy_from_slice(ext.as_bytes());
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).unwrap_or("")
        }
        None => "",
    };
    match ext {
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "md" => "text/markdown",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "safetensors" => "application/octet-stream",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::{get_result, guess_content_type};
    use base64::Engine as _;
    use proptest::prelude::*;
    use serde_json::Value;

    /// The result as it was built before `get_result`: a `Value` in this key order.
    fn as_value(path: &str, content_type: &str, bytes: &[u8]) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("path".into(), path.into());
        m.insert("size_bytes".into(), bytes.len().into());
        m.insert("content_type".into(), content_type.into());
        match std::str::from_utf8(bytes) {
            Ok(text) => m.insert("content".into(), text.into()),
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                m.insert("content_base64".into(), b64.into())
            }
        };
        Value::Object(m)
    }

    proptest! {
        #[test]
        fn a_get_result_is_the_bytes_serde_json_writes_for_its_value(
            path in any::<String>(),
            content_type in prop_oneof![Just("application/json".to_owned()), any::<String>()],
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                any::<String>().prop_map(String::into_bytes),
                Just(b"line\n\"quoted\" \\ \x01".to_vec()),
            ],
        ) {
            let want = serde_json::to_vec(&as_value(&path, &content_type, &bytes)).expect("json");
            prop_assert_eq!(get_result(&path, &content_type, &bytes), want);
        }
    }

    #[test]
    fn content_type_by_extension_ignores_case() {
        assert_eq!(guess_content_type("a/b.json"), "application/json");
        assert_eq!(guess_content_type("REPORT.JSON"), "application/json");
        assert_eq!(guess_content_type("x.Yml"), "application/yaml");
        assert_eq!(guess_content_type("notes"), "application/octet-stream");
        assert_eq!(guess_content_type("a.json.bak"), "application/octet-stream");
        assert_eq!(
            guess_content_type("x.averyveryverylongextension"),
            "application/octet-stream"
        );
        assert_eq!(guess_content_type("dir.d/é.txt"), "text/plain");
        assert_eq!(guess_content_type("x.tx\u{e9}"), "application/octet-stream");
    }
}
