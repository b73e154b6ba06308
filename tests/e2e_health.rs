//! Health and metrics that tell the truth (issue 13 items 3–6): HEAD answers like GET on
//! every HTTP server; health sees every NATS connection (the intake lanes too); the IO
//! and GPU pools show in `resource_pools` and `worker_pool_in_flight`; the CPU time each
//! assignment uses is accounted, exported and limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beamline_gpu::{Activation, Layer, Model};
use beamline_testkit::http_client::wait_health;
use beamline_testkit::metrics::metric_sum;
use beamline_testkit::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 request: (status line, lower-cased headers, body bytes after the head).
async fn raw(port: u16, method: &str, path: &str) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

#[tokio::test]
async fn head_answers_like_get_on_every_http_server() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url()).arg("--consumer=core").start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    for (port, path) in [
        (worker.metrics_port, "/_health"),
        (worker.metrics_port, "/metrics"),
        (worker.health_port, "/_health"),
    ] {
        let (get_status, get_headers, get_body) = raw(port, "GET", path).await;
        let (status, headers, body) = raw(port, "HEAD", path).await;
        assert_eq!(status, get_status, "HEAD {path} on {port}: {headers:?}");
        assert_eq!(status, 200, "HEAD {path} on {port}");
        assert_eq!(
            headers.get("content-type"),
            get_headers.get("content-type"),
            "HEAD {path} on {port}"
        );
        assert!(body.is_empty(), "HEAD {path} has no body: {body:?}");
        assert!(!get_body.is_empty(), "GET {path} has a body");
        if path == "/_health" {
            assert_eq!(
                headers.get("content-type").map(String::as_str),
                Some("application/json")
            );
            // The length of the body GET would send (the timestamp has a fixed width).
            assert_eq!(
                headers.get("content-length"),
                get_headers.get("content-length"),
                "HEAD {path}"
            );
        }
    }
    // Other methods are still refused.
    let (status, _, _) = raw(worker.metrics_port, "POST", "/_health").await;
    assert_eq!(status, 405);
    // The health-only port does not serve `/metrics` at all (it said 405, as if it did).
    let (status, _, _) = raw(worker.health_port, "GET", "/metrics").await;
    assert_eq!(status, 404);
    let (status, _, _) = raw(worker.health_port, "POST", "/_health").await;
    assert_eq!(status, 405);
}

/// A TCP proxy in front of the real nats-server that knows each connection by the name in
/// its CONNECT and can cut the ones whose name matches (and refuse them while blocked).
#[derive(Clone)]
struct Proxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    blocked: Vec<String>,
    conns: Vec<(String, tokio::sync::oneshot::Sender<()>)>,
}

fn connect_name(line: &str) -> String {
    line.strip_prefix("CONNECT ")
        .and_then(|j| serde_json::from_str::<Value>(j.trim()).ok())
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn read_line(r: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<()> {
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let p = Proxy {
            port,
            state: Arc::default(),
        };
        let state = p.state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Proxy::serve(client, upstream, state.clone()));
            }
        });
        p
    }

    async fn serve(client: TcpStream, upstream: u16, state: Arc<Mutex<ProxyState>>) -> Option<()> {
        let up = TcpStream::connect(("127.0.0.1", upstream)).await.ok()?;
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = up.into_split();
        // The server speaks first (INFO), then the client sends CONNECT.
        let mut info = Vec::new();
        read_line(&mut ur, &mut info).await?;
        cw.write_all(&info).await.ok()?;
        let mut hello = Vec::new();
        read_line(&mut cr, &mut hello).await?;
        let text = String::from_utf8_lossy(&hello).to_string();
        let name = connect_name(text.lines().next().unwrap_or(""));
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut st = state.lock().expect("lock");
            if st.blocked.iter().any(|b| name.contains(b.as_str())) {
                return None; // dropped: both sockets close
            }
            st.conns.push((name, tx));
        }
        uw.write_all(&hello).await.ok()?;
        tokio::select! {
            _ = tokio::io::copy(&mut cr, &mut uw) => {}
            _ = tokio::io::copy(&mut ur, &mut cw) => {}
            _ = rx => {}
        }
        None
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection whose name contains `pattern` and refuses new ones.
    fn block(&self, pattern: &str) -> usize {
        let mut st = self.state.lock().expect("lock");
        st.blocked.push(pattern.to_owned());
        let (cut, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.conns)
            .into_iter()
            .partition(|(n, _)| n.contains(pattern));
        st.conns = keep;
        cut.len()
    }

    fn unblock(&self) {
        self.state.lock().expect("lock").blocked.clear();
    }
}

fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|w| rest.contains(w)))
            .then(|| value.parse::<f64>().ok())?
    })
}

#[tokio::test]
async fn a_lane_that_stays_down_fails_health_and_is_named() {
    let nats = Nats::start();
    let proxy = Proxy::start(nats.port).await;
    let worker = Worker::builder(&proxy.url())
        .arg("--consumer=core")
        .env("WORKER_CPU_POOL_SIZE", "2")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let m = worker.metrics().await;
    for conn in ["control", "lane-0", "lane-1"] {
        let label = format!("connection=\"{conn}\"");
        assert_eq!(
            sample(&m, "worker_nats_connected", &[&label]),
            Some(1.0),
            "{conn} up: {m}"
        );
        assert_eq!(
            sample(&m, "worker_nats_reconnects_total", &[&label]),
            Some(0.0),
            "the first connect of {conn} is not a reconnect: {m}"
        );
    }

    // Lane 1's connection goes and cannot come back; the control connection stays.
    assert_eq!(proxy.block("lane 1"), 1, "lane 1's connection was cut");
    let cut_at = Instant::now();
    let (status, body) = wait_health(worker.health_port, 503, Duration::from_secs(15)).await;
    assert_eq!(
        status, 503,
        "a lane down past the grace period fails health: {body}"
    );
    let waited = cut_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "a short blip is within the grace period ({waited:?})"
    );
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["failing"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("nats_connection"))),
        "{v}"
    );
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("lane-1"), "names the lane: {v}");
    assert!(
        !reason.contains("lane-0"),
        "only the lane that is down: {v}"
    );
    let m = worker.metrics().await;
    assert_eq!(
        sample(&m, "worker_nats_connected", &["connection=\"lane-1\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "worker_nats_connected", &["connection=\"control\""]),
        Some(1.0),
        "{m}"
    );

    // Back: healthy again, and the reconnect is counted for that lane only.
    proxy.unblock();
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(15)).await;
    assert_eq!(status, 200, "{body}");
    let m = worker.metrics().await;
    assert!(
        sample(
            &m,
            "worker_nats_reconnects_total",
            &["connection=\"lane-1\""]
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "worker_nats_reconnects_total",
            &["connection=\"control\""]
        ),
        Some(0.0),
        "{m}"
    );
    drop(worker);
}

/// A model that takes a while on the CPU fallback even with `gemm` optimised in the dev
/// profile (Cargo.toml): 256 → 6 × 1024 → 256, about 0.4 G multiply-adds per 64-row
/// request, so 40 requests keep the GPU pool's queue over its bound for seconds.
fn slow_model() -> Model {
    let dims = [256, 1024, 1024, 1024, 1024, 1024, 1024, 256];
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(l, d)| {
            let (n_in, n_out) = (d[0], d[1]);
            let w = (0..n_in * n_out)
                .map(|i| ((i * 7 + l) % 13) as f32 / 100.0 - 0.06)
                .collect();
            Layer::new(n_in, n_out, w, vec![0.01; n_out], Activation::Relu).expect("layer")
        })
        .collect();
    Model::new(layers).expect("model")
}

#[tokio::test]
async fn a_full_gpu_queue_shows_in_health_and_the_pool_gauges() {
    let nats = Nats::start();
    let b = Worker::builder(&nats.url()).args(&[
        "--consumer=core",
        "--queue-capacity=8",
        "--gpu-max-batch-size=1",
    ]);
    let models = b.fs_root().join("t").join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::fs::write(
        models.join("slow.safetensors"),
        slow_model().to_safetensors(),
    )
    .expect("model");
    let worker = b.start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let row: Vec<f32> = (0..256).map(|i| (i % 5) as f32 / 10.0).collect();
    let rows: Vec<Vec<f32>> = (0..64).map(|_| row.clone()).collect();
    let n = 40;
    for i in 0..n {
        router
            .assign(&assignment(
                &format!("gpu-{i}"),
                "t",
                json!({"type":"ai.inference","model":"models/slow.safetensors","inputs":rows,"timeout_ms":120_000}),
            ))
            .await;
    }
    // While the GPU pool's queue is over its bound: health says so, the gauges show it.
    let end = Instant::now() + Duration::from_secs(30);
    let (mut saw_health, mut saw_gauges) = (None, None);
    while Instant::now() < end && (saw_health.is_none() || saw_gauges.is_none()) {
        let (status, _, body) = http_get(worker.health_port, "/_health").await;
        if status == 503 && body.contains("gpu") {
            saw_health = Some(body);
        }
        let m = worker.metrics().await;
        let running = metric_sum(&m, "worker_pool_in_flight", &["pool=\"gpu\""]);
        let queued = metric_sum(&m, "worker_pool_queue_depth", &["pool=\"gpu\""]);
        if running >= 1.0 && queued >= 8.0 {
            saw_gauges = Some((running, queued));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = router.seen.on(RESULT).len();
    let body = saw_health
        .unwrap_or_else(|| panic!("health never named the full GPU queue ({done} results so far)"));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["failing"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("resource_pools"))),
        "{v}"
    );
    let (running, queued) = saw_gauges.expect("in-flight and queued GPU work in the gauges");
    eprintln!("gpu pool: {running} in flight, {queued} queued; {body}");
    // All of them finish, and the pool is idle and healthy after.
    router
        .seen
        .wait_count(RESULT, n + 1, Duration::from_secs(120))
        .await;
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let m = worker.metrics().await;
    assert_eq!(
        metric_sum(&m, "worker_pool_in_flight", &["pool=\"gpu\""]),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn fs_work_counts_in_the_io_pool_gauge_and_cpu_time_is_a_histogram() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .args(&["--consumer=core", "--fs-backend=threads"])
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    // Many reads of a large file keep the IO thread busy for a while.
    let big = worker.fs_root.join("t").join("big.bin");
    std::fs::create_dir_all(big.parent().expect("dir")).expect("mkdir");
    std::fs::write(&big, vec![7u8; 256 << 10]).expect("file");
    let n = 300;
    for i in 0..n {
        router
            .assign(&assignment(
                &format!("io-{i}"),
                "t",
                json!({"type":"fs.get","path":"/big.bin"}),
            ))
            .await;
    }
    let end = Instant::now() + Duration::from_secs(30);
    let mut max_io = 0.0f64;
    while Instant::now() < end && router.seen.on(RESULT).len() < n + 1 {
        let m = worker.metrics().await;
        max_io = max_io.max(metric_sum(&m, "worker_pool_in_flight", &["pool=\"io\""]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        max_io >= 1.0,
        "fs work shows in the IO pool's in-flight gauge"
    );
    router
        .seen
        .wait_count(RESULT, n + 1, Duration::from_secs(60))
        .await;
    let m = worker.metrics().await;
    assert_eq!(
        metric_sum(&m, "worker_pool_in_flight", &["pool=\"io\""]),
        0.0,
        "{m}"
    );
    // Every finished assignment's CPU time is in the histogram (the ready probes too).
    let count = metric_sum(&m, "worker_task_cpu_time_ms_count", &[]);
    let sum = metric_sum(&m, "worker_task_cpu_time_ms_sum", &[]);
    assert!(
        count >= n as f64,
        "cpu time observed per task: {count}\n{m}"
    );
    assert!(sum > 0.0, "{m}");
    let polls = metric_sum(&m, "worker_task_polls_total", &[]);
    assert!(polls >= count, "each task is polled at least once: {polls}");
    eprintln!(
        "io in flight max {max_io}; cpu time per task {:.3} ms, {:.2} polls per task (mean of {count})",
        sum / count,
        polls / count
    );
}

/// A handful of VM instructions, each working on a 16 MB string (SQLite's length limit
/// here): far fewer than the 1 000 between two progress-handler checks.
const HEAVY_STEP: &str = "SELECT length(replace(replace(replace(replace(replace(replace(\
    hex(randomblob(8000000)),'0','1'),'2','3'),'4','5'),'6','7'),'8','9'),'A','B'))";

#[tokio::test]
async fn a_task_over_its_cpu_time_is_stopped_with_5002() {
    let nats = Nats::start();
    let b = Worker::builder(&nats.url()).args(&["--consumer=core", "--max-cpu-time-ms=100"]);
    let db = rusqlite::Connection::open(b.sql_root().join("db.sqlite")).expect("db");
    db.execute_batch("CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .expect("schema");
    drop(db);
    let worker = b.start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    // One SQLite step that runs long on the CPU thread (the query's own deadline check
    // sits between steps, so the wall-clock deadline cannot cut it).
    let a = assignment(
        "cpu-1",
        "t",
        json!({"type":"sql.query","connection_string":"sqlite://db.sqlite",
               "query":HEAVY_STEP,"timeout_ms":100}),
    );
    router.assign(&a).await;
    let r = router.result("cpu-1").await;
    assert_result_shape(&r);
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["error"]["code"], 5002, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("CPU time"), "{r}");
    // A light task under the limit is untouched.
    let ok = assignment(
        "cpu-2",
        "t",
        json!({"type":"sql.query","connection_string":"sqlite://db.sqlite","query":"SELECT a FROM x"}),
    );
    router.assign(&ok).await;
    let r = router.result("cpu-2").await;
    assert_eq!(r["status"], "success", "{r}");
    let m = worker.metrics().await;
    assert!(
        metric_sum(&m, "worker_task_cpu_time_ms_bucket", &["le=\"+Inf\""]) >= 2.0,
        "{m}"
    );
    drop(worker);
}

/// The process's "THP_enabled" flag as the kernel shows it (`None` where it does not).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line["THP_enabled:".len()..].trim().to_owned())
}

/// Waits until something accepts connections on `port` (the worker's health endpoint).
async fn listening(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < end, "nothing listens on {port} after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The worker turns transparent huge pages off for itself (a 2 MiB fault on a CPU thread
/// is a latency spike), unless `MIMALLOC_ALLOW_THP` says how the allocator should do it.
#[tokio::test]
async fn transparent_huge_pages_are_off_unless_the_allocator_is_told_otherwise() {
    let nats = Nats::start();
    if thp_enabled(std::process::id()).is_none() {
        eprintln!("skipped: this kernel shows no THP_enabled line in /proc/PID/status");
        return;
    }
    // Read once each worker's health endpoint listens, well after `main` began.
    let worker = Worker::builder(&nats.url()).arg("--consumer=core").start();
    listening(worker.health_port).await;
    let pid = worker.pid().expect("worker pid");
    assert_eq!(thp_enabled(pid).as_deref(), Some("0"), "THP off by default");
    let allowed = Worker::builder(&nats.url())
        .arg("--consumer=core")
        .env("MIMALLOC_ALLOW_THP", "1")
        .start();
    listening(allowed.health_port).await;
    let pid = allowed.pid().expect("worker pid");
    assert_eq!(
        thp_enabled(pid).as_deref(),
        Some("1"),
        "left to the allocator when MIMALLOC_ALLOW_THP is set"
    );
}

/// A 4002 refusal says the pools are overloaded ("Resource pools are not overloaded" is a
/// health indicator of the guide): health fails, naming `resource_pools`, for 10 s after
/// one, though a queue is full only for a moment at a time. (It answered 200 "healthy"
/// while refusing 7 of 10 assignments.)
#[tokio::test]
async fn a_refusal_for_overload_fails_health_for_a_while() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .args(&[
            "--consumer=core",
            "--cpu-pool-size=1",
            "--max-in-flight=1",
            "--queue-capacity=2",
        ])
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let n = 10;
    for i in 0..n {
        let approval =
            json!({"type":"human.approval","prompt":"p","approvers":["a"],"timeout_ms":1000});
        router
            .assign(&assignment(&format!("ov-{i}"), "t", approval))
            .await;
    }
    // All answered: refused, or timed out (queued ones as soon as they start).
    let results = router
        .seen
        .wait_count(RESULT, n + 1, Duration::from_secs(30))
        .await;
    let refused = results
        .iter()
        .filter(|r| r["error"]["code"] == 4002)
        .count();
    assert!(refused > 0, "{results:?}");
    let (status, _, body) = http_get(worker.health_port, "/_health").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["failing"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("resource_pools"))),
        "{v}"
    );
    assert!(body.contains("refused as overloaded"), "{body}");
    // And healthy again once the window has passed.
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{body}");
}
