//! http.request and sql.query end to end, with the guide's golden messages: a real local
//! HTTP upstream and real SQLite files.

use std::time::Duration;

use beamline_testkit::fixtures::golden;
use beamline_testkit::http_server::Scripted;
use beamline_testkit::prelude::*;
use serde_json::{json, Value};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

/// A broker, a worker with id `worker-1` (the golden result's) and a Router stand-in.
async fn setup_worker_1(mode: &str) -> (Nats, Worker, Router) {
    setup(mode, &["--worker-id=worker-1"]).await
}

#[tokio::test]
async fn the_routers_golden_assignment_gets_the_golden_success_result() {
    let up = Scripted::start(vec![(200, r#"{"output":"processed"}"#, vec![])]).await;
    let (_n, _w, router) = setup_worker_1("jetstream").await;
    let mut a = golden("router-assignment.json");
    a["job"]["url"] = json!(up.url());
    let h = golden("router-assignment.headers.json");
    let headers: Vec<(&str, &str)> = h
        .as_object()
        .expect("obj")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().expect("str")))
        .collect();
    router.assign_with_headers(&a, &headers).await;
    let id = a["assignment_id"].as_str().expect("id");
    let ack = router.ack(id).await;
    assert_eq!(ack["status"], "accepted");
    assert_eq!(ack["message"], "Assignment accepted for execution");
    for k in ["assignment_id", "request_id", "tenant_id", "trace_id"] {
        assert_eq!(ack[k], golden("result-success.json")[k], "ack {k}");
    }
    assert!(ack["acknowledged_at"].is_u64());
    let r = router.result(id).await;
    let want = golden("result-success.json");
    assert_eq!(keys(&r), keys(&want), "{r}");
    for k in [
        "version",
        "assignment_id",
        "request_id",
        "status",
        "provider_id",
        "job",
        "cost",
        "attempts",
        "metadata",
        "trace_id",
        "tenant_id",
    ] {
        assert_eq!(r[k], want[k], "field {k}: {r}");
    }
    assert_eq!(r["result"]["status_code"], 200);
    assert_eq!(r["result"]["body"], r#"{"output":"processed"}"#);
    assert_eq!(r["result"]["headers"]["Content-Type"], "application/json");
    let req = &up.requests()[0];
    assert!(req.starts_with("POST /process"), "{req}");
    assert!(
        req.to_ascii_lowercase()
            .contains(&format!("idempotency-key: {id}")),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase()
            .contains("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{req}"
    );
    assert!(req.ends_with(r#"{"input":"test"}"#), "{req}");
}

#[tokio::test]
async fn an_upstream_503_is_retried_then_reported_like_the_golden_error() {
    let up = Scripted::start(vec![(503, r#"{"error":"busy"}"#, vec![])]).await;
    let (_n, _w, router) = setup_worker_1("core").await;
    let mut a = golden("router-assignment.json");
    a["job"]["url"] = json!(up.url());
    router.assign(&a).await;
    let id = a["assignment_id"].as_str().expect("id");
    let r = router.result(id).await;
    let want = golden("result-error.json");
    assert_eq!(keys(&r), keys(&want), "{r}");
    for k in [
        "status",
        "error_code",
        "error_type",
        "attempts",
        "provider_id",
        "job",
        "tenant_id",
        "trace_id",
    ] {
        assert_eq!(r[k], want[k], "field {k}: {r}");
    }
    assert_eq!(r["error"]["code"], 3003);
    assert_eq!(r["error"]["retryable"], true);
    assert!(
        r["error"]["message"].as_str().expect("msg").contains("503"),
        "{r}"
    );
    assert!(r["error_message"] == r["error"]["message"]);
    assert_eq!(r["result"]["status_code"], 503);
    assert_eq!(r["result"]["body"], r#"{"error":"busy"}"#);
    assert_eq!(up.requests().len(), 2, "options.retry.max_attempts = 2");
    let d = router.dlq(id).await;
    assert_eq!(d["dlq_reason"], "retries_exhausted");
    assert_eq!(d["assignment"]["decision"]["reason"], "best_score");
}

#[tokio::test]
async fn retries_back_off_and_recover_and_4xx_is_not_retried() {
    let up = Scripted::start(vec![
        (503, "{}", vec![]),
        (429, "{}", vec![("Retry-After", "1")]),
        (200, r#"{"ok":true}"#, vec![]),
    ])
    .await;
    let (_n, _w, router) = setup_worker_1("core").await;
    let started = std::time::Instant::now();
    router
        .assign(&assignment(
            "h-retry",
            "t",
            json!({"type":"http.request","method":"GET","url": up.url(),"timeout_ms": 10000}),
        ))
        .await;
    let r = router.result("h-retry").await;
    assert_eq!(
        (r["status"].as_str(), r["attempts"].as_u64()),
        (Some("success"), Some(3)),
        "{r}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "Retry-After is a minimum delay"
    );
    let up404 = Scripted::start(vec![(404, r#"{"error":"nope"}"#, vec![])]).await;
    router
        .assign(&assignment(
            "h-404",
            "t",
            json!({"type":"http.request","method":"GET","url": up404.url()}),
        ))
        .await;
    let r = router.result("h-404").await;
    assert_eq!(
        (
            r["error"]["code"].as_u64(),
            r["attempts"].as_u64(),
            r["error"]["retryable"].as_bool()
        ),
        (Some(3003), Some(1), Some(false)),
        "{r}"
    );
    assert_eq!(r["result"]["status_code"], 404);
    assert_eq!(up404.requests().len(), 1);
    router.assign(&assignment("h-refused", "t", json!({"type":"http.request","method":"GET","url": format!("http://127.0.0.1:{}/", free_port())}))).await;
    let r = router.result("h-refused").await;
    assert_eq!(
        (
            r["error"]["code"].as_u64(),
            r["error_type"].as_str(),
            r["attempts"].as_u64()
        ),
        (Some(3001), Some("connection_error"), Some(3)),
        "{r}"
    );
    router.assign(&assignment("h-meta", "t", json!({"type":"http.request","method":"GET","url": "http://169.254.169.254/latest/meta-data"}))).await;
    let r = router.result("h-meta").await;
    assert_eq!(r["error"]["code"], 2003, "{r}");
}

#[tokio::test]
async fn a_backoff_that_would_pass_the_deadline_returns_the_last_error() {
    let up = Scripted::start(vec![(503, "{}", vec![("Retry-After", "30")])]).await;
    let (_n, _w, router) = setup_worker_1("core").await;
    let started = std::time::Instant::now();
    router
        .assign(&assignment(
            "h-dl",
            "t",
            json!({"type":"http.request","method":"GET","url": up.url(),"timeout_ms": 2000}),
        ))
        .await;
    let r = router.result("h-dl").await;
    assert_eq!(
        (
            r["status"].as_str(),
            r["error"]["code"].as_u64(),
            r["attempts"].as_u64()
        ),
        (Some("error"), Some(3003), Some(1)),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

/// A slow query does not hold up the other work of its CPU thread: it leaves the thread
/// after its inline budget, so the assignments behind it (and its own ack) go out at once.
/// (It held the thread up to `--sql-time-limit-ms`: every other assignment waited that long.)
#[tokio::test]
async fn a_slow_query_does_not_hold_up_its_threads_other_work() {
    let (_n, w, router) = setup("core", &["--cpu-pool-size=1", "--sql-time-limit-ms=3000"]).await;
    let db = rusqlite::Connection::open(w.sql_root.join("db.sqlite")).expect("db");
    db.execute_batch("CREATE TABLE t (x INTEGER);")
        .expect("fixture");
    drop(db);
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c";
    let sent = std::time::Instant::now();
    router
        .assign(&assignment(
            "sql-slow",
            "t",
            json!({"type":"sql.query","connection_string":"sqlite://db.sqlite","query": slow}),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    router
        .assign(&assignment(
            "after-slow",
            "t",
            json!({"type": "fs.get", "path": "/missing.txt"}),
        ))
        .await;
    let r = router.result("after-slow").await;
    assert_eq!(r["error"]["code"], 2002, "{r}");
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the next assignment was answered {waited:?} after the slow query was sent"
    );
    assert_eq!(router.ack("sql-slow").await["status"], "accepted");
    let r = router.result("sql-slow").await;
    assert_eq!(
        (r["error"]["code"].as_u64(), r["attempts"].as_u64()),
        (Some(2001), Some(1)),
        "{r}"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "ran to its time limit"
    );
}

#[tokio::test]
async fn sql_queries_read_and_never_write() {
    let (_n, w, router) = setup_worker_1("jetstream").await;
    let db = rusqlite::Connection::open(w.sql_root.join("db.sqlite")).expect("db");
    db.execute_batch("CREATE TABLE users (id TEXT, name TEXT, email TEXT); INSERT INTO users VALUES ('123','John','john@example.com');").expect("fixture");
    drop(db);
    router.assign(&assignment("sql-1", "t", json!({"type":"sql.query","connection_string":"sqlite://db.sqlite","query":"SELECT * FROM users WHERE id = ?","parameters":["123"]}))).await;
    let r = router.result("sql-1").await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        r["result"]["rows"],
        json!([{"id":"123","name":"John","email":"john@example.com"}])
    );
    assert_eq!(r["result"]["row_count"], 1);
    router.assign(&assignment("sql-2", "t", json!({"type":"sql.query","connection":"sqlite://db.sqlite","query":"DELETE FROM users"}))).await;
    assert_eq!(router.result("sql-2").await["error"]["code"], 2003);
    router.assign(&assignment("sql-3", "t", json!({"type":"sql.query","connection_string":"sqlite://missing.sqlite","query":"SELECT 1"}))).await;
    assert_eq!(router.result("sql-3").await["error"]["code"], 2002);
    let db = rusqlite::Connection::open(w.sql_root.join("db.sqlite")).expect("db");
    let n: i64 = db
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1, "nothing was deleted");
}
