//! Temp-dir fixtures (1 KiB file, SQLite database, `ai.inference` model). The local
//! HTTP/1.1 upstream is the test kit's (`beamline_testkit::http_server::Responder`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
