//! http.request and sql.query end to end, with the guide's golden messages: a real local
//! HTTP upstream and real SQLite files.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One scripted answer: status, body, extra headers.
type Answer = (u16, String, Vec<(String, String)>);

/// A scripted HTTP/1.1 upstream: answers each request with the next (status, body,
/// extra headers), repeating the last; records every request's head.
#[derive(Clone)]
struct Upstream {
    port: u16,
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    #[allow(clippy::type_complexity)]
    async fn start(script: Vec<(u16, &str, Vec<(&str, &str)>)>) -> Upstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up = Upstream {
            port: l.local_addr().expect("addr").port(),
            script: Arc::new(Mutex::new(
                script
                    .into_iter()
                    .map(|(s, b, h)| {
                        (
                            s,
                            b.to_owned(),
                            h.into_iter()
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .collect(),
                        )
                    })
                    .collect(),
            )),
            requests: Arc::default(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let u = u.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        let _ = r.read_exact(&mut body).await;
                        u.requests
                            .lock()
                            .expect("lock")
                            .push(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
                        let (status, body, headers) = {
                            let mut s = u.script.lock().expect("lock");
                            if s.len() > 1 {
                                s.pop_front()
                            } else {
                                s.front().cloned()
                            }
                        }
                        .unwrap_or((200, String::new(), vec![]));
                        let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
                        for (k, v) in headers {
                            resp.push_str(&format!("{k}: {v}\r\n"));
                        }
                        resp.push_str("\r\n");
                        resp.push_str(&body);
                        if w.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/process", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

fn golden(name: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

async fn setup(mode: &str) -> (Nats, Worker, Router) {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .arg(&format!("--consumer={mode}"))
        .arg("--worker-id=worker-1")
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    (nats, worker, router)
}

#[tokio::test]
async fn the_routers_golden_assignment_gets_the_golden_success_result() {
    let up = Upstream::start(vec![(200, r#"{"output":"processed"}"#, vec![])]).await;
    let (_n, _w, router) = setup("jetstream").await;
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
    let up = Upstream::start(vec![(503, r#"{"error":"busy"}"#, vec![])]).await;
    let (_n, _w, router) = setup("core").await;
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
    let up = Upstream::start(vec![
        (503, "{}", vec![]),
        (429, "{}", vec![("Retry-After", "1")]),
        (200, r#"{"ok":true}"#, vec![]),
    ])
    .await;
    let (_n, _w, router) = setup("core").await;
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
    let up404 = Upstream::start(vec![(404, r#"{"error":"nope"}"#, vec![])]).await;
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
    let up = Upstream::start(vec![(503, "{}", vec![("Retry-After", "30")])]).await;
    let (_n, _w, router) = setup("core").await;
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

#[tokio::test]
async fn sql_queries_read_and_never_write() {
    let (_n, w, router) = setup("jetstream").await;
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
