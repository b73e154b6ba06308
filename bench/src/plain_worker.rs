//! The plain-loop worker: what a minimal hand-written Rust worker costs per task.
//!
//! Between the null echo (no parsing, no work) and the real worker: one current-thread
//! tokio runtime, a core NATS queue subscription, and per assignment a `serde_json` parse,
//! the block's work done inline on that thread (`std::fs::read`/`write`, a blocking
//! keep-alive HTTP/1.1 GET on one reused connection, one prepared SQLite statement), then an
//! ack and a result built with `serde_json` and published. No dedupe, cancel, deadline,
//! fairness, metrics, logs or spans: the contract features are what the real worker adds
//! on top, and its cost ÷ this loop's is what the bench reports as `÷ plain`.
//! Core mode only (a JetStream plain loop would be mostly the broker's work).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::null_worker::Subjects;

/// Subject prefix of the plain-loop worker.
pub(crate) const PLAIN_PREFIX: &str = "benchplain";

struct Blocks {
    fs_root: PathBuf,
    sql_root: PathBuf,
    http: Option<BufReader<TcpStream>>,
    sql: Option<rusqlite::Connection>,
}

impl Blocks {
    fn run(&mut self, tenant: &str, job: &Value) -> Result<Value, String> {
        let s = |k: &str| job.get(k).and_then(Value::as_str).unwrap_or_default();
        match s("type") {
            "fs.get" => {
                let path = s("path").trim_start_matches('/');
                let p = self.fs_root.join(tenant).join(path);
                let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
                let size = bytes.len();
                let mut r = json!({"path": s("path"), "size_bytes": size,
                    "content_type": "application/octet-stream"});
                match String::from_utf8(bytes) {
                    Ok(text) => r["content"] = Value::String(text),
                    Err(e) => {
                        r["content_base64"] = Value::String(
                            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                        )
                    }
                }
                Ok(r)
            }
            "fs.put" => {
                let path = s("path").trim_start_matches('/');
                let p = self.fs_root.join(tenant).join(path);
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                let content = s("content");
                std::fs::write(&p, content).map_err(|e| e.to_string())?;
                Ok(json!({"path": s("path"), "size_bytes": content.len(),
                    "content_type": s("content_type")}))
            }
            "http.request" => self.http_get(s("url")),
            "sql.query" => self.sql_query(s("query"), job.get("parameters")),
            other => Err(format!("unknown block type {other:?}")),
        }
    }

    /// GET on one kept-alive connection (reopened when the upstream closes it).
    fn http_get(&mut self, url: &str) -> Result<Value, String> {
        let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        for _ in 0..2 {
            if self.http.is_none() {
                let s = TcpStream::connect(host).map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                self.http = Some(BufReader::new(s));
            }
            let Some(conn) = self.http.as_mut() else {
                continue;
            };
            match exchange(conn, host, path) {
                Ok(r) => return Ok(r),
                Err(_) => self.http = None,
            }
        }
        Err("upstream closed the connection".into())
    }

    fn sql_query(&mut self, query: &str, params: Option<&Value>) -> Result<Value, String> {
        if self.sql.is_none() {
            let c = rusqlite::Connection::open_with_flags(
                self.sql_root.join("bench.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| e.to_string())?;
            self.sql = Some(c);
        }
        let Some(c) = self.sql.as_ref() else {
            return Err("no connection".into());
        };
        let mut stmt = c.prepare_cached(query).map_err(|e| e.to_string())?;
        let params: Vec<String> = params
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                let v = match row.get_ref(i).map_err(|e| e.to_string())? {
                    rusqlite::types::ValueRef::Integer(x) => json!(x),
                    rusqlite::types::ValueRef::Real(x) => json!(x),
                    rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                    _ => Value::Null,
                };
                obj.insert(n.clone(), v);
            }
            out.push(Value::Object(obj));
        }
        Ok(json!({"rows": out, "row_count": out.len()}))
    }
}

/// One request and its response (Content-Length bodies only, as the bench's upstream sends).
fn exchange(conn: &mut BufReader<TcpStream>, host: &str, path: &str) -> Result<Value, String> {
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
    conn.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    conn.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let mut len = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok(json!({"status_code": status, "body": body}))
}

/// Entry point of `beamline-bench plain-worker`.
pub(crate) async fn serve(nats_url: &str, fs_root: PathBuf, sql_root: PathBuf) -> Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("beamline-bench-plain-worker")
        .connect(nats_url)
        .await
        .with_context(|| format!("connect {nats_url}"))?;
    let subjects = Subjects::with_prefix(PLAIN_PREFIX);
    let mut sub = client
        .queue_subscribe(subjects.assign.clone(), PLAIN_PREFIX.to_string())
        .await
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    client.flush().await.map_err(|e| anyhow!("flush: {e}"))?;
    let ack_subject = async_nats::Subject::from(subjects.ack.as_str());
    let result_subject = async_nats::Subject::from(subjects.result.as_str());
    let mut blocks = Blocks {
        fs_root,
        sql_root,
        http: None,
        sql: None,
    };
    while let Some(msg) = sub.next().await {
        let Ok(a) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue;
        };
        let id = a["assignment_id"].as_str().unwrap_or_default();
        let tenant = a["tenant_id"].as_str().unwrap_or_default();
        let job = &a["job"];
        let ack = json!({"version": "1", "assignment_id": id, "status": "accepted",
            "message": "Assignment accepted for execution", "tenant_id": tenant});
        client
            .publish(ack_subject.clone(), serde_json::to_vec(&ack)?.into())
            .await
            .map_err(|e| anyhow!("publish ack: {e}"))?;
        let started = std::time::Instant::now();
        let (status, result, error) = match blocks.run(tenant, job) {
            Ok(r) => ("success", r, Value::Null),
            Err(e) => ("error", Value::Null, json!({"code": 3003, "message": e})),
        };
        let res = json!({"version": "1", "assignment_id": id, "tenant_id": tenant,
            "status": status, "job": {"type": job["type"]}, "result": result, "error": error,
            "latency_ms": started.elapsed().as_millis() as u64, "attempts": 1, "cost": 0});
        client
            .publish(result_subject.clone(), serde_json::to_vec(&res)?.into())
            .await
            .map_err(|e| anyhow!("publish result: {e}"))?;
    }
    Ok(())
}
