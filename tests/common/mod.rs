//! Test harness: a real `nats-server -js` per test on a free port (killed on drop), the
//! worker binary as a child process, and a NATS client that collects what the worker says.
#![allow(dead_code, unreachable_pub)] // shared by several test crates, each using part of it

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `nats-server -js` of this test's own, with its store in a temp dir.
pub struct Nats {
    pub port: u16,
    pub store: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
        for p in [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ] {
            if Path::new(p).exists() {
                return p.to_owned();
            }
        }
        "nats-server".to_owned()
    })
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// Extra server arguments (auth, TLS, config file).
    pub fn start_with(extra: &[&str]) -> Nats {
        let mut n = Nats {
            port: free_port(),
            store: tempfile::tempdir().expect("tempdir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (install the Debian package nats-server)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "nats-server did not start"
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); the store stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The worker binary under test: `BEAMLINE_WORKER_BIN` when set (a binary kept aside, e.g.
/// one built before a fix, or when several checkouts share one target dir), else the one
/// cargo built for this test.
pub fn worker_bin() -> String {
    std::env::var("BEAMLINE_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_beamline_worker").to_owned())
}

/// The worker binary, running against a test's NATS.
pub struct Worker {
    child: Option<Child>,
    pub metrics_port: u16,
    pub health_port: u16,
    pub log: PathBuf,
    pub fs_root: PathBuf,
    pub sql_root: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _dir: Arc<tempfile::TempDir>,
}

pub struct WorkerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: Arc<tempfile::TempDir>,
    fs_root: PathBuf,
    sql_root: PathBuf,
}

impl WorkerBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn fs_root(&self) -> &Path {
        &self.fs_root
    }
    pub fn sql_root(&self) -> &Path {
        &self.sql_root
    }
    pub fn start(self) -> Worker {
        let metrics_port = free_port();
        let health_port = free_port();
        let mut w = Worker {
            child: None,
            metrics_port,
            health_port,
            log: self.dir.path().join("worker.log"),
            fs_root: self.fs_root,
            sql_root: self.sql_root,
            args: self.args,
            envs: self.envs,
            _dir: self.dir,
        };
        w.spawn();
        w
    }
}

impl Worker {
    /// A worker with its own fs and sql roots; `nats` is its broker.
    pub fn builder(nats_url: &str) -> WorkerBuilder {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let fs_root = dir.path().join("fs");
        let sql_root = dir.path().join("sql");
        std::fs::create_dir_all(&fs_root).expect("fs root");
        std::fs::create_dir_all(&sql_root).expect("sql root");
        WorkerBuilder {
            args: vec![format!("--nats-url={nats_url}")],
            // Defaults a test can override with a flag (flag beats environment).
            envs: vec![
                ("WORKER_CPU_POOL_SIZE".into(), "2".into()),
                ("WORKER_IO_POOL_SIZE".into(), "1".into()),
            ],
            dir,
            fs_root,
            sql_root,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(worker_bin())
            .args(&self.args)
            .arg(format!("--fs-root={}", self.fs_root.display()))
            .arg(format!("--sql-root={}", self.sql_root.display()))
            .arg(format!(
                "--prometheus-endpoint=127.0.0.1:{}",
                self.metrics_port
            ))
            .arg(format!("--health-endpoint=127.0.0.1:{}", self.health_port))
            .env_remove("NATS_URL")
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker binary runs");
        self.child = Some(child);
        assert!(
            wait_port(self.metrics_port, Duration::from_secs(15)),
            "worker did not open its metrics port; log:\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn get(&self, path: &str, port: u16) -> (u16, String, String) {
        http_get(port, path).await
    }

    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await.2
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTP/1.1 GET over loopback: (status, content-type, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

/// One message the worker published: subject, JSON body, headers.
type Published = (String, Value, Option<async_nats::HeaderMap>);

/// Everything the worker published, by subject, with headers.
#[derive(Clone, Default)]
pub struct Seen {
    inner: Arc<Mutex<Vec<Published>>>,
}

impl Seen {
    pub fn on(&self, subject: &str) -> Vec<Value> {
        self.inner
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| s == subject)
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    pub fn for_id(&self, subject: &str, id: &str) -> Vec<Value> {
        self.on(subject)
            .into_iter()
            .filter(|v| v["assignment_id"] == id)
            .collect()
    }

    pub fn headers_for(&self, subject: &str, id: &str) -> Vec<Option<async_nats::HeaderMap>> {
        self.inner
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, v, _)| s == subject && v["assignment_id"] == id)
            .map(|(_, _, h)| h.clone())
            .collect()
    }

    /// Waits until `subject` has a message for `id`; returns the first.
    pub async fn wait_for(&self, subject: &str, id: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.for_id(subject, id).into_iter().next() {
                return v;
            }
            assert!(
                Instant::now() < end,
                "no message on {subject} for {id} within {timeout:?}; seen: {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_count(&self, subject: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let v = self.on(subject);
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < end,
                "only {} of {n} messages on {subject} within {timeout:?}",
                v.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn summary(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (s, _, _) in self.inner.lock().expect("lock").iter() {
            *m.entry(s.clone()).or_insert(0) += 1;
        }
        m
    }
}

pub const ASSIGN: &str = "caf.exec.assign.v1";
pub const ACK: &str = "caf.exec.assign.v1.ack";
pub const RESULT: &str = "caf.exec.result.v1";
pub const DLQ: &str = "caf.exec.dlq.v1";
pub const CANCEL: &str = "caf.exec.cancel.v1";
pub const APPROVAL_REQUEST: &str = "caf.human.approval.request.v1";
pub const APPROVAL_DECISION: &str = "caf.human.approval.decision.v1";
pub const HEARTBEAT: &str = "caf.worker.heartbeat.v1";

/// A Router stand-in: publishes assignments, records every worker output.
pub struct Router {
    pub client: async_nats::Client,
    pub seen: Seen,
}

impl Router {
    pub async fn connect(url: &str) -> Router {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .expect("router connects");
        let seen = Seen::default();
        for subject in [ACK, RESULT, DLQ, APPROVAL_REQUEST, HEARTBEAT] {
            let mut sub = client.subscribe(subject).await.expect("subscribe");
            let seen = seen.clone();
            let subject = subject.to_owned();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    seen.inner
                        .lock()
                        .expect("lock")
                        .push((subject.clone(), v, m.headers.clone()));
                }
            });
        }
        client.flush().await.expect("flush");
        Router { client, seen }
    }

    pub async fn publish(&self, subject: &str, body: impl Into<bytes::Bytes>) {
        self.client
            .publish(subject.to_owned(), body.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    pub async fn assign(&self, v: &Value) {
        self.publish(ASSIGN, serde_json::to_vec(v).expect("json"))
            .await;
    }

    pub async fn assign_with_headers(&self, v: &Value, headers: &[(&str, &str)]) {
        let mut h = async_nats::HeaderMap::new();
        for (k, val) in headers {
            h.insert(*k, *val);
        }
        self.client
            .publish_with_headers(
                ASSIGN.to_owned(),
                h,
                serde_json::to_vec(v).expect("json").into(),
            )
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Waits for the result of `id` (default 15 s).
    pub async fn result(&self, id: &str) -> Value {
        self.seen
            .wait_for(RESULT, id, Duration::from_secs(15))
            .await
    }

    pub async fn ack(&self, id: &str) -> Value {
        self.seen.wait_for(ACK, id, Duration::from_secs(15)).await
    }

    pub async fn dlq(&self, id: &str) -> Value {
        self.seen.wait_for(DLQ, id, Duration::from_secs(15)).await
    }
}

/// Waits until the worker's consumer is bound (an echo fs.get round-trips).
pub async fn ready(router: &Router) {
    let id = format!("ready-{}", std::process::id());
    let end = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let this = format!("{id}-{n}");
        router
            .assign(&serde_json::json!({"version":"1","assignment_id": this,"tenant_id":"ready","job":{"type":"fs.get","path":"/nothing"}}))
            .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if !router.seen.for_id(RESULT, &this).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(Instant::now() < end, "worker never answered");
    }
}

/// A valid assignment with the given id and job.
pub fn assignment(id: &str, tenant: &str, job: Value) -> Value {
    serde_json::json!({
        "version": "1",
        "assignment_id": id,
        "request_id": format!("req-{id}"),
        "tenant_id": tenant,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "executor": {"provider_id": "test-provider"},
        "job": job,
    })
}

/// Checks the fields every result must carry (guide + deployed Router's validator).
pub fn assert_result_shape(r: &Value) {
    assert_eq!(r["version"], "1", "{r}");
    assert!(r["assignment_id"].is_string(), "{r}");
    let status = r["status"].as_str().expect("status");
    assert!(
        ["success", "error", "timeout", "cancelled"].contains(&status),
        "{r}"
    );
    assert!(r["latency_ms"].is_u64(), "{r}");
    assert!(r["cost"].is_number(), "{r}");
    assert!(r["attempts"].is_u64(), "{r}");
    assert!(
        r["timestamp"].is_u64() && r["timestamp"] == r["completed_at"],
        "{r}"
    );
    // `job` is absent only when the assignment had none to echo.
    assert!(
        r.get("job").is_none() || r["job"]["type"].is_string(),
        "{r}"
    );
    assert!(r["metadata"]["worker_id"].is_string(), "{r}");
    if status != "success" {
        assert!(r["error"]["code"].is_u64(), "{r}");
        assert!(r["error"]["message"].is_string(), "{r}");
        assert!(r["error"]["retryable"].is_boolean(), "{r}");
        assert!(
            r["error_code"].is_string()
                && r["error_type"].is_string()
                && r["error_message"].is_string(),
            "{r}"
        );
    }
}

/// Every result kept in the output stream whose assignment id starts with `prefix`, by id
/// (raw bodies), read through an ordered JetStream consumer.
pub async fn stored_results(
    client: &async_nats::Client,
    prefix: &str,
) -> std::collections::HashMap<String, Vec<bytes::Bytes>> {
    let mut out: std::collections::HashMap<String, Vec<bytes::Bytes>> =
        std::collections::HashMap::new();
    let js = async_nats::jetstream::new(client.clone());
    let Ok(name) = js.stream_by_subject(RESULT).await else {
        return out;
    };
    let Ok(stream) = js.get_stream(&name).await else {
        return out;
    };
    let Ok(consumer) = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: RESULT.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return out;
    };
    let Ok(mut msgs) = consumer.messages().await else {
        return out;
    };
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1000), msgs.next()).await
    {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if let Some(id) = v["assignment_id"]
            .as_str()
            .filter(|id| id.starts_with(prefix))
        {
            out.entry(id.to_owned())
                .or_default()
                .push(m.payload.clone());
        }
    }
    out
}
