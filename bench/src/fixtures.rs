//! Temp-dir fixtures (1 KiB file, SQLite database, `ai.inference` model) and the local
//! HTTP/1.1 upstream.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use beamline_gpu::{Activation, Layer, Model};

use crate::scenario::{MODEL_IN, MODEL_PATH, SQL_ROWS, TENANT};

/// Fixture directories; removed when dropped.
#[derive(Debug)]
pub(crate) struct Fixtures {
    _fs: tempfile::TempDir,
    _sql: tempfile::TempDir,
    pub(crate) fs_root: PathBuf,
    pub(crate) sql_root: PathBuf,
}

/// The 1 KiB `fs.get` fixture: bytes 0..=255 four times (binary, so `content_base64`).
pub(crate) fn one_kib() -> Vec<u8> {
    (0..1024u32).map(|i| (i % 256) as u8).collect()
}

/// Hidden width and output width of the bench model.
const MODEL_HIDDEN: usize = 32;
const MODEL_OUT: usize = 4;

/// The `inference` scenario's model: `MODEL_IN` → 32 (relu) → 4 (softmax), fixed small
/// weights, as a `beamline-ffn/v1` safetensors file written by the worker's own model code.
pub(crate) fn model_file() -> Result<Vec<u8>> {
    let w = |n: usize, k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + k) % 13) as f32 - 6.0) * 0.05)
            .collect()
    };
    let layers = vec![
        Layer::new(
            MODEL_IN,
            MODEL_HIDDEN,
            w(MODEL_IN * MODEL_HIDDEN, 1),
            w(MODEL_HIDDEN, 2),
            Activation::Relu,
        )?,
        Layer::new(
            MODEL_HIDDEN,
            MODEL_OUT,
            w(MODEL_HIDDEN * MODEL_OUT, 3),
            w(MODEL_OUT, 4),
            Activation::Softmax,
        )?,
    ];
    Ok(Model::new(layers)?.to_safetensors())
}

pub(crate) fn create_fixtures() -> Result<Fixtures> {
    let fs = tempfile::Builder::new().prefix("bench-fs-").tempdir()?;
    let sql = tempfile::Builder::new().prefix("bench-sql-").tempdir()?;
    // Paths are tenant-relative: "/bench/1k.bin" of tenant "bench" is <fs-root>/bench/bench/1k.bin.
    let tenant_dir = fs.path().join(TENANT).join("bench");
    std::fs::create_dir_all(tenant_dir.join("out"))?;
    std::fs::write(tenant_dir.join("1k.bin"), one_kib())?;
    let model = fs
        .path()
        .join(TENANT)
        .join(MODEL_PATH.trim_start_matches('/'));
    std::fs::write(&model, model_file()?).with_context(|| format!("write {}", model.display()))?;

    let db_path = sql.path().join("bench.db");
    let mut conn = rusqlite::Connection::open(&db_path)
        .with_context(|| format!("open {}", db_path.display()))?;
    conn.execute_batch(
        "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);",
    )?;
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare("INSERT INTO users (id, name, email) VALUES (?1, ?2, ?3)")?;
        for i in 1..=SQL_ROWS {
            ins.execute(rusqlite::params![
                i.to_string(),
                format!("user {i}"),
                format!("user{i}@example.invalid")
            ])?;
        }
    }
    tx.commit()?;
    drop(conn);
    Ok(Fixtures {
        fs_root: fs.path().to_path_buf(),
        sql_root: sql.path().to_path_buf(),
        _fs: fs,
        _sql: sql,
    })
}

const RESPONSE_BODY: &[u8] = br#"{"ok":true,"from":"beamline-bench"}"#;
const MAX_HEAD: usize = 64 * 1024;

/// Tiny HTTP/1.1 keep-alive responder: answers every request `200` with a fixed JSON body.
/// Dropping it stops the listener and every connection task.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) port: u16,
    pub(crate) requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn start_upstream() -> Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        // The JoinSet is dropped (aborting every connection) when this task is aborted.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, counter.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Upstream {
        port,
        requests,
        task,
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// `(content_length, close)` from a request head.
fn parse_head(head: &[u8]) -> (usize, bool) {
    let text = String::from_utf8_lossy(head);
    let mut len = 0;
    let mut close = text.lines().next().is_some_and(|l| l.ends_with("HTTP/1.0"));
    for line in text.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    (len, close)
}

async fn serve_conn(mut stream: TcpStream, counter: Arc<AtomicU64>) {
    let response = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            RESPONSE_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(RESPONSE_BODY);
        r
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer every complete request in the buffer (pipelining-safe).
        let mut out = Vec::new();
        let mut close = false;
        while let Some(end) = find_head_end(&buf) {
            let (body_len, c) = parse_head(&buf[..end]);
            if buf.len() < end + body_len {
                break;
            }
            buf.drain(..end + body_len);
            out.extend_from_slice(&response);
            counter.fetch_add(1, Ordering::Relaxed);
            if c {
                close = true;
                break;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        if close || buf.len() > MAX_HEAD {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert_eq!(
            parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 12\r\nHost: a\r\n\r\n"),
            (12, false)
        );
        assert_eq!(
            parse_head(b"GET /x HTTP/1.1\r\nconnection: Close\r\n\r\n"),
            (0, true)
        );
        assert_eq!(parse_head(b"GET /x HTTP/1.0\r\n\r\n"), (0, true));
    }

    #[tokio::test]
    async fn upstream_answers_keep_alive_requests() {
        let up = start_upstream().await.expect("start");
        let mut s = TcpStream::connect(("127.0.0.1", up.port))
            .await
            .expect("connect");
        // Two pipelined requests on one connection, the second with a body.
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await
        .expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while memchr::memmem::find_iter(&got, b"HTTP/1.1 200").count() < 2
            || !got.ends_with(RESPONSE_BODY)
        {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(up.requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn fixtures_are_where_the_worker_expects_them() {
        let f = create_fixtures().expect("fixtures");
        let bin = std::fs::read(f.fs_root.join("bench/bench/1k.bin")).expect("1k");
        assert_eq!(bin.len(), 1024);
        let conn = rusqlite::Connection::open(f.sql_root.join("bench.db")).expect("db");
        let name: String = conn
            .query_row("SELECT name FROM users WHERE id = ?", ["123"], |r| r.get(0))
            .expect("row 123");
        assert_eq!(name, "user 123");
        // The model loads as the worker loads it, and the payload's row fits it.
        let bytes = std::fs::read(f.fs_root.join("bench/bench/model.safetensors")).expect("model");
        let m = Model::from_safetensors(&bytes).expect("loads");
        assert_eq!((m.input_dim(), m.output_dim()), (MODEL_IN, MODEL_OUT));
        let out = m.forward_cpu(&[0.5; MODEL_IN], 1).expect("forward");
        assert_eq!(out.len(), MODEL_OUT);
        let sum: f32 = out.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "softmax row sums to {sum}");
    }
}
