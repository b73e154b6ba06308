//! Observability against real components: the worker binary on a real `nats-server`, spans
//! exported to a real OTLP/HTTP receiver, log lines checked against the platform's schema,
//! `/metrics` and `/_health` read over HTTP, and the ops files checked against the metrics the
//! worker exports. Every wait is bounded.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use beamline_testkit::log_schema::*;
use beamline_testkit::metrics::*;
use beamline_testkit::otlp::*;
use beamline_testkit::prelude::*;
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn fs_put(id: &str, tenant: &str) -> Value {
    let mut a = assignment(
        id,
        tenant,
        json!({"type": "fs.put", "path": format!("/obs/{id}.txt"), "content": "hello"}),
    );
    a["run_id"] = json!(format!("run-{id}"));
    a
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
async fn eventually<T>(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses each stderr line as a JSON object (panics naming the first that is not).
fn log_lines(worker: &Worker) -> Vec<Value> {
    worker
        .logs()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "log line is not an object: {l}");
            v
        })
        .collect()
}

async fn wait_for_log(worker: &Worker, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(10), what, async || {
        log_lines(worker).into_iter().find(|l| pred(l))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Traces

#[tokio::test]
async fn spans_reach_an_otlp_receiver_in_the_routers_trace() {
    let receiver = OtlpReceiver::start().await;
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .arg("--worker-id=obs-worker-1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;

    router.assign(&fs_put("span-1", "tenant-obs")).await;
    let r = router.result("span-1").await;
    assert_eq!(r["status"], "success", "{r}\n{}", worker.logs());

    let names = [
        "worker.assignment.receive",
        "worker.block.execute",
        "worker.result.publish",
    ];
    let spans = receiver
        .wait_until(Duration::from_secs(15), |spans| {
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n && s.trace_id == TRACE))
        })
        .await;
    let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
    let receive = ours
        .iter()
        .find(|s| {
            s.name == names[0]
                && s.attributes.get("assignment_id").map(String::as_str) == Some("span-1")
        })
        .unwrap_or_else(|| panic!("no receive span for span-1 in {ours:#?}"));
    for name in names {
        let s = ours.iter().find(|s| s.name == name).expect("span");
        assert_eq!(
            s.attributes.get("tenant_id").map(String::as_str),
            Some("tenant-obs"),
            "{s:#?}"
        );
        assert_eq!(
            s.attributes.get("trace_id").map(String::as_str),
            Some(TRACE),
            "{s:#?}"
        );
        assert_eq!(
            s.attributes.get("run_id").map(String::as_str),
            Some("run-span-1"),
            "{s:#?}"
        );
        assert_eq!(
            s.attributes.get("block_type").map(String::as_str),
            Some("fs.put"),
            "{s:#?}"
        );
        assert_eq!(
            s.attributes.get("worker_id").map(String::as_str),
            Some("obs-worker-1"),
            "{s:#?}"
        );
        assert_eq!(
            s.resource.get("service.name").map(String::as_str),
            Some("beamline_worker"),
            "{s:#?}"
        );
        if name != names[0] {
            assert_eq!(
                s.parent_span_id, receive.span_id,
                "{name} hangs off the receive span: {s:#?}"
            );
        }
    }
    assert!(
        !receive.parent_span_id.is_empty(),
        "the receive span continues the Router's (remote) parent"
    );
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r == "POST /v1/traces application/x-protobuf"),
        "{:?}",
        receiver.requests()
    );
}

#[tokio::test]
async fn tasks_run_while_the_trace_exporter_is_down() {
    let closed = free_port();
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{closed}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    for i in 0..5 {
        let id = format!("down-{i}");
        router.assign(&fs_put(&id, "tenant-obs")).await;
        let r = router.result(&id).await;
        assert_eq!(r["status"], "success", "{r}\n{}", worker.logs());
    }
    // The spans of the failed exports are counted, not retried forever, and health holds.
    eventually(
        Duration::from_secs(20),
        "worker_spans_dropped_total > 0",
        async || {
            let m = parse_exposition(&worker.metrics().await);
            find(&m, "worker_spans_dropped_total", &[])
                .first()
                .filter(|s| s.value > 0.0)
                .map(|_| ())
        },
    )
    .await;
    let (status, _, body) = http_get(worker.health_port, "/_health").await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------------------
// Logs

#[tokio::test]
async fn every_log_line_is_a_schema_valid_guide_shaped_object() {
    let schema = log_schema();
    let line_schema = &schema["format"];
    let nats = Nats::start();
    let mut worker = Worker::builder(&nats.url()).start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;

    router.assign(&fs_put("log-ok", "tenant-logs")).await;
    assert_eq!(router.result("log-ok").await["status"], "success");
    let mut failing = assignment(
        "log-fail",
        "tenant-logs",
        json!({"type": "fs.get", "path": "/missing.txt"}),
    );
    failing["run_id"] = json!("run-f");
    failing["flow_id"] = json!("flow-f");
    failing["step_id"] = json!("step-f");
    router.assign(&failing).await;
    assert_eq!(router.result("log-fail").await["status"], "error");

    let ok = wait_for_log(&worker, "the success outcome line", |l| {
        l["message"] == "Step execution completed" && l["fields"]["assignment_id"] == "log-ok"
    })
    .await;
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["fields"]["block_type"], "fs.put");
    assert_eq!(ok["fields"]["status"], "success");
    assert!(ok["fields"]["latency_ms"].is_u64(), "{ok}");
    assert_eq!(ok["tenant_id"], "tenant-logs");
    assert_eq!(ok["trace_id"], TRACE);
    assert_eq!(ok["run_id"], "run-log-ok");

    let failed = wait_for_log(&worker, "the failure outcome line", |l| {
        l["message"] == "Step execution failed" && l["fields"]["assignment_id"] == "log-fail"
    })
    .await;
    // ERROR: what the guide's troubleshooting greps for.
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["fields"]["status"], "error");
    assert_eq!(failed["fields"]["error_code"], 2002);
    assert_eq!(
        (
            failed["run_id"].as_str(),
            failed["flow_id"].as_str(),
            failed["step_id"].as_str()
        ),
        (Some("run-f"), Some("flow-f"), Some("step-f"))
    );

    // Stop it too, so that start-up, work and shutdown lines are all checked.
    assert!(
        worker.terminate(Duration::from_secs(15)).is_some(),
        "worker did not stop"
    );
    let lines = log_lines(&worker);
    assert!(lines.len() >= 4, "{lines:#?}");
    for l in &lines {
        let errs = schema_errors(line_schema, l, "line");
        assert!(errs.is_empty(), "{errs:?} in {l}");
        assert_eq!(l["component"], "worker", "{l}");
        let ts = l["timestamp"].as_str().unwrap_or_default();
        assert!(is_utc_micros(ts), "timestamp {ts:?} in {l}");
        assert!(l["fields"].is_object(), "{l}");
        for id in ["trace_id", "tenant_id", "run_id", "flow_id", "step_id"] {
            assert!(
                l["fields"].get(id).is_none(),
                "{id} belongs at the top level: {l}"
            );
            assert!(
                l.get(id)
                    .is_none_or(|v| v.as_str().is_some_and(|s| !s.is_empty())),
                "{l}"
            );
        }
        let keys: BTreeSet<&str> = l
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let allowed: BTreeSet<&str> = [
            "timestamp",
            "level",
            "component",
            "message",
            "fields",
            "trace_id",
            "tenant_id",
            "run_id",
            "flow_id",
            "step_id",
        ]
        .into();
        assert!(
            keys.is_subset(&allowed),
            "unexpected top-level keys {keys:?}"
        );
    }
}

/// `RUST_LOG` decides about the per-step line however it is written: with a plain
/// target/level filter the worker writes the line itself (`logs::StepLine`), with span
/// directives it goes through `tracing`; either way the filter is obeyed.
#[tokio::test]
async fn the_per_step_line_follows_rust_log() {
    // One CPU thread, so the two assignments' lines are queued in the order they ran.
    for (spec, success_line) in [
        ("info,beamline_worker::runtime::pipeline=warn", false),
        ("warn", false),
        ("info", true),
        ("info,[worker.assignment.receive]=info", true),
    ] {
        let nats = Nats::start();
        let worker = Worker::builder(&nats.url())
            .env("RUST_LOG", spec)
            .arg("--cpu-pool-size=1")
            .start();
        let router = Router::connect(&nats.url()).await;
        ready(&router).await;
        router.assign(&fs_put("rl-ok", "tenant-rl")).await;
        assert_eq!(router.result("rl-ok").await["status"], "success", "{spec}");
        let failing = assignment(
            "rl-fail",
            "tenant-rl",
            json!({"type": "fs.get", "path": "/missing.txt"}),
        );
        router.assign(&failing).await;
        assert_eq!(router.result("rl-fail").await["status"], "error", "{spec}");
        let failed = wait_for_log(&worker, "the failure line", |l| {
            l["message"] == "Step execution failed" && l["fields"]["assignment_id"] == "rl-fail"
        })
        .await;
        assert_eq!(failed["level"], "ERROR", "{spec}");
        assert_eq!(failed["tenant_id"], "tenant-rl", "{spec}");
        assert_eq!(failed["fields"]["block_type"], "fs.get", "{spec}");
        let ok = log_lines(&worker).into_iter().find(|l| {
            l["message"] == "Step execution completed" && l["fields"]["assignment_id"] == "rl-ok"
        });
        assert_eq!(ok.is_some(), success_line, "RUST_LOG={spec}: {ok:?}");
        if let Some(ok) = ok {
            assert_eq!(ok["level"], "INFO", "{spec}");
            assert_eq!(ok["run_id"], "run-rl-ok", "{spec}");
            assert_eq!(ok["fields"]["status"], "success", "{spec}");
        }
    }
}

/// A line the block logs while it runs carries the assignment's ids, as the lines logged
/// around it do, also without a trace exporter (where the block used to run outside the
/// receive span: issue 12, fourteenth round).
#[tokio::test]
async fn a_line_logged_inside_a_block_carries_the_assignments_ids() {
    let upstream = beamline_testkit::http_server::Scripted::start(vec![(200, "ok", vec![])]).await;
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .env("RUST_LOG", "debug")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let mut a = assignment(
        "ids-in-block",
        "tenant-ids",
        json!({"type": "http.request", "method": "GET", "url": upstream.url_for("/x"),
            "timeout_ms": 5000}),
    );
    a["run_id"] = json!("run-ids");
    router.assign(&a).await;
    assert_eq!(router.result("ids-in-block").await["status"], "success");
    let line = wait_for_log(&worker, "the http block's own line", |l| {
        l["message"] == "http.request answered"
    })
    .await;
    assert_eq!(line["tenant_id"], "tenant-ids", "{line}");
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["run_id"], "run-ids", "{line}");
    assert_eq!(line["fields"]["assignment_id"], "ids-in-block", "{line}");
    assert_eq!(line["fields"]["block_type"], "http.request", "{line}");
}

#[tokio::test]
async fn text_log_format_is_one_readable_line_per_event() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .arg("--log-format=text")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    router.assign(&fs_put("text-1", "tenant-text")).await;
    assert_eq!(router.result("text-1").await["status"], "success");
    let line = eventually(Duration::from_secs(10), "the outcome line", async || {
        worker
            .logs()
            .lines()
            .find(|l| l.contains("Step execution completed") && l.contains("text-1"))
            .map(str::to_owned)
    })
    .await;
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(
        line.contains(" INFO ")
            && line.contains("tenant_id=tenant-text")
            && line.contains("status=success"),
        "{line}"
    );
}

#[tokio::test]
async fn secrets_never_reach_the_logs_or_metrics() {
    // A real upstream, so the Authorization header is really sent (and seen here).
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen_w = seen.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = upstream.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            seen_w
                .lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        }
    });

    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .env("RUST_LOG", "debug")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;

    let secrets = [
        "s3cr3t-token",
        "pa55w0rd-url",
        "db-pa55-secret",
        "kv-pa55-secret",
    ];
    router
        .assign(&assignment(
            "sec-http",
            "tenant-sec",
            json!({"type": "http.request", "method": "POST",
            "url": format!("http://127.0.0.1:{port}/v1/things?page=1"),
            "headers": {"Authorization": "Bearer s3cr3t-token", "Content-Type": "application/json"},
            "body": "{\"q\":1}", "timeout_ms": 5000}),
        ))
        .await;
    router
        .assign(&assignment("sec-userinfo", "tenant-sec", json!({"type": "http.request", "method": "GET",
            "url": format!("http://admin:pa55w0rd-url@127.0.0.1:{port}/private"), "timeout_ms": 5000})))
        .await;
    router
        .assign(&assignment("sec-sql", "tenant-sec", json!({"type": "sql.query",
            "connection_string": "postgres://dbuser:db-pa55-secret@db.internal:5432/app", "query": "SELECT 1"})))
        .await;
    router
        .assign(&assignment("sec-sql-kv", "tenant-sec", json!({"type": "sql.query",
            "connection_string": "host=db.internal user=app password=kv-pa55-secret", "query": "SELECT 1"})))
        .await;
    for id in ["sec-http", "sec-userinfo", "sec-sql", "sec-sql-kv"] {
        let r = router.result(id).await;
        assert!(r["status"].is_string(), "{r}");
        wait_for_log(&worker, "the outcome line", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Step execution"))
                && l["fields"]["assignment_id"] == id
        })
        .await;
    }
    assert_eq!(
        router.result("sec-http").await["status"],
        "success",
        "{}",
        worker.logs()
    );
    assert!(
        seen.lock().expect("lock").contains("Bearer s3cr3t-token"),
        "the header reached the upstream"
    );

    let logs = worker.logs();
    let metrics = worker.metrics().await;
    for s in secrets {
        assert!(!logs.contains(s), "{s} in the log:\n{logs}");
        assert!(!metrics.contains(s), "{s} in /metrics");
    }
    // Debug lines are there, and every one of them is still a JSON object.
    let lines = log_lines(&worker);
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "RUST_LOG=debug took effect"
    );
    server.abort();
}

// ---------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn metrics_carry_the_guides_names() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url()).start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    router.assign(&fs_put("metrics-1", "tenant-m")).await;
    assert_eq!(router.result("metrics-1").await["status"], "success");

    let (status, ctype, body) = http_get(worker.metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let m = parse_exposition(&body);
    let one = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found = find(&m, name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?} in\n{body}");
        found[0].value
    };
    assert!(
        one(
            "worker_tasks_total",
            &[("type", "fs.put"), ("status", "success")]
        ) >= 1.0
    );
    assert!(
        one(
            "worker_task_latency_ms_bucket",
            &[("type", "fs.put"), ("le", "100")]
        ) >= 1.0
    );
    assert!(
        one(
            "worker_task_latency_ms_bucket",
            &[("type", "fs.put"), ("le", "500")]
        ) >= 1.0
    );
    assert!(one("worker_resource_usage", &[("type", "cpu_time_ms")]) >= 0.0);
    assert!(one("worker_resource_usage", &[("type", "memory_mb")]) > 0.0);
    for pool in ["cpu", "io", "gpu"] {
        assert!(one("worker_pool_queue_depth", &[("pool", pool)]) >= 0.0);
    }
    for s in &m {
        assert!(
            s.name.starts_with("worker_"),
            "unexpected series {}",
            s.name
        );
    }
}

fn assert_healthy(port: u16, status: u16, ctype: &str, body: &str) {
    assert_eq!(status, 200, "port {port}: {body}");
    assert_eq!(ctype, "application/json", "port {port}");
    let v: Value = serde_json::from_str(body).expect("JSON body");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["status", "timestamp"],
        "exactly the guide's body: {body}"
    );
    assert_eq!(v["status"], "healthy");
    let ts = v["timestamp"].as_str().unwrap_or_default();
    assert!(is_utc_micros(ts), "{ts}");
    let errs = schema_errors(&log_schema()["health_endpoint"]["response"], &v, "health");
    assert!(errs.is_empty(), "{errs:?}");
}

#[tokio::test]
async fn health_follows_the_nats_connection_on_both_ports() {
    let mut nats = Nats::start();
    let worker = Worker::builder(&nats.url()).start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let ports = [worker.metrics_port, worker.health_port];
    for port in ports {
        let (status, ctype, body) = http_get(port, "/_health").await;
        assert_healthy(port, status, &ctype, &body);
    }

    nats.kill();
    for port in ports {
        let body = eventually(
            Duration::from_secs(15),
            "503 after NATS went away",
            async || {
                let (status, ctype, body) = http_get(port, "/_health").await;
                (status == 503).then(|| {
                    assert_eq!(ctype, "application/json");
                    body
                })
            },
        )
        .await;
        assert!(
            body.contains("nats_connection"),
            "503 names the failing indicator: {body}"
        );
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_ne!(v["status"], "healthy");
        assert!(v["timestamp"].as_str().is_some_and(is_utc_micros), "{body}");
    }

    nats.restart();
    for port in ports {
        let (status, ctype, body) = eventually(
            Duration::from_secs(30),
            "200 after NATS came back",
            async || {
                let r = http_get(port, "/_health").await;
                (r.0 == 200).then_some(r)
            },
        )
        .await;
        assert_healthy(port, status, &ctype, &body);
    }
}

// ---------------------------------------------------------------------------------------
// Ops files

/// Every `worker_*` name the worker can export, each label-vec metric given a child so that
/// it shows in the exposition; histograms as `_bucket` / `_sum` / `_count`.
fn exported_names() -> BTreeSet<String> {
    let m = beamline_worker::telemetry::Metrics::new();
    m.dlq("non_retryable");
    m.publish_failures.with_label_values(&["result"]).inc();
    m.cancels.with_label_values(&["cancelled"]).inc();
    m.fs_backend.with_label_values(&["threads"]).set(1);
    parse_exposition(&m.render())
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// `worker_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = expr[i..].find("worker_") {
        let start = i + off;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':')
        {
            end += 1;
        }
        // A metric name, not a label (`worker_id=`, `by (worker_id)`) nor inside a string.
        let next = expr[end..].trim_start();
        let quoted = expr[..start].matches('"').count() % 2 == 1;
        let matcher = next.starts_with('=')
            || next.starts_with("!=")
            || next.starts_with("=~")
            || next.starts_with("!~");
        if boundary && !quoted && !matcher && !in_label_list(&expr[..start]) {
            out.insert(expr[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// Whether the text before a name ends inside `by (`, `without (`, `on (`, `ignoring (`,
/// `group_left (` or `group_right (`: a list of labels.
fn in_label_list(before: &str) -> bool {
    let Some(open) = before.rfind('(') else {
        return false;
    };
    if before[open..].contains(')') {
        return false;
    }
    let word = before[..open].trim_end();
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ]
    .iter()
    .any(|k| {
        word.ends_with(k)
            && !word[..word.len() - k.len()]
                .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn ops_file(name: &str) -> String {
    let path = format!("{}/ops/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// (alert name, expr) of every rule in the alerts file.
fn alert_rules() -> Vec<(String, String)> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs =
        YamlLoader::load_from_str(&ops_file("prometheus-alerts.yml")).expect("alerts file is YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    let mut rules = Vec::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "group without a name");
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"].as_str().expect("alert name").to_owned();
            let expr = r["expr"].as_str().expect("expr").to_owned();
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{name}: severity label"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            if let Yaml::String(f) = &r["for"] {
                assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for {f}");
            }
            rules.push((name, expr));
        }
    }
    rules
}

#[test]
fn ops_files_use_only_metrics_the_worker_exports() {
    let exported = exported_names();
    for needed in [
        "worker_tasks_total",
        "worker_task_latency_ms_bucket",
        "worker_task_latency_ms_sum",
        "worker_task_latency_ms_count",
    ] {
        assert!(exported.contains(needed), "{needed} not in {exported:?}");
    }

    let dashboard: Value =
        serde_json::from_str(&ops_file("grafana-dashboard.json")).expect("dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules = alert_rules();

    let mut referenced = BTreeSet::new();
    for e in exprs.iter().chain(rules.iter().map(|(_, e)| e)) {
        let names = metric_names(e);
        for n in &names {
            assert!(
                exported.contains(n),
                "{n} (in {e:?}) is not exported by the worker; it exports {exported:?}"
            );
        }
        referenced.extend(names);
    }
    // The guide's four are on the dashboard.
    for guide in [
        "worker_tasks_total",
        "worker_task_latency_ms_bucket",
        "worker_resource_usage",
        "worker_pool_queue_depth",
    ] {
        assert!(referenced.contains(guide), "{guide} not used");
    }

    // The alerts the runbook promises, each on the right series and threshold.
    let rule = |name: &str| -> String {
        rules
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no alert {name}"))
    };
    assert!(rule("BeamlineWorkerDown").contains("up{"));
    assert!(rule("BeamlineWorkerNatsDisconnected").contains("worker_nats_connected == 0"));
    assert!(rule("BeamlineWorkerHighErrorRatio")
        .contains("worker_tasks_total{status=~\"error|timeout\"}"));
    let p99 = |name: &str, selector: &str, ms: &str| {
        let e = rule(name);
        assert!(
            e.contains("histogram_quantile(0.99")
                && e.contains(selector)
                && e.trim_end().ends_with(&format!("> {ms}")),
            "{name}: {e}"
        );
    };
    p99(
        "BeamlineWorkerHttpLatencyP99",
        "type=\"http.request\"",
        "500",
    );
    p99(
        "BeamlineWorkerFsLatencyP99",
        "type=~\"fs.put|fs.get\"",
        "200",
    );
    p99("BeamlineWorkerSqlLatencyP99", "type=\"sql.query\"", "300");
    assert!(rule("BeamlineWorkerQueueBacklog").contains("worker_pool_queue_depth"));
    assert!(rule("BeamlineWorkerDlqRate").contains("worker_dlq_published_total"));
    assert!(rule("BeamlineWorkerSpansDropped").contains("worker_spans_dropped_total"));
    // The gate thresholds are bucket bounds, so the quantiles are exact there.
    for ms in [200.0, 300.0, 500.0] {
        assert!(
            beamline_worker::telemetry::metrics::LATENCY_BUCKETS_MS.contains(&ms),
            "{ms}"
        );
    }

    // promtool, where installed, checks the PromQL itself: the rules, and the dashboard's
    // queries as recording rules (Grafana's variables given plain values).
    let rules_path = format!("{}/ops/prometheus-alerts.yml", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dash_rules = dir.path().join("dashboard-rules.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        text.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).expect("json")
        ));
    }
    std::fs::write(&dash_rules, text).expect("write");
    for file in [rules_path.as_str(), dash_rules.to_str().expect("utf-8")] {
        match std::process::Command::new("promtool")
            .args(["check", "rules", file])
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "promtool on {file}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("promtool not installed: PromQL syntax not checked"),
        }
    }
}

#[test]
fn metric_names_are_told_from_labels_and_strings() {
    let names = metric_names(
        r#"sum by (worker_id) (rate(worker_tasks_total{worker_id="worker_x"}[5m])) / worker_task_latency_ms_count"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "worker_tasks_total".to_owned(),
            "worker_task_latency_ms_count".to_owned()
        ])
    );
}
